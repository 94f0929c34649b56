//! The top-level error: every module's error, with the exit code and hint the CLI prints.

use std::fmt;

pub use crate::exit::ExitCode;

/// Any error a command can end with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The experiment spec is invalid.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// A data set could not be read.
    #[error(transparent)]
    Data(Box<crate::data::DataError>),
    /// A committed dataset cannot be added, checked out or used.
    #[error(transparent)]
    Dataset(Box<crate::dataset::DatasetError>),
    /// Training failed or was interrupted.
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    /// The LFS store failed.
    #[error(transparent)]
    Lfs(#[from] crate::lfs::LfsError),
    /// A Git operation failed.
    #[error(transparent)]
    Git(#[from] crate::git::GitError),
    /// The run record could not be written or read.
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
    /// `exp init` failed.
    #[error(transparent)]
    Init(#[from] crate::init::InitError),
    /// `exp run` failed outside the other modules (the others' errors are unwrapped into
    /// their own variants, with their hints and exit codes).
    #[error(transparent)]
    Run(Box<crate::run::RunError>),
    /// A comparison could not be made.
    #[error(transparent)]
    Compare(#[from] crate::compare::CompareError),
    /// A device was asked for that is not there.
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    /// `exp device --check` found a kernel that disagrees with the reference.
    #[error(transparent)]
    DeviceCheck(#[from] crate::kernel_check::CheckFailed),
    /// An LFS check answered no (raw weights staged, fsck problems).
    #[error(transparent)]
    LfsRefused(#[from] crate::lfs::LfsRefusal),
    /// `exp push` failed.
    #[error(transparent)]
    Push(crate::lfs::sync::SyncError),
    /// `exp pull` failed.
    #[error(transparent)]
    Pull(crate::lfs::sync::SyncError),
    /// Uploading LFS objects for a push failed.
    #[error(transparent)]
    LfsPush(#[from] crate::lfs::push::PushError),
    /// `exp ci init` could not write its files.
    #[error(transparent)]
    Ci(#[from] crate::ci::CiError),
    /// `exp apply` could not apply the run.
    #[error(transparent)]
    Apply(#[from] crate::apply::ApplyError),
    /// A Git Flow step failed or was refused.
    #[error(transparent)]
    Flow(#[from] crate::flow::FlowError),
    /// Installing or removing hooks failed.
    #[error(transparent)]
    Hooks(crate::hooks::HooksError),
    /// `exp gate` found a regression or could not decide.
    #[error(transparent)]
    Gate(#[from] crate::gate::GateRejected),
    /// The weights `init.from` names cannot start this run.
    #[error(transparent)]
    InitFrom(Box<crate::init_from::InitFromError>),
    /// Arguments that parse but make no sense.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// Another exp command holds the work tree.
    #[error(transparent)]
    Lock(#[from] crate::git::lock::LockError),
    /// A sweep cannot start or be read.
    #[error(transparent)]
    Sweep(Box<crate::sweep::SweepError>),
    /// `exp verify` could not start.
    #[error(transparent)]
    Verify(Box<crate::verify::VerifyError>),
    /// The model a revision or release names cannot be loaded for export or serving.
    #[error(transparent)]
    Artifact(Box<crate::artifact::ArtifactError>),
    /// `exp export` could not write the model.
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    /// `exp serve` could not start or failed.
    #[error(transparent)]
    Serve(#[from] crate::serve::ServeError),
    /// `exp bench` could not measure.
    #[error(transparent)]
    Bench(Box<crate::bench::BenchError>),
    /// A command that ran to the end and answered no, with its own hint and exit code.
    #[error(transparent)]
    Verdict(#[from] Verdict),
    /// The command's output could not be written (a closed pipe ends the command quietly).
    #[error("cannot write to stdout: {0}")]
    Output(#[source] std::io::Error),
}

impl Error {
    /// The process exit code for this error (docs/design.md §8).
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Train(e) => e.exit_code(),
            Error::DeviceCheck(_) | Error::LfsRefused(_) => ExitCode::Negative,
            Error::Gate(e) => e.code,
            Error::Verdict(e) => e.code,
            Error::Flow(e) => e.exit_code(),
            _ => ExitCode::Usage,
        }
    }

    /// A line telling the user what to do next, where there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Spec(e) => e.hint(),
            Error::Data(e) => e.hint(),
            Error::Dataset(e) => e.hint(),
            Error::Git(e) => e.hint(),
            Error::Run(e) => e.hint(),
            Error::Train(e) => e.hint(),
            Error::Init(e) => e.hint(),
            Error::Compare(e) => e.hint(),
            Error::Device(_) => Some("run `exp device` to see what this exp can use".into()),
            Error::DeviceCheck(_) => {
                Some("train on another device (--device cpu) and report the failing check".into())
            }
            Error::Gate(e) => Some(e.hint.clone()),
            Error::Verdict(e) => Some(e.hint.clone()),
            Error::Verify(e) => e.hint(),
            Error::Sweep(e) => e.hint(),
            Error::Lock(e) => e.hint(),
            Error::LfsRefused(e) => Some(e.hint.clone()),
            Error::Push(e) => e.hint(crate::lfs::sync::SyncCommand::Push),
            Error::Pull(e) => e.hint(crate::lfs::sync::SyncCommand::Pull),
            Error::Hooks(e) => e.hint(),
            Error::InitFrom(e) => e.hint(),
            Error::Flow(e) => e.hint(),
            Error::Apply(e) => e.hint(),
            Error::Ci(e) => e.hint(),
            Error::LfsPush(e) => Some(match e.hint() {
                Some(hint) => format!("nothing was pushed; {hint}"),
                None => "nothing was pushed".into(),
            }),
            Error::Lfs(e) => e.hint(),
            Error::Record(_) => Some(
                "this is a bug in exp: please report it with the spec and `exp --version`".into(),
            ),
            Error::Artifact(e) => e.hint(),
            Error::Serve(e) => e.hint(),
            Error::Bench(e) => e.hint(),
            Error::Export(_) | Error::Usage(_) | Error::Output(_) => None,
        }
    }
}

/// A command that ran to the end and answered no (`exp verify` found a record its weights do
/// not produce): what the CLI prints as the error, with its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Verdict {
    /// What was found.
    pub message: String,
    /// What to do next.
    pub hint: String,
    /// The exit code (docs/design.md §8).
    pub code: ExitCode,
}

/// Arguments that parse but make no sense, or an environment the command cannot work in
/// (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

// The two largest errors are boxed so that every `Result<_, Error>` stays small.
impl From<crate::data::DataError> for Error {
    fn from(e: crate::data::DataError) -> Error {
        Error::Data(Box::new(e))
    }
}

impl From<crate::artifact::ArtifactError> for Error {
    fn from(e: crate::artifact::ArtifactError) -> Error {
        Error::Artifact(Box::new(e))
    }
}

impl From<crate::bench::BenchError> for Error {
    fn from(e: crate::bench::BenchError) -> Error {
        match e {
            // A model that cannot be loaded says so as export and serve say it.
            crate::bench::BenchError::Artifact(e) => Error::Artifact(Box::new(e)),
            other => Error::Bench(Box::new(other)),
        }
    }
}

impl From<crate::sweep::SweepError> for Error {
    fn from(e: crate::sweep::SweepError) -> Error {
        use crate::sweep::SweepError as S;
        match e {
            // A trial's run keeps its own exit code (1 diverged, 130 interrupted, …).
            S::Run(e) => Error::from(*e),
            S::Spec(e) => Error::Spec(e),
            other => Error::Sweep(Box::new(other)),
        }
    }
}

impl From<crate::verify::VerifyError> for Error {
    fn from(e: crate::verify::VerifyError) -> Error {
        Error::Verify(Box::new(e))
    }
}

impl From<crate::dataset::DatasetError> for Error {
    fn from(e: crate::dataset::DatasetError) -> Error {
        Error::Dataset(Box::new(e))
    }
}

impl From<crate::init_from::InitFromError> for Error {
    fn from(e: crate::init_from::InitFromError) -> Error {
        Error::InitFrom(Box::new(e))
    }
}

impl From<crate::run::RunError> for Error {
    fn from(e: crate::run::RunError) -> Error {
        use crate::run::RunError as R;
        match e {
            R::Spec(e) => Error::Spec(e),
            R::Data(e) => Error::Data(Box::new(e)),
            R::Dataset(e) => Error::Dataset(e),
            R::Device(e) => Error::Device(e),
            R::Train(e) => Error::Train(e),
            R::Lfs(e) => Error::Lfs(e),
            R::Git(e) => Error::Git(e),
            R::Record(e) => Error::Record(e),
            R::InitFrom(e) => Error::InitFrom(Box::new(e)),
            other => Error::Run(Box::new(other)),
        }
    }
}

/// Displays an error with its chain of causes, one "Caused by:" line each.
pub struct Report<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        // `#[error(transparent)]` wrappers repeat their inner message; skip exact repeats.
        let mut last = self.0.to_string();
        while let Some(cause) = source {
            let text = cause.to_string();
            if text != last && !last.ends_with(&text) {
                write!(f, "\n  Caused by: {text}")?;
            }
            last = text;
            source = cause.source();
        }
        Ok(())
    }
}
