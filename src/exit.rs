//! Exit codes shared by every command (docs/design.md §8). A leaf: every layer may name them.

/// The process exit code of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// The command succeeded.
    Success = 0,
    /// The command ran and the answer is negative (a regression, a diverged run).
    Negative = 1,
    /// Usage, data or environment error.
    Usage = 2,
    /// Interrupted by SIGINT.
    Interrupted = 130,
    /// Terminated by SIGTERM.
    Terminated = 143,
}
