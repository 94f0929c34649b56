//! `exp sweep`: many runs of one experiment, on local cores or on Slurm.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;

use clap::{Args, Subcommand, ValueEnum};

use exp::sweep::local::{run_local, Ended, LocalOptions, SweepObserver};
use exp::sweep::slurm::{self, SlurmOptions};
use exp::sweep::state::{SweepDir, SweepFile};
use exp::sweep::{self as sweeps, SweepFlags, TrialPhase};
use exp::train::StopFlag;
use exp::Error;

/// The long help of `exp sweep`.
pub(super) const SWEEP_LONG_ABOUT: &str = "Run many trials of experiment NAME at once: the grid, \
random samples and seeds of [sweep] in experiments/NAME.toml (or --grid/--random/--samples/--seeds, \
which replace that table). trials = grid × samples × seeds; every value is checked against the \
spec schema before anything starts (--dry-run lists the trials).

Each trial is an ordinary run, trained without touching your work tree, index or HEAD (keep \
working meanwhile), committed on the sweep's own branch feature/sweep-NAME-<id> with a run tag \
and a [sweep] table in its record. A trial is never recorded twice: a retry, requeue or resume of \
a recorded trial does nothing.

Executors: local (--jobs trials at once, CPU threads divided between them, --gpus assigned \
round-robin) or slurm (one job array, %jobs at once, submitted with sbatch; the repository must be \
on a file system the nodes share). State and logs: .git/exp/sweeps/<id>/.

Then: exp sweep status [ID], exp sweep resume ID, exp sweep show ID, exp sweep pick ID.
Exit: 0 every trial recorded (or submitted), 1 a trial failed, 2 a bad definition, 130 interrupted.";

/// Arguments of `exp sweep`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SweepArgs {
    /// What to do with an existing sweep.
    #[command(subcommand)]
    pub action: Option<SweepAction>,
    /// Start a sweep.
    #[command(flatten)]
    pub start: StartArgs,
}

/// Where trials run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Executor {
    /// Child processes on this machine.
    Local,
    /// A Slurm job array.
    Slurm,
}

/// Starting a sweep.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// The experiment: experiments/NAME.toml.
    #[arg(value_name = "NAME", required = true)]
    pub experiment: Option<String>,
    /// Override a spec key in every trial (as exp run --set).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Grid values of a key, as a TOML array: --grid 'train.lr=[1e-3, 3e-3]' (repeatable).
    #[arg(long, value_name = "KEY=[VALUES]")]
    pub grid: Vec<String>,
    /// A key drawn at random: --random 'train.momentum={ uniform = [0.8, 0.99] }' (repeatable;
    /// uniform, log_uniform, int_uniform).
    #[arg(long, value_name = "KEY=DISTRIBUTION")]
    pub random: Vec<String>,
    /// Random draws, each crossed with the grid.
    #[arg(long, value_name = "N")]
    pub samples: Option<usize>,
    /// Seeds crossed with everything, as a TOML array: --seeds '[1, 2, 3]'.
    #[arg(long, value_name = "[SEEDS]")]
    pub seeds: Option<String>,
    /// Trials at once (the job array's %N on Slurm).
    #[arg(long, short, default_value_t = 1, value_name = "N")]
    pub jobs: usize,
    /// Where the trials run.
    #[arg(long, value_enum, default_value_t = Executor::Local)]
    pub executor: Executor,
    /// GPUs to assign round-robin to local trials: --gpus 0,1.
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    pub gpus: Vec<u32>,
    /// List the trials and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Slurm: wait for the job array to finish.
    #[arg(long)]
    pub wait: bool,
    /// Slurm partition (else [sweep.slurm] partition).
    #[arg(long)]
    pub partition: Option<String>,
    /// Slurm time limit per trial, e.g. 00:30:00.
    #[arg(long)]
    pub time: Option<String>,
    /// Slurm CPUs per trial.
    #[arg(long, value_name = "N")]
    pub cpus_per_task: Option<u32>,
    /// Slurm generic resources per trial, e.g. gpu:1.
    #[arg(long)]
    pub gres: Option<String>,
    /// A further #SBATCH line, e.g. --sbatch=--mem=8G (repeatable).
    #[arg(long, value_name = "OPTION", allow_hyphen_values = true)]
    pub sbatch: Vec<String>,
    /// No progress on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `exp sweep status | resume | show | trial`.
#[derive(Debug, Subcommand)]
pub enum SweepAction {
    /// Every trial of a sweep (the newest when ID is omitted): values, state, metric, log.
    Status {
        /// The sweep's id.
        id: Option<String>,
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run (or submit again) exactly the trials of sweep ID without a record.
    Resume {
        /// The sweep's id.
        id: String,
        /// Trials at once (default: as the sweep started).
        #[arg(long, short, value_name = "N")]
        jobs: Option<usize>,
        /// Slurm: wait for the job array to finish.
        #[arg(long)]
        wait: bool,
        /// No progress on stderr.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Every trial's metrics, and per combination of swept values the mean ± std over seeds.
    Show {
        /// The sweep's id.
        id: String,
        /// Sort the trials by this metric, best first.
        #[arg(long, value_name = "METRIC")]
        sort: Option<String>,
        /// Machine-readable JSON.
        #[arg(long, conflicts_with = "md")]
        json: bool,
        /// A Markdown table.
        #[arg(long)]
        md: bool,
    },
    /// Put a trial's record and weights at the sweep branch's tip (one commit), so that
    /// `exp flow finish` gates that model: TRIAL by index, or --best METRIC.
    Pick {
        /// The sweep's id.
        id: String,
        /// The trial's index.
        #[arg(required_unless_present = "best", conflicts_with = "best")]
        trial: Option<usize>,
        /// The recorded trial best on this metric (accuracy, macro_f1: highest; loss: lowest).
        #[arg(long, value_name = "METRIC")]
        best: Option<String>,
    },
    /// Run one trial (what the executors run).
    #[command(hide = true)]
    Trial {
        /// The sweep's id.
        id: String,
        /// The trial's index.
        index: usize,
    },
}

pub(super) fn execute(args: SweepArgs) -> Result<(), Error> {
    match args.action {
        None => start(args.start),
        Some(SweepAction::Trial { id, index }) => trial(&id, index),
        Some(SweepAction::Status { id, json }) => status(id.as_deref(), json),
        Some(SweepAction::Resume {
            id,
            jobs,
            wait,
            quiet,
        }) => resume(&id, jobs, wait, quiet),
        Some(SweepAction::Show { id, sort, json, md }) => show(&id, sort.as_deref(), json, md),
        Some(SweepAction::Pick { id, trial, best }) => pick(&id, trial, best),
    }
}

fn start(args: StartArgs) -> Result<(), Error> {
    let stop = StopFlag::install().map_err(exp::run::RunError::Signals)?;
    let cwd = super::cwd()?;
    let repo = exp::git::open(&cwd)?;
    let experiment = args.experiment.clone().unwrap_or_default();
    exp::spec::check_name(&experiment)?;
    if sweeps::SUBCOMMANDS.contains(&experiment.as_str()) {
        return Err(sweeps::SweepError::ReservedName(experiment).into());
    }
    let workdir = exp::git::workdir(&repo).to_path_buf();
    let spec_path = exp::record::layout::spec_file_in(&workdir, &experiment);
    let text =
        std::fs::read_to_string(&spec_path).map_err(|source| exp::spec::SpecError::Read {
            path: spec_path.clone(),
            source,
        })?;
    let flags = SweepFlags {
        grid: args.grid.clone(),
        random: args.random.clone(),
        samples: args.samples,
        seeds: args.seeds.clone(),
    };
    let planned = sweeps::plan(&spec_path, &text, &args.overrides, &flags)?;
    if args.dry_run {
        super::outln!(
            "exp sweep {experiment}: {} trials (dry run: nothing started)",
            planned.trials.len()
        );
        let mut table = exp::report::table(vec!["trial".into(), "values".into()]);
        for t in &planned.trials {
            table.add_row(vec![t.index.to_string(), t.describe()]);
        }
        super::outln!("{table}");
        return Ok(());
    }
    if args.jobs == 0 {
        return Err(exp::error::UsageError("--jobs must be at least 1".into()).into());
    }
    let root = exp::data::data_root(&cwd)?;
    let root = std::fs::canonicalize(&root).unwrap_or(root);
    let id = sweeps::new_sweep_id(&experiment, &text);
    let fork = sweeps::fork_point(&repo)?;
    let executor = match args.executor {
        Executor::Local => "local",
        Executor::Slurm => "slurm",
    };
    let mut sweep = sweeps::create(
        &repo,
        &id,
        &experiment,
        &text,
        &args.overrides,
        &planned,
        fork,
        executor,
        args.jobs,
        &args.gpus,
        &root,
    )?;
    eprintln!(
        "exp sweep {experiment}: sweep {id}, {} trials on {} ({executor}, {} at once)",
        sweep.trials.len(),
        sweep.branch,
        args.jobs
    );
    let indices: Vec<usize> = sweep.trials.iter().map(|t| t.index).collect();
    match args.executor {
        Executor::Local => {
            let ended = run_here(&repo, &sweep, &indices, args.jobs, &stop, args.quiet)?;
            finish_local(&repo, &sweep, &ended, &stop)
        }
        Executor::Slurm => {
            let mut resources = planned.table.slurm.clone();
            resources.partition = args.partition.or(resources.partition);
            resources.time = args.time.or(resources.time);
            resources.cpus_per_task = args.cpus_per_task.or(resources.cpus_per_task);
            resources.gres = args.gres.or(resources.gres);
            resources.extra.extend(args.sbatch);
            submit(&repo, &mut sweep, &indices, args.jobs, resources, args.wait)
        }
    }
}

/// Runs `indices` here and prints what happened.
fn run_here(
    repo: &git2::Repository,
    sweep: &SweepFile,
    indices: &[usize],
    jobs: usize,
    stop: &StopFlag,
    quiet: bool,
) -> Result<Vec<Ended>, Error> {
    let dir = SweepDir::new(repo.commondir(), &sweep.id);
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let options = LocalOptions {
        exe: std::env::current_exe()
            .map_err(|e| exp::error::UsageError(format!("cannot find this exp binary: {e}")))?,
        dir: exp::git::workdir(repo).to_path_buf(),
        jobs,
        gpus: sweep.gpus.clone(),
        threads,
    };
    let mut observer = Observer {
        repo,
        sweep,
        total: indices.len(),
        jobs,
        done: 0,
        failed: 0,
        running: 0,
        seconds: 0.0,
        best: None,
        show: !quiet && std::io::stderr().is_terminal(),
    };
    Ok(
        run_local(sweep, &dir, indices, &options, stop, &mut observer)
            .map_err(sweeps::SweepError::from)?,
    )
}

/// Progress lines on stderr (a terminal only): done / running / failed, best so far, ETA.
struct Observer<'a> {
    repo: &'a git2::Repository,
    sweep: &'a SweepFile,
    total: usize,
    jobs: usize,
    done: usize,
    failed: usize,
    running: usize,
    seconds: f64,
    best: Option<f64>,
    show: bool,
}

impl SweepObserver for Observer<'_> {
    fn started(&mut self, _index: usize, _log: &Path) {
        self.running += 1;
    }

    fn ended(&mut self, ended: &Ended) {
        self.running -= 1;
        if ended.code == Some(0) {
            self.done += 1;
            self.seconds += ended.seconds;
            if let Ok(recorded) = sweeps::recorded_trials(self.repo, self.sweep) {
                let id = &self.sweep.trials[ended.index].id;
                if let Some(accuracy) = recorded
                    .get(id)
                    .and_then(|c| accuracy_at(self.repo, *c, &self.sweep.experiment))
                {
                    self.best = Some(self.best.map_or(accuracy, |b: f64| b.max(accuracy)));
                }
            }
        } else {
            self.failed += 1;
        }
        if !self.show {
            return;
        }
        let left = self.total - self.done - self.failed;
        let eta = if self.done > 0 {
            format!(
                ", about {:.0} s left",
                self.seconds / self.done as f64 * left as f64 / self.jobs.max(1) as f64
            )
        } else {
            String::new()
        };
        eprintln!(
            "trial {} {} in {:.1} s: {}/{} done, {} running, {} failed{}{eta}",
            ended.index,
            if ended.code == Some(0) {
                "ended"
            } else {
                "FAILED"
            },
            ended.seconds,
            self.done,
            self.total,
            self.running,
            self.failed,
            self.best
                .map(|b| format!(", best accuracy {b:.4}"))
                .unwrap_or_default(),
        );
    }
}

fn accuracy_at(repo: &git2::Repository, commit: git2::Oid, experiment: &str) -> Option<f64> {
    let tree = repo.find_commit(commit).ok()?.tree().ok()?;
    let path = exp::record::layout::run_file(experiment, exp::record::layout::RECORD_FILE);
    let entry = tree.get_path(Path::new(&path)).ok()?;
    let blob = repo.find_blob(entry.id()).ok()?;
    let record =
        exp::record::RunRecord::from_toml(std::str::from_utf8(blob.content()).ok()?).ok()?;
    record.metrics.values.get("accuracy").copied()
}

/// After local trials: the status table, and the exit code (1 a trial failed, 130/143 stopped).
fn finish_local(
    repo: &git2::Repository,
    sweep: &SweepFile,
    ended: &[Ended],
    stop: &StopFlag,
) -> Result<(), Error> {
    print_status(repo, sweep)?;
    stop.check().map_err(exp::run::RunError::from)?;
    let failed: Vec<String> = ended
        .iter()
        .filter(|e| e.code != Some(0))
        .map(|e| {
            format!(
                "trial {} exited {} (log {})",
                e.index,
                e.code.map_or("by a signal".into(), |c| c.to_string()),
                SweepDir::new(repo.commondir(), &sweep.id)
                    .log(e.index)
                    .display()
            )
        })
        .collect();
    if failed.is_empty() {
        super::outln!(
            "exp sweep: every trial is recorded on {}; `exp sweep show {}` compares them",
            sweep.branch,
            sweep.id
        );
        return Ok(());
    }
    Err(exp::error::Verdict {
        message: format!(
            "exp sweep {}: {} of {} trials failed:\n  {}",
            sweep.id,
            failed.len(),
            ended.len(),
            failed.join("\n  ")
        ),
        hint: format!(
            "read the logs; `exp sweep resume {}` runs the trials without a record again",
            sweep.id
        ),
        code: exp::ExitCode::Negative,
    }
    .into())
}

fn submit(
    repo: &git2::Repository,
    sweep: &mut SweepFile,
    indices: &[usize],
    jobs: usize,
    resources: exp::spec::sweep::SlurmSpec,
    wait: bool,
) -> Result<(), Error> {
    let dir = SweepDir::new(repo.commondir(), &sweep.id);
    let exe = std::env::current_exe()
        .map_err(|e| exp::error::UsageError(format!("cannot find this exp binary: {e}")))?;
    let options = SlurmOptions {
        exe: std::fs::canonicalize(&exe).unwrap_or(exe),
        dir: exp::git::workdir(repo).to_path_buf(),
        parallel: jobs,
        resources,
        wait: false,
    };
    let job = slurm::submit(sweep, &dir, indices, &options).map_err(sweeps::SweepError::from)?;
    sweep.slurm_jobs.push(job.clone());
    dir.write(sweep).map_err(sweeps::SweepError::from)?;
    eprintln!(
        "exp sweep: submitted Slurm job array {job} ({} trials, {jobs} at once); `exp sweep status {}` follows it",
        indices.len(),
        sweep.id
    );
    if wait {
        wait_for(repo, sweep)?;
        print_status(repo, sweep)?;
        let statuses = sweeps::status(repo, sweep)?;
        let failed = statuses
            .iter()
            .filter(|s| s.state != TrialPhase::Completed)
            .count();
        if failed > 0 {
            return Err(exp::error::Verdict {
                message: format!("exp sweep {}: {failed} trials have no record", sweep.id),
                hint: format!("`exp sweep resume {}` submits them again", sweep.id),
                code: exp::ExitCode::Negative,
            }
            .into());
        }
    }
    Ok(())
}

/// Polls the scheduler (at most once a second) until no trial is pending or running.
fn wait_for(repo: &git2::Repository, sweep: &SweepFile) -> Result<(), Error> {
    loop {
        let statuses = sweeps::status(repo, sweep)?;
        if statuses
            .iter()
            .all(|s| !matches!(s.state, TrialPhase::Pending | TrialPhase::Running))
        {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn trial(id: &str, index: usize) -> Result<(), Error> {
    let stop = StopFlag::install().map_err(exp::run::RunError::Signals)?;
    let repo = exp::git::open_any(&super::cwd()?)?;
    let mut progress = super::progress::Progress::stderr(true);
    match exp::sweep::trial::run_trial(&repo, id, index, &stop, &mut progress)? {
        exp::run::HeadlessOutcome::Recorded(summary) => {
            super::outln!(
                "trial {index} recorded: {} {} ({})",
                &summary.commit[..10],
                summary.tag,
                exp::run::headline(&summary.record)
            );
        }
        exp::run::HeadlessOutcome::AlreadyRecorded { commit } => {
            super::outln!(
                "trial {index} is already recorded ({}): nothing to do",
                &commit[..10]
            );
        }
    }
    Ok(())
}

fn pick(id: &str, trial: Option<usize>, best: Option<String>) -> Result<(), Error> {
    let repo = exp::git::open_any(&super::cwd()?)?;
    let sweep = load(&repo, Some(id))?;
    let choice = match (trial, best) {
        (Some(index), _) => sweeps::Choice::Trial(index),
        (None, Some(metric)) => sweeps::Choice::Best(metric),
        (None, None) => {
            return Err(exp::error::UsageError("name a TRIAL or --best METRIC".into()).into())
        }
    };
    let picked = sweeps::pick(&repo, &sweep, &choice)?;
    let what = format!(
        "trial {} ({}{})",
        picked.trial.index,
        describe(&picked.trial.values),
        picked
            .trial
            .metrics
            .get("accuracy")
            .map(|a| format!(", accuracy {a:.4}"))
            .unwrap_or_default()
    );
    match picked.commit {
        Some(commit) => super::outln!(
            "picked {what}: its record and weights are at the tip of {} ({}); `exp flow finish {}` gates it",
            sweep.branch,
            exp::report::short(&commit.to_string()),
            sweep.branch
        ),
        None => super::outln!("{what} is already at the tip of {}", sweep.branch),
    }
    Ok(())
}

fn load(repo: &git2::Repository, id: Option<&str>) -> Result<SweepFile, Error> {
    let id = match id {
        Some(id) => id.to_string(),
        None => exp::sweep::state::sweep_ids(repo.commondir())
            .pop()
            .ok_or_else(|| {
                exp::error::UsageError(
                    "no sweep in this repository yet (exp sweep NAME starts one)".into(),
                )
            })?,
    };
    Ok(SweepDir::new(repo.commondir(), &id)
        .read()
        .map_err(sweeps::SweepError::from)?)
}

fn status(id: Option<&str>, json: bool) -> Result<(), Error> {
    let repo = exp::git::open_any(&super::cwd()?)?;
    let sweep = load(&repo, id)?;
    if json {
        return super::emit_json(&sweeps::status(&repo, &sweep)?);
    }
    print_status(&repo, &sweep)
}

fn print_status(repo: &git2::Repository, sweep: &SweepFile) -> Result<(), Error> {
    let statuses = sweeps::status(repo, sweep)?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &statuses {
        *counts.entry(s.state.as_str()).or_default() += 1;
    }
    super::outln!(
        "sweep {} of {} on {} ({}): {}",
        sweep.id,
        sweep.experiment,
        sweep.branch,
        sweep.executor,
        counts
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut table = exp::report::table(
        ["trial", "values", "state", "accuracy", "run tag", "log"]
            .map(String::from)
            .to_vec(),
    );
    for s in &statuses {
        table.add_row(vec![
            s.index.to_string(),
            describe(&s.values),
            match &s.message {
                Some(m) if s.state != TrialPhase::Completed => {
                    format!("{} ({m})", s.state.as_str())
                }
                _ => s.state.as_str().to_string(),
            },
            s.metrics
                .get("accuracy")
                .map_or("-".into(), |a| format!("{a:.4}")),
            s.tag.clone().unwrap_or_else(|| "-".into()),
            s.log.clone(),
        ]);
    }
    super::outln!("{table}");
    Ok(())
}

fn describe(values: &BTreeMap<String, toml::Value>) -> String {
    values
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn resume(id: &str, jobs: Option<usize>, wait: bool, quiet: bool) -> Result<(), Error> {
    let stop = StopFlag::install().map_err(exp::run::RunError::Signals)?;
    let repo = exp::git::open(&super::cwd()?)?;
    let mut sweep = load(&repo, Some(id))?;
    let statuses = sweeps::status(&repo, &sweep)?;
    let missing: Vec<usize> = statuses
        .iter()
        .filter(|s| matches!(s.state, TrialPhase::Failed | TrialPhase::Cancelled))
        .chain(
            // Local trials that never started; Slurm's pending ones are still queued.
            statuses
                .iter()
                .filter(|s| s.state == TrialPhase::Pending && sweep.executor == "local"),
        )
        .map(|s| s.index)
        .collect();
    let jobs = jobs.unwrap_or(sweep.jobs).max(1);
    if missing.is_empty() {
        super::outln!(
            "exp sweep resume {id}: nothing to do (every trial is recorded, queued or running)"
        );
        return Ok(());
    }
    eprintln!(
        "exp sweep resume {id}: {} trials without a record: {}",
        missing.len(),
        missing
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if sweep.executor == "slurm" {
        let resources = toml::from_str::<exp::spec::Spec>(&sweep.spec_text)
            .ok()
            .and_then(|s| s.sweep)
            .map(|s| s.slurm)
            .unwrap_or_default();
        return submit(&repo, &mut sweep, &missing, jobs, resources, wait);
    }
    let ended = run_here(&repo, &sweep, &missing, jobs, &stop, quiet)?;
    finish_local(&repo, &sweep, &ended, &stop)
}

fn show(id: &str, sort: Option<&str>, json: bool, md: bool) -> Result<(), Error> {
    let repo = exp::git::open_any(&super::cwd()?)?;
    let sweep = load(&repo, Some(id))?;
    let mut statuses = sweeps::status(&repo, &sweep)?;
    let metrics: Vec<String> = exp::metric::KNOWN_METRICS
        .iter()
        .map(|m| m.name.to_string())
        .collect();
    if let Some(metric) = sort {
        let known = exp::metric::known(metric).ok_or_else(|| {
            exp::error::UsageError(format!(
                "--sort {metric:?}: not a metric exp knows ({})",
                exp::metric::known_names()
            ))
        })?;
        let key = |s: &sweeps::TrialStatus| s.metrics.get(metric).copied();
        statuses.sort_by(|a, b| match (key(a), key(b)) {
            (Some(x), Some(y)) => match known.direction {
                exp::metric::Direction::Max => y.total_cmp(&x),
                exp::metric::Direction::Min => x.total_cmp(&y),
            },
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.index.cmp(&b.index),
        });
    }
    let groups = sweeps::summary::by_combination(&statuses);
    if json {
        return super::emit_json(&serde_json::json!({
            "sweep": sweep.id,
            "experiment": sweep.experiment,
            "branch": sweep.branch,
            "trials": statuses,
            "combinations": groups,
        }));
    }
    let mut trial_header = vec!["trial".to_string(), "values".into(), "state".into()];
    trial_header.extend(metrics.iter().cloned());
    let trial_rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|s| {
            let mut row = vec![
                s.index.to_string(),
                describe(&s.values),
                s.state.as_str().into(),
            ];
            row.extend(
                metrics
                    .iter()
                    .map(|m| s.metrics.get(m).map_or("-".into(), |v| format!("{v:.4}"))),
            );
            row
        })
        .collect();
    let mut combo_header = vec!["values (seeds pooled)".to_string(), "seeds".into()];
    combo_header.extend(metrics.iter().map(|m| format!("{m} mean ± std")));
    let combo_rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            let mut row = vec![describe(&g.values), g.trials.to_string()];
            row.extend(metrics.iter().map(|m| {
                g.metrics
                    .get(m)
                    .map_or("-".into(), |s| format!("{:.4} ± {:.4}", s.mean, s.std))
            }));
            row
        })
        .collect();
    if md {
        super::outln!(
            "{}",
            exp::report::markdown_table(&trial_header, &trial_rows)
        );
        super::outln!(
            "{}",
            exp::report::markdown_table(&combo_header, &combo_rows)
        );
        return Ok(());
    }
    super::outln!(
        "sweep {} of {} on {}",
        sweep.id,
        sweep.experiment,
        sweep.branch
    );
    for (header, rows) in [(trial_header, trial_rows), (combo_header, combo_rows)] {
        let mut table = exp::report::table(header);
        for row in rows {
            table.add_row(row);
        }
        super::outln!("{table}");
    }
    Ok(())
}
