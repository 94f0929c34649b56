//! `exp plot`.

use std::path::PathBuf;

use clap::Args;

use exp::compare::log::{log, LogQuery};
use exp::compare::resolve;
use exp::report::curves::{local_branches, training_curves};
use exp::report::plot::{confusion_chart, escape, html, line_chart, Series};
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
        let points: Vec<(f64, f64)> = trials
            .iter()
            .filter_map(|s| Some((x_of(s), *s.metrics.get(&args.metric)?)))
            .collect();
        let means: Vec<(f64, f64)> = (0..ticks.len())
            .filter_map(|i| {
                let ys: Vec<f64> = points
                    .iter()
                    .filter(|(x, _)| *x == i as f64)
                    .map(|(_, y)| *y)
                    .collect();
                (!ys.is_empty()).then(|| (i as f64, ys.iter().sum::<f64>() / ys.len() as f64))
            })
            .collect();
        let title = format!(
            "sweep {id} of {}: {} against {key}",
            sweep.experiment, args.metric
        );
        let svg =
            exp::report::plot::sweep_chart(&title, &key, &args.metric, &ticks, &points, &means)
                .map_err(|e| usage(e.to_string()))?;
        sections.push((title, svg));
    }
    let report = html(&format!("exp sweep {id}"), &sections);
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
pub(super) const PLOT_LONG_ABOUT: &str = "Write a self-contained HTML report with SVG charts, from Git objects alone:
  - a metric across the runs of one or more branches, one line per branch;
  - the training curves (eval accuracy and training loss per epoch, from history.csv) of two or more \
runs overlaid;
  - a run's confusion matrix;
  - with --sweep ID, a sweep's view instead: the metric against each swept key, every trial a \
point, the mean over seeds a line.
Open the file in any browser; it needs nothing else.";

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
    /// Runs whose training curves to overlay (revisions or run tags; default: each branch's tip).
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

pub(super) fn execute(args: PlotArgs) -> Result<(), Error> {
    exp::compare::fast_reads();
    let repo = exp::git::open(&super::cwd()?)?;
    let usage = |m: String| Error::Usage(super::UsageError(m));
    if let Some(id) = &args.sweep {
        return sweep_view(&repo, id, &args);
    }
    let branches: Vec<String> = if args.branches.is_empty() {
        local_branches(&repo)?
    } else {
        args.branches.clone()
    };

    // Runs per branch, per experiment.
    let mut per_branch = Vec::new();
    for branch in &branches {
        let rows = log(
            &repo,
            &LogQuery {
                range: Some(branch.clone()),
                experiment: args.experiment.clone(),
                ..Default::default()
            },
        )?;
        per_branch.push((branch.clone(), rows));
    }
    let mut experiments: Vec<String> = per_branch
        .iter()
        .flat_map(|(_, rows)| rows.iter().map(|r| r.experiment.clone()))
        .collect();
    experiments.sort();
    experiments.dedup();
    if experiments.is_empty() {
        return Err(exp::compare::CompareError::NoRecords(branches.join(", ")).into());
    }

    let mut sections = Vec::new();
    for experiment in &experiments {
        // 1. The metric across runs, one line per branch that has runs.
        let mut series = Vec::new();
        for (branch, rows) in &per_branch {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| &r.experiment == experiment)
                // A merge or apply copies a run: one point per run.
                .filter(|r| r.copy_of.is_none())
                .filter_map(|r| r.metrics.get(&args.metric).copied())
                .enumerate()
                .map(|(i, v)| ((i + 1) as f64, v))
                .collect();
            if !points.is_empty() {
                series.push(Series {
                    label: branch.clone(),
                    points,
                });
            }
        }
        let title = format!("{experiment}: {} across runs", args.metric);
        let body = if series.is_empty() {
            format!(
                "<p class=\"note\">No run of {} records {}.</p>",
                escape(experiment),
                escape(&args.metric)
            )
        } else {
            line_chart(
                &title,
                "run on the branch (oldest first)",
                &args.metric,
                &series,
            )
            .map_err(|e| usage(e.to_string()))?
        };
        sections.push((title, body));

        // 2. Training curves of several runs.
        let revs: Vec<String> = if args.runs.is_empty() {
            per_branch
                .iter()
                .filter(|(_, rows)| rows.iter().any(|r| &r.experiment == experiment))
                .map(|(b, _)| b.clone())
                .collect()
        } else {
            args.runs.clone()
        };
        let curves = training_curves(&repo, experiment, &revs)?;
        let accuracy: Vec<Series> = curves
            .iter()
            .map(|c| Series {
                label: c.label.clone(),
                points: c
                    .rows
                    .iter()
                    .map(|h| (h.epoch as f64, h.eval_accuracy))
                    .collect(),
            })
            .collect();
        let loss: Vec<Series> = curves
            .iter()
            .map(|c| Series {
                label: c.label.clone(),
                points: c
                    .rows
                    .iter()
                    .map(|h| (h.epoch as f64, h.train_loss))
                    .collect(),
            })
            .collect();
        let title = format!("{experiment}: training curves");
        let body = if accuracy.is_empty() {
            "<p class=\"note\">No history.csv in the selected runs.</p>".to_string()
        } else {
            let a = line_chart(
                &format!("{experiment}: eval accuracy per epoch"),
                "epoch",
                "eval accuracy",
                &accuracy,
            )
            .map_err(|e| usage(e.to_string()))?;
            let l = line_chart(
                &format!("{experiment}: training loss per epoch"),
                "epoch",
                "train loss",
                &loss,
            )
            .map_err(|e| usage(e.to_string()))?;
            format!("{a}\n{l}")
        };
        sections.push((title, body));

        // 3. The confusion matrix at the chosen revision.
        let snapshot = resolve(&repo, &args.confusion)?;
        let blobs = exp::compare::record_blobs(&repo, &snapshot.tree)?;
        if let Some(&blob) = blobs.get(experiment) {
            let title = format!("{experiment}: confusion matrix at {}", args.confusion);
            match exp::compare::stored_record(&repo, &snapshot, experiment, blob) {
                Ok(stored) => {
                    let svg = confusion_chart(&title, &stored.record.eval.confusion)
                        .map_err(|e| usage(e.to_string()))?;
                    sections.push((title, svg));
                }
                // One unreadable record does not stop the report: the section says why.
                Err(e @ exp::compare::CompareError::CorruptRecord { .. }) => {
                    super::warn(&e.to_string());
                    sections.push((
                        title,
                        format!("<p class=\"note\">{}</p>", escape(&e.to_string())),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let report = html("exp report", &sections);
    let out = report_path(&repo, &args)?;
    std::fs::write(&out, report)
        .map_err(|e| usage(format!("cannot write {}: {e}", out.display())))?;
    super::outln!(
        "Wrote {} ({} sections, {} experiment(s), branches: {})",
        out.display(),
        sections.len(),
        experiments.len(),
        branches.join(", ")
    );
    Ok(())
}
