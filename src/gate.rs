//! The regression gate: does merging `head` into the branch at `base` make a model worse?
//!
//! For every experiment whose record differs between base and head, the `[gate]` policy of the
//! **base** revision's spec (`experiments/<name>.toml`; a branch cannot loosen the rule it is
//! judged by) is applied to each gated metric. The rule, for a metric whose worsening from base
//! to head is `w` (base − head for metrics that should rise, head − base for those that should
//! fall), in this order:
//!
//! 1. fail when the head misses the floor (`min`, for rising metrics) or ceiling (`max`);
//! 2. fail when `w` exceeds the tolerance: the smaller of `max_drop` and
//!    `max_relative_drop · |base|` of those set, [`DEFAULT_MAX_DROP`] when neither is;
//! 3. fail when `w > 0` and the paired McNemar test on the two runs' predictions (accuracy only)
//!    gives p < `alpha`: the drop is real, however small;
//! 4. pass otherwise.
//!
//! It fails closed: a record deleted on head, unreadable, not `completed`, evaluated on a
//! different eval set (unless `allow_different_eval_set`), a metric missing, or weights whose
//! committed LFS pointer names another object than the record cannot be decided (exit 2). An
//! experiment without a record on base is new and passes.

use std::path::Path;

use git2::Repository;

/// The tolerance when the base's `[gate]` sets neither `max_drop` nor `max_relative_drop`: half
/// a point of a metric such as accuracy (docs/gate.md argues for it). Smaller drops still fail
/// when McNemar's test finds them significant.
pub const DEFAULT_MAX_DROP: f64 = 0.005;
use serde::Serialize;

use crate::compare::audit::audit;
use crate::compare::diff::{compare_one, Examples};
use crate::compare::{record_blobs, stored_record, CompareError, Snapshot, StoredRecord};
use crate::metric::Direction;
use crate::record::layout;
use crate::record::{RunRecord, STATUS_COMPLETED};
use crate::spec::GateSpec;
use crate::verify::{verify_one, VerifyOutcome};

/// The gate's answer for one experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Every gated metric passed.
    Pass,
    /// No record on base: nothing to regress from.
    New,
    /// A gated metric failed.
    Regression,
    /// The records cannot be compared: the gate fails closed.
    Undecidable,
}

/// One gated metric.
#[derive(Debug, Clone, Serialize)]
pub struct MetricCheck {
    /// Metric name.
    pub metric: String,
    /// Base value.
    pub base: Option<f64>,
    /// Head value.
    pub head: Option<f64>,
    /// head − base.
    pub delta: Option<f64>,
    /// Paired test p-value (accuracy, same eval set, predictions on both sides).
    pub p_value: Option<f64>,
    /// Whether this metric passed.
    pub passed: bool,
    /// Why.
    pub reason: String,
}

/// One experiment's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentGate {
    /// Experiment name.
    pub name: String,
    /// The verdict.
    pub outcome: Outcome,
    /// Why, for new and undecidable experiments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The gated metrics.
    pub checks: Vec<MetricCheck>,
    /// The policy applied (from the base).
    pub policy: GateSpec,
}

/// A gate that did not pass: what the CLI prints as the error, with its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct GateRejected {
    /// One line per failing experiment.
    pub message: String,
    /// What to do next.
    pub hint: String,
    /// 1 (regression) or 2 (cannot decide).
    pub code: crate::exit::ExitCode,
}

/// The gate's answer for a base and a head.
#[derive(Debug, Clone, Serialize)]
pub struct GateReport {
    /// Base revision as given.
    pub base: String,
    /// Head revision (or tree) as given.
    pub head: String,
    /// One entry per experiment whose record differs.
    pub experiments: Vec<ExperimentGate>,
    /// What the audit of the judged records noticed without refusing them (an old record
    /// without artifact bindings).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// How the gate judges, beyond the policy of the base.
#[derive(Debug, Clone, Default)]
pub struct GateOptions {
    /// `--verify`: re-evaluate the committed weights of head and base (`exp verify`) before
    /// judging, reading the eval sets under this data root.
    pub verify: Option<std::path::PathBuf>,
    /// Accept changes to a `[gate]` table (git config `exp.gate.allowPolicyChanges`): a policy
    /// change is otherwise "cannot decide", since a branch that loosens the rule would pass the
    /// rule it loosens and the next merge would be judged by it.
    pub allow_policy_changes: bool,
    /// `--reeval`: when head and base were evaluated on different test sets, evaluate both
    /// sides' committed weights on the head's test set (rebuilt under this data root) and
    /// judge those evaluations, paired, instead of refusing to decide.
    pub reeval: Option<std::path::PathBuf>,
}

/// The git config key that turns `--verify` on for every gate of the repository: the hooks and
/// `exp flow finish` call the gate, so a CI runner or a server with the data sets it once.
pub const VERIFY_CONFIG_KEY: &str = "exp.gate.verify";
/// The git config key that lets a change to a `[gate]` table through (set it where the gate runs,
/// for a reviewed policy change).
pub const POLICY_CONFIG_KEY: &str = "exp.gate.allowPolicyChanges";

impl GateOptions {
    /// The options `exp.gate.verify` in `repo`'s git config asks for (`force_verify`: the
    /// command line said `--verify`); the data root is resolved from `cwd`. `Err` is a config
    /// value that is not a boolean.
    pub fn from_config(
        repo: &Repository,
        cwd: &Path,
        force_verify: bool,
    ) -> Result<GateOptions, String> {
        let flag = |key: &str| match repo.config().and_then(|c| c.get_bool(key)) {
            Ok(v) => Ok(v),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(false),
            Err(e) => Err(format!(
                "git config {key} is not a boolean: {}",
                e.message()
            )),
        };
        let configured = flag(VERIFY_CONFIG_KEY)?;
        let allow_policy_changes = flag(POLICY_CONFIG_KEY)?;
        Ok(GateOptions {
            allow_policy_changes,
            reeval: None,
            verify: (force_verify || configured)
                // Without HOME or EXP_DATA there is no data root; verification then reports it
                // cannot find the data, and the gate cannot decide.
                .then(|| crate::data::data_root(cwd).unwrap_or_default()),
        })
    }
}

impl GateReport {
    /// One line per failing experiment: the metric, from what to what and why, or why it cannot
    /// be decided. `context` (e.g. "base develop, head 1a2b3c") ends each regression line.
    pub fn failures(&self, context: &str) -> Vec<String> {
        let mut lines = Vec::new();
        let value = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
        for e in &self.experiments {
            match e.outcome {
                Outcome::Regression => {
                    for c in e.checks.iter().filter(|c| !c.passed) {
                        lines.push(format!(
                            "regression in {}: {} fell from {} to {} ({}{context})",
                            e.name,
                            c.metric,
                            value(c.base),
                            value(c.head),
                            c.reason
                        ));
                    }
                }
                Outcome::Undecidable => lines.push(format!(
                    "cannot decide {}: {}",
                    e.name,
                    e.reason.as_deref().unwrap_or("")
                )),
                Outcome::Pass | Outcome::New => {}
            }
        }
        lines
    }

    /// 1 when an experiment regressed, else 2 when one cannot be decided, else 0.
    pub fn exit_code(&self) -> crate::exit::ExitCode {
        let any = |o| self.experiments.iter().any(|e| e.outcome == o);
        if any(Outcome::Regression) {
            crate::exit::ExitCode::Negative
        } else if any(Outcome::Undecidable) {
            crate::exit::ExitCode::Usage
        } else {
            crate::exit::ExitCode::Success
        }
    }
}

/// Judges `head` against `base`.
pub fn gate(
    repo: &Repository,
    base: &Snapshot,
    head: &Snapshot,
    options: &GateOptions,
) -> Result<GateReport, CompareError> {
    let base_blobs = record_blobs(repo, &base.tree)?;
    let head_blobs = record_blobs(repo, &head.tree)?;
    let spec_names = spec_names(repo, base)
        .into_iter()
        .chain(spec_names(repo, head))
        .collect::<Vec<String>>();
    let mut names: Vec<&String> = base_blobs
        .keys()
        .chain(head_blobs.keys())
        .chain(spec_names.iter())
        .collect();
    names.sort();
    names.dedup();
    let mut experiments = Vec::new();
    let mut warnings = Vec::new();
    // What the head changed of a policy: against the merge base when both sides are commits (a
    // policy the base changed meanwhile is not the head's doing), else against the base (a
    // hook's head is the merge result itself).
    let origin = match (&base.commit, &head.commit) {
        (Some(b), Some(h)) => repo
            .merge_base(b.id(), h.id())
            .ok()
            .and_then(|mb| repo.find_commit(mb).ok())
            .and_then(|c| c.tree().ok()),
        _ => None,
    };
    let origin = Snapshot {
        name: "the merge base".into(),
        commit: None,
        tree: origin.unwrap_or_else(|| base.tree.clone()),
    };
    for name in names {
        let (b, h) = (base_blobs.get(name), head_blobs.get(name));
        let (old, new) = (
            gate_table(repo, &origin, name),
            gate_table(repo, head, name),
        );
        if old != new && !options.allow_policy_changes {
            experiments.push(undecidable(
                name,
                GateSpec::default(),
                format!(
                    "the head changes the [gate] policy in {}; a policy change is not decided by the rule it changes (review it, then let it through with `git config {POLICY_CONFIG_KEY} true` where the gate runs)",
                    layout::spec_path(name)
                ),
            ));
            continue;
        }
        if b.is_none() && h.is_none() {
            continue;
        }
        if b == h {
            // The same record; but a weights file, predictions or history replaced without a
            // new run must not slip through.
            if let Some(reason) =
                h.and_then(|blob| changed_artifacts(repo, base, head, name, *blob))
            {
                experiments.push(undecidable(name, GateSpec::default(), reason));
            }
            continue;
        }
        let policy = match base_policy(repo, base, name) {
            Ok(p) => p,
            Err(reason) => {
                experiments.push(undecidable(name, GateSpec::default(), reason));
                continue;
            }
        };
        let sides = Sides {
            repo,
            base,
            head,
            options,
        };
        experiments.push(judge(
            &sides,
            name,
            b.copied(),
            h.copied(),
            policy,
            &mut warnings,
        )?);
    }
    Ok(GateReport {
        base: base.name.clone(),
        head: head.name.clone(),
        experiments,
        warnings,
    })
}

/// What `judge` reads from.
struct Sides<'a, 'r> {
    repo: &'a Repository,
    base: &'a Snapshot<'r>,
    head: &'a Snapshot<'r>,
    options: &'a GateOptions,
}

/// The experiments with a spec file (`experiments/<name>.toml`) in a snapshot.
fn spec_names(repo: &Repository, snapshot: &Snapshot) -> Vec<String> {
    let Ok(entry) = snapshot.tree.get_path(Path::new(layout::EXPERIMENTS_DIR)) else {
        return Vec::new();
    };
    let Ok(tree) = repo.find_tree(entry.id()) else {
        return Vec::new();
    };
    tree.iter()
        .filter(|e| e.kind() == Some(git2::ObjectType::Blob))
        .filter_map(|e| e.name()?.strip_suffix(".toml").map(String::from))
        .collect()
}

/// The `[gate]` table of experiment `name`'s spec in a snapshot, as TOML (None: no spec, no
/// table, or unreadable — `base_policy` reports those).
fn gate_table(repo: &Repository, snapshot: &Snapshot, name: &str) -> Option<toml::Value> {
    let entry = snapshot
        .tree
        .get_path(Path::new(&layout::spec_path(name)))
        .ok()?;
    let blob = repo.find_blob(entry.id()).ok()?;
    let table: toml::Table = toml::from_str(std::str::from_utf8(blob.content()).ok()?).ok()?;
    table.get("gate").cloned()
}

fn undecidable(name: &str, policy: GateSpec, reason: String) -> ExperimentGate {
    ExperimentGate {
        name: name.to_string(),
        outcome: Outcome::Undecidable,
        reason: Some(reason),
        checks: Vec::new(),
        policy,
    }
}

/// The `[gate]` table of `experiments/<name>.toml` at the base (the default policy when the
/// base has no spec or no table; an invalid table cannot be applied).
pub fn base_policy(repo: &Repository, base: &Snapshot, name: &str) -> Result<GateSpec, String> {
    let path = layout::spec_path(name);
    let Ok(entry) = base.tree.get_path(Path::new(&path)) else {
        return Ok(GateSpec::default());
    };
    let blob = repo
        .find_blob(entry.id())
        .map_err(|e| format!("{path} at the base is unreadable: {}", e.message()))?;
    let invalid = |m: String| format!("the base's {path} has an invalid [gate]: {m}");
    let text = std::str::from_utf8(blob.content()).map_err(|_| invalid("not UTF-8".into()))?;
    let table: toml::Table = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let Some(gate) = table.get("gate") else {
        return Ok(GateSpec::default());
    };
    let policy: GateSpec = gate
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
    policy
        .check()
        .map_err(|(key, m)| invalid(format!("{key} {m}")))?;
    Ok(policy)
}

fn read(
    repo: &Repository,
    snapshot: &Snapshot,
    name: &str,
    blob: git2::Oid,
) -> Result<StoredRecord, String> {
    stored_record(repo, snapshot, name, blob).map_err(|e| e.to_string())
}

/// Why the run files of an unchanged record are not the recorded ones, when the run's directory
/// differs between base and head. (A record unreadable on both sides is not this change's doing.)
fn changed_artifacts(
    repo: &Repository,
    base: &Snapshot,
    head: &Snapshot,
    name: &str,
    record: git2::Oid,
) -> Option<String> {
    let dir = layout::run_dir(name);
    let id = |s: &Snapshot| s.tree.get_path(Path::new(&dir)).ok().map(|e| e.id());
    if id(base) == id(head) {
        return None;
    }
    let stored = read(repo, head, name, record).ok()?;
    if let Err(reason) = audit(repo, head, name, &stored) {
        return Some(reason);
    }
    check_weights(repo, head, name, &stored.record).err()
}

/// The committed weights must be the object (oid and size) the record names.
fn check_weights(
    repo: &Repository,
    head: &Snapshot,
    name: &str,
    record: &RunRecord,
) -> Result<(), String> {
    crate::weights::committed_pointer(repo, &head.tree, name, record)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Audits a side's record (and re-evaluates its weights with `--verify`): `Err` is why it cannot
/// be judged.
fn trusted(
    sides: &Sides,
    snapshot: &Snapshot,
    side: &str,
    name: &str,
    stored: &StoredRecord,
    warnings: &mut Vec<String>,
) -> Result<Option<crate::eval::Evaluation>, String> {
    warnings.extend(
        audit(sides.repo, snapshot, name, stored)
            .map_err(|e| format!("the {side}'s record cannot be trusted: {e}"))?,
    );
    if let Some(root) = &sides.options.verify {
        let verified = verify_one(sides.repo, snapshot, name, stored, root);
        match verified.outcome {
            VerifyOutcome::Verified => return Ok(verified.evaluation),
            VerifyOutcome::Mismatch => {
                return Err(format!("exp verify on the {side}: {}", verified.reason))
            }
            VerifyOutcome::CannotVerify => {
                return Err(format!(
                    "exp verify cannot verify the {side}: {}",
                    verified.reason
                ))
            }
        }
    }
    Ok(None)
}

/// With `--verify`, the metrics the re-evaluation gives replace the recorded ones: the gate
/// judges what the weights do, whatever tolerance the verification allowed.
fn judge_reevaluated(stored: &mut StoredRecord, evaluation: Option<crate::eval::Evaluation>) {
    if let Some(evaluation) = evaluation {
        let values = metric_values(&evaluation, stored.record.eval.classes);
        stored.record.metrics.values.extend(values);
    }
}

/// Every known metric of an evaluation, by name.
fn metric_values(
    evaluation: &crate::eval::Evaluation,
    classes: usize,
) -> std::collections::BTreeMap<String, f64> {
    let metrics = crate::eval::Metrics::new(evaluation, classes);
    crate::metric::KNOWN_METRICS
        .iter()
        .filter_map(|k| metrics.get(k.name).map(|v| (k.name.to_string(), v)))
        .collect()
}

fn judge(
    sides: &Sides,
    name: &str,
    base_blob: Option<git2::Oid>,
    head_blob: Option<git2::Oid>,
    policy: GateSpec,
    warnings: &mut Vec<String>,
) -> Result<ExperimentGate, CompareError> {
    let Sides {
        repo, base, head, ..
    } = *sides;
    let Some(head_blob) = head_blob else {
        return Ok(undecidable(
            name,
            policy,
            format!(
                "the head deletes {}; a model cannot be gated away",
                layout::run_file(name, layout::RECORD_FILE)
            ),
        ));
    };
    let mut h = match read(repo, head, name, head_blob) {
        Ok(h) => h,
        Err(e) => return Ok(undecidable(name, policy, e)),
    };
    if h.record.run.status != STATUS_COMPLETED {
        let status = h.record.run.status.clone();
        return Ok(undecidable(
            name,
            policy,
            format!("the head's run has status {status:?}, not \"completed\""),
        ));
    }
    if let Err(e) = check_weights(repo, head, name, &h.record) {
        return Ok(undecidable(name, policy, e));
    }
    let head_evaluation = match trusted(sides, head, "head", name, &h, warnings) {
        Ok(e) => e,
        Err(e) => return Ok(undecidable(name, policy, e)),
    };
    let Some(base_blob) = base_blob else {
        return Ok(ExperimentGate {
            name: name.to_string(),
            outcome: Outcome::New,
            reason: Some("no record on the base: a new experiment".into()),
            checks: Vec::new(),
            policy,
        });
    };
    let mut b = match read(repo, base, name, base_blob) {
        Ok(b) => b,
        Err(e) => return Ok(undecidable(name, policy, e)),
    };
    let different_tests = b.record.data.test.blake3 != h.record.data.test.blake3;
    if different_tests {
        if let Some(root) = &sides.options.reeval {
            return reevaluated(sides, name, &b, &h, policy, root, warnings);
        }
    }
    if different_tests && !policy.allow_different_eval_set {
        return Ok(undecidable(
            name,
            policy,
            "base and head were evaluated on different eval sets (data.test blake3 differs); \
             their metrics do not measure the same thing"
                .into(),
        ));
    }
    let base_evaluation = match trusted(sides, base, "base", name, &b, warnings) {
        Ok(e) => e,
        Err(e) => return Ok(undecidable(name, policy, e)),
    };
    judge_reevaluated(&mut h, head_evaluation);
    judge_reevaluated(&mut b, base_evaluation);
    let diff = match compare_one(repo, name, Some(&b), Some(&h)) {
        Ok(diff) => diff,
        Err(CompareError::Untrusted { path, reason, .. }) => {
            return Ok(undecidable(
                name,
                policy,
                format!("the head's {path}: {reason}"),
            ))
        }
        Err(e) => return Err(e),
    };
    let paired = match diff.examples {
        Examples::Compared { p_value, .. } => Some(p_value),
        Examples::NotComparable { .. } => None,
    };
    let values = |r: &StoredRecord| r.record.metrics.values.clone();
    Ok(judged(name, policy, &values(&b), &values(&h), paired, None))
}

/// The verdict of `policy` on the metric values of base and head (`paired`: the p-value of the
/// paired test on accuracy, when the sides' predictions are comparable).
fn judged(
    name: &str,
    policy: GateSpec,
    base: &std::collections::BTreeMap<String, f64>,
    head: &std::collections::BTreeMap<String, f64>,
    paired: Option<f64>,
    reason: Option<String>,
) -> ExperimentGate {
    let mut checks = Vec::new();
    for metric in &policy.metrics {
        let (Some(&bv), Some(&hv)) = (base.get(metric), head.get(metric)) else {
            let reason = format!("metric {metric:?} is missing from a record");
            return undecidable(name, policy, reason);
        };
        // From the table of known metrics (the base's policy was checked against it), never
        // from a record.
        let Some(known) = crate::metric::known(metric) else {
            let reason = format!("metric {metric:?} is not one exp knows");
            return undecidable(name, policy, reason);
        };
        let p_value = if metric == "accuracy" { paired } else { None };
        checks.push(check_metric(
            &policy,
            metric,
            known.direction,
            bv,
            hv,
            p_value,
        ));
    }
    let outcome = if checks.iter().all(|c| c.passed) {
        Outcome::Pass
    } else {
        Outcome::Regression
    };
    ExperimentGate {
        name: name.to_string(),
        outcome,
        reason,
        checks,
        policy,
    }
}

/// `--reeval`: both sides' weights evaluated on the head's test set, judged paired.
#[allow(clippy::too_many_arguments)]
fn reevaluated(
    sides: &Sides,
    name: &str,
    b: &StoredRecord,
    h: &StoredRecord,
    policy: GateSpec,
    root: &Path,
    warnings: &mut Vec<String>,
) -> Result<ExperimentGate, CompareError> {
    if let Err(reason) = trusted(sides, sides.base, "base", name, b, warnings) {
        return Ok(undecidable(name, policy, reason));
    }
    let on_head_tests = |weights_at: &Snapshot, weights: &RunRecord| {
        crate::verify::evaluate_on(
            sides.repo, name, weights_at, weights, sides.head, &h.record, root,
        )
    };
    let (base_eval, head_eval) = match (
        on_head_tests(sides.base, &b.record),
        on_head_tests(sides.head, &h.record),
    ) {
        (Ok(be), Ok(he)) => (be, he),
        (Err(e), _) => {
            return Ok(undecidable(
                name,
                policy,
                format!("--reeval: the base: {e}"),
            ))
        }
        (_, Err(e)) => {
            return Ok(undecidable(
                name,
                policy,
                format!("--reeval: the head: {e}"),
            ))
        }
    };
    let classes = h.record.eval.classes;
    let values = |e: &crate::eval::Evaluation| metric_values(e, classes);
    // Same examples in the same order on both sides: the paired test applies.
    let (mut fixed, mut broken) = (0u64, 0u64);
    for ((label, pb), ph) in head_eval
        .labels
        .iter()
        .zip(&base_eval.predictions)
        .zip(&head_eval.predictions)
    {
        match (pb == label, ph == label) {
            (false, true) => fixed += 1,
            (true, false) => broken += 1,
            _ => {}
        }
    }
    let p_value = crate::compare::stats::mcnemar_exact(fixed, broken);
    warnings.push(format!(
        "{name}: --reeval judged the base's weights and the head's on the head's test set ({} examples; the base was evaluated on another)",
        head_eval.labels.len()
    ));
    Ok(judged(
        name,
        policy,
        &values(&base_eval),
        &values(&head_eval),
        Some(p_value),
        Some("re-evaluated on the head's test set (--reeval)".into()),
    ))
}

/// The rule of the module docs for one metric.
pub fn check_metric(
    policy: &GateSpec,
    metric: &str,
    direction: Direction,
    base: f64,
    head: f64,
    p_value: Option<f64>,
) -> MetricCheck {
    let worsening = match direction {
        Direction::Max => base - head,
        Direction::Min => head - base,
    };
    let tolerance = [
        policy.max_drop,
        policy.max_relative_drop.map(|r| r * base.abs()),
    ]
    .into_iter()
    .flatten()
    .fold(None, |acc: Option<f64>, t| {
        Some(acc.map_or(t, |a| a.min(t)))
    });
    let default_tolerance = tolerance.is_none();
    let tolerance = tolerance.unwrap_or(DEFAULT_MAX_DROP);
    let bound = match direction {
        Direction::Max => policy
            .min
            .filter(|&floor| head < floor)
            .map(|floor| format!("{head:.4} is below the floor min = {floor}")),
        Direction::Min => policy
            .max
            .filter(|&ceiling| head > ceiling)
            .map(|ceiling| format!("{head:.4} is above the ceiling max = {ceiling}")),
    };
    let p_text = p_value
        .map(|p| format!(", McNemar p = {p:.4}"))
        .unwrap_or_default();
    let (passed, reason) = if let Some(bound) = bound {
        (false, bound)
    } else if worsening > tolerance + 1e-12 {
        (
            false,
            format!(
                "worse by {worsening:.4}, more than the tolerance {tolerance:.4}{}{p_text}",
                if default_tolerance {
                    " (exp's default: no max_drop in the base's [gate])"
                } else {
                    ""
                }
            ),
        )
    } else if worsening > 0.0 && p_value.is_some_and(|p| p < policy.alpha) {
        (
            false,
            format!(
                "worse by {worsening:.4}, within the tolerance {tolerance:.4} but significant{p_text} < alpha = {}",
                policy.alpha
            ),
        )
    } else if worsening > 0.0 {
        (
            true,
            format!(
                "worse by {worsening:.4}, within the tolerance {tolerance:.4}{}",
                if p_value.is_some() {
                    format!(" and not significant{p_text}")
                } else {
                    String::new()
                }
            ),
        )
    } else if worsening < 0.0 {
        (true, format!("better by {:.4}{p_text}", -worsening))
    } else {
        (true, "unchanged".into())
    };
    MetricCheck {
        metric: metric.to_string(),
        base: Some(base),
        head: Some(head),
        delta: Some(head - base),
        p_value,
        passed,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_drop: Option<f64>, rel: Option<f64>) -> GateSpec {
        GateSpec {
            max_drop,
            max_relative_drop: rel,
            ..GateSpec::default()
        }
    }

    #[test]
    fn the_rule() {
        let p = policy(Some(0.01), None);
        // Within tolerance, not significant: pass.
        assert!(check_metric(&p, "accuracy", Direction::Max, 0.95, 0.945, Some(0.2)).passed);
        // Within tolerance but significant: fail.
        let c = check_metric(&p, "accuracy", Direction::Max, 0.95, 0.945, Some(0.01));
        assert!(
            !c.passed && c.reason.contains("significant"),
            "{}",
            c.reason
        );
        // Beyond tolerance: fail whatever the test says.
        let c = check_metric(&p, "accuracy", Direction::Max, 0.95, 0.93, Some(0.9));
        assert!(
            !c.passed && c.reason.contains("more than the tolerance"),
            "{}",
            c.reason
        );
        // Improvements pass; a loss that falls is an improvement.
        assert!(check_metric(&p, "accuracy", Direction::Max, 0.9, 0.95, Some(0.0)).passed);
        assert!(check_metric(&p, "loss", Direction::Min, 0.3, 0.2, None).passed);
        assert!(!check_metric(&policy(None, None), "loss", Direction::Min, 0.3, 0.31, None).passed);
        // No tolerance configured: exp's default, half a point, and the message says so.
        let none = policy(None, None);
        assert!(check_metric(&none, "accuracy", Direction::Max, 0.95, 0.9451, Some(1.0)).passed);
        let c = check_metric(&none, "accuracy", Direction::Max, 0.95, 0.9449, Some(1.0));
        assert_eq!(
            c.reason,
            "worse by 0.0051, more than the tolerance 0.0050 (exp's default: no max_drop in the base's [gate]), McNemar p = 1.0000"
        );
        // An explicit zero is zero.
        assert!(
            !check_metric(
                &policy(Some(0.0), None),
                "accuracy",
                Direction::Max,
                0.95,
                0.9499,
                Some(1.0)
            )
            .passed
        );
        // The stricter of two tolerances applies: 1 % of 0.5 = 0.005 < 0.01.
        assert!(
            !check_metric(
                &policy(Some(0.01), Some(0.01)),
                "accuracy",
                Direction::Max,
                0.5,
                0.493,
                None
            )
            .passed
        );
        // A floor.
        let floor = GateSpec {
            min: Some(0.96),
            max_drop: Some(1.0),
            ..GateSpec::default()
        };
        let c = check_metric(&floor, "accuracy", Direction::Max, 0.95, 0.955, Some(0.5));
        assert!(!c.passed && c.reason.contains("floor"), "{}", c.reason);
    }
}
