//! exp: Git-native experiment tracking and model versioning.
//!
//! The library knows nothing of the command line: `cli/` turns arguments into calls on the
//! modules below and formats what they return. Each module owns one concern:
//!
//! - [`spec`]: the experiment spec (`experiments/<name>.toml`), its schema and `--set` overrides;
//! - [`data`]: IDX, CIFAR-10 and image-folder readers, fingerprints, the data set and batching;
//! - [`dataset`]: datasets versioned in Git and the LFS store (`exp data`);
//! - [`device`]: `--device`, opening CUDA or the CPU, what the record says about the GPU;
//! - [`model`]: the model zoo, built from exp's own seeded initialisers;
//! - [`train`]: the training loop, optimisers, interruption;
//! - [`eval`]: metrics and `predictions.bin`;
//! - [`profile`]: per-operation timing (`EXP_PROFILE_OPS=1`);
//! - [`allocator`]: the memory allocator's settings (mimalloc keeps freed memory);
//! - [`record`]: the run record (`metrics.toml`) and the canonical tensor hash;
//! - [`lfs`]: Git LFS pointers and the object store;
//! - [`git`]: repository access, Git Flow branches, commits and run tags;
//! - [`compare`]: records across revisions (diff, log, show) and the McNemar test;
//! - [`gate`]: the regression gate (`exp gate`, the hooks);
//! - [`flow`]: Git Flow steps with the gate, released model versions;
//! - [`apply`]: putting a chosen run at a branch's tip (`exp apply`);
//! - [`ci`]: the CI workflow and script `exp ci init github` writes;
//! - [`hooks`]: installing the gate's Git hooks;
//! - [`report`]: tables for people;
//! - [`init_from`]: starting from an earlier run's weights, freezing, lineage;
//! - [`run`] and [`init`]: the two workflows that tie the rest together.
#![deny(missing_docs)]

pub mod allocator;
pub mod apply;
pub mod artifact;
pub mod bench;
pub mod ci;
pub mod compare;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod data;
pub mod dataset;
pub mod device;
pub mod error;
pub mod eval;
pub mod exit;
pub mod export;
pub mod files;
pub mod flow;
pub mod gate;
pub mod git;
pub mod hooks;
pub mod init;
pub mod init_from;
pub mod kernel_args;
pub mod kernel_check;
pub mod lfs;
pub mod metric;
pub mod model;
pub mod profile;
pub mod record;
pub mod release;
pub mod report;
pub mod rng;
pub mod run;
pub mod serve;
pub mod spec;
pub mod sweep;
pub mod train;
pub mod verify;
pub mod weights;

pub use error::Error;
pub use exit::ExitCode;

#[cfg(test)]
mod design_doc_tests;
#[cfg(test)]
mod layering_tests;

/// The exp version, recorded in every run.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The candle version this build links, read from Cargo.lock at build time (build.rs),
/// recorded in every run.
pub const CANDLE_VERSION: &str = env!("EXP_CANDLE_VERSION");
