//! `exp run`.

use clap::Args;

use exp::run::{run, RunOptions};
use exp::train::StopFlag;
use exp::{run::RunError, Error};

/// The long help of `exp run`.
const RUN_LONG_ABOUT: &str =
    "Train experiment NAME (experiments/NAME.toml) and record the run in Git.

Steps, in this order:
  1. Resolve the spec: the file plus every --set override, validated against the schema. An \
unknown key, a wrong type or a missing file stops here (exit 2), naming key, file and line.
  2. Read the data from the data root ($EXP_DATA, a relative value taken against the current \
directory; else ~/.cache/exp/data) and fingerprint it (BLAKE3 over the decompressed bytes).
  3. Check that the run can be recorded: on develop or main the run moves to a new feature branch \
feature/NAME-<run id>, created from develop (develop is created from main the first time); if that \
switch would overwrite uncommitted changes, or experiments/NAME/ has uncommitted changes, stop now \
(exit 2) rather than after training.
  4. Train and evaluate on the test set after every epoch (progress on stderr). Randomness comes \
from the seed only: on CPU the same spec, data and seed give bit-identical weights.
  5. Store the weights as safetensors in the Git LFS object store (.git/lfs/objects).
  6. Switch branch if step 3 said so (uncommitted changes elsewhere are carried, never committed).
  7. Write experiments/NAME/ (model.safetensors, metrics.toml, predictions.bin, history.csv), \
commit it with experiments/NAME.toml (the weights as an LFS pointer), and tag the commit \
run/<branch with / as ->/NAME/<n>.

A run that fails (a bad spec or bad data: exit 2; a NaN loss: exit 1; SIGINT: 130; SIGTERM: 143) \
records nothing: no \
commit, tag, branch or LFS object.";

/// `exp run --help`: the steps, then the spec keys from their one table.
pub(super) fn long_about() -> String {
    format!("{RUN_LONG_ABOUT}\n\n{}", exp::spec::keys::help_text())
}

/// Arguments of `exp run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The experiment: experiments/NAME.toml.
    #[arg(value_name = "NAME")]
    pub experiment: String,
    /// Override a spec key: --set train.epochs=3 (VALUE is TOML, or a plain string; repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Where to train: auto (CUDA when this build has it and a GPU answers, else the CPU), cpu,
    /// cuda or cuda:N. Short for --set train.device=DEVICE; cuda on a build or machine without
    /// it is an error, never a silent CPU run.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// No progress output on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

pub(super) fn execute(args: RunArgs) -> Result<(), Error> {
    let stop = StopFlag::install().map_err(RunError::Signals)?;
    let cwd = super::cwd()?;
    let mut overrides = args.overrides;
    if let Some(device) = args.device {
        // Last, so that it wins over a --set of the same key; recorded like any override.
        overrides.push(format!("train.device={device}"));
    }
    let options = RunOptions {
        experiment: args.experiment,
        overrides,
        cwd,
    };
    let mut progress = super::progress::Progress::stderr(args.quiet);
    let summary = run(&options, &stop, &mut progress)?;
    if let Some(profile) = &summary.op_profile {
        eprint!("{profile}");
    }
    for note in &summary.recovered {
        eprintln!("note: {note}");
    }
    let r = &summary.record;
    if let Some(from) = &summary.switched_from {
        super::outln!(
            "Moved the run from {from} to the new branch {}",
            r.run.branch
        );
    }
    super::outln!(
        "Recorded {} on {}: {}",
        r.run.experiment,
        r.run.branch,
        exp::run::headline(r)
    );
    super::outln!("  commit  {}", &summary.commit[..10]);
    super::outln!("  tag     {}", summary.tag);
    super::outln!(
        "  weights {} (LFS oid {}, {} bytes)",
        exp::record::layout::run_file(&r.run.experiment, &r.model.weights),
        &r.model.oid[..12],
        r.model.size
    );
    super::outln!(
        "  trained {} epoch(s) on {} in {:.1} s ({:.0} img/s)",
        r.training.epochs,
        r.run.device,
        r.run.wall_seconds,
        r.training.timing.images_per_second
    );
    Ok(())
}
