//! The command line: argument types and output formatting, one file per subcommand. Nothing
//! here knows how records are stored or models trained.

use clap::{Parser, Subcommand};

use exp::Error;

/// Git-native experiment tracking: train Candle models, record every run as a commit with its
/// weights in Git LFS, compare and gate them with Git.
#[derive(Debug, Parser)]
#[command(name = "exp", version, propagate_version = true, max_term_width = 100)]
#[command(
    after_help = "Exit codes: 0 success; 1 negative answer (a diverged run); 2 usage, data or \
environment error; 130/143 interrupted by SIGINT/SIGTERM."
)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// `exp ci` actions.
#[derive(Debug, Subcommand)]
pub enum CiAction {
    /// Write .github/workflows/exp.yml and .github/exp/exp-ci.sh (not committed: review and
    /// commit them).
    Init {
        /// The CI service.
        provider: CiProvider,
        /// Rewrite files that exist with other content.
        #[arg(long)]
        force: bool,
    },
}

/// The CI services `exp ci init` writes for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CiProvider {
    /// GitHub Actions.
    Github,
}

/// exp's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make a directory a Git repository ready for exp.
    #[command(long_about = init::INIT_LONG_ABOUT)]
    Init(init::InitArgs),
    /// Train an experiment and record the run as a commit and a tag.
    #[command(long_about = run::long_about())]
    Run(run::RunArgs),
    /// Compare the run records of two revisions: metrics, parameters, fixed and broken examples.
    #[command(long_about = diff::DIFF_LONG_ABOUT)]
    Diff(diff::DiffArgs),
    /// List the commits that changed run records, with parameters and metrics.
    #[command(long_about = log::LOG_LONG_ABOUT)]
    Log(log::LogArgs),
    /// Put a chosen run (a run tag, a commit, or --best METRIC) at the tip of the branch.
    #[command(long_about = apply::APPLY_LONG_ABOUT)]
    Apply(apply::ApplyArgs),
    /// List the experiments (experiments/*.toml) and each branch's latest run of them.
    Ls(log::LsArgs),
    /// Show every experiment's record at a revision or on every branch.
    #[command(long_about = log::SHOW_LONG_ABOUT)]
    Show(log::ShowArgs),
    /// The chain of runs a model descends from (init.from), newest first.
    Lineage(lineage::LineageArgs),
    /// Many trials of an experiment at once (grid, random samples, seeds), locally or on Slurm.
    #[command(long_about = sweep::SWEEP_LONG_ABOUT)]
    Sweep(sweep::SweepArgs),
    /// Re-evaluate a run's committed weights on the CPU and check they produce its record.
    #[command(long_about = verify::VERIFY_LONG_ABOUT)]
    Verify(verify::VerifyArgs),
    /// Write an HTML report with charts: metrics across runs, training curves, confusion matrix.
    #[command(long_about = plot::PLOT_LONG_ABOUT)]
    Plot(plot::PlotArgs),
    /// Reject a regression: judge head against base with the base's [gate] policy.
    #[command(long_about = gate::GATE_LONG_ABOUT)]
    Gate(gate::GateArgs),
    /// Install or remove the Git hooks that gate merges and pushes into develop and main.
    Hooks(hooks::HooksArgs),
    /// Git Flow with the gate: finish a feature, release, start a hotfix.
    Flow(flow::FlowArgs),
    /// List released model versions (tags vVERSION) with their metrics.
    Models(flow::ModelsArgs),
    /// Released models: `exp model get NAME@VERSION`.
    Model(flow::ModelArgs),
    /// Git LFS without git-lfs: the filter, install/uninstall, ls, fsck, prune, hook helpers.
    Lfs(lfs::LfsArgs),
    /// Push branches, their run and release tags, and the LFS objects they reference (objects
    /// first, confirmed on the remote, then refs).
    Push(sync::PushArgs),
    /// Fetch and fast-forward, then download the LFS objects HEAD references into the work tree.
    Pull(sync::PullArgs),
    /// Set up CI in this repository: `exp ci init github` writes a GitHub Actions workflow that
    /// gates every pull request and posts `exp diff --md`.
    Ci {
        /// What to do.
        #[command(subcommand)]
        action: CiAction,
    },
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print exp's man page (roff) to stdout: `exp man > exp.1`; with --dir, write a page for
    /// exp and one for every subcommand (exp-run.1, exp-apply.1, …) into DIR.
    Man {
        /// Write every page into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
    /// Write a run's model for other frameworks: ONNX, or safetensors with a PyTorch module.
    #[command(long_about = export::EXPORT_LONG_ABOUT)]
    Export(export::ExportArgs),
    /// Serve a run's model over HTTP (MLflow-compatible /invocations, images on /predict).
    #[command(long_about = serve::SERVE_LONG_ABOUT)]
    Serve(serve::ServeArgs),
    /// Time a run's model per precision (f32, bf16, f16) and batch size, and count the
    /// predictions that change.
    #[command(long_about = bench::BENCH_LONG_ABOUT)]
    Bench(bench::BenchArgs),
    /// Show the devices exp can train on; --check tests exp's kernels on them.
    #[command(long_about = device::DEVICE_LONG_ABOUT)]
    Device(device::DeviceArgs),
    /// The decoded image folders exp keeps under .git/exp/cache: ls, prune.
    Cache(cache::CacheArgs),
    /// Datasets versioned in Git and the LFS store: add, status, checkout, ls.
    #[command(long_about = data::DATA_LONG_ABOUT)]
    Data(data::DataArgs),
}

/// Writes a line to stdout. A closed pipe (`exp log | head`) comes back as
/// [`Error::Output`], which `main` turns into a quiet success, as `git log | head` does.
pub(crate) fn emit(text: std::fmt::Arguments) -> Result<(), Error> {
    use std::io::Write;
    // Stdout is line-buffered: a 1,000-row table would be 1,000 write calls.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    out.write_fmt(text)
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush())
        .map_err(Error::Output)
}

/// Writes bytes to stdout as they are (a closed pipe is [`Error::Output`], as in [`emit`]).
fn emit_bytes(bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|_| out.flush())
        .map_err(Error::Output)
}

/// `println!` through [`emit`]; returns from the enclosing function on a write error.
macro_rules! outln {
    () => { $crate::cli::emit(format_args!(""))? };
    ($($arg:tt)*) => { $crate::cli::emit(format_args!($($arg)*))? };
}
pub(crate) use outln;

/// A size as people read it: `18.4 MiB`.
pub(crate) fn size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

/// A warning on stderr: what a command noticed without refusing it.
pub(crate) fn warn(message: &str) {
    eprintln!("warning: {message}");
}

mod apply;
mod bench;
mod cache;
mod data;
mod device;
mod diff;
mod export;
mod flow;
mod gate;
mod hooks;
mod init;
mod lfs;
mod lineage;
mod log;
mod plot;
mod progress;
mod run;
mod serve;
mod sweep;
mod sync;
mod verify;

pub use exp::error::UsageError;

fn cwd() -> Result<std::path::PathBuf, Error> {
    std::env::current_dir().map_err(|e| {
        Error::Usage(UsageError(format!(
            "cannot read the current directory: {e}"
        )))
    })
}

/// Prints `value` as pretty JSON (the `--json` of every command).
fn emit_json<T: serde::Serialize>(value: &T) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Usage(UsageError(format!("cannot write JSON: {e}"))))?;
    outln!("{text}");
    Ok(())
}

/// The base and head a comparison command was given: base defaults to HEAD's merge-base with
/// develop (or main), head to HEAD.
fn base_and_head<'r>(
    repo: &'r git2::Repository,
    base: Option<String>,
    head: Option<String>,
) -> Result<(exp::compare::Snapshot<'r>, exp::compare::Snapshot<'r>), Error> {
    let base = match base {
        Some(b) => b,
        None => exp::compare::default_base(repo)?,
    };
    let head = head.unwrap_or_else(|| "HEAD".to_string());
    Ok((
        exp::compare::resolve(repo, &base)?,
        exp::compare::resolve(repo, &head)?,
    ))
}

/// Runs the parsed command; returns the exit code for success paths.
pub fn execute(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Init(args) => init::execute(args),
        Command::Run(args) => run::execute(args),
        Command::Diff(args) => diff::execute(args),
        Command::Log(args) => log::execute_log(args),
        Command::Show(args) => log::execute_show(args),
        Command::Ls(args) => log::execute_ls(args),
        Command::Apply(args) => apply::execute(args),
        Command::Plot(args) => plot::execute(args),
        Command::Lineage(args) => lineage::execute(args),
        Command::Verify(args) => verify::execute(args),
        Command::Sweep(args) => sweep::execute(args),
        Command::Device(args) => device::execute(args),
        Command::Cache(args) => cache::execute(args),
        Command::Data(args) => data::execute(args),
        Command::Export(args) => export::execute(args),
        Command::Serve(args) => serve::execute(args),
        Command::Bench(args) => bench::execute(args),
        Command::Ci {
            action: CiAction::Init { provider, force },
        } => {
            let repo = exp::git::open(&cwd()?)?;
            let worktree = exp::git::workdir(&repo);
            let written = match provider {
                CiProvider::Github => exp::ci::init_github(worktree, force)?,
            };
            for (path, what) in written {
                let what = match what {
                    exp::ci::Written::Created => "wrote",
                    exp::ci::Written::Unchanged => "unchanged",
                    exp::ci::Written::Replaced => "rewrote",
                };
                outln!("{what} {path}");
            }
            outln!("Review and commit them; set the repository variable EXP_DATA to a folder of evaluation data on the runner to verify weights (docs/ci.md).");
            Ok(())
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "exp", &mut out);
            emit_bytes(&out)
        }
        Command::Man { dir: Some(dir) } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
                .map_err(|e| {
                    UsageError(format!(
                        "cannot write the man pages into {}: {e}",
                        dir.display()
                    ))
                })?;
            outln!("wrote the man pages into {}", dir.display());
            Ok(())
        }
        Command::Man { dir: None } => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .map_err(Error::Output)?;
            emit_bytes(&out)
        }
        Command::Gate(args) => gate::execute(args),
        Command::Hooks(args) => hooks::execute(args),
        Command::Flow(args) => flow::execute_flow(args),
        Command::Models(args) => flow::execute_models(args),
        Command::Model(args) => flow::execute_model(args),
        Command::Lfs(args) => lfs::execute(args),
        Command::Push(args) => sync::execute_push(args),
        Command::Pull(args) => sync::execute_pull(args),
    }
}
