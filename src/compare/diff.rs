//! `exp diff`: what changed between the records of two revisions.

use std::collections::{BTreeMap, BTreeSet};

use git2::Repository;
use serde::Serialize;

use super::audit::audit;
use super::stats::mcnemar_exact;
use super::{records_at, CompareError, Snapshot, StoredRecord};
use crate::eval::decode_predictions;
use crate::record::layout::{run_file, PREDICTIONS_FILE, RECORD_FILE};
use crate::record::{Direction, RunRecord};

/// The differences between two revisions' records.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    /// Base revision as given.
    pub base: String,
    /// Head revision as given.
    pub head: String,
    /// One entry per experiment whose record differs.
    pub experiments: Vec<ExperimentDiff>,
    /// What the audit of the compared records noticed without refusing them (compare/audit.rs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Whether an experiment is new, gone or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Only the head has a record.
    Added,
    /// Only the base has a record.
    Removed,
    /// Both have one, and they differ.
    Changed,
}

/// One experiment's differences.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentDiff {
    /// Experiment name.
    pub name: String,
    /// Added, removed or changed.
    pub change: Change,
    /// Parameters (resolved spec keys) whose value differs (empty for a new or removed
    /// experiment: every parameter would be listed).
    pub params: Vec<ParamChange>,
    /// Every metric of either record.
    pub metrics: Vec<MetricChange>,
    /// Data fingerprints that differ, by split (`train`, `val`, `test`).
    pub data: Vec<ValueChange>,
    /// How the committed dataset changed between the runs (`data.dataset`), when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetChange>,
    /// The model weights' LFS oid on each side.
    pub model_oid: ValueChange,
    /// The per-example comparison.
    pub examples: Examples,
    /// When this experiment was compared with another base than the diff's (its previous run
    /// on the branch, when the default base has no record of it): that run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compared_with: Option<String>,
}

/// What changed in a committed dataset between two runs: the files of the two manifests the
/// runs read, compared path by path, and the counts per class.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetChange {
    /// The dataset on each side (`name` at manifest blob).
    pub base: Option<String>,
    /// The head's.
    pub head: Option<String>,
    /// Files added, modified and deleted.
    pub files: crate::data::scan::Changes,
    /// Per class (the class folder): added, modified, deleted.
    pub per_class: Vec<(String, usize, usize, usize)>,
}

/// A value on each side (absent when the side has none).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValueChange {
    /// Key or split name.
    pub key: String,
    /// Base value.
    pub base: Option<String>,
    /// Head value.
    pub head: Option<String>,
}

/// A parameter's value on each side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamChange {
    /// Dotted spec key.
    pub key: String,
    /// Base value.
    pub base: Option<ParamValue>,
    /// Head value.
    pub head: Option<ParamValue>,
}

/// A resolved spec value: JSON gets the typed value, people get compact text (strings
/// unquoted, `1e-30` rather than thirty zeros).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ParamValue(pub toml::Value);

impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            toml::Value::String(s) => f.write_str(s),
            toml::Value::Float(x) if *x != 0.0 && (x.abs() < 1e-4 || x.abs() >= 1e9) => {
                write!(f, "{x:e}")
            }
            // Debug is the shortest text that round-trips and keeps the ".0" TOML writes.
            toml::Value::Float(x) => write!(f, "{x:?}"),
            toml::Value::Integer(i) => write!(f, "{i}"),
            toml::Value::Boolean(b) => write!(f, "{b}"),
            other => write!(f, "{other}"),
        }
    }
}

/// How a metric moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Moved in the metric's better direction.
    Better,
    /// Moved in the worse direction.
    Worse,
    /// Unchanged.
    Same,
    /// The two values cannot be compared (different eval set or direction, or one missing).
    NotComparable,
}

/// One metric on both sides.
#[derive(Debug, Clone, Serialize)]
pub struct MetricChange {
    /// Metric name.
    pub name: String,
    /// Base value.
    pub base: Option<f64>,
    /// Head value.
    pub head: Option<f64>,
    /// head − base, when comparable.
    pub delta: Option<f64>,
    /// Better direction, from `metric::KNOWN_METRICS`; `None` for a metric exp does not know.
    pub direction: Option<Direction>,
    /// The verdict.
    pub verdict: Verdict,
    /// Why not comparable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The paired comparison of two runs' predictions on the same eval set.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Examples {
    /// Both runs predicted the same examples.
    Compared {
        /// Examples in the eval set.
        total: u64,
        /// Wrong in base, right in head.
        fixed: u64,
        /// Right in base, wrong in head.
        broken: u64,
        /// Exact two-sided McNemar p-value.
        p_value: f64,
    },
    /// Why the comparison cannot be made.
    NotComparable {
        /// The reason.
        reason: String,
    },
}

/// Compares the records of `base` and `head`.
pub fn diff(repo: &Repository, base: &Snapshot, head: &Snapshot) -> Result<Diff, CompareError> {
    let a = records_at(repo, base)?;
    let b = records_at(repo, head)?;
    if a.is_empty() && b.is_empty() {
        return Err(CompareError::NoRecords(format!(
            "{} or {}",
            base.name, head.name
        )));
    }
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut experiments = Vec::new();
    let mut warnings = Vec::new();
    for name in names {
        let (ra, rb) = (a.get(name), b.get(name));
        if let (Some(x), Some(y)) = (ra, rb) {
            if x.record_blob == y.record_blob {
                continue;
            }
        }
        // What is compared is what the committed artifacts show, not what a record claims.
        for (snapshot, stored) in [(base, ra), (head, rb)] {
            if let Some(stored) = stored {
                warnings.extend(audited(repo, snapshot, name, stored)?);
            }
        }
        experiments.push(compare_one(repo, name, ra, rb)?);
    }
    Ok(Diff {
        base: base.name.clone(),
        head: head.name.clone(),
        experiments,
        warnings,
    })
}

pub(crate) fn compare_one(
    repo: &Repository,
    name: &str,
    a: Option<&StoredRecord>,
    b: Option<&StoredRecord>,
) -> Result<ExperimentDiff, CompareError> {
    let change = match (a, b) {
        (None, Some(_)) => Change::Added,
        (Some(_), None) => Change::Removed,
        _ => Change::Changed,
    };
    let ra = a.map(|s| &s.record);
    let rb = b.map(|s| &s.record);
    Ok(ExperimentDiff {
        name: name.to_string(),
        change,
        params: if change == Change::Changed {
            param_changes(ra, rb)
        } else {
            Vec::new()
        },
        metrics: metric_changes(ra, rb),
        data: data_changes(ra, rb),
        dataset: dataset_change(repo, ra, rb)?,
        model_oid: ValueChange {
            key: "model.oid".into(),
            base: ra.map(|r| r.model.oid.clone()),
            head: rb.map(|r| r.model.oid.clone()),
        },
        examples: compare_examples(repo, name, a, b)?,
        compared_with: None,
    })
}

/// The change of the committed dataset between two records, read from the manifests' blobs.
fn dataset_change(
    repo: &Repository,
    a: Option<&RunRecord>,
    b: Option<&RunRecord>,
) -> Result<Option<DatasetChange>, CompareError> {
    let used = |r: Option<&RunRecord>| r.and_then(|r| r.data.dataset.clone());
    let (da, db) = (used(a), used(b));
    if da.is_none() && db.is_none() {
        return Ok(None);
    }
    if let (Some(x), Some(y)) = (&da, &db) {
        if x.manifest == y.manifest {
            return Ok(None);
        }
    }
    let entries = |d: &Option<crate::record::DatasetRecord>| -> Result<Vec<crate::data::scan::FileEntry>, CompareError> {
        let Some(d) = d else { return Ok(Vec::new()) };
        let bad = |why: String| CompareError::Untrusted {
            rev: d.manifest.clone(),
            path: crate::dataset::files_path(&d.name),
            reason: why,
        };
        let id = git2::Oid::from_str(&d.manifest).map_err(|e| bad(e.to_string()))?;
        let blob = repo
            .find_blob(id)
            .map_err(|e| bad(format!("the manifest blob is not in this repository: {}", e.message())))?;
        let text = std::str::from_utf8(blob.content()).map_err(|_| bad("not UTF-8".into()))?;
        crate::data::scan::parse_manifest(text).map_err(bad)
    };
    let (ea, eb) = (entries(&da)?, entries(&db)?);
    let files = crate::data::scan::changes(&ea, &eb);
    let mut per_class: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for (paths, slot) in [(&files.added, 0), (&files.modified, 1), (&files.deleted, 2)] {
        for p in paths {
            let counts = per_class
                .entry(crate::data::folder::class_of(p).to_string())
                .or_default();
            match slot {
                0 => counts.0 += 1,
                1 => counts.1 += 1,
                _ => counts.2 += 1,
            }
        }
    }
    let label = |d: &Option<crate::record::DatasetRecord>| {
        d.as_ref()
            .map(|d| format!("{}@{}", d.name, &d.manifest[..d.manifest.len().min(10)]))
    };
    Ok(Some(DatasetChange {
        base: label(&da),
        head: label(&db),
        files,
        per_class: per_class
            .into_iter()
            .map(|(c, (a, m, d))| (c, a, m, d))
            .collect(),
    }))
}

/// The audit's warnings for one side, or its refusal as an error.
pub(crate) fn audited(
    repo: &Repository,
    snapshot: &Snapshot,
    name: &str,
    stored: &StoredRecord,
) -> Result<Vec<String>, CompareError> {
    audit(repo, snapshot, name, stored).map_err(|reason| CompareError::Untrusted {
        rev: snapshot.name.clone(),
        path: run_file(name, RECORD_FILE),
        reason,
    })
}

/// The resolved spec as `key = value` pairs.
pub fn flat_params(record: &RunRecord) -> Vec<(String, ParamValue)> {
    crate::spec::flatten(&record.params)
        .into_iter()
        .map(|(k, v)| (k, ParamValue(v)))
        .collect()
}

fn param_changes(a: Option<&RunRecord>, b: Option<&RunRecord>) -> Vec<ParamChange> {
    let pa: std::collections::BTreeMap<String, ParamValue> =
        a.map(flat_params).unwrap_or_default().into_iter().collect();
    let pb: std::collections::BTreeMap<String, ParamValue> =
        b.map(flat_params).unwrap_or_default().into_iter().collect();
    let keys: BTreeSet<&String> = pa.keys().chain(pb.keys()).collect();
    keys.into_iter()
        .filter(|k| pa.get(*k) != pb.get(*k))
        .map(|k| ParamChange {
            key: k.clone(),
            base: pa.get(k).cloned(),
            head: pb.get(k).cloned(),
        })
        .collect()
}

fn metric_changes(a: Option<&RunRecord>, b: Option<&RunRecord>) -> Vec<MetricChange> {
    let names: BTreeSet<&String> = a
        .into_iter()
        .chain(b)
        .flat_map(|r| r.metrics.values.keys())
        .collect();
    names
        .into_iter()
        .map(|name| {
            let va = a.and_then(|r| r.metrics.values.get(name).copied());
            let vb = b.and_then(|r| r.metrics.values.get(name).copied());
            let ma = a.and_then(|r| r.metrics.meta.get(name));
            let mb = b.and_then(|r| r.metrics.meta.get(name));
            // The better direction comes from exp's table of metrics, never from a record (a
            // record could claim any); the audit refuses a record that disagrees with it.
            let direction = crate::metric::known(name).map(|m| m.direction);
            let not_comparable = |reason: &str| MetricChange {
                name: name.clone(),
                base: va,
                head: vb,
                delta: None,
                direction,
                verdict: Verdict::NotComparable,
                reason: Some(reason.to_string()),
            };
            let (Some(x), Some(y)) = (va, vb) else {
                return not_comparable(match (a, b) {
                    (None, _) => "new experiment",
                    (_, None) => "experiment removed",
                    _ if va.is_none() => "no base value",
                    _ => "no head value",
                });
            };
            let (Some(ma), Some(mb)) = (ma, mb) else {
                return not_comparable("a record lacks the metric's meta data");
            };
            let Some(better) = direction else {
                return not_comparable("not a metric exp knows: its better direction is unknown");
            };
            if ma.eval_set != mb.eval_set {
                return not_comparable("measured on different eval sets");
            }
            let delta = y - x;
            let verdict = if delta == 0.0 {
                Verdict::Same
            } else if (delta > 0.0) == (better == Direction::Max) {
                Verdict::Better
            } else {
                Verdict::Worse
            };
            MetricChange {
                name: name.clone(),
                base: Some(x),
                head: Some(y),
                delta: Some(delta),
                direction,
                verdict,
                reason: None,
            }
        })
        .collect()
}

fn data_changes(a: Option<&RunRecord>, b: Option<&RunRecord>) -> Vec<ValueChange> {
    let split = |r: Option<&RunRecord>, s: &str| -> Option<String> {
        r.and_then(|r| match s {
            "train" => Some(r.data.train.blake3.clone()),
            "val" => r.data.val.as_ref().map(|v| v.blake3.clone()),
            _ => Some(r.data.test.blake3.clone()),
        })
    };
    ["train", "val", "test"]
        .into_iter()
        .filter(|s| split(a, s) != split(b, s))
        .map(|s| ValueChange {
            key: s.to_string(),
            base: split(a, s),
            head: split(b, s),
        })
        .collect()
}

fn compare_examples(
    repo: &Repository,
    name: &str,
    a: Option<&StoredRecord>,
    b: Option<&StoredRecord>,
) -> Result<Examples, CompareError> {
    let not = |reason: &str| {
        Ok(Examples::NotComparable {
            reason: reason.to_string(),
        })
    };
    let (Some(a), Some(b)) = (a, b) else {
        return not("the experiment has a record on one side only");
    };
    if a.record.data.test.blake3 != b.record.data.test.blake3 {
        return not("the runs were evaluated on different eval sets (data.test blake3 differs)");
    }
    let (Some(pa), Some(pb)) = (a.predictions_blob, b.predictions_blob) else {
        return not("predictions.bin is missing on one side");
    };
    // Outer error: Git failed (an error). Inner error: the file is damaged (not comparable).
    type Decoded = Result<(Vec<u32>, Vec<u32>, usize), String>;
    let read = |oid| -> Result<Decoded, CompareError> {
        let blob = repo
            .find_blob(oid)
            .map_err(super::git_err("predictions.bin"))?;
        Ok(decode_predictions(blob.content()).map_err(|e| e.to_string()))
    };
    let (la, pa, _) = match read(pa)? {
        Ok(v) => v,
        Err(e) => return not(&format!("base {e}")),
    };
    let (lb, pb, _) = match read(pb)? {
        Ok(v) => v,
        Err(e) => return not(&format!("head {e}")),
    };
    if la != lb {
        // Same eval set, so the same true labels in the same order: one side's file was not
        // written for that eval set.
        return Err(CompareError::Untrusted {
            rev: b.rev.clone(),
            path: run_file(name, PREDICTIONS_FILE),
            reason: format!(
                "its true labels differ from those of {} at {}, yet both records name the eval set {}",
                run_file(name, PREDICTIONS_FILE),
                a.rev,
                a.record.data.test.blake3
            ),
        });
    }
    let (mut fixed, mut broken) = (0u64, 0u64);
    for ((label, x), y) in la.iter().zip(&pa).zip(&pb) {
        match (x == label, y == label) {
            (false, true) => fixed += 1,
            (true, false) => broken += 1,
            _ => {}
        }
    }
    Ok(Examples::Compared {
        total: la.len() as u64,
        fixed,
        broken,
        p_value: mcnemar_exact(fixed, broken),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The better direction comes from exp's metric table: a record that claims another for a
    /// known metric does not turn a drop into a gain, and a metric exp does not know is shown
    /// without a verdict.
    #[test]
    fn directions_come_from_the_metric_table_not_the_record() {
        let base = RunRecord::from_toml(include_str!("../../tests/fixtures/record.toml")).unwrap();
        let mut head = base.clone();
        *head.metrics.values.get_mut("accuracy").unwrap() -= 0.01;
        head.metrics.meta.get_mut("accuracy").unwrap().direction = Direction::Min;
        let mut base = base;
        for r in [&mut base, &mut head] {
            r.metrics.values.insert("top5".into(), 0.99);
            let meta = r.metrics.meta["accuracy"].clone();
            r.metrics.meta.insert("top5".into(), meta);
        }
        *head.metrics.values.get_mut("top5").unwrap() = 0.98;
        let changes = metric_changes(Some(&base), Some(&head));
        let get = |n: &str| changes.iter().find(|c| c.name == n).unwrap();
        assert_eq!(get("accuracy").verdict, Verdict::Worse);
        assert_eq!(get("accuracy").direction, Some(Direction::Max));
        assert_eq!(get("top5").verdict, Verdict::NotComparable);
        assert_eq!(get("top5").direction, None);
        assert_eq!(
            get("top5").reason.as_deref(),
            Some("not a metric exp knows: its better direction is unknown")
        );
    }
}
