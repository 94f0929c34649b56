//! SIGINT and SIGTERM during training: handlers set flags that the loop checks between steps,
//! so an interrupted run stops cleanly and commits nothing (exit 130/143, docs/design.md §8).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::TrainError;

/// The signal that stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Ctrl-C.
    Int,
    /// `kill`, a CI timeout.
    Term,
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
        })
    }
}

/// Flags set by SIGINT/SIGTERM handlers; the loop checks them between steps so a run stops
/// cleanly, committing nothing.
#[derive(Clone, Default)]
pub struct StopFlag {
    int: Arc<AtomicBool>,
    term: Arc<AtomicBool>,
}

impl StopFlag {
    /// Installs handlers for SIGINT and SIGTERM. A second signal of the same kind ends the
    /// process at once, for a user who does not want to wait for the current step.
    pub fn install() -> std::io::Result<StopFlag> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let flag = StopFlag::default();
        for (signal, state) in [(SIGINT, &flag.int), (SIGTERM, &flag.term)] {
            signal_hook::flag::register_conditional_shutdown(
                signal,
                128 + signal,
                Arc::clone(state),
            )?;
            signal_hook::flag::register(signal, Arc::clone(state))?;
        }
        Ok(flag)
    }

    /// Err when a signal has arrived.
    pub fn check(&self) -> Result<(), TrainError> {
        if self.int.load(Ordering::Relaxed) {
            Err(TrainError::Interrupted(Signal::Int))
        } else if self.term.load(Ordering::Relaxed) {
            Err(TrainError::Interrupted(Signal::Term))
        } else {
            Ok(())
        }
    }
}
