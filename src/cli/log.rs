//! `exp log` and `exp show`.

use clap::Args;

use exp::compare::log::{log, log_output_key, show, varying_params, Filter, LogQuery};
use exp::report::{self, metric, short};
use exp::Error;

/// The long help of `exp log`.
pub(super) const LOG_LONG_ABOUT: &str =
    "One row per commit that changed a run record, oldest first: commit, run tag, \
branch, date, the parameters that vary between the listed runs, and the metrics. Read from Git \
objects alone.

Examples:
  exp log                              the history of HEAD
  exp log develop..HEAD                what this branch added
  exp log --all --experiment mnist-cnn every branch
  exp log --where 'accuracy>0.97' --sort accuracy";

/// Arguments of `exp log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// A revision (history up to it) or a range A..B (default: HEAD).
    pub range: Option<String>,
    /// Only this experiment.
    #[arg(long, short)]
    pub experiment: Option<String>,
    /// Every local branch.
    #[arg(long, conflicts_with = "range")]
    pub all: bool,
    /// Keep rows where KEY OP VALUE holds (a metric or parameter; ops > >= < <= == !=); repeatable.
    #[arg(long = "where", value_name = "EXPR")]
    pub filters: Vec<String>,
    /// Sort best-first by this metric (its direction decides) instead of history order.
    #[arg(long, value_name = "METRIC")]
    pub sort: Option<String>,
    /// Machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

/// The long help of `exp show`.
pub(super) const SHOW_LONG_ABOUT: &str =
    "The run record of every experiment at a revision (default HEAD), or at the tip \
of every local branch with --all-branches: what `dvc exp show` answers, from Git objects alone.";

/// Arguments of `exp show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The revision (default: HEAD).
    #[arg(default_value = "HEAD")]
    pub rev: String,
    /// One row per experiment per local branch.
    #[arg(long)]
    pub all_branches: bool,
    /// Machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn execute_log(args: LogArgs) -> Result<(), Error> {
    exp::compare::fast_reads();
    let repo = exp::git::open(&super::cwd()?)?;
    let filters = args
        .filters
        .iter()
        .map(|f| Filter::parse(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(super::UsageError)?;
    if let Some(metric) = &args.sort {
        if exp::metric::known(metric).is_none() {
            return Err(super::UsageError(format!(
                "--sort {metric:?}: not a metric exp knows ({})",
                exp::metric::known_names()
            ))
            .into());
        }
    }
    let command = format!("{args:?}");
    let json = args.json;
    let query = LogQuery {
        range: args.range,
        experiment: args.experiment,
        all: args.all,
        filters,
        sort: args.sort,
    };
    // The finished output, cached under a key of everything it depends on (output_cache.rs).
    let key = log_output_key(&repo, &query, &command);
    if let Some(text) = key.as_ref().and_then(|k| k.lookup(&repo)) {
        super::outln!("{text}");
        return Ok(());
    }
    let rows = log(&repo, &query)?;
    let unreadable: Vec<&exp::compare::log::LogRow> =
        rows.iter().filter(|r| r.unreadable.is_some()).collect();
    if !unreadable.is_empty() && unreadable.len() == rows.len() {
        return Err(super::UsageError(format!(
            "no record in that history can be read: {} at {}: {}",
            exp::record::layout::run_file(
                &unreadable[0].experiment,
                exp::record::layout::RECORD_FILE
            ),
            short(&unreadable[0].commit),
            unreadable[0].unreadable.as_deref().unwrap_or_default()
        ))
        .into());
    }
    for r in &unreadable {
        super::warn(&format!(
            "{} at {} cannot be read ({}); the other runs are listed",
            exp::record::layout::run_file(&r.experiment, exp::record::layout::RECORD_FILE),
            short(&r.commit),
            r.unreadable.as_deref().unwrap_or_default()
        ));
    }
    let text = if json {
        serde_json::to_string_pretty(&rows)
            .map_err(|e| Error::Usage(super::UsageError(format!("cannot write JSON: {e}"))))?
    } else {
        log_table(&rows)
    };
    // A cached output would drop the warnings: only clean histories are cached.
    if let Some(key) = key.filter(|_| unreadable.is_empty()) {
        key.store(&repo, &text);
    }
    super::outln!("{text}");
    Ok(())
}

/// The rows as a table for people.
fn log_table(rows: &[exp::compare::log::LogRow]) -> String {
    if rows.is_empty() {
        return "No commit in that history changed a run record.".into();
    }
    let params = varying_params(rows);
    let metrics: std::collections::BTreeSet<&String> =
        rows.iter().flat_map(|r| r.metrics.keys()).collect();
    let mut header: Vec<String> = ["commit", "run tag", "branch", "date", "experiment"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    header.extend(params.iter().cloned());
    header.extend(metrics.iter().map(|m| m.to_string()));
    let mut table = report::table(header);
    for r in rows {
        let mut row = vec![
            short(&r.commit).to_string(),
            // A commit that copied a run (merge, apply, pick) says whose run it is.
            r.copy_of.clone().unwrap_or_else(|| r.tags.join(" ")),
            r.branch.clone(),
            r.date.get(..10).unwrap_or(&r.date).to_string(),
            r.experiment.clone(),
        ];
        row.extend(params.iter().map(|p| {
            r.params
                .get(p)
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into())
        }));
        row.extend(metrics.iter().map(|m| {
            r.metrics
                .get(*m)
                .map(|v| metric(*v))
                .unwrap_or_else(|| "-".into())
        }));
        if let Some(why) = &r.unreadable {
            // The last cell says why; the others are empty.
            if let Some(last) = row.last_mut() {
                *last = format!("unreadable record: {why}");
            }
        }
        table.add_row(row);
    }
    table.to_string()
}

pub(super) fn execute_show(args: ShowArgs) -> Result<(), Error> {
    exp::compare::fast_reads();
    let repo = exp::git::open(&super::cwd()?)?;
    let rows = show(&repo, &args.rev, args.all_branches)?;
    if args.json {
        return super::emit_json(&rows);
    }
    if rows.is_empty() {
        super::outln!("No branch holds a run record.");
        return Ok(());
    }
    let metrics: std::collections::BTreeSet<&String> =
        rows.iter().flat_map(|r| r.metrics.keys()).collect();
    // As `dvc exp show`: the parameters that differ between the rows shown.
    let params = exp::compare::log::varying(
        rows.iter()
            .filter(|r| r.unreadable.is_none())
            .map(|r| (r.experiment.as_str(), &r.params)),
    );
    let mut header: Vec<String> = Vec::new();
    if args.all_branches {
        header.push("at".into());
    }
    header.extend(
        ["experiment", "run", "recorded on", "started"]
            .iter()
            .map(|s| s.to_string()),
    );
    header.extend(params.iter().cloned());
    header.extend(metrics.iter().map(|m| m.to_string()));
    header.push("model oid".into());
    let mut table = report::table(header);
    for r in &rows {
        let mut row = Vec::new();
        if args.all_branches {
            row.push(r.at.clone());
        }
        row.extend([
            r.experiment.clone(),
            r.tag.clone().unwrap_or_else(|| r.run.clone()),
            r.branch.clone(),
            r.started.clone(),
        ]);
        row.extend(params.iter().map(|p| {
            r.params
                .get(p)
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into())
        }));
        row.extend(metrics.iter().map(|m| {
            r.metrics
                .get(*m)
                .map(|v| metric(*v))
                .unwrap_or_else(|| "-".into())
        }));
        row.push(match &r.unreadable {
            Some(why) => format!("unreadable record: {why}"),
            None => exp::report::prefix(&r.model_oid, 12).to_string(),
        });
        table.add_row(row);
    }
    super::outln!("{table}");
    let unreadable: Vec<&exp::compare::log::ShowRow> =
        rows.iter().filter(|r| r.unreadable.is_some()).collect();
    for r in &unreadable {
        super::warn(&format!(
            "{} at {} cannot be read ({})",
            exp::record::layout::run_file(&r.experiment, exp::record::layout::RECORD_FILE),
            r.at,
            r.unreadable.as_deref().unwrap_or_default()
        ));
    }
    if !unreadable.is_empty() && unreadable.len() == rows.len() {
        return Err(super::UsageError("no record there can be read".into()).into());
    }
    Ok(())
}

/// Arguments of `exp ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

/// One experiment of `exp ls`: its spec and its latest run on each branch that has one.
#[derive(Debug, serde::Serialize)]
struct Listed {
    experiment: String,
    spec: String,
    runs: Vec<exp::compare::log::ShowRow>,
}

/// `exp ls`: the experiments of the work tree (`experiments/*.toml`) and, per local branch, the
/// run its tip holds.
pub(super) fn execute_ls(args: LsArgs) -> Result<(), Error> {
    exp::compare::fast_reads();
    let repo = exp::git::open(&super::cwd()?)?;
    let dir = exp::git::workdir(&repo).join(exp::record::layout::EXPERIMENTS_DIR);
    let names = exp::spec::experiment_names(&dir)
        .map_err(|e| super::UsageError(format!("cannot list {}: {e}", dir.display())))?;
    let rows = show(&repo, "HEAD", true)?;
    let listed: Vec<Listed> = names
        .into_iter()
        .map(|name| Listed {
            spec: exp::record::layout::spec_path(&name),
            runs: rows
                .iter()
                .filter(|r| r.experiment == name && r.unreadable.is_none())
                .cloned()
                .collect(),
            experiment: name,
        })
        .collect();
    if args.json {
        return super::emit_json(&listed);
    }
    if listed.is_empty() {
        super::outln!(
            "No experiment in {}: write experiments/NAME.toml (docs/spec.md)",
            dir.display()
        );
        return Ok(());
    }
    let metrics: std::collections::BTreeSet<&String> = listed
        .iter()
        .flat_map(|l| l.runs.iter().flat_map(|r| r.metrics.keys()))
        .collect();
    let mut header: Vec<String> = ["experiment", "branch", "run at its tip", "started"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    header.extend(metrics.iter().map(|m| m.to_string()));
    let mut table = report::table(header);
    for l in &listed {
        if l.runs.is_empty() {
            let mut row = vec![
                l.experiment.clone(),
                "-".into(),
                "no run yet".into(),
                "-".into(),
            ];
            row.extend(metrics.iter().map(|_| "-".to_string()));
            table.add_row(row);
        }
        for r in &l.runs {
            let mut row = vec![
                l.experiment.clone(),
                r.at.clone(),
                r.tag.clone().unwrap_or_else(|| r.run.clone()),
                r.started.clone(),
            ];
            row.extend(metrics.iter().map(|m| {
                r.metrics
                    .get(*m)
                    .map(|v| metric(*v))
                    .unwrap_or_else(|| "-".into())
            }));
            table.add_row(row);
        }
    }
    super::outln!("{table}");
    Ok(())
}
