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
    durability: Durability,
}

/// When a new object's bytes must be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Before it takes its name (the object is fsynced, then renamed): a crash can never leave
    /// an incomplete file under an oid. The default.
    BeforeNaming,
    /// Before a commit names it: the object is renamed into place with its writeback started
    /// but not awaited, and exp's pre-commit hook fsyncs the staged objects
    /// ([`LfsStore::sync_objects`]). `git add` and `git status` then cost no disk wait, as
    /// with Git's own loose objects. A crash in between can leave an object short of its size;
    /// [`LfsStore::holds`] treats it as absent, so cleaning the file again replaces it, and the
    /// hook refuses to commit it.
    AtCommit,
}

/// Stores many small objects from memory, from many threads: no fsync and no writeback per
/// object — the caller makes the batch durable with [`BatchWriter::sync`] before a commit
/// names it, its writeback started along the way by [`BatchWriter::flushing`] — each object
/// written as an unnamed file linked into place whole (Linux `O_TMPFILE`; elsewhere a temp
/// file with the object's mode, renamed), and each fan-out folder (`objects/ab/cd/`) made once
/// per batch, remembered per folder: with 70k objects spread over 45k folders, creating inodes
/// (files and folders) is nearly all the work, so none is created twice, and no object is
/// looked for in a folder the batch made.
pub struct BatchWriter<'s> {
    store: &'s LfsStore,
    /// What the batch knows of `objects/<ab>/<cd>/`, by `0xabcd`: [`UNKNOWN`], [`FOUND`] or
    /// [`MADE`], in that order (knowledge only grows: `fetch_max`).
    folders: Vec<std::sync::atomic::AtomicU8>,
    /// `objects/`, opened before the batch writes anything: a `syncfs` through it reports
    /// every writeback error of the file system since then (Linux's errseq), however often
    /// the batch syncs.
    objects: File,
    /// The first error of [`BatchWriter::flushing`]'s background syncs: a writeback error is
    /// reported once per file system (Linux's errseq), so the sync that saw it must hand it on.
    flush_error: std::sync::Mutex<Option<io::Error>>,
}

/// A fan-out folder the batch has not met yet.
const UNKNOWN: u8 = 0;
/// A fan-out folder that was there: it may hold objects, so each is looked for.
const FOUND: u8 = 1;
/// A fan-out folder the batch made: it holds only the batch's own objects, so none is looked
/// for (a second file with the same content finds the first one's name taken when linking it).
/// In a new store that spares a `statx` for most objects.
const MADE: u8 = 2;

/// How often [`BatchWriter::flushing`] starts the writeback of what a batch wrote so far.
const FLUSH_PERIOD: std::time::Duration = std::time::Duration::from_millis(200);

/// Writes `bytes` as an unnamed file in `dir` (`O_TMPFILE`) and links it as `target` whole:
/// no temp name to create and rename away, and a crash leaves nothing behind. `None` when the
/// file system cannot (the caller falls back to a temp file); `Some(Ok(true))` when stored,
/// `Some(Ok(false))` when a file is already named `target` (another writer's object, or a
/// damaged one the caller then replaces).
#[cfg(target_os = "linux")]
fn put_unnamed(dir: &Path, target: &Path, bytes: &[u8]) -> Option<io::Result<bool>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o644)
        .open(dir)
        .ok()?;
    if let Err(e) = file.write_all(bytes) {
        return Some(Err(e));
    }
    let proc_path = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    let target_c = std::ffi::CString::new(target.as_os_str().as_bytes()).ok()?;
    // SAFETY: both paths are NUL-terminated C strings that outlive the call.
    let linked = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc_path.as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if linked == 0 {
        return Some(Ok(true));
    }
    match io::Error::last_os_error() {
        e if e.kind() == io::ErrorKind::AlreadyExists => Some(Ok(false)),
        // No /proc, or a file system that cannot link an unnamed file: the temp-file path.
        _ => None,
    }
}

/// `syncfs` of the file system that holds `file` (Linux; elsewhere `sync`, which reports no
/// error).
fn sync_file_system(file: &File) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: syncfs takes an open descriptor, which `file` holds for the call.
        if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
    }
    Ok(())
}

impl BatchWriter<'_> {
    /// Runs `work` (the batch's writing) while a helper thread starts the writeback of what it
    /// wrote so far every [`FLUSH_PERIOD`] (`syncfs`), so that the disk works while the batch is
    /// still hashing and creating files, and [`BatchWriter::sync`] finds little left: 70k
    /// small objects' last `syncfs` took 0.6 s of a 2.1 s add on its own; flushed along the
    /// way, 0.01 s (docs/benchmarks.md). A short batch ends before the first flush.
    pub fn flushing<T>(&self, work: impl FnOnce() -> T) -> T {
        // Elsewhere the only whole-disk flush is `sync`, of every file system: not in a loop.
        if !cfg!(target_os = "linux") {
            return work();
        }
        let (done, wait) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|scope| {
            scope.spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    wait.recv_timeout(FLUSH_PERIOD)
                {
                    if let Err(e) = sync_file_system(&self.objects) {
                        let mut first = self.flush_error.lock().unwrap_or_else(|p| p.into_inner());
                        first.get_or_insert(e);
                    }
                }
            });
            let result = work();
            drop(done);
            result
        })
    }

    /// Makes every object of the batch durable with one `syncfs` of the store's file system
    /// (Linux; elsewhere `sync`) instead of an fsync per object, reporting an error that a
    /// background sync of [`BatchWriter::flushing`] met.
    pub fn sync(&self) -> Result<(), LfsError> {
        let met = self
            .flush_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        met.map_or_else(|| sync_file_system(&self.objects), Err)
            .map_err(|source| LfsError::Io {
                action: "syncing the file system of",
                path: self.store.root.join("objects"),
                source,
            })
    }

    /// Stores `bytes`, whose `pointer` the caller has just computed from them, unless the
    /// store holds the object; returns whether it was new.
    pub fn put(&self, pointer: &LfsPointer, bytes: &[u8]) -> Result<bool, LfsError> {
        use std::sync::atomic::Ordering;
        let store = self.store;
        let io = |action, path: &Path, source| LfsError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        let target = store.object_path(&pointer.oid);
        let parent = target.parent().unwrap_or(&store.root).to_path_buf();
        let slot = usize::from_str_radix(&pointer.oid.as_str()[..4], 16).unwrap_or(0);
        let mut folder = self.folders[slot].load(Ordering::Relaxed);
        if folder == UNKNOWN {
            folder = match std::fs::create_dir(&parent) {
                Ok(()) => MADE,
                // There before the batch, or made by another thread of it just now (which
                // records MADE, over this FOUND).
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => FOUND,
                // `objects/ab/` is missing too, so `ab/cd/` is new as well.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(&parent).map_err(|e| io("creating", &parent, e))?;
                    MADE
                }
                Err(e) => return Err(io("creating", &parent, e)),
            };
            self.folders[slot].fetch_max(folder, Ordering::Relaxed);
        }
        if folder == FOUND && store.refresh(pointer) {
            return Ok(false);
        }
        #[cfg(target_os = "linux")]
        match put_unnamed(&parent, &target, bytes) {
            // Named already, by another writer just now — or a damaged object (short of its
            // size), which the temp-file path below replaces.
            Some(Ok(false)) if !store.holds(pointer) => {}
            Some(stored) => return stored.map_err(|e| io("storing", &target, e)),
            None => {}
        }
        // Elsewhere, a temp file in the store's temp folder, renamed (prune removes what a
        // crash leaves there) — unless the batch stored the object already.
        if folder == MADE && store.holds(pointer) {
            return Ok(false);
        }
        let tmp_dir = store.temp_dir();
        let create = || {
            let mut builder = tempfile::Builder::new();
            builder.prefix("exp-object-");
            #[cfg(unix)]
            builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
            builder.tempfile_in(&tmp_dir)
        };
        let mut tmp = match create() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&tmp_dir).map_err(|e| io("creating", &tmp_dir, e))?;
                create()
            }
            other => other,
        }
        .map_err(|e| io("creating a temp file in", &tmp_dir, e))?;
        tmp.as_file_mut()
            .write_all(bytes)
            .map_err(|e| io("writing a temp file in", &tmp_dir, e))?;
        tmp.persist(&target)
            .map_err(|e| io("renaming a temp file to", &target, e.error))?;
        Ok(true)
    }
}

/// A staged object [`LfsStore::sync_objects`] could not make durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsynced {
    /// The object.
    pub pointer: LfsPointer,
    /// How many bytes the store holds under its oid: `None` when it is absent.
    pub stored: Option<u64>,
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
        LfsStore {
            root,
            durability: Durability::BeforeNaming,
        }
    }

    /// A store rooted at `root` (the directory holding `objects/` and `tmp/`).
    pub fn at(root: impl Into<PathBuf>) -> LfsStore {
        LfsStore {
            root: root.into(),
            durability: Durability::BeforeNaming,
        }
    }

    /// This store, writing new objects with `durability`.
    pub fn with_durability(mut self, durability: Durability) -> LfsStore {
        self.durability = durability;
        self
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

    /// Whether the object of `pointer` is present and whole: of the pointer's size (a crash
    /// before a [`Durability::AtCommit`] object reached the disk can leave it shorter).
    pub fn holds(&self, pointer: &LfsPointer) -> bool {
        self.stored_size(&pointer.oid) == Some(pointer.size)
    }

    /// The size of the file stored under `oid`, if there is one.
    pub fn stored_size(&self, oid: &Oid) -> Option<u64> {
        std::fs::metadata(self.object_path(oid))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Makes the objects of `pointers` durable (fsyncs each and the directories naming it) and
    /// returns those that are absent or short of their size, untouched: a commit must not name
    /// those. An object written [`Durability::BeforeNaming`], or already written back by the
    /// kernel, costs one quick fsync.
    pub fn sync_objects(&self, pointers: &[LfsPointer]) -> Result<Vec<Unsynced>, LfsError> {
        let mut unsynced = Vec::new();
        let mut dirs = std::collections::BTreeSet::new();
        for pointer in pointers {
            let path = self.object_path(&pointer.oid);
            let stored = self.stored_size(&pointer.oid);
            if stored != Some(pointer.size) {
                unsynced.push(Unsynced {
                    pointer: pointer.clone(),
                    stored,
                });
                continue;
            }
            sync_path(&path)?;
            // The file's name lives in its directory, and a new directory's in its parent.
            let mut dir = path.parent();
            while let Some(d) = dir.filter(|d| d.starts_with(&self.root)) {
                dirs.insert(d.to_path_buf());
                dir = d.parent();
            }
        }
        for dir in dirs {
            sync_path(&dir)?;
        }
        Ok(unsynced)
    }

    /// Streams `content` into the store, hashing while writing; returns its pointer. An object
    /// already present is left as it is (content addressing makes it the same bytes).
    pub fn insert(&self, content: impl Read) -> Result<LfsPointer, LfsError> {
        let mut writer = self.writer()?;
        writer.copy_from(content)?;
        writer.finish()
    }

    /// A writer of many small objects at once (`exp data add`): see [`BatchWriter`]. Makes
    /// the store's `objects/` folder if there is none.
    pub fn batch(&self) -> Result<BatchWriter<'_>, LfsError> {
        let dir = self.root.join("objects");
        let io = |action, source| LfsError::Io {
            action,
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(|e| io("creating", e))?;
        let objects = File::open(&dir).map_err(|e| io("opening", e))?;
        Ok(BatchWriter {
            store: self,
            objects,
            folders: (0..1 << 16)
                .map(|_| std::sync::atomic::AtomicU8::new(UNKNOWN))
                .collect(),
            flush_error: std::sync::Mutex::new(None),
        })
    }

    /// Like [`LfsStore::insert`], for content that must be object `expected` (a download): a
    /// different digest or size stores nothing and is an error.
    pub fn insert_expected(
        &self,
        expected: &LfsPointer,
        content: impl Read,
    ) -> Result<(), LfsError> {
        let mut writer = self.writer()?;
        writer.expect = Some(expected.clone());
        writer.copy_from(content)?;
        writer.finish().map(|_| ())
    }

    /// Copies `file` from its current position into a new temp file of the store (std's
    /// File-to-File copy is `copy_file_range` on Linux); [`LfsStore::persist`] names it.
    pub fn copy_to_temp(
        &self,
        file: &mut File,
    ) -> Result<(tempfile::NamedTempFile, u64), LfsError> {
        let (mut tmp, tmp_dir) = self.new_temp()?;
        let io = |action, source| LfsError::Io {
            action,
            path: tmp_dir.clone(),
            source,
        };
        let copied = io::copy(file, tmp.as_file_mut()).map_err(|e| io("copying into", e))?;
        // Writeback starts now, while the caller is still hashing, without waiting for it: the
        // fsync before the rename (as long as the copy itself on this disk) then has little
        // left to do, and an object that turns out to be known costs no wait.
        start_writeback(tmp.as_file());
        Ok((tmp, copied))
    }

    /// Whether the object of `pointer` is present and whole ([`LfsStore::holds`]); if it is,
    /// it counts as stored again: young again, so a prune running now keeps it (its grace
    /// period protects objects whose pointers are about to be committed).
    pub fn refresh(&self, pointer: &LfsPointer) -> bool {
        if !self.holds(pointer) {
            return false;
        }
        let target = self.object_path(&pointer.oid);
        if let Ok(f) = File::options().append(true).open(&target) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        true
    }

    /// Moves a complete temp file into place as the object of `pointer` (synced first unless
    /// the store syncs [`Durability::AtCommit`]), unless the object is already there whole
    /// (then the temp file is dropped unsynced: no disk writes). An object short of its size is
    /// replaced.
    pub fn persist(
        &self,
        tmp: tempfile::NamedTempFile,
        pointer: &LfsPointer,
    ) -> Result<(), LfsError> {
        let target = self.object_path(&pointer.oid);
        if self.refresh(pointer) {
            return Ok(());
        }
        match self.durability {
            Durability::BeforeNaming => {
                tmp.as_file().sync_all().map_err(|source| LfsError::Io {
                    action: "syncing a temp file for",
                    path: target.clone(),
                    source,
                })?
            }
            Durability::AtCommit => start_writeback(tmp.as_file()),
        }
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
        Ok(())
    }

    /// A new temp file in `<lfs dir>/tmp` (deleted when dropped unless persisted).
    /// Where objects are written before they take their name (`lfs/tmp`).
    pub fn temp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn new_temp(&self) -> Result<(tempfile::NamedTempFile, PathBuf), LfsError> {
        let tmp_dir = self.temp_dir();
        std::fs::create_dir_all(&tmp_dir).map_err(|source| LfsError::Io {
            action: "creating",
            path: tmp_dir.clone(),
            source,
        })?;
        let tmp = tempfile::Builder::new()
            .prefix("exp-object-")
            .tempfile_in(&tmp_dir)
            .map_err(|source| LfsError::Io {
                action: "creating a temp file in",
                path: tmp_dir.clone(),
                source,
            })?;
        Ok((tmp, tmp_dir))
    }

    /// A streaming writer of one new object: feed it chunks, then `finish` names it. The
    /// caller's thread hashes while a second thread writes the temp file, so a new object
    /// costs about one SHA-256 pass, not a hash plus a write.
    pub fn writer(&self) -> Result<ObjectWriter, LfsError> {
        let (tmp, tmp_dir) = self.new_temp()?;
        let (to_disk, chunks) = std::sync::mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT);
        let (recycle, spare) = std::sync::mpsc::channel::<Vec<u8>>();
        let disk = std::thread::spawn(move || -> io::Result<tempfile::NamedTempFile> {
            let mut tmp = tmp;
            for chunk in chunks {
                tmp.as_file_mut().write_all(&chunk)?;
                let _ = recycle.send(chunk);
            }
            Ok(tmp)
        });
        Ok(ObjectWriter {
            store: self.clone(),
            tmp_dir,
            disk: Some((to_disk, disk)),
            spare,
            pending: Vec::with_capacity(COPY_BUFFER),
            hasher: Sha256::new(),
            size: 0,
            expect: None,
        })
    }

    /// Moves a corrupt object out of the way, to `<lfs dir>/bad/<oid>` (where git-lfs's fsck
    /// puts them): never deleted, no longer served.
    pub fn quarantine(&self, oid: &Oid) -> Result<PathBuf, LfsError> {
        let bad = self.root.join("bad");
        std::fs::create_dir_all(&bad).map_err(|source| LfsError::Io {
            action: "creating",
            path: bad.clone(),
            source,
        })?;
        // Never overwrite an earlier quarantined copy.
        let mut target = bad.join(oid.as_str());
        let mut n = 1;
        while target.exists() {
            target = bad.join(format!("{}.{n}", oid.as_str()));
            n += 1;
        }
        std::fs::rename(self.object_path(oid), &target).map_err(|source| LfsError::Io {
            action: "moving aside",
            path: self.object_path(oid),
            source,
        })?;
        Ok(target)
    }

    /// Every object in the store, with its size (files whose names are not oids, or that sit
    /// in the wrong directory, are skipped: they are not objects).
    pub fn objects(&self) -> Result<Vec<(Oid, u64)>, LfsError> {
        let mut found = Vec::new();
        let objects = self.root.join("objects");
        if !objects.is_dir() {
            return Ok(found);
        }
        let read = |dir: &Path| {
            std::fs::read_dir(dir).map_err(|source| LfsError::Io {
                action: "listing",
                path: dir.to_path_buf(),
                source,
            })
        };
        for a in read(&objects)?.flatten() {
            if !a.path().is_dir() {
                continue;
            }
            for b in read(&a.path())?.flatten() {
                if !b.path().is_dir() {
                    continue;
                }
                for f in read(&b.path())?.flatten() {
                    let name = f.file_name().to_string_lossy().into_owned();
                    let Ok(oid) = Oid::parse(&name) else { continue };
                    if self.object_path(&oid) != f.path() {
                        continue;
                    }
                    if let Ok(meta) = f.metadata() {
                        if meta.is_file() {
                            found.push((oid, meta.len()));
                        }
                    }
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// Deletes object `oid` (prune decides which).
    pub fn remove(&self, oid: &Oid) -> Result<(), LfsError> {
        let path = self.object_path(oid);
        std::fs::remove_file(&path).map_err(|source| LfsError::Io {
            action: "deleting",
            path,
            source,
        })
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

/// Starts writing `file`'s dirty pages to disk without waiting for them.
fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: sync_file_range reads no memory of ours; a failure only loses the head start.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// fsyncs the file or directory at `path`.
fn sync_path(path: &Path) -> Result<(), LfsError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| LfsError::Io {
            action: "syncing",
            path: path.to_path_buf(),
            source,
        })
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

/// Reads and writes in chunks this large: few syscalls, and well inside the L2 cache.
const COPY_BUFFER: usize = 1 << 20;

impl Drop for ObjectWriter {
    /// An abandoned writer waits for its disk thread, so the temp file is gone on return.
    fn drop(&mut self) {
        if self.disk.is_some() {
            let _ = self.join_disk();
        }
    }
}

/// Chunks queued for the disk thread (bounded: memory stays at a few MiB).
const IN_FLIGHT: usize = 4;

type DiskThread = (
    std::sync::mpsc::SyncSender<Vec<u8>>,
    std::thread::JoinHandle<io::Result<tempfile::NamedTempFile>>,
);

/// One object being written: bytes go into SHA-256 here and to a temp file on a second thread.
pub struct ObjectWriter {
    store: LfsStore,
    tmp_dir: PathBuf,
    disk: Option<DiskThread>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    pending: Vec<u8>,
    hasher: Sha256,
    size: u64,
    expect: Option<LfsPointer>,
}

impl ObjectWriter {
    /// Appends `chunk`.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), LfsError> {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        self.pending.extend_from_slice(chunk);
        if self.pending.len() >= COPY_BUFFER {
            self.send()?;
        }
        Ok(())
    }

    /// Hands the pending bytes to the disk thread, taking a recycled buffer in exchange.
    fn send(&mut self) -> Result<(), LfsError> {
        let next = self
            .spare
            .try_recv()
            .map(|mut v| {
                v.clear();
                v
            })
            .unwrap_or_else(|_| Vec::with_capacity(COPY_BUFFER));
        let full = std::mem::replace(&mut self.pending, next);
        let sent = match &self.disk {
            Some((to_disk, _)) => to_disk.send(full).is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            // The disk thread stopped: its error says why.
            Err(self.join_disk().err().unwrap_or_else(|| {
                self.io_error("writing a temp file in", io::Error::other("writer stopped"))
            }))
        }
    }

    fn join_disk(&mut self) -> Result<tempfile::NamedTempFile, LfsError> {
        let Some((to_disk, thread)) = self.disk.take() else {
            return Err(self.io_error("writing a temp file in", io::Error::other("writer closed")));
        };
        drop(to_disk);
        match thread.join() {
            Ok(Ok(tmp)) => Ok(tmp),
            Ok(Err(e)) => Err(self.io_error("writing a temp file in", e)),
            Err(_) => Err(self.io_error(
                "writing a temp file in",
                io::Error::other("writer panicked"),
            )),
        }
    }

    /// Appends everything `content` yields.
    pub fn copy_from(&mut self, mut content: impl Read) -> Result<(), LfsError> {
        let mut buf = vec![0u8; COPY_BUFFER];
        loop {
            let n = match content.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_error("reading the content for", e)),
            };
            self.write(&buf[..n])?;
        }
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn io_error(&self, action: &'static str, source: io::Error) -> LfsError {
        LfsError::Io {
            action,
            path: self.tmp_dir.clone(),
            source,
        }
    }

    /// Names the object by its digest and moves it into place (unless it is already there:
    /// then the temp file is dropped unsynced, so re-cleaning a known file costs no disk
    /// writes). The store's [`Durability`] says whether it is synced before it takes its name.
    pub fn finish(mut self) -> Result<LfsPointer, LfsError> {
        if !self.pending.is_empty() {
            self.send()?;
        }
        let tmp = self.join_disk()?;
        let oid = Oid::from_digest(&std::mem::take(&mut self.hasher).finalize());
        if let Some(expected) = &self.expect {
            if expected.oid != oid || expected.size != self.size {
                return Err(LfsError::Mismatch {
                    expected: expected.oid.as_str().to_string(),
                    actual: oid.as_str().to_string(),
                    size: self.size,
                });
            }
        }
        let pointer = LfsPointer::new(oid, self.size);
        self.store.persist(tmp, &pointer)?;
        Ok(pointer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_stores_whole_objects_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = LfsStore::at(dir.path());
        let batch = store.batch().unwrap();
        let bytes = b"a small image".to_vec();
        let pointer = LfsPointer::new(
            Oid::from_digest(&Sha256::digest(&bytes)),
            bytes.len() as u64,
        );
        assert!(batch.put(&pointer, &bytes).unwrap());
        assert!(!batch.put(&pointer, &bytes).unwrap(), "stored once");
        assert!(store.holds(&pointer));
        assert_eq!(
            std::fs::read(store.object_path(&pointer.oid)).unwrap(),
            bytes
        );
        store.verify(&pointer.oid).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(store.object_path(&pointer.oid))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o444, 0o444, "readable by all: {mode:o}");
        }
        assert_eq!(
            store.objects().unwrap(),
            vec![(pointer.oid.clone(), pointer.size)]
        );
        // Nothing left beside it: no temp names.
        let leaf = store
            .object_path(&pointer.oid)
            .parent()
            .unwrap()
            .to_path_buf();
        assert_eq!(std::fs::read_dir(leaf).unwrap().count(), 1);
        batch.sync().unwrap();
    }

    /// A batch stores the same bytes once; a later batch finds what an earlier one stored (the
    /// folder exists: it looks), and replaces an object short of its size instead of keeping it.
    #[test]
    fn a_batch_finds_stored_objects_and_replaces_damaged_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = LfsStore::at(dir.path());
        let pointer_of = |bytes: &[u8]| {
            LfsPointer::new(Oid::from_digest(&Sha256::digest(bytes)), bytes.len() as u64)
        };
        let (a, b) = (b"first image".to_vec(), b"second image".to_vec());
        let (pa, pb) = (pointer_of(&a), pointer_of(&b));
        let first = store.batch().unwrap();
        assert!(first.put(&pa, &a).unwrap());
        assert!(
            !first.put(&pa, &a).unwrap(),
            "a second file of the same bytes, in the folder the batch made"
        );
        assert!(
            !store.batch().unwrap().put(&pa, &a).unwrap(),
            "found by a new batch"
        );
        assert!(store.batch().unwrap().put(&pb, &b).unwrap());
        std::fs::write(store.object_path(&pb.oid), &b[..4]).unwrap();
        assert!(!store.holds(&pb));
        let batch = store.batch().unwrap();
        assert!(
            batch.put(&pb, &b).unwrap(),
            "the damaged object is stored again"
        );
        assert_eq!(std::fs::read(store.object_path(&pb.oid)).unwrap(), b);
        assert!(!batch.put(&pb, &b).unwrap());
        store.verify(&pb.oid).unwrap();
    }

    /// `flushing` returns its work's value, its helper flushing meanwhile (the work outlasts
    /// two periods, storing partway); a writeback error a background sync met is reported by
    /// the next `sync`, once (the kernel reports it only once).
    #[test]
    fn a_flushing_batch_hands_on_what_its_background_syncs_met() {
        let dir = tempfile::tempdir().unwrap();
        let store = LfsStore::at(dir.path());
        let batch = store.batch().unwrap();
        let bytes = b"an image".to_vec();
        let pointer = LfsPointer::new(Oid::from_digest(&Sha256::digest(&bytes)), 8);
        let stored = batch.flushing(|| {
            std::thread::sleep(FLUSH_PERIOD);
            let stored = batch.put(&pointer, &bytes).unwrap();
            std::thread::sleep(FLUSH_PERIOD * 2);
            stored
        });
        assert!(stored);
        batch.sync().unwrap();
        store.verify(&pointer.oid).unwrap();

        *batch.flush_error.lock().unwrap() = Some(io::Error::from_raw_os_error(libc::EIO));
        let err = batch.sync().unwrap_err().to_string();
        assert!(err.contains("syncing the file system of"), "{err}");
        assert!(
            err.contains(&dir.path().join("objects").display().to_string()),
            "{err}"
        );
        batch.sync().unwrap();
    }

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

    #[test]
    fn an_object_short_of_its_size_counts_as_absent_and_is_replaced() {
        for durability in [Durability::BeforeNaming, Durability::AtCommit] {
            let dir = tempfile::tempdir().unwrap();
            let store = LfsStore::at(dir.path()).with_durability(durability);
            let content = vec![7u8; 3 << 20];
            let p = store.insert(&content[..]).unwrap();
            assert!(store.holds(&p));
            assert_eq!(std::fs::read(store.object_path(&p.oid)).unwrap(), content);
            // What a crash before the data reached the disk leaves: the name, fewer bytes.
            let short = File::options()
                .write(true)
                .open(store.object_path(&p.oid))
                .unwrap();
            short.set_len(4096).unwrap();
            drop(short);
            assert!(store.contains(&p.oid) && !store.holds(&p), "{durability:?}");
            assert!(!store.refresh(&p));
            assert_eq!(store.insert(&content[..]).unwrap(), p);
            assert!(store.holds(&p));
            store.verify(&p.oid).unwrap();
        }
    }

    #[test]
    fn sync_objects_syncs_whole_objects_and_reports_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = LfsStore::at(dir.path()).with_durability(Durability::AtCommit);
        let whole = store.insert(&b"whole weights"[..]).unwrap();
        let short = store.insert(&b"short weights"[..]).unwrap();
        std::fs::write(store.object_path(&short.oid), b"short").unwrap();
        let absent = LfsPointer::new(Oid::from_digest(&Sha256::digest(b"never stored")), 12);
        let unsynced = store
            .sync_objects(&[whole.clone(), short.clone(), absent.clone()])
            .unwrap();
        assert_eq!(
            unsynced,
            vec![
                Unsynced {
                    pointer: short,
                    stored: Some(5)
                },
                Unsynced {
                    pointer: absent,
                    stored: None
                },
            ]
        );
        assert!(store.sync_objects(&[whole]).unwrap().is_empty());
    }
}
