//! A cache of `exp log`'s finished output, keyed by everything the output is a function of.
//!
//! The rows of `exp log` depend only on: the commits the walk starts from and hides (their ids
//! fix the whole history below them, records included), the run tags (name → tag object or
//! commit id), what could rewrite history without changing those ids (`refs/replace/*`,
//! `.git/shallow`, `.git/info/grafts`), the command's options and exp's version. The key is a
//! BLAKE3 over all of them, so a hit can only be the output a full run would print: a new
//! commit, a moved branch or tag, a new option all change the key. Reading the refs costs a
//! few milliseconds; a hit skips the walk, the record cache and the table. Like the record
//! cache it is an accelerator only: unreadable or unwritable, it is ignored.

use std::path::{Path, PathBuf};

use git2::Repository;

const DIR: &str = "exp/cache/output-v2";
/// Entries kept; older ones (by modification time) are removed when a new one is written.
const KEEP: usize = 32;

/// The key under construction.
pub struct OutputKey {
    hasher: blake3::Hasher,
}

impl OutputKey {
    /// A key for `command` (the subcommand with its options, as text) in `repo`.
    pub fn new(repo: &Repository, command: &str) -> Result<OutputKey, git2::Error> {
        let mut key = OutputKey {
            hasher: blake3::Hasher::new(),
        };
        key.field(b"exp ");
        key.field(crate::VERSION.as_bytes());
        key.field(command.as_bytes());
        // Run tags and replacement objects, as ref name → target id.
        for glob in ["refs/tags/run/*", "refs/replace/*"] {
            let mut refs: Vec<(String, git2::Oid)> = repo
                .references_glob(glob)?
                .filter_map(|r| r.ok())
                .filter_map(|r| Some((r.name()?.to_string(), r.target()?)))
                .collect();
            refs.sort();
            key.field(glob.as_bytes());
            for (name, target) in refs {
                key.field(name.as_bytes());
                key.field(target.as_bytes());
            }
        }
        for file in ["shallow", "info/grafts"] {
            let bytes = std::fs::read(repo.commondir().join(file)).unwrap_or_default();
            key.field(file.as_bytes());
            key.field(&bytes);
        }
        Ok(key)
    }

    /// Adds one length-prefixed field (so that fields cannot run into each other).
    pub fn field(&mut self, bytes: &[u8]) {
        self.hasher.update(&(bytes.len() as u64).to_le_bytes());
        self.hasher.update(bytes);
    }

    /// Adds a commit the walk starts from or hides.
    pub fn commit(&mut self, role: &str, id: git2::Oid) {
        self.field(role.as_bytes());
        self.field(id.as_bytes());
    }

    fn path(&self, repo: &Repository) -> PathBuf {
        repo.commondir()
            .join(DIR)
            .join(self.hasher.finalize().to_hex().as_str())
    }

    /// The stored output for this key, if present and intact (each entry starts with the
    /// BLAKE3 of its text: a damaged or edited entry is ignored, never printed).
    pub fn lookup(&self, repo: &Repository) -> Option<String> {
        let stored = std::fs::read_to_string(self.path(repo)).ok()?;
        let (hash, text) = stored.split_once('\n')?;
        (blake3::hash(text.as_bytes()).to_hex().as_str() == hash).then(|| text.to_string())
    }

    /// Stores `output` under this key (atomically), keeping the newest [`KEEP`] entries.
    pub fn store(&self, repo: &Repository, output: &str) {
        let path = self.path(repo);
        let Some(dir) = path.parent() else { return };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) {
            use std::io::Write;
            let hash = blake3::hash(output.as_bytes());
            let entry = format!("{}\n{output}", hash.to_hex());
            if tmp.write_all(entry.as_bytes()).is_ok() {
                let _ = tmp.persist(&path);
            }
        }
        prune(dir);
    }
}

fn prune(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() <= KEEP {
        return;
    }
    files.sort();
    for (_, path) in &files[..files.len() - KEEP] {
        let _ = std::fs::remove_file(path);
    }
}
