//! `exp log` and `exp show`: records across commits and branches, from Git objects alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use git2::{Oid, Repository, Sort};
use serde::Serialize;

use super::cache::{RecordSummary, SummaryCache};
use super::diff::ParamValue;
use super::{git_err, parse_record_bytes, record_blobs, resolve, CompareError};
use crate::record::Direction;

/// One commit that changed one experiment's record.
#[derive(Debug, Clone, Serialize)]
pub struct LogRow {
    /// Commit id.
    pub commit: String,
    /// Run tags on the commit.
    pub tags: Vec<String>,
    /// Branch the run was recorded on.
    pub branch: String,
    /// Commit time, RFC 3339.
    pub date: String,
    /// Experiment name.
    pub experiment: String,
    /// All resolved parameters (`exp log` prints those that vary).
    pub params: BTreeMap<String, ParamValue>,
    /// Metric values.
    pub metrics: BTreeMap<String, f64>,
    /// Metric directions.
    #[serde(skip)]
    pub directions: BTreeMap<String, Direction>,
    /// Why the record could not be read (the row then has no parameters or metrics).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    /// Not a run: a commit that copied a run's record — "merge of <tag>", "apply of <tag>"
    /// (`exp apply`), "pick of <tag>" (`exp sweep pick`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_of: Option<String>,
}

/// How a commit that is not a run brought a record: the word `LogRow::copy_of` starts with.
fn copy_kind(commit: &git2::Commit) -> Option<&'static str> {
    let message = commit.message().unwrap_or_default();
    if commit.parent_count() > 1 {
        Some("merge")
    } else if message.starts_with(crate::git::APPLY_PREFIX) {
        Some("apply")
    } else if message.starts_with(crate::git::PICK_PREFIX) {
        Some("pick")
    } else {
        None
    }
}

/// The run tag an apply commit's message names (`exp apply <tag>: …`).
fn applied_tag(commit: &git2::Commit) -> Option<String> {
    let rest = commit
        .message()?
        .strip_prefix(crate::git::APPLY_PREFIX)?
        .trim_start();
    Some(rest.split(':').next()?.trim().to_string()).filter(|t| !t.is_empty())
}

/// What `exp log` selects.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// `A..B`, a revision, or none (HEAD).
    pub range: Option<String>,
    /// Only this experiment.
    pub experiment: Option<String>,
    /// Every local branch.
    pub all: bool,
    /// Filters like `accuracy>0.99`, all of which must hold.
    pub filters: Vec<Filter>,
    /// Sort best-first by this metric instead of history order.
    pub sort: Option<String>,
}

/// `KEY OP VALUE` on a metric or parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    key: String,
    op: &'static str,
    value: String,
}

impl Filter {
    /// Parses `accuracy>0.99`, `train.lr==0.001`, `model.name!=mlp`.
    pub fn parse(text: &str) -> Result<Filter, String> {
        for op in [">=", "<=", "==", "!=", ">", "<", "="] {
            if let Some((key, value)) = text.split_once(op) {
                let (key, value) = (key.trim(), value.trim());
                if key.is_empty() || value.is_empty() {
                    break;
                }
                let op = if op == "=" { "==" } else { op };
                let is_param = crate::spec::keys::SPEC_KEYS.iter().any(|k| k.key == key);
                if crate::metric::known(key).is_none() && !is_param {
                    return Err(format!(
                        "--where {text:?}: {key:?} is neither a metric exp knows ({}) nor a spec key (`exp run --help` lists them)",
                        crate::metric::known_names()
                    ));
                }
                return Ok(Filter {
                    key: key.into(),
                    op,
                    value: value.trim_matches('"').into(),
                });
            }
        }
        Err(format!(
            "{text:?} is not KEY OP VALUE (ops: > >= < <= == !=), e.g. 'accuracy>0.99'"
        ))
    }

    fn matches(&self, row: &LogRow) -> bool {
        let actual: Option<String> = row
            .metrics
            .get(&self.key)
            .map(|v| v.to_string())
            .or_else(|| row.params.get(&self.key).map(|v| v.to_string()));
        let Some(actual) = actual else { return false };
        match (actual.parse::<f64>(), self.value.parse::<f64>()) {
            (Ok(a), Ok(b)) => match self.op {
                ">" => a > b,
                ">=" => a >= b,
                "<" => a < b,
                "<=" => a <= b,
                "==" => a == b,
                _ => a != b,
            },
            _ => match self.op {
                "==" => actual == self.value,
                "!=" => actual != self.value,
                _ => false,
            },
        }
    }
}

/// Run tags by the commit they point at. A tag object is immutable, so the commit it peels to
/// is cached by the tag object's id.
pub fn run_tags(
    repo: &Repository,
    cache: &mut SummaryCache,
) -> Result<HashMap<Oid, Vec<String>>, CompareError> {
    let mut out: HashMap<Oid, Vec<String>> = HashMap::new();
    for reference in repo
        .references_glob("refs/tags/run/*")
        .map_err(git_err("tags"))?
    {
        let reference = reference.map_err(git_err("tags"))?;
        let (Some(name), Some(target)) =
            (reference.shorthand().map(String::from), reference.target())
        else {
            continue;
        };
        let commit = match cache.tag_target(target) {
            Some(commit) => commit,
            None => match reference.peel_to_commit() {
                Ok(commit) => {
                    cache.insert_tag_target(target, commit.id());
                    commit.id()
                }
                Err(_) => continue,
            },
        };
        out.entry(commit).or_default().push(name);
    }
    for tags in out.values_mut() {
        tags.sort();
    }
    Ok(out)
}

/// The key of `exp log`'s output cache for `query` (`command`: the options as text): the
/// commits the walk starts from and hides, besides what [`OutputKey::new`] covers. None when a
/// revision does not resolve: then the command runs in full and reports the error.
///
/// [`OutputKey::new`]: super::output_cache::OutputKey::new
pub fn log_output_key(
    repo: &Repository,
    query: &LogQuery,
    command: &str,
) -> Option<super::output_cache::OutputKey> {
    let mut key = super::output_cache::OutputKey::new(repo, command).ok()?;
    if query.all {
        let mut heads: Vec<(String, Oid)> = repo
            .references_glob("refs/heads/*")
            .ok()?
            .filter_map(|r| r.ok())
            .filter_map(|r| Some((r.name()?.to_string(), r.target()?)))
            .collect();
        heads.sort();
        for (name, id) in heads {
            key.field(name.as_bytes());
            key.commit("head", id);
        }
        return Some(key);
    }
    match query.range.as_deref() {
        Some(range) if range.contains("..") => {
            let spec = repo.revparse(range).ok()?;
            key.field(&spec.mode().bits().to_le_bytes());
            for (role, object) in [("from", spec.from()), ("to", spec.to())] {
                key.commit(role, object?.peel_to_commit().ok()?.id());
            }
        }
        Some(rev) => key.commit("tip", resolve(repo, rev).ok()?.commit?.id()),
        None => key.commit("head", repo.head().ok()?.peel_to_commit().ok()?.id()),
    }
    Some(key)
}

/// The commits of `query` that changed a record, one row per changed record, in history order
/// (oldest first) unless sorted.
pub fn log(repo: &Repository, query: &LogQuery) -> Result<Vec<LogRow>, CompareError> {
    let mut walk = repo.revwalk().map_err(git_err("history"))?;
    walk.set_sorting(Sort::TOPOLOGICAL | Sort::TIME | Sort::REVERSE)
        .map_err(git_err("history"))?;
    if query.all {
        walk.push_glob("refs/heads/*")
            .map_err(git_err("branches"))?;
    } else {
        match query.range.as_deref() {
            Some(range) if range.contains("..") => {
                walk.push_range(range)
                    .map_err(|e| CompareError::UnknownRevision {
                        rev: range.to_string(),
                        message: e.message().to_string(),
                    })?
            }
            Some(rev) => {
                let snapshot = resolve(repo, rev)?;
                let commit = snapshot
                    .commit
                    .ok_or_else(|| CompareError::UnknownRevision {
                        rev: rev.to_string(),
                        message: "names a tree, not a commit".into(),
                    })?;
                walk.push(commit.id()).map_err(git_err("history"))?;
            }
            None => walk
                .push_head()
                .map_err(|e| CompareError::UnknownRevision {
                    rev: "HEAD".into(),
                    message: e.message().to_string(),
                })?,
        }
    }
    let mut cache = SummaryCache::open(repo);
    let tags = run_tags(repo, &mut cache)?;
    // A commit's parent is usually the previous commit of the walk: remember trees' records.
    let mut by_tree: HashMap<Oid, BTreeMap<String, Oid>> = HashMap::new();
    // First the walk (cheap, sequential: libgit2 objects are not shared across threads), then
    // the records the cache lacks are parsed on every core, then rows are built in order.
    struct Slot {
        commit: Oid,
        seconds: i64,
        name: String,
        blob: Oid,
        summary: Option<RecordSummary>,
        copy: Option<(&'static str, Option<String>)>,
    }
    let mut slots = Vec::new();
    let mut to_parse: Vec<(usize, Vec<u8>)> = Vec::new();
    for oid in walk {
        let oid = oid.map_err(git_err("history"))?;
        let changes = match cache.changes(oid) {
            Some(c) => c.clone(),
            None => {
                let c = changed_records(repo, &mut by_tree, oid)?;
                cache.insert_changes(oid, c.clone());
                c
            }
        };
        if changes.is_empty() {
            continue;
        }
        let commit = repo
            .find_commit(oid)
            .map_err(git_err(format!("commit {oid}")))?;
        let seconds = commit.time().seconds();
        let copy = copy_kind(&commit).map(|kind| (kind, applied_tag(&commit)));
        for (name, blob) in changes {
            if query.experiment.as_ref().is_some_and(|e| *e != name) {
                continue;
            }
            let summary = cache.take(blob);
            if summary.is_none() {
                let bytes = repo
                    .find_blob(blob)
                    .map_err(git_err(format!("experiments/{name}/metrics.toml")))?;
                to_parse.push((slots.len(), bytes.content().to_vec()));
            }
            slots.push(Slot {
                commit: oid,
                seconds,
                name,
                blob,
                summary,
                copy: copy.clone(),
            });
        }
    }
    let parsed: Vec<Result<RecordSummary, CompareError>> = {
        use rayon::prelude::*;
        to_parse
            .par_iter()
            .map(|(i, bytes)| {
                let slot = &slots[*i];
                parse_record_bytes(bytes, &slot.commit.to_string(), &slot.name)
                    .map(|r| RecordSummary::of(&r))
            })
            .collect()
    };
    // One unreadable record does not hide the others: its row says why.
    let mut unreadable: HashMap<usize, String> = HashMap::new();
    for ((i, _), summary) in to_parse.iter().zip(parsed) {
        match summary {
            Ok(summary) => {
                cache.insert(slots[*i].blob, summary.clone());
                slots[*i].summary = Some(summary);
            }
            Err(CompareError::CorruptRecord { message, .. }) => {
                unreadable.insert(*i, message);
            }
            Err(e) => return Err(e),
        }
    }
    let mut rows = Vec::with_capacity(slots.len());
    let mut blobs = Vec::with_capacity(slots.len());
    // The run each record blob was first recorded by (its tag, else its commit), for the
    // commits that copy it later in the walk.
    let mut recorded_by: HashMap<Oid, String> = HashMap::new();
    for (i, slot) in slots.into_iter().enumerate() {
        let slot_tags = tags.get(&slot.commit).cloned().unwrap_or_default();
        let copy_of = match &slot.copy {
            None => {
                recorded_by.entry(slot.blob).or_insert_with(|| {
                    slot_tags
                        .first()
                        .cloned()
                        .unwrap_or_else(|| slot.commit.to_string()[..10].to_string())
                });
                None
            }
            Some((kind, named)) => Some(match recorded_by.get(&slot.blob).or(named.as_ref()) {
                Some(run) => format!("{kind} of {run}"),
                None => kind.to_string(),
            }),
        };
        let Some(summary) = slot.summary else {
            if let Some(why) = unreadable.remove(&i) {
                let mut r = row(
                    slot.commit,
                    slot.seconds,
                    &slot.name,
                    RecordSummary {
                        branch: "?".into(),
                        params: BTreeMap::new(),
                        metrics: BTreeMap::new(),
                        directions: BTreeMap::new(),
                    },
                    slot_tags,
                );
                r.unreadable = Some(why.lines().next().unwrap_or_default().to_string());
                r.copy_of = copy_of;
                rows.push(r);
            }
            continue;
        };
        blobs.push(slot.blob);
        let mut r = row(slot.commit, slot.seconds, &slot.name, summary, slot_tags);
        r.copy_of = copy_of;
        rows.push(r);
    }
    if cache.is_dirty() {
        // Taken summaries go back before the cache is written (the common warm case skips this).
        for (blob, r) in blobs
            .iter()
            .zip(rows.iter().filter(|r| r.unreadable.is_none()))
        {
            if cache.get(*blob).is_none() {
                cache.restore(
                    *blob,
                    RecordSummary {
                        branch: r.branch.clone(),
                        params: r.params.clone(),
                        metrics: r.metrics.clone(),
                        directions: r.directions.clone(),
                    },
                );
            }
        }
        cache.save();
    }
    rows.retain(|r| query.filters.iter().all(|f| f.matches(r)));
    if let Some(metric) = &query.sort {
        rows.retain(|r| r.metrics.contains_key(metric));
        rows.sort_by(|a, b| {
            let (x, y) = (a.metrics[metric], b.metrics[metric]);
            // The direction is the metric's (metric::KNOWN_METRICS), never a record's.
            match crate::metric::known(metric).map(|m| m.direction) {
                Some(Direction::Min) => x.total_cmp(&y),
                _ => y.total_cmp(&x),
            }
        });
    }
    Ok(rows)
}

/// The records `commit` adds or changes relative to its first parent.
fn changed_records(
    repo: &Repository,
    by_tree: &mut HashMap<Oid, BTreeMap<String, Oid>>,
    commit: Oid,
) -> Result<Vec<(String, Oid)>, CompareError> {
    let commit = repo
        .find_commit(commit)
        .map_err(git_err(format!("commit {commit}")))?;
    let now = blobs_of_tree(repo, by_tree, commit.tree_id())?;
    let before = match commit.parent_id(0) {
        Ok(parent) => {
            let tree = repo
                .find_commit(parent)
                .map_err(git_err(format!("commit {parent}")))?
                .tree_id();
            blobs_of_tree(repo, by_tree, tree)?
        }
        Err(_) => BTreeMap::new(),
    };
    Ok(now
        .into_iter()
        .filter(|(name, blob)| before.get(name) != Some(blob))
        .collect())
}

fn blobs_of_tree(
    repo: &Repository,
    memo: &mut HashMap<Oid, BTreeMap<String, Oid>>,
    tree: Oid,
) -> Result<BTreeMap<String, Oid>, CompareError> {
    if let Some(found) = memo.get(&tree) {
        return Ok(found.clone());
    }
    let blobs = record_blobs(
        repo,
        &repo
            .find_tree(tree)
            .map_err(git_err(format!("tree {tree}")))?,
    )?;
    memo.insert(tree, blobs.clone());
    Ok(blobs)
}

fn row(commit: Oid, seconds: i64, name: &str, summary: RecordSummary, tags: Vec<String>) -> LogRow {
    let date = chrono::DateTime::from_timestamp(seconds, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    LogRow {
        commit: commit.to_string(),
        tags,
        branch: summary.branch,
        date,
        experiment: name.to_string(),
        params: summary.params,
        metrics: summary.metrics,
        directions: summary.directions,
        unreadable: None,
        copy_of: None,
    }
}

/// Parameter keys whose value differs between rows of the same experiment.
pub fn varying_params(rows: &[LogRow]) -> Vec<String> {
    varying(
        rows.iter()
            .filter(|r| r.unreadable.is_none())
            .map(|r| (r.experiment.as_str(), &r.params)),
    )
}

/// Parameter keys whose value differs between the parameter sets of the same experiment.
pub fn varying<'a>(
    rows: impl Iterator<Item = (&'a str, &'a BTreeMap<String, ParamValue>)>,
) -> Vec<String> {
    let mut varying = BTreeSet::new();
    let mut by_experiment: BTreeMap<&str, Vec<&BTreeMap<String, ParamValue>>> = BTreeMap::new();
    for (experiment, params) in rows {
        by_experiment.entry(experiment).or_default().push(params);
    }
    for group in by_experiment.values() {
        let keys: BTreeSet<&String> = group.iter().flat_map(|p| p.keys()).collect();
        for key in keys {
            // Compare values, not their text: formatting 25 values × 1,000 runs was the
            // largest cost of a warm `exp log`.
            let first = group[0].get(key);
            if group.iter().any(|p| p.get(key) != first) {
                varying.insert(key.clone());
            }
        }
    }
    varying.into_iter().collect()
}

/// One experiment's record as it stands at a branch or revision.
#[derive(Debug, Clone, Serialize)]
pub struct ShowRow {
    /// The branch or revision looked at.
    pub at: String,
    /// Experiment name.
    pub experiment: String,
    /// Run id.
    pub run: String,
    /// The run's tag (the tag of the run commit that recorded this record), when found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Branch the run was recorded on.
    pub branch: String,
    /// When the run started.
    pub started: String,
    /// All resolved parameters (`exp show` prints those that differ between rows).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, ParamValue>,
    /// Metric values.
    pub metrics: BTreeMap<String, f64>,
    /// Weights oid.
    pub model_oid: String,
    /// Why the record could not be read (the other fields are then empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

/// The records at `rev`, or at the tip of every local branch. An unreadable record is a row that
/// says why, not an error that hides the others.
pub fn show(
    repo: &Repository,
    rev: &str,
    all_branches: bool,
) -> Result<Vec<ShowRow>, CompareError> {
    let mut targets = Vec::new();
    if all_branches {
        for branch in repo
            .branches(Some(git2::BranchType::Local))
            .map_err(git_err("branches"))?
        {
            let (branch, _) = branch.map_err(git_err("branches"))?;
            if let Ok(Some(name)) = branch.name() {
                targets.push(name.to_string());
            }
        }
    } else {
        targets.push(rev.to_string());
    }
    let mut rows = Vec::new();
    for target in targets {
        let snapshot = resolve(repo, &target)?;
        for (name, blob) in record_blobs(repo, &snapshot.tree)? {
            match super::stored_record(repo, &snapshot, &name, blob) {
                Ok(stored) => {
                    let r = stored.record;
                    let tag = tag_of_record(repo, &r.run.branch, &name, blob);
                    rows.push(ShowRow {
                        at: target.clone(),
                        tag,
                        params: super::diff::flat_params(&r).into_iter().collect(),
                        experiment: name,
                        run: r.run.id.get(..12).unwrap_or(&r.run.id).to_string(),
                        branch: r.run.branch,
                        started: r.run.started,
                        metrics: r.metrics.values,
                        model_oid: r.model.oid,
                        unreadable: None,
                    });
                }
                Err(CompareError::CorruptRecord { message, .. }) => rows.push(ShowRow {
                    at: target.clone(),
                    experiment: name,
                    tag: None,
                    params: BTreeMap::new(),
                    run: "-".into(),
                    branch: "-".into(),
                    started: "-".into(),
                    metrics: BTreeMap::new(),
                    model_oid: "-".into(),
                    unreadable: Some(message.lines().next().unwrap_or_default().to_string()),
                }),
                Err(e) => return Err(e),
            }
        }
    }
    if rows.is_empty() && !all_branches {
        return Err(CompareError::NoRecords(rev.to_string()));
    }
    Ok(rows)
}

/// The run tag of the run that recorded record `blob` of `experiment` on `branch`: among that
/// branch's run tags of the experiment, the one whose commit holds this very record.
fn tag_of_record(repo: &Repository, branch: &str, experiment: &str, blob: Oid) -> Option<String> {
    let prefix = crate::git::run_tag_prefix(branch, experiment);
    let path = crate::record::layout::run_file(experiment, crate::record::layout::RECORD_FILE);
    let references = repo.references_glob(&format!("refs/tags/{prefix}*")).ok()?;
    let mut found: Vec<String> = references
        .flatten()
        .filter(|r| {
            r.peel_to_commit()
                .ok()
                .and_then(|c| c.tree().ok())
                .and_then(|t| t.get_path(std::path::Path::new(&path)).ok())
                .is_some_and(|e| e.id() == blob)
        })
        .filter_map(|r| r.shorthand().map(String::from))
        .collect();
    found.sort();
    found.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_match() {
        let f = Filter::parse("accuracy>=0.9").unwrap();
        let mut row = LogRow {
            commit: String::new(),
            tags: vec![],
            branch: String::new(),
            date: String::new(),
            experiment: "x".into(),
            params: BTreeMap::from([(
                "model.name".into(),
                ParamValue(toml::Value::String("mlp".into())),
            )]),
            metrics: BTreeMap::from([("accuracy".into(), 0.95)]),
            directions: BTreeMap::new(),
            unreadable: None,
            copy_of: None,
        };
        assert!(f.matches(&row));
        row.metrics.insert("accuracy".into(), 0.85);
        assert!(!f.matches(&row));
        assert!(Filter::parse("model.name=mlp").unwrap().matches(&row));
        assert!(!Filter::parse("model.name!=mlp").unwrap().matches(&row));
        assert!(Filter::parse("accuracy").is_err());
        assert!(Filter::parse(">3").is_err());
    }
}
