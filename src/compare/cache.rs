//! A cache of what `exp log` needs from each record, keyed by the record's blob id.
//!
//! A blob id is the hash of the record's bytes, so an entry can never describe a different
//! record: the cache cannot serve a stale answer, only a missing one. It lives in
//! `<common git dir>/exp/cache/` and is only an accelerator: unreadable or unwritable, it is
//! ignored.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use git2::{Oid, Repository};
use serde::{Deserialize, Serialize};

use super::diff::{flat_params, ParamValue};
use crate::record::{Direction, RunRecord};

const FILE: &str = "exp/cache/log-v5.json";

/// The parts of a record `exp log` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordSummary {
    /// Branch the run was recorded on.
    pub branch: String,
    /// Resolved parameters.
    pub params: BTreeMap<String, ParamValue>,
    /// Metric values.
    pub metrics: BTreeMap<String, f64>,
    /// Metric directions.
    pub directions: BTreeMap<String, Direction>,
}

impl RecordSummary {
    /// Summarises a parsed record.
    pub fn of(record: &RunRecord) -> RecordSummary {
        RecordSummary {
            branch: record.run.branch.clone(),
            params: flat_params(record).into_iter().collect(),
            metrics: record.metrics.values.clone(),
            directions: record
                .metrics
                .meta
                .iter()
                .map(|(k, m)| (k.clone(), m.direction))
                .collect(),
        }
    }
}

/// On disk, parameters are stored once per distinct `(key, value)` and referenced by index:
/// runs share most of their parameters, and the file (parsed on every `exp log`) shrinks
/// several-fold.
/// Lists rather than maps, and ids parsed straight from their hex text: a warm `exp log`
/// spends its time allocating, and this halves what it allocates.
#[derive(Default, Serialize, Deserialize)]
struct Stored {
    #[serde(default)]
    values: Vec<(String, ParamValue)>,
    #[serde(default)]
    entries: Vec<(HexOid, StoredSummary)>,
    #[serde(default)]
    commits: Vec<(HexOid, Vec<(String, HexOid)>)>,
    #[serde(default)]
    tags: Vec<(HexOid, HexOid)>,
}

/// An object id written as 40 hex digits.
struct HexOid(Oid);

impl Serialize for HexOid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HexOid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Oid::from_str(&text)
            .map(HexOid)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Serialize, Deserialize)]
struct StoredSummary {
    branch: String,
    params: Vec<u32>,
    metrics: BTreeMap<String, f64>,
    directions: BTreeMap<String, Direction>,
}

/// Record summaries by blob id, and the records each commit changed by commit id (both ids are
/// content hashes: neither can go stale).
pub struct SummaryCache {
    path: Option<PathBuf>,
    entries: HashMap<Oid, RecordSummary>,
    commits: HashMap<Oid, Vec<(String, Oid)>>,
    tags: HashMap<Oid, Oid>,
    added: usize,
}

impl SummaryCache {
    /// Loads the repository's cache (empty when absent or unreadable).
    pub fn open(repo: &Repository) -> SummaryCache {
        let path = repo.commondir().join(FILE);
        let stored = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Stored>(&bytes).ok())
            .unwrap_or_default();
        let values = stored.values;
        let mut entries = HashMap::with_capacity(stored.entries.len());
        for (HexOid(blob), v) in stored.entries {
            let Some(params) = v
                .params
                .iter()
                .map(|&i| values.get(i as usize).cloned())
                .collect()
            else {
                continue;
            };
            entries.insert(
                blob,
                RecordSummary {
                    branch: v.branch,
                    params,
                    metrics: v.metrics,
                    directions: v.directions,
                },
            );
        }
        let commits = stored
            .commits
            .into_iter()
            .map(|(HexOid(c), changes)| {
                (
                    c,
                    changes
                        .into_iter()
                        .map(|(name, HexOid(b))| (name, b))
                        .collect(),
                )
            })
            .collect();
        let tags = stored
            .tags
            .into_iter()
            .map(|(HexOid(t), HexOid(c))| (t, c))
            .collect();
        SummaryCache {
            path: Some(path),
            entries,
            commits,
            tags,
            added: 0,
        }
    }

    /// The summary of `blob`, if cached.
    pub fn get(&self, blob: Oid) -> Option<&RecordSummary> {
        self.entries.get(&blob)
    }

    /// The summary of `blob`, moved out of the cache (no copy); [`SummaryCache::save`] needs it
    /// back through [`SummaryCache::restore`] when anything is to be written.
    pub fn take(&mut self, blob: Oid) -> Option<RecordSummary> {
        self.entries.remove(&blob)
    }

    /// Puts back a summary taken with [`SummaryCache::take`].
    pub fn restore(&mut self, blob: Oid, summary: RecordSummary) {
        self.entries.insert(blob, summary);
    }

    /// Whether anything new was learnt (so that [`SummaryCache::save`] will write).
    pub fn is_dirty(&self) -> bool {
        self.added > 0
    }

    /// Remembers the summary of `blob`.
    pub fn insert(&mut self, blob: Oid, summary: RecordSummary) {
        if self.entries.insert(blob, summary).is_none() {
            self.added += 1;
        }
    }

    /// The records commit `commit` changed relative to its first parent, if cached.
    pub fn changes(&self, commit: Oid) -> Option<&Vec<(String, Oid)>> {
        self.commits.get(&commit)
    }

    /// Remembers the records `commit` changed.
    pub fn insert_changes(&mut self, commit: Oid, changes: Vec<(String, Oid)>) {
        if self.commits.insert(commit, changes).is_none() {
            self.added += 1;
        }
    }

    /// The commit an annotated tag object points at, if cached.
    pub fn tag_target(&self, tag: Oid) -> Option<Oid> {
        self.tags.get(&tag).copied()
    }

    /// Remembers the commit an annotated tag object points at.
    pub fn insert_tag_target(&mut self, tag: Oid, commit: Oid) {
        if self.tags.insert(tag, commit).is_none() {
            self.added += 1;
        }
    }

    /// Writes the cache back if anything was added (atomically; failures are ignored: a
    /// read-only repository just stays uncached).
    pub fn save(&self) {
        let Some(path) = &self.path else { return };
        if self.added == 0 {
            return;
        }
        let mut values: Vec<(String, ParamValue)> = Vec::new();
        let mut index: HashMap<(String, String), u32> = HashMap::new();
        let mut entries = Vec::with_capacity(self.entries.len());
        for (blob, summary) in &self.entries {
            let params = summary
                .params
                .iter()
                .map(|(k, v)| {
                    // Keyed by the value's TOML text: ParamValue holds floats, so it is not Hash.
                    *index
                        .entry((k.clone(), v.0.to_string()))
                        .or_insert_with(|| {
                            values.push((k.clone(), v.clone()));
                            (values.len() - 1) as u32
                        })
                })
                .collect();
            let stored = StoredSummary {
                branch: summary.branch.clone(),
                params,
                metrics: summary.metrics.clone(),
                directions: summary.directions.clone(),
            };
            entries.push((HexOid(*blob), stored));
        }
        let stored = Stored {
            values,
            entries,
            commits: self
                .commits
                .iter()
                .map(|(c, changes)| {
                    (
                        HexOid(*c),
                        changes
                            .iter()
                            .map(|(n, b)| (n.clone(), HexOid(*b)))
                            .collect(),
                    )
                })
                .collect(),
            tags: self
                .tags
                .iter()
                .map(|(t, c)| (HexOid(*t), HexOid(*c)))
                .collect(),
        };
        let Some(dir) = path.parent() else { return };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let Ok(bytes) = serde_json::to_vec(&stored) else {
            return;
        };
        if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) {
            if std::io::Write::write_all(&mut tmp, &bytes).is_ok() {
                let _ = tmp.persist(path);
            }
        }
    }
}
