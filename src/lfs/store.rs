//! The local object store: `<lfs dir>/objects/<oid[0..2]>/<oid[2..4]>/<oid>`, written through
//! a temp file in `<lfs dir>/tmp` and renamed, so no partial object ever has its final name.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{LfsError, LfsPointer, Oid};

/// The LFS object store of one repository.
#[derive(Debug, Clone)]
pub struct LfsStore {
    root: PathBuf,
}

impl LfsStore {
    /// The store of `repo`: `lfs.storage` when set (relative to the common Git dir, as git-lfs
    /// resolves it), else `<common dir>/lfs`, shared by all worktrees.
    pub fn for_repo(repo: &git2::Repository) -> LfsStore {
        let common = repo.commondir().to_path_buf();
        let configured = repo
            .config()
            .ok()
            .and_then(|c| c.get_string("lfs.storage").ok())
            .filter(|s| !s.is_empty());
        let root = match configured {
            Some(s) if Path::new(&s).is_absolute() => PathBuf::from(s),
            Some(s) => common.join(s),
            None => common.join("lfs"),
        };
        LfsStore { root }
    }

    /// A store rooted at `root` (the directory holding `objects/` and `tmp/`).
    pub fn at(root: impl Into<PathBuf>) -> LfsStore {
        LfsStore { root: root.into() }
    }

    /// Where object `oid` lives.
    pub fn object_path(&self, oid: &Oid) -> PathBuf {
        let hex = oid.as_str();
        self.root
            .join("objects")
            .join(&hex[0..2])
            .join(&hex[2..4])
            .join(hex)
    }

    /// Whether object `oid` is present.
    pub fn contains(&self, oid: &Oid) -> bool {
        self.object_path(oid).is_file()
    }

    /// Streams `content` into the store, hashing while writing; returns its pointer. An object
    /// already present is left as it is (content addressing makes it the same bytes).
    pub fn insert(&self, mut content: impl Read) -> Result<LfsPointer, LfsError> {
        let tmp_dir = self.root.join("tmp");
        std::fs::create_dir_all(&tmp_dir).map_err(|source| LfsError::Io {
            action: "creating",
            path: tmp_dir.clone(),
            source,
        })?;
        let io = |action, source| LfsError::Io {
            action,
            path: tmp_dir.clone(),
            source,
        };
        // Dropped (and deleted) on every early return: no partial object survives.
        let mut tmp = tempfile::Builder::new()
            .prefix("exp-object-")
            .tempfile_in(&tmp_dir)
            .map_err(|e| io("creating a temp file in", e))?;
        let mut writer = HashingWriter {
            inner: tmp.as_file_mut(),
            hasher: Sha256::new(),
            size: 0,
        };
        io::copy(&mut content, &mut writer).map_err(|e| io("writing a temp file in", e))?;
        let (digest, size) = (writer.hasher.finalize(), writer.size);
        tmp.as_file()
            .sync_all()
            .map_err(|e| io("syncing a temp file in", e))?;
        let oid = Oid::from_digest(&digest);
        let target = self.object_path(&oid);
        if !target.is_file() {
            let parent = target.parent().unwrap_or(&self.root).to_path_buf();
            std::fs::create_dir_all(&parent).map_err(|source| LfsError::Io {
                action: "creating",
                path: parent,
                source,
            })?;
            set_readable(tmp.as_file());
            tmp.persist(&target).map_err(|e| LfsError::Io {
                action: "renaming a temp file to",
                path: target.clone(),
                source: e.error,
            })?;
        }
        Ok(LfsPointer::new(oid, size))
    }

    /// Re-hashes object `oid` and checks it against its name.
    pub fn verify(&self, oid: &Oid) -> Result<(), LfsError> {
        let path = self.object_path(oid);
        let mut file = File::open(&path).map_err(|source| LfsError::Io {
            action: "opening",
            path: path.clone(),
            source,
        })?;
        let mut hasher = Sha256::new();
        io::copy(&mut file, &mut hasher).map_err(|source| LfsError::Io {
            action: "reading",
            path: path.clone(),
            source,
        })?;
        let actual = hex::encode(hasher.finalize());
        if actual == oid.as_str() {
            Ok(())
        } else {
            Err(LfsError::Corrupt { path, actual })
        }
    }
}

/// git-lfs leaves objects readable by group and others; a temp file starts as 0600.
fn set_readable(file: &File) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    #[cfg(not(unix))]
    let _ = file;
}

struct HashingWriter<'a> {
    inner: &'a mut File,
    hasher: Sha256,
    size: u64,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_names_objects_by_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let store = LfsStore::at(dir.path());
        let p = store.insert(&b"hello\n"[..]).unwrap();
        // sha256("hello\n")
        assert_eq!(
            p.oid.as_str(),
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        assert_eq!(p.size, 6);
        let path = store.object_path(&p.oid);
        assert!(path.ends_with(
            "objects/58/91/5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"hello\n");
        store.verify(&p.oid).unwrap();
        // Inserting again is a no-op; nothing is left in tmp.
        store.insert(&b"hello\n"[..]).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn failed_reads_leave_nothing_behind() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let store = LfsStore::at(dir.path());
        assert!(store.insert(Failing).is_err());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert!(!dir.path().join("objects").exists());
    }

    #[test]
    fn verify_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = LfsStore::at(dir.path());
        let p = store.insert(&b"abc"[..]).unwrap();
        let path = store.object_path(&p.oid);
        std::fs::write(&path, b"abd").unwrap();
        assert!(matches!(
            store.verify(&p.oid),
            Err(LfsError::Corrupt { .. })
        ));
    }
}
