//! Git LFS, natively: spec-v1 pointers and the object store under `.git/lfs/objects`,
//! byte-for-byte what git-lfs itself reads and writes (docs/design.md §6).

pub mod config;
pub mod filter;
pub mod maintain;
pub mod pktline;
mod pointer;
pub mod push;
pub mod remote;
pub mod scan;
pub mod statcache;
mod store;
pub mod sync;

pub use pointer::{Extension, LfsPointer, Oid};
pub use store::{BatchWriter, Durability, LfsStore, ObjectWriter, Unsynced};

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
    /// Reading the repository failed.
    #[error("reading the repository: {0}")]
    Git(#[from] git2::Error),
    /// A revision does not resolve to a tree.
    #[error("cannot resolve revision {rev:?}: {message}")]
    Revision {
        /// As given.
        rev: String,
        /// libgit2's reason.
        message: String,
    },
    /// Reading the content to filter, or writing the filtered content, failed.
    #[error("LFS filter stream: {0}")]
    Stream(std::io::Error),
    /// Downloaded or copied content is not the object it was fetched as.
    #[error("expected LFS object {expected}, got content with sha256 {actual} ({size} bytes)")]
    Mismatch {
        /// The oid asked for.
        expected: String,
        /// The digest of what arrived.
        actual: String,
        /// How many bytes arrived.
        size: u64,
    },
}

impl LfsError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            LfsError::BadPointer(_) | LfsError::BadOid(_) => {
                "the file holds neither an LFS pointer nor its object: `git show HEAD:PATH` shows what was committed".into()
            }
            LfsError::Io { .. } => {
                "check that .git/lfs is writable and the disk has space (`df -h .git`)".into()
            }
            LfsError::Corrupt { path, .. } => format!(
                "remove {} and fetch it again (`exp pull`, or `git lfs pull` where git-lfs is in charge); `exp lfs fsck` checks the rest",
                path.display()
            ),
            LfsError::Mismatch { .. } => {
                "the remote or the store holds other bytes under this oid; `exp lfs fsck` checks the local store".into()
            }
            LfsError::Revision { .. } => {
                "give a branch, commit or tag (`git log --oneline` lists commits)".into()
            }
            LfsError::Git(_) | LfsError::Stream(_) => return None,
        })
    }
}

/// A negative answer from an LFS check (exit 1): raw weights staged, a failed fsck.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct LfsRefusal {
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: String,
}
