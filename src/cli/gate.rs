//! `exp gate`.

use clap::Args;

use exp::gate::{gate, GateOptions, GateRejected, Outcome};
use exp::Error;

/// The long help of `exp gate`.
pub(super) const GATE_LONG_ABOUT: &str =
    "Decide whether HEAD (or --head) may be merged into the branch at --base: for every \
experiment whose record differs, apply the [gate] policy of the BASE's experiments/<name>.toml (a \
branch cannot loosen the rule it is judged by).

The rule, for each gated metric (gate.metrics, default [\"accuracy\"]; better direction from \
exp's table of known metrics: accuracy and macro_f1 up, loss down), with w = how much worse head \
is than base:
  1. fail when head misses the floor gate.min (rising metrics) or ceiling gate.max (falling ones);
  2. fail when w exceeds the tolerance: the smaller of gate.max_drop and gate.max_relative_drop × \
|base| of those set, 0 when neither is (then any drop fails);
  3. fail when w > 0 and the paired McNemar test on the two runs' predictions (accuracy) gives \
p < gate.alpha (default 0.05): a real drop, however small;
  4. pass otherwise.
A new experiment (no record on base) passes. It fails closed: a record deleted on head, unreadable \
or not `completed`, a different eval set (unless gate.allow_different_eval_set = true), a missing \
metric, committed weights whose LFS pointer is not the record's object, or a record that disagrees \
with the files committed beside it (bindings, NaN, direction, metrics recomputed from \
predictions.bin) cannot be decided. --verify (or git config exp.gate.verify true) also \
re-evaluates the committed weights (exp verify).

--head accepts a tree id, so a hook can judge a merge by its result (`git write-tree`).
Exit: 0 pass, 1 regression, 2 cannot decide (or a usage error).";

/// Arguments of `exp gate`.
#[derive(Debug, Args)]
pub struct GateArgs {
    /// Base revision (default: merge-base of HEAD and develop, or main).
    #[arg(long)]
    pub base: Option<String>,
    /// Head revision or tree id (default: HEAD).
    #[arg(long)]
    pub head: Option<String>,
    /// Re-evaluate the committed weights of head and base on the CPU (`exp verify`) before
    /// judging; needs the data under the data root and the LFS objects. Also on when git config
    /// exp.gate.verify is true (the hooks and `exp flow finish` honour it).
    #[arg(long)]
    pub verify: bool,
    /// When head and base were evaluated on different test sets (a grown dataset), evaluate
    /// both sides' committed weights on the head's test set (under the data root, or the
    /// dataset's folder) and judge those, instead of "cannot decide".
    #[arg(long)]
    pub reeval: bool,
    /// Machine-readable JSON (the exit code is the same).
    #[arg(long)]
    pub json: bool,
    /// Set by exp's pre-merge-commit hook: the merge being judged stays in progress when it is
    /// refused (Git writes MERGE_HEAD only after the hook), so the hint says how to abort it.
    #[arg(long, hide = true)]
    pub merging: bool,
}

pub(super) fn execute(args: GateArgs) -> Result<(), Error> {
    exp::compare::fast_reads();
    let cwd = super::cwd()?;
    let repo = exp::git::open_any(&cwd)?;
    let mut options =
        GateOptions::from_config(&repo, &cwd, args.verify).map_err(exp::error::UsageError)?;
    if args.reeval {
        options.reeval = Some(exp::data::data_root(&cwd)?);
    }
    let (base, head) = super::base_and_head(&repo, args.base, args.head)?;
    let report = gate(&repo, &base, &head, &options)?;
    for warning in &report.warnings {
        super::warn(warning);
    }
    let (base_name, head_name) = (
        exp::report::rev_name(&report.base),
        exp::report::rev_name(&report.head),
    );
    if args.json {
        super::emit_json(&report)?;
    } else if report.experiments.is_empty() {
        super::outln!("exp gate: no run record differs between {base_name} and {head_name}: pass.");
    } else {
        let mut table = exp::report::table(
            [
                "experiment",
                "metric",
                "base",
                "head",
                "delta",
                "p-value",
                "verdict",
                "reason",
            ]
            .map(String::from)
            .to_vec(),
        );
        let num = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
        for e in &report.experiments {
            if e.checks.is_empty() {
                let verdict = match e.outcome {
                    Outcome::New => "new",
                    _ => "CANNOT DECIDE",
                };
                table.add_row(vec![
                    e.name.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    verdict.into(),
                    e.reason.clone().unwrap_or_default(),
                ]);
            }
            for c in &e.checks {
                table.add_row(vec![
                    e.name.clone(),
                    c.metric.clone(),
                    num(c.base),
                    num(c.head),
                    c.delta.map_or("-".into(), |d| format!("{d:+.4}")),
                    c.p_value.map_or("-".into(), |p| format!("{p:.4}")),
                    if c.passed { "pass" } else { "FAIL" }.into(),
                    c.reason.clone(),
                ]);
            }
        }
        super::outln!("exp gate: {head_name} against {base_name} (policy read from {base_name})");
        super::outln!("{table}");
    }
    let code = report.exit_code();
    if code == exp::ExitCode::Success {
        if !args.json && !report.experiments.is_empty() {
            if options.verify.is_some() {
                super::outln!(
                    "exp gate: pass (verified: the committed weights were re-evaluated)."
                );
            } else {
                super::outln!(
                    "exp gate: pass (records audited against their artifacts, weights not re-evaluated: --verify or git config exp.gate.verify true)."
                );
            }
        }
        return Ok(());
    }
    let lines = report.failures(&format!("; base {base_name}, head {head_name}"));
    let hint = if code == exp::ExitCode::Negative {
        let mut hint = String::from(
            "improve the model on the feature branch and record a new run (exp run), or put a \
             better run of the branch at its tip (exp apply --best accuracy); the policy is \
             [gate] in experiments/<name>.toml on the base branch",
        );
        let default_tolerance = report
            .experiments
            .iter()
            .flat_map(|e| &e.checks)
            .any(|c| !c.passed && c.reason.contains("(exp's default"));
        if default_tolerance {
            hint.push_str(
                ", where `max_drop = 0.01` (absolute) or `max_relative_drop = 0.01` sets the tolerance",
            );
        }
        if args.merging || repo.state() == git2::RepositoryState::Merge {
            hint.push_str(
                ". The refused merge is still in progress: `git merge --abort` undoes it",
            );
        }
        hint
    } else {
        "the gate fails closed: restore or re-record the run on the head (exp run), and make sure \
         both sides used the same eval set and the weights are committed through LFS"
            .to_string()
    };
    Err(GateRejected {
        message: format!("exp gate rejected the change:\n  {}", lines.join("\n  ")),
        hint,
        code,
    }
    .into())
}
