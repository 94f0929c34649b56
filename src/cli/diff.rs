//! `exp diff`.

use clap::Args;

use exp::compare::diff::{diff, Change, Examples, ExperimentDiff};
use exp::report::{self, delta, markdown_table, metric, p_value};
use exp::Error;

/// The long help of `exp diff`.
pub(super) const DIFF_LONG_ABOUT: &str =
    "Compare the run records of two revisions (branches, commits, tags, run tags or tree ids).

For every experiment whose record differs: the parameters that changed; each metric base → head \
with the delta and whether that is better or worse (the direction comes from exp's table of \
metrics; a metric exp does not know gets no verdict); data \
fingerprints that changed; the weights' LFS oid; and per example, how many eval examples head \
fixed and broke relative to base, with the exact two-sided McNemar p-value (a binomial test on \
those discordant pairs). Metrics and examples are compared only when both runs used the same \
eval set (same BLAKE3); otherwise the output says why not.

Defaults: HEAD against its merge-base with develop (or main); an experiment that base has no \
record of is compared with its previous run on the branch, and the header says so. Everything is read from Git \
objects; nothing is checked out.";

/// Arguments of `exp diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Base revision (default: merge-base of HEAD and develop).
    pub base: Option<String>,
    /// Head revision (default: HEAD).
    pub head: Option<String>,
    /// Machine-readable JSON.
    #[arg(long, conflicts_with = "md")]
    pub json: bool,
    /// Markdown, for pull-request comments.
    #[arg(long)]
    pub md: bool,
}

pub(super) fn execute(args: DiffArgs) -> Result<(), Error> {
    exp::compare::fast_reads();
    let repo = exp::git::open(&super::cwd()?)?;
    let defaulted = args.base.is_none();
    let (base, head) = super::base_and_head(&repo, args.base, args.head)?;
    let mut d = diff(&repo, &base, &head)?;
    if defaulted {
        previous_runs_for_new_experiments(&repo, &head, &mut d)?;
    }
    for warning in &d.warnings {
        super::warn(warning);
    }
    if args.json {
        return super::emit_json(&d);
    }
    let base_name = exp::report::rev_name(&d.base);
    if d.experiments.is_empty() {
        super::outln!("No run record differs between {base_name} and {}.", d.head);
        return Ok(());
    }
    for (i, e) in d.experiments.iter().enumerate() {
        if i > 0 {
            super::outln!();
        }
        if args.md {
            super::outln!("{}", markdown(e, &base_name, &d.head).trim_end());
        } else {
            super::outln!("{}", text(e, &base_name, &d.head).trim_end());
        }
    }
    Ok(())
}

/// With the default base (the merge-base with develop), an experiment that base has no record
/// of would be "new" with nothing to compare: compare it with its previous run on the branch
/// instead, and say so.
fn previous_runs_for_new_experiments(
    repo: &git2::Repository,
    head: &exp::compare::Snapshot,
    d: &mut exp::compare::diff::Diff,
) -> Result<(), Error> {
    let Some(head_commit) = head.commit.as_ref().map(|c| c.id()) else {
        return Ok(());
    };
    let head_blobs = exp::compare::record_blobs(repo, &head.tree)?;
    for e in d
        .experiments
        .iter_mut()
        .filter(|e| e.change == Change::Added)
    {
        let runs = exp::apply::branch_runs(repo, head_commit, &e.name)?;
        let Some(previous) = runs
            .iter()
            .find(|r| Some(&r.record_blob) != head_blobs.get(&e.name))
        else {
            continue;
        };
        let at = exp::compare::resolve(repo, &previous.commit.to_string())?;
        let again = diff(repo, &at, head)?;
        if let Some(mut one) = again.experiments.into_iter().find(|x| x.name == e.name) {
            one.compared_with = Some(previous.name());
            *e = one;
            d.warnings.extend(again.warnings);
        }
    }
    Ok(())
}

fn change_word(c: Change) -> &'static str {
    match c {
        Change::Added => "new",
        Change::Removed => "removed",
        Change::Changed => "changed",
    }
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into())
}

fn metric_rows(e: &ExperimentDiff) -> Vec<Vec<String>> {
    e.metrics
        .iter()
        .map(|m| {
            let verdict = match (&m.reason, m.verdict) {
                (Some(r), _) => format!("not comparable: {r}"),
                (None, v) => serde_json::to_value(v)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
            };
            vec![
                m.name.clone(),
                m.base.map(metric).unwrap_or_else(|| "-".into()),
                m.head.map(metric).unwrap_or_else(|| "-".into()),
                m.delta.map(delta).unwrap_or_else(|| "-".into()),
                verdict,
            ]
        })
        .collect()
}

fn examples_line(e: &ExperimentDiff) -> String {
    match &e.examples {
        Examples::Compared {
            total,
            fixed,
            broken,
            p_value: p,
        } => {
            let verdict = if *p < 0.05 {
                "significant at 0.05"
            } else {
                "not significant at 0.05"
            };
            format!("{fixed} fixed, {broken} broken of {total} eval examples; McNemar exact p = {} ({verdict})", p_value(*p))
        }
        Examples::NotComparable { reason } => format!("cannot be compared: {reason}"),
    }
}

/// The header's base, and a note when this experiment was compared with its previous run on
/// the branch instead of the diff's base.
fn header_base(e: &ExperimentDiff, base: &str) -> (String, String) {
    match &e.compared_with {
        Some(run) => (
            run.clone(),
            format!(" (its previous run on this branch: {base} has no record of it)"),
        ),
        None => (base.to_string(), String::new()),
    }
}

/// One row per class whose files changed.
fn dataset_rows(d: &exp::compare::diff::DatasetChange) -> Vec<Vec<String>> {
    d.per_class
        .iter()
        .map(|(class, a, m, x)| vec![class.clone(), a.to_string(), m.to_string(), x.to_string()])
        .collect()
}

fn text(e: &ExperimentDiff, base: &str, head: &str) -> String {
    let (base, note) = header_base(e, base);
    let mut out = format!(
        "{} ({}): {base} → {head}{note}\n",
        e.name,
        change_word(e.change)
    );
    let header = |h: &[&str]| h.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut metrics = report::table(header(&["metric", "base", "head", "delta", "verdict"]));
    for row in metric_rows(e) {
        metrics.add_row(row);
    }
    out.push_str(&format!("{metrics}\n"));
    if !e.params.is_empty() {
        let mut params = report::table(header(&["parameter", "base", "head"]));
        for p in &e.params {
            params.add_row(vec![p.key.clone(), opt(&p.base), opt(&p.head)]);
        }
        out.push_str(&format!("{params}\n"));
    }
    out.push_str(&format!("examples: {}\n", examples_line(e)));
    for d in &e.data {
        out.push_str(&format!(
            "data {}: {} → {}\n",
            d.key,
            opt(&d.base).chars().take(12).collect::<String>(),
            opt(&d.head).chars().take(12).collect::<String>()
        ));
    }
    if let Some(d) = &e.dataset {
        out.push_str(&format!(
            "dataset: {} → {}: {}\n",
            opt(&d.base),
            opt(&d.head),
            d.files.summary()
        ));
        let mut classes = report::table(header(&["class", "added", "modified", "deleted"]));
        for row in dataset_rows(d) {
            classes.add_row(row);
        }
        out.push_str(&format!("{classes}\n"));
    }
    let oid = |v: &Option<String>| {
        v.as_deref()
            .map(|s| s[..s.len().min(12)].to_string())
            .unwrap_or_else(|| "-".into())
    };
    out.push_str(&format!(
        "model oid: {} → {}\n",
        oid(&e.model_oid.base),
        oid(&e.model_oid.head)
    ));
    out
}

fn markdown(e: &ExperimentDiff, base: &str, head: &str) -> String {
    let (base, note) = header_base(e, base);
    let mut out = format!(
        "### {} ({}): `{base}` → `{head}`{note}\n\n",
        e.name,
        change_word(e.change)
    );
    let h = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    out.push_str(&markdown_table(
        &h(&["metric", "base", "head", "delta", "verdict"]),
        &metric_rows(e),
    ));
    out.push('\n');
    if !e.params.is_empty() {
        let rows: Vec<Vec<String>> = e
            .params
            .iter()
            .map(|p| vec![format!("`{}`", p.key), opt(&p.base), opt(&p.head)])
            .collect();
        out.push_str(&markdown_table(&h(&["parameter", "base", "head"]), &rows));
        out.push('\n');
    }
    out.push_str(&format!("**Examples:** {}\n", examples_line(e)));
    for d in &e.data {
        out.push_str(&format!(
            "\n**Data {}:** `{}` → `{}`\n",
            d.key,
            opt(&d.base),
            opt(&d.head)
        ));
    }
    if let Some(d) = &e.dataset {
        out.push_str(&format!(
            "\n**Dataset:** `{}` → `{}`: {}\n\n",
            opt(&d.base),
            opt(&d.head),
            d.files.summary()
        ));
        out.push_str(&markdown_table(
            &h(&["class", "added", "modified", "deleted"]),
            &dataset_rows(d),
        ));
    }
    out.push_str(&format!(
        "\n**Model oid:** `{}` → `{}`\n",
        opt(&e.model_oid.base),
        opt(&e.model_oid.head)
    ));
    out
}
