//! Git LFS, natively: spec-v1 pointers and the object store under `.git/lfs/objects`,
//! byte-for-byte what git-lfs itself reads and writes (DESIGN §2).

mod pointer;
pub mod push;
mod store;

pub use pointer::{LfsPointer, Oid};
pub use store::LfsStore;

use std::path::PathBuf;

/// An LFS pointer or object-store failure.
#[derive(Debug, thiserror::Error)]
pub enum LfsError {
    /// The text is not a spec-v1 pointer.
    #[error("not a Git LFS pointer: {0}")]
    BadPointer(String),
    /// An oid is not 64 lower-case hex digits.
    #[error("invalid LFS oid {0:?}: expected 64 lower-case hex digits")]
    BadOid(String),
    /// An I/O operation on the store failed.
    #[error("LFS store: {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An object's content does not match its name.
    #[error("LFS object {path} is corrupt: its sha256 is {actual}")]
    Corrupt {
        /// The object.
        path: PathBuf,
        /// The digest of its content.
        actual: String,
    },
}
