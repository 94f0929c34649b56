//! One committing command at a time per work tree (docs/design.md §9): `exp run` and `exp flow`
//! hold `exp/worktree.lock` in the work tree's own git dir (`.git`, or `.git/worktrees/<name>`
//! for a linked work tree), so runs in other work trees of the repository — and headless sweep
//! trials, which touch no work tree — go on. The lock records host, pid and start: a lock whose
//! process is dead on this host is exp's own leftover from a kill -9 and is removed; one held
//! on another host (a repository on a shared file system) is never guessed about.

use std::io::Write;
use std::path::{Path, PathBuf};

use git2::Repository;

/// The lock file, under the work tree's git dir.
pub const LOCK_FILE: &str = "exp/worktree.lock";

/// Why the lock cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another exp command holds it.
    #[error("another exp command is committing in this work tree: {holder} (lock {path})")]
    Held {
        /// Who: `pid P on host H since T, running "exp …"`.
        holder: String,
        /// The lock file.
        path: PathBuf,
    },
    /// The lock file cannot be created or read.
    #[error("cannot take the work-tree lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl LockError {
    /// What to do.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            LockError::Held { path, .. } => format!(
                "wait for it to finish, or run in another work tree (git worktree add); if that process is gone on another host, remove {}",
                path.display()
            ),
            LockError::Io { .. } => "check that the repository's git dir is writable".into(),
        })
    }
}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct WorktreeLock {
    path: PathBuf,
    /// The dead exp process whose lock this one replaced (a kill -9): its half-written
    /// outputs may still be in the work tree, and Git lock files it held in the repository.
    pub replaced: Option<Replaced>,
}

/// A dead exp process's lock that [`lock_worktree`] replaced.
#[derive(Debug, Clone)]
pub struct Replaced {
    /// Its command (`exp run <name>`).
    pub command: String,
    /// When it started.
    pub started: Option<std::time::SystemTime>,
}

impl WorktreeLock {
    /// Removes the Git lock files the dead exp process left: those of `repo`'s commit phase
    /// (`index.lock`, `HEAD.lock`, `packed-refs.lock`, `refs/heads/<branch>.lock`, the run tags'
    /// locks) created after that process started. libgit2 wrote them in exp's own process (or a
    /// git it ran), so they carry no pid; one older than that process is someone else's and is
    /// left for the message and hint. Returns the files removed.
    pub fn clear_dead_git_locks(&self, repo: &Repository, branch: &str) -> Vec<PathBuf> {
        let Some(since) = self.replaced.as_ref().and_then(|r| r.started) else {
            return Vec::new();
        };
        let common = repo.commondir();
        let mut candidates = vec![
            repo.path().join("index.lock"),
            repo.path().join("HEAD.lock"),
            common.join("packed-refs.lock"),
            common.join(format!("refs/heads/{branch}.lock")),
        ];
        let tags = common.join(format!("refs/tags/run/{}", branch.replace('/', "-")));
        if let Ok(experiments) = std::fs::read_dir(&tags) {
            for e in experiments.flatten() {
                if let Ok(files) = std::fs::read_dir(e.path()) {
                    candidates.extend(files.flatten().map(|f| f.path()));
                }
            }
        }
        let mut removed = Vec::new();
        for path in candidates {
            if !path.to_string_lossy().ends_with(".lock") {
                continue;
            }
            let fresh = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t + std::time::Duration::from_secs(1) >= since);
            if fresh && std::fs::remove_file(&path).is_ok() {
                removed.push(path);
            }
        }
        removed
    }
}

impl Drop for WorktreeLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Takes the work-tree lock of `repo` for `command` (e.g. "exp run mnist-cnn"), removing a
/// stale one of a dead exp process on this host first.
pub fn lock_worktree(repo: &Repository, command: &str) -> Result<WorktreeLock, LockError> {
    let path = repo.path().join(LOCK_FILE);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let host = host_name();
    let content = format!(
        "pid = {}\nhost = {:?}\nstarted = {:?}\ncommand = {:?}\n",
        std::process::id(),
        host,
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        command
    );
    let mut replaced = None;
    for _ in 0..2 {
        // The content is written to a temp file first and linked into place: a kill can never
        // leave an empty, unreadable lock (link fails when the lock exists, like O_EXCL).
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        tmp.write_all(content.as_bytes()).map_err(io)?;
        match std::fs::hard_link(tmp.path(), &path) {
            Ok(()) => {
                return Ok(WorktreeLock { path, replaced });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = read_holder(&path);
                match &holder {
                    Some(h) if h.host == host && !process_alive(h.pid) => {
                        // Our own leftover from a process that was killed: remove it.
                        let _ = std::fs::remove_file(&path);
                        replaced = Some(Replaced {
                            command: h.command.clone(),
                            started: chrono::DateTime::parse_from_rfc3339(&h.started)
                                .ok()
                                .map(std::time::SystemTime::from),
                        });
                    }
                    _ => {
                        return Err(LockError::Held {
                            holder: holder
                                .map_or_else(|| "an unreadable lock".to_string(), |h| h.describe()),
                            path,
                        })
                    }
                }
            }
            Err(e) => return Err(io(e)),
        }
    }
    Err(LockError::Held {
        holder: "a process that keeps recreating it".into(),
        path,
    })
}

struct Holder {
    pid: u32,
    host: String,
    started: String,
    command: String,
}

impl Holder {
    fn describe(&self) -> String {
        format!(
            "pid {} on host {} since {}, running \"{}\"",
            self.pid, self.host, self.started, self.command
        )
    }
}

fn read_holder(path: &Path) -> Option<Holder> {
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    Some(Holder {
        pid: u32::try_from(table.get("pid")?.as_integer()?).ok()?,
        host: table.get("host")?.as_str()?.to_string(),
        started: table
            .get("started")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string(),
        command: table
            .get("command")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string(),
    })
}

/// This host's name, as locks and sweep trials record it.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Whether process `pid` of this host is alive.
pub fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_and_stale_own_locks_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let held = lock_worktree(&repo, "exp run a").unwrap();
        let err = lock_worktree(&repo, "exp run b").unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {} on host ", std::process::id()))
                && err.contains("running \"exp run a\""),
            "{err}"
        );
        drop(held);
        // A lock left by a dead process of this host (pid beyond pid_max) is taken over.
        std::fs::write(
            repo.path().join(LOCK_FILE),
            format!(
                "pid = 4194303\nhost = {:?}\nstarted = \"x\"\ncommand = \"exp run\"\n",
                host_name()
            ),
        )
        .unwrap();
        let again = lock_worktree(&repo, "exp run c").unwrap();
        drop(again);
        // Another host's lock is never guessed about.
        std::fs::write(
            repo.path().join(LOCK_FILE),
            "pid = 4194303\nhost = \"elsewhere\"\nstarted = \"x\"\ncommand = \"exp run\"\n",
        )
        .unwrap();
        let err = lock_worktree(&repo, "exp run d").unwrap_err().to_string();
        assert!(err.contains("on host elsewhere"), "{err}");
    }
}
