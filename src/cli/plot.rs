//! `exp plot`.

use std::path::PathBuf;

use clap::Args;

use exp::compare::log::{log, varying_params, LogQuery, LogRow};
use exp::compare::resolve;
use exp::report::curves::{local_branches, training_curves};
use exp::report::page::{self, Cell, CurvePoint, RunPoint, RunsTable, Section};
use exp::report::{metric, short};
use exp::Error;

/// `exp plot --sweep ID`: per swept key (the seed pooled), the metric of every recorded trial and
/// its mean per value.
fn sweep_view(repo: &git2::Repository, id: &str, args: &PlotArgs) -> Result<(), Error> {
    use exp::sweep::{self as sweeps, TrialPhase};
    let usage = |m: String| Error::Usage(super::UsageError(m));
    let sweep = exp::sweep::state::SweepDir::new(repo.commondir(), id)
        .read()
        .map_err(sweeps::SweepError::from)?;
    exp::metric::known(&args.metric).ok_or_else(|| {
        usage(format!(
            "--metric {:?}: not a metric exp knows ({})",
            args.metric,
            exp::metric::known_names()
        ))
    })?;
    let statuses = sweeps::status(repo, &sweep)?;
    let recorded: Vec<&sweeps::TrialStatus> = statuses
        .iter()
        .filter(|s| s.state == TrialPhase::Completed)
        .collect();
    if recorded.is_empty() {
        return Err(sweeps::SweepError::NothingRecorded(id.to_string()).into());
    }
    let keys: std::collections::BTreeSet<&String> = sweep
        .trials
        .iter()
        .flat_map(|t| t.values.keys())
        .filter(|k| *k != exp::spec::sweep::SEED_KEY)
        .collect();
    let mut sections = Vec::new();
    // A sweep of seeds alone: one x position, the spread over seeds.
    let keys: Vec<String> = if keys.is_empty() {
        vec!["(seeds only)".to_string()]
    } else {
        keys.into_iter().cloned().collect()
    };
    for key in keys {
        let trials = &recorded;
        let mut ticks: Vec<String> = Vec::new();
        for t in sweep.trials.iter() {
            let tick = t
                .values
                .get(&key)
                .map_or_else(|| "all".to_string(), |v| v.to_string());
            if !ticks.contains(&tick) {
                ticks.push(tick);
            }
        }
        let x_of = |s: &sweeps::TrialStatus| {
            let tick = s
                .values
                .get(&key)
                .map_or_else(|| "all".to_string(), |v| v.to_string());
            ticks.iter().position(|t| *t == tick).unwrap_or(0) as f64
        };
        let points: Vec<(String, f64, String)> = trials
            .iter()
            .filter_map(|s| {
                let tick = ticks[x_of(s) as usize].clone();
                let name = s
                    .tag
                    .clone()
                    .unwrap_or_else(|| format!("trial {}", s.index));
                Some((tick, *s.metrics.get(&args.metric)?, name))
            })
            .collect();
        let title = format!(
            "sweep {id} of {}: {} against {key}",
            sweep.experiment, args.metric
        );
        sections.push(Section {
            charts: vec![page::sweep(&title, &key, &args.metric, &ticks, &points)],
            title,
            notes: vec![format!(
                "every recorded trial is a point (hover for its run tag); the line is the mean over the trials of each value ({} recorded of {})",
                recorded.len(),
                sweep.trials.len()
            )],
        });
    }
    let report = page::render(&format!("exp sweep {id}"), None, &sections);
    let out = report_path(repo, args)?;
    std::fs::write(&out, report)
        .map_err(|e| usage(format!("cannot write {}: {e}", out.display())))?;
    super::outln!(
        "Wrote {} (sweep {id}: {} recorded trials, {} chart(s))",
        out.display(),
        recorded.len(),
        sections.len()
    );
    Ok(())
}

/// The long help of `exp plot`.
pub(super) const PLOT_LONG_ABOUT: &str =
    "Write a self-contained HTML report with interactive charts, from Git objects alone:
  - a runs table: run tag, branch, date, experiment, the parameters that differ, metrics (click a \
column to sort);
  - a metric across the runs of each branch, every run a labelled point (hover for its tag, \
parameters and metrics; click a legend entry to hide or show a branch; drag to pan, scroll to zoom);
  - the training curves (eval accuracy and training loss per epoch, from history.csv) of the \
chosen runs (--run; default: the latest 12 runs);
  - a run's confusion matrix, coloured by the share of each true class, counts written on it;
  - with --sweep ID, a sweep's view instead: the metric against each swept key, every trial a \
point, the mean over seeds a line.
The charts are Vega-Lite, drawn by the libraries embedded in the file: open it in any browser, \
offline; it needs nothing else.";

/// Arguments of `exp plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Where to write the report (default: exp-out/exp-report.html at the work tree's root,
    /// a folder listed in .git/info/exclude).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only this experiment (default: every experiment with runs).
    #[arg(long, short)]
    pub experiment: Option<String>,
    /// The metric to chart across runs.
    #[arg(long, default_value = "accuracy")]
    pub metric: String,
    /// Branches to chart (repeatable; default: every local branch with runs).
    #[arg(long = "branch", value_name = "BRANCH")]
    pub branches: Vec<String>,
    /// Runs whose training curves to overlay (revisions or run tags; default: the latest 12
    /// runs of each experiment on the charted branches).
    #[arg(long = "run", value_name = "REV")]
    pub runs: Vec<String>,
    /// The revision whose confusion matrix to draw.
    #[arg(long, default_value = "HEAD")]
    pub confusion: String,
    /// A sweep's view instead: the metric against each swept key, every trial a point, the mean
    /// over seeds a line.
    #[arg(long, value_name = "ID")]
    pub sweep: Option<String>,
}

/// `--out`, else exp-out/exp-report.html.
fn report_path(repo: &git2::Repository, args: &PlotArgs) -> Result<PathBuf, Error> {
    Ok(match &args.out {
        Some(out) => out.clone(),
        None => exp::git::output_dir(repo, &super::cwd()?)?.join("exp-report.html"),
    })
}

/// How many runs' training curves are drawn when `--run` does not choose.
const DEFAULT_CURVES: usize = 12;

/// A row's name in the report: its run tag, else its short commit.
fn run_name(r: &LogRow) -> String {
    r.tags
        .first()
        .cloned()
        .unwrap_or_else(|| short(&r.commit).to_string())
}

/// `name=value` pairs, space separated.
fn pairs<'a>(items: impl Iterator<Item = (&'a String, String)>) -> String {
    items
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn execute(args: PlotArgs) -> Result<(), Error> {
    exp::compare::fast_reads();
    let repo = exp::git::open(&super::cwd()?)?;
    if let Some(id) = &args.sweep {
        return sweep_view(&repo, id, &args);
    }
    if exp::metric::known(&args.metric).is_none() {
        return Err(super::UsageError(format!(
            "--metric {:?}: not a metric exp knows ({})",
            args.metric,
            exp::metric::known_names()
        ))
        .into());
    }
    let branches: Vec<String> = if args.branches.is_empty() {
        local_branches(&repo)?
    } else {
        args.branches.clone()
    };

    // Runs per branch (merges and applies copy a run: left out), per experiment.
    let mut per_branch: Vec<(String, Vec<LogRow>)> = Vec::new();
    for branch in &branches {
        let rows = log(
            &repo,
            &LogQuery {
                range: Some(branch.clone()),
                experiment: args.experiment.clone(),
                ..Default::default()
            },
        )?;
        let runs = rows
            .into_iter()
            .filter(|r| r.copy_of.is_none() && r.unreadable.is_none())
            .collect();
        per_branch.push((branch.clone(), runs));
    }
    // Every run once (branches share history), oldest first.
    let mut runs: Vec<LogRow> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (_, rows) in &per_branch {
        for r in rows {
            if seen.insert((r.commit.clone(), r.experiment.clone())) {
                runs.push(r.clone());
            }
        }
    }
    runs.sort_by(|a, b| a.date.cmp(&b.date));
    let mut experiments: Vec<String> = runs.iter().map(|r| r.experiment.clone()).collect();
    experiments.sort();
    experiments.dedup();
    if experiments.is_empty() {
        return Err(exp::compare::CompareError::NoRecords(branches.join(", ")).into());
    }
    let changed = varying_params(&runs);
    let metrics: std::collections::BTreeSet<String> = runs
        .iter()
        .flat_map(|r| r.metrics.keys().cloned())
        .collect();

    // The runs table.
    let mut columns: Vec<String> = ["run", "branch", "date", "experiment"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    columns.extend(changed.iter().cloned());
    columns.extend(metrics.iter().cloned());
    let table = RunsTable {
        columns,
        rows: runs
            .iter()
            .map(|r| {
                let mut row = vec![
                    Cell::text(run_name(r)),
                    Cell::text(&r.branch),
                    Cell::text(r.date.get(..16).unwrap_or(&r.date).replace('T', " ")),
                    Cell::text(&r.experiment),
                ];
                row.extend(changed.iter().map(|p| {
                    let v = r
                        .params
                        .get(p)
                        .map_or_else(|| "-".into(), |v| v.to_string());
                    match v.parse::<f64>() {
                        Ok(n) => Cell::number(n, v),
                        Err(_) => Cell::text(v),
                    }
                }));
                row.extend(metrics.iter().map(|m| match r.metrics.get(m) {
                    Some(v) => Cell::number(*v, metric(*v)),
                    None => Cell::text("-"),
                }));
                row
            })
            .collect(),
    };

    let mut sections = Vec::new();
    for experiment in &experiments {
        // 1. The metric across runs, one line per branch, every run a labelled point.
        let mut points = Vec::new();
        for (branch, rows) in &per_branch {
            let of_experiment = rows.iter().filter(|r| &r.experiment == experiment);
            for (i, r) in of_experiment
                .filter(|r| r.metrics.contains_key(&args.metric))
                .enumerate()
            {
                points.push(RunPoint {
                    branch: branch.clone(),
                    index: i + 1,
                    run: run_name(r),
                    date: r.date.clone(),
                    value: r.metrics[&args.metric],
                    params: pairs(
                        changed
                            .iter()
                            .filter_map(|p| Some((p, r.params.get(p)?.to_string()))),
                    ),
                    metrics: pairs(r.metrics.iter().map(|(k, v)| (k, metric(*v)))),
                });
            }
        }
        let title = format!("{experiment}: {} across runs", args.metric);
        let mut section = Section {
            title: title.clone(),
            ..Section::default()
        };
        if points.is_empty() {
            section
                .notes
                .push(format!("No run of {experiment} records {}.", args.metric));
        } else {
            section
                .notes
                .push("Each point is a run, numbered per branch; hover it for the run tag, parameters and metrics. Click a legend entry to show only that branch; drag to pan, scroll to zoom.".into());
            section
                .charts
                .push(page::across_runs(&title, &args.metric, &points));
        }
        sections.push(section);

        // 2. Training curves of the chosen runs (default: the latest runs).
        let revs: Vec<String> = if args.runs.is_empty() {
            let of_experiment: Vec<&LogRow> = runs
                .iter()
                .filter(|r| &r.experiment == experiment)
                .collect();
            of_experiment[of_experiment.len().saturating_sub(DEFAULT_CURVES)..]
                .iter()
                .map(|r| r.tags.first().cloned().unwrap_or_else(|| r.commit.clone()))
                .collect()
        } else {
            args.runs.clone()
        };
        let curves = training_curves(&repo, experiment, &revs)?;
        let mut section = Section {
            title: format!("{experiment}: training curves"),
            ..Section::default()
        };
        if curves.is_empty() {
            section
                .notes
                .push("No history.csv in the selected runs.".into());
        } else {
            let points = |value: fn(&exp::record::EpochRecord) -> f64| -> Vec<CurvePoint> {
                curves
                    .iter()
                    .flat_map(|c| {
                        c.rows.iter().map(|h| CurvePoint {
                            run: short_label(&c.label),
                            epoch: h.epoch,
                            value: value(h),
                        })
                    })
                    .collect()
            };
            section.charts.push(page::curves(
                &format!("{experiment}: eval accuracy per epoch"),
                "eval accuracy",
                &points(|h| h.eval_accuracy),
            ));
            section.charts.push(page::curves(
                &format!("{experiment}: training loss per epoch"),
                "train loss",
                &points(|h| h.train_loss),
            ));
        }
        sections.push(section);

        // 3. The confusion matrix at the chosen revision.
        let snapshot = resolve(&repo, &args.confusion)?;
        let blobs = exp::compare::record_blobs(&repo, &snapshot.tree)?;
        if let Some(&blob) = blobs.get(experiment) {
            let title = format!("{experiment}: confusion matrix at {}", args.confusion);
            let mut section = Section {
                title: title.clone(),
                ..Section::default()
            };
            match exp::compare::stored_record(&repo, &snapshot, experiment, blob) {
                Ok(stored) => {
                    section.notes.push("Rows are the true classes, columns the predicted ones; a cell's colour is its share of the true class's examples (errors stay visible), its number the count.".into());
                    section
                        .charts
                        .push(page::confusion(&title, &stored.record.eval.confusion));
                }
                // One unreadable record does not stop the report: the section says why.
                Err(e @ exp::compare::CompareError::CorruptRecord { .. }) => {
                    super::warn(&e.to_string());
                    section.notes.push(e.to_string());
                }
                Err(e) => return Err(e.into()),
            }
            sections.push(section);
        }
    }
    let report = page::render("exp report", Some(&table), &sections);
    let out = report_path(&repo, &args)?;
    std::fs::write(&out, report).map_err(|e| {
        Error::Usage(super::UsageError(format!(
            "cannot write {}: {e}",
            out.display()
        )))
    })?;
    let charted: Vec<&str> = per_branch
        .iter()
        .filter(|(_, rows)| !rows.is_empty())
        .map(|(b, _)| b.as_str())
        .collect();
    super::outln!(
        "Wrote {} ({} runs, {} sections, {} experiment(s), branches with runs: {})",
        out.display(),
        table.rows.len(),
        sections.len(),
        experiments.len(),
        charted.join(", ")
    );
    Ok(())
}

/// A curve's label: a run tag stays whole, a commit is shortened.
fn short_label(label: &str) -> String {
    if label.len() == 40 && label.bytes().all(|b| b.is_ascii_hexdigit()) {
        short(label).to_string()
    } else {
        label.to_string()
    }
}
