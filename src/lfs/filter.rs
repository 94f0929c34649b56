//! exp's own `filter.lfs`: clean (content → object + pointer), smudge (pointer → content), and
//! Git's long-running filter process (gitattributes(5), "Long Running Filter Process"), so a
//! repository behaves without git-lfs installed (docs/design.md §6).
//!
//! Both directions stream in bounded memory. Clean writes the object through the store's temp
//! file and rename; smudge verifies the SHA-256 while it streams and, for an object that is not
//! in the store, writes the pointer and warns rather than failing the checkout.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::pktline::{PktError, PktReader, PktWriter};
use super::pointer::MAX_POINTER;
use super::statcache::{stat_cache_path, FileStat, StatCache};
use super::{Durability, LfsError, LfsPointer, LfsStore, Oid};

const CHUNK: usize = 1 << 20;

/// A filter-process failure that ends the process (a per-file failure is answered with
/// `status=error` and the process goes on).
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// Git is not speaking the protocol we expect.
    #[error("filter protocol: {0}")]
    Protocol(#[from] PktError),
    /// Writing to Git failed.
    #[error("filter protocol: writing to git: {0}")]
    Write(#[from] io::Error),
    /// The handshake named something other than a version-2 filter client.
    #[error("filter protocol: git offered {0:?}; exp speaks git-filter-client version 2")]
    Handshake(Vec<String>),
}

/// What the smudge filter wrote. Where exp cannot write the object, it writes the pointer
/// re-encoded, as git-lfs does (git-lfs then fails the checkout unless
/// `lfs.skipdownloaderrors`; exp warns and goes on).
#[derive(Debug, PartialEq, Eq)]
pub enum Smudged {
    /// The object's content, verified.
    Object(LfsPointer),
    /// A pointer to zero bytes: the empty file, whatever its oid (as git-lfs writes it).
    Empty(LfsPointer),
    /// The object is not in the local store, nor on the default remote: the pointer was written.
    Missing(LfsPointer),
    /// The store holds the oid with another size than the pointer's: the pointer was written
    /// (the object is left for `exp lfs fsck` to judge; git-lfs deletes it).
    WrongSize {
        /// The pointer.
        pointer: LfsPointer,
        /// The stored object's size.
        stored: u64,
    },
    /// The pointer names extensions (`ext-N-name`), programs exp does not run: the pointer was
    /// written.
    Extensions(LfsPointer),
    /// The input was not a pointer and was written unchanged.
    NotAPointer,
}

impl Smudged {
    /// The warning for a checkout of `path` that got a pointer instead of its content.
    pub fn warning(&self, path: &str) -> Option<String> {
        let what = match self {
            Smudged::Object(_) | Smudged::Empty(_) | Smudged::NotAPointer => return None,
            Smudged::Missing(p) => format!(
                "the LFS object {} for {path} is not in the local store; the file holds its pointer (run `exp pull` to fetch the object)",
                p.oid
            ),
            Smudged::WrongSize { pointer, stored } => format!(
                "the LFS object {} for {path} is stored with {stored} bytes, its pointer says {}; the file holds its pointer (run `exp lfs fsck`, then `exp pull`)",
                pointer.oid, pointer.size
            ),
            Smudged::Extensions(p) => format!(
                "{path}'s pointer names LFS extensions ({}), which exp does not run; the file holds its pointer (check it out with git-lfs and the extensions configured)",
                p.extensions
                    .iter()
                    .map(|e| String::from_utf8_lossy(&e.name).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Some(format!("exp lfs: warning: {what}"))
    }
}

/// Where the filter's messages go. Git shows a filter's stderr to the user, so the command
/// line passes a function that writes there; the library itself never prints.
pub type Messages = fn(std::fmt::Arguments);

/// Messages dropped (tests, and callers that report otherwise).
pub fn no_messages(_: std::fmt::Arguments) {}

/// The clean and smudge filters of one repository.
pub struct Filter {
    store: LfsStore,
    /// Warnings, and with `EXP_LFS_TRACE=1` the stat-cache decisions.
    messages: Messages,
    worktree: Option<PathBuf>,
    cache: StatCache,
    /// The repository, reopened only if a smudge needs the default remote.
    git_dir: PathBuf,
    /// Where a missing object is fetched from when smudging (the default remote), resolved on
    /// first need: most filter runs never fetch.
    remote: std::cell::OnceCell<Option<super::remote::RemoteStore>>,
}

impl Filter {
    /// The filters of `repo` (its store, work tree and stat cache).
    pub fn open(repo: &git2::Repository, messages: Messages) -> Filter {
        let durability = super::config::filter_durability(repo);
        trace(
            messages,
            format_args!(
                "new objects synced {}",
                match durability {
                    Durability::BeforeNaming => "before they take their names",
                    Durability::AtCommit => "at commit, by exp's pre-commit hook",
                }
            ),
        );
        Filter {
            messages,
            store: LfsStore::for_repo(repo).with_durability(durability),
            worktree: repo.workdir().map(Path::to_path_buf),
            cache: StatCache::load(stat_cache_path(repo)),
            git_dir: repo.path().to_path_buf(),
            remote: std::cell::OnceCell::new(),
        }
    }

    /// The store the filters write to.
    pub fn store(&self) -> &LfsStore {
        &self.store
    }

    /// Cleans `input` (the content of work-tree file `path`, relative to the work tree, when
    /// known): stores it as an object and returns the pointer text. A pointer comes back
    /// unchanged (cleaning is idempotent, as with git-lfs).
    pub fn clean(
        &mut self,
        input: &mut impl Read,
        path: Option<&Path>,
    ) -> Result<Vec<u8>, LfsError> {
        self.clean_chunks(&mut ReadChunks::new(input), path)
    }

    /// [`Filter::clean`] over borrowed chunks: the filter process passes Git's packets as they
    /// lie in the packet buffer, so a stat-cache hit compares them with the file without
    /// copying them first.
    pub fn clean_chunks(
        &mut self,
        input: &mut impl ChunkSource,
        path: Option<&Path>,
    ) -> Result<Vec<u8>, LfsError> {
        let start = SystemTime::now();
        // Enough of the start to tell a pointer (Git sends 64 KiB packets: one, as a rule).
        let mut head = Vec::new();
        while head.len() <= MAX_POINTER {
            match input.next_chunk()? {
                Some(chunk) => head.extend_from_slice(chunk),
                None => break,
            }
        }
        // Empty stays empty (git-lfs stores an empty file as the empty blob); a pointer is
        // its own clean.
        if head.is_empty() || head.len() <= MAX_POINTER && LfsPointer::parse(&head).is_ok() {
            return Ok(head);
        }
        let file = path.and_then(|p| self.worktree.as_ref().map(|w| w.join(p)));
        let before = file.as_deref().and_then(FileStat::of);
        let mut twin = match (&file, &before) {
            (Some(f), Some(_)) => FileTwin::open(f),
            _ => None,
        };
        let cached = match (&file, &before) {
            (Some(f), Some(stat)) => self
                .cache
                .get(f, stat)
                .filter(|o| self.store.holds(&LfsPointer::new(o.clone(), stat.size))),
            _ => None,
        };

        // A stat-cache hit: confirm that Git is streaming exactly that file, without hashing.
        if let (Some(oid), Some(t), Some(stat)) = (&cached, twin.as_mut(), &before) {
            let mut mismatch = (!t.matches(&head)).then_some(head);
            while mismatch.is_none() {
                match input.next_chunk()? {
                    Some(chunk) => {
                        if !t.matches(chunk) {
                            mismatch = Some(chunk.to_vec());
                        }
                    }
                    None => {
                        if t.pos == stat.size
                            && t.at_end()
                            && FileStat::of(&t.path).as_ref() == Some(stat)
                        {
                            trace(
                                self.messages,
                                format_args!("stat cache hit: {}", t.path.display()),
                            );
                            return Ok(LfsPointer::new(oid.clone(), stat.size)
                                .encode()
                                .into_bytes());
                        }
                        mismatch = Some(Vec::new());
                    }
                }
            }
            trace(
                self.messages,
                format_args!("stat cache entry not confirmed: {}", t.path.display()),
            );
            // Not the file (or not any more): hash it after all. The bytes before this chunk
            // were compared equal to the file's, so they are read back from it.
            let mut writer = self.store.writer()?;
            let prefix = t.pos;
            t.read_prefix(prefix, &mut writer)?;
            if FileStat::of(&t.path).as_ref() != Some(stat) {
                return Err(LfsError::Io {
                    action: "cleaning (it changed while being read; run the command again)",
                    path: t.path.clone(),
                    source: io::Error::other("file modified during clean"),
                });
            }
            writer.write(&mismatch.unwrap_or_default())?;
            while let Some(chunk) = input.next_chunk()? {
                writer.write(chunk)?;
            }
            return writer.finish().map(|p| p.encode().into_bytes());
        }

        let mut writer = self.store.writer()?;
        let mut consume = |chunk: &[u8], twin: &mut Option<FileTwin>| -> Result<(), LfsError> {
            writer.write(chunk)?;
            if twin.as_mut().is_some_and(|t| !t.matches(chunk)) {
                *twin = None;
            }
            Ok(())
        };
        consume(&head, &mut twin)?;
        while let Some(chunk) = input.next_chunk()? {
            consume(chunk, &mut twin)?;
        }
        let pointer = writer.finish()?;
        // Record the file only if what Git streamed is the file, as it was before and after
        // the read, and not racily fresh.
        if let (Some(mut t), Some(stat)) = (twin, before) {
            if t.pos == stat.size
                && t.at_end()
                && FileStat::of(&t.path) == Some(stat)
                && stat.settled_before(start)
            {
                trace(
                    self.messages,
                    format_args!("hashed and cached: {}", t.path.display()),
                );
                self.cache.insert(t.path, stat, &pointer.oid);
            }
        }
        Ok(pointer.encode().into_bytes())
    }

    /// Cleans a regular file (`exp lfs clean < FILE`): one thread hashes it while another
    /// copies it into a temp file in the store inside the kernel (`copy_file_range`, no
    /// user-space copy); the copy becomes the object only if the file's stat did not change
    /// meanwhile and the object is new.
    pub fn clean_file(&mut self, file: &mut File) -> Result<Vec<u8>, LfsError> {
        let io = |action, source| LfsError::Io {
            action,
            path: PathBuf::from("<stdin>"),
            source,
        };
        let start = SystemTime::now();
        let stat_of = |f: &File| FileStat::of(&PathBuf::from(format!("/proc/self/fd/{}", fd(f))));
        let before = stat_of(file);
        let mut buf = vec![0u8; CHUNK];
        let head = read_full(file, &mut buf[..MAX_POINTER + 1])?;
        if head == 0 || head <= MAX_POINTER && LfsPointer::parse(&buf[..head]).is_ok() {
            return Ok(buf[..head].to_vec());
        }
        // Hashing one read and copying another is only sound for a file that is not being
        // written: one whose stat is known and not racily fresh. Anything else is streamed
        // through the hashing writer.
        if !before.is_some_and(|b| b.settled_before(start)) {
            let mut writer = self.store.writer()?;
            writer.write(&buf[..head])?;
            writer.copy_from(&mut *file)?;
            return writer.finish().map(|p| p.encode().into_bytes());
        }
        // The stat cache as a hint, never as the answer: a file it knows (same path, size,
        // times, inode) most likely holds a stored object, so it is hashed alone and copied only
        // if its object turns out to be missing or short; other files are hashed while they are
        // copied.
        let path = std::fs::read_link(format!("/proc/self/fd/{}", fd(file))).ok();
        let likely_known = path
            .as_ref()
            .zip(before.as_ref())
            .and_then(|(p, stat)| Some(LfsPointer::new(self.cache.get(p, stat)?, stat.size)))
            .is_some_and(|pointer| self.store.holds(&pointer));
        let changed = || {
            io(
                "cleaning (it changed while being read; run the command again)",
                io::Error::other("file modified during clean"),
            )
        };
        if likely_known {
            let pointer = hash_rest(file, &mut buf, head)?;
            if stat_of(file) != before {
                return Err(changed());
            }
            if !self.store.refresh(&pointer) {
                trace(
                    self.messages,
                    format_args!("stat cache hint wrong: copying after hashing"),
                );
                let (tmp, copied) = self
                    .store
                    .copy_to_temp(&mut reopen(file).map_err(|e| io("reopening", e))?)?;
                if stat_of(file) != before || copied != pointer.size {
                    return Err(changed());
                }
                self.store.persist(tmp, &pointer)?;
            }
            if let (Some(path), Some(stat)) = (path, before) {
                self.cache.insert(path, stat, &pointer.oid);
            }
            return Ok(pointer.encode().into_bytes());
        }
        // The copy needs its own file offset: a second open of the same file.
        let mut twin = reopen(file).map_err(|e| io("reopening", e))?;
        let store = self.store.clone();
        let (copy, pointer) = std::thread::scope(|scope| {
            let copier = scope.spawn(move || store.copy_to_temp(&mut twin));
            let hashed = hash_rest(file, &mut buf, head);
            let copy = copier
                .join()
                .unwrap_or_else(|_| Err(io("copying", io::Error::other("copy thread panicked"))));
            hashed.map(|pointer| (copy, pointer))
        })?;
        let (tmp, copied) = copy?;
        // Size, mtime, ctime, inode and device: any write in between changes the ctime.
        if stat_of(file) != before || copied != pointer.size {
            return Err(changed());
        }
        self.store.persist(tmp, &pointer)?;
        // Hashed from the file itself, stat unchanged and settled: a hint for the next clean.
        if let (Some(path), Some(stat)) = (path, before) {
            self.cache.insert(path, stat, &pointer.oid);
        }
        Ok(pointer.encode().into_bytes())
    }

    /// Writes the stat cache if it changed.
    pub fn save_cache(&mut self) {
        self.cache.save();
    }

    /// Smudges `input` into `out` as git-lfs does: the object's content for a pointer whose
    /// object is present (verified against its oid and size while streaming, which git-lfs does
    /// not do), nothing for a pointer to zero bytes, the pointer re-encoded when the object
    /// cannot be had, and anything that is not a pointer unchanged.
    pub fn smudge(&self, input: &mut impl Read, out: &mut impl Write) -> Result<Smudged, LfsError> {
        let mut head = vec![0u8; MAX_POINTER + 1];
        let n = read_full(input, &mut head)?;
        // As git-lfs: a start that decodes is the pointer, and the rest is not read.
        let Ok(pointer) = LfsPointer::parse_smudge_head(&head[..n]) else {
            out.write_all(&head[..n]).map_err(stream_error)?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let k = read_full(input, &mut buf)?;
                if k == 0 {
                    return Ok(Smudged::NotAPointer);
                }
                out.write_all(&buf[..k]).map_err(stream_error)?;
            }
        };
        // git-lfs writes a pointer to zero bytes as the empty file and never looks it up.
        if pointer.size == 0 {
            return Ok(Smudged::Empty(pointer));
        }
        // git-lfs runs only the extensions configured for it; exp runs none.
        if !pointer.extensions.is_empty() {
            out.write_all(&pointer.encode_bytes())
                .map_err(stream_error)?;
            return Ok(Smudged::Extensions(pointer));
        }
        let path = self.store.object_path(&pointer.oid);
        if !self.store.holds(&pointer) {
            // As git-lfs does: fetch the object from the default remote during checkout, so
            // a clone through exp's filter gets its weights.
            let remote = self.remote.get_or_init(|| {
                let repo = git2::Repository::open(&self.git_dir).ok()?;
                super::remote::default_remote_store(&repo)
            });
            if let Some(remote) = remote {
                // No commit follows a checkout to sync a download: it is synced as it lands.
                let store = self.store.clone().with_durability(Durability::BeforeNaming);
                if let Err(e) = remote.download(&store, std::slice::from_ref(&pointer)) {
                    (self.messages)(format_args!(
                        "exp lfs: fetching {} from the remote: {e}",
                        pointer.oid
                    ));
                }
            }
        }
        if !self.store.holds(&pointer) {
            // What git-lfs writes when it has no object: the pointer, re-encoded.
            out.write_all(&pointer.encode_bytes())
                .map_err(stream_error)?;
            return Ok(match self.store.stored_size(&pointer.oid) {
                Some(stored) => Smudged::WrongSize { pointer, stored },
                None => Smudged::Missing(pointer),
            });
        }
        let mut object = File::open(&path).map_err(|source| LfsError::Io {
            action: "opening",
            path: path.clone(),
            source,
        })?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let k = read_full(&mut object, &mut buf).map_err(|e| match e {
                LfsError::Stream(source) => LfsError::Io {
                    action: "reading",
                    path: path.clone(),
                    source,
                },
                other => other,
            })?;
            if k == 0 {
                break;
            }
            hasher.update(&buf[..k]);
            size += k as u64;
            out.write_all(&buf[..k]).map_err(stream_error)?;
        }
        let actual = hex::encode(hasher.finalize());
        if actual != pointer.oid.as_str() || size != pointer.size {
            return Err(LfsError::Corrupt { path, actual });
        }
        Ok(Smudged::Object(pointer))
    }
}

/// With `EXP_LFS_TRACE=1`, one line on stderr per stat-cache decision, and one saying when new
/// objects are synced (Git passes a filter's stderr through), to see why `git status` did or
/// did not hash a file.
fn trace(messages: Messages, message: std::fmt::Arguments) {
    if std::env::var_os("EXP_LFS_TRACE").is_some_and(|v| v == "1") {
        messages(format_args!("exp lfs: {message}"));
    }
}

fn fd(file: &File) -> i32 {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        file.as_raw_fd()
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        -1
    }
}

/// A second, independent open of `file` (its own offset).
fn reopen(file: &File) -> io::Result<File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        File::open(format!("/proc/self/fd/{}", file.as_raw_fd()))
    }
    #[cfg(not(target_os = "linux"))]
    {
        file.try_clone()
    }
}

fn stream_error(e: io::Error) -> LfsError {
    LfsError::Stream(e)
}

/// The pointer of `buf[..head]` followed by the rest of `file` (read through `buf`).
fn hash_rest(file: &mut File, buf: &mut [u8], head: usize) -> Result<LfsPointer, LfsError> {
    let mut hasher = Sha256::new();
    hasher.update(&buf[..head]);
    let mut size = head as u64;
    loop {
        match read_full(file, buf)? {
            0 => return Ok(LfsPointer::new(Oid::from_digest(&hasher.finalize()), size)),
            n => {
                hasher.update(&buf[..n]);
                size += n as u64;
            }
        }
    }
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> Result<usize, LfsError> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stream_error(e)),
        }
    }
    Ok(filled)
}

/// The work-tree file read alongside the stream, to tell whether Git is streaming that file.
/// It is read in blocks of [`CHUNK`] and compared with the stream's chunks where they lie.
struct FileTwin {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    /// The unread part of the block is `buf[at..filled]`.
    at: usize,
    filled: usize,
    /// Bytes of the file matched so far (whole chunks only).
    pos: u64,
}

impl FileTwin {
    fn open(path: &Path) -> Option<FileTwin> {
        Some(FileTwin {
            path: path.to_path_buf(),
            file: File::open(path).ok()?,
            buf: vec![0u8; CHUNK],
            at: 0,
            filled: 0,
            pos: 0,
        })
    }

    /// Whether the file's next bytes are `chunk` (advancing past them when they are).
    fn matches(&mut self, chunk: &[u8]) -> bool {
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.at == self.filled {
                match read_full(&mut self.file, &mut self.buf) {
                    Ok(n) if n > 0 => (self.at, self.filled) = (0, n),
                    _ => return false,
                }
            }
            let n = rest.len().min(self.filled - self.at);
            if self.buf[self.at..self.at + n] != rest[..n] {
                return false;
            }
            self.at += n;
            rest = &rest[n..];
        }
        self.pos += chunk.len() as u64;
        true
    }

    fn at_end(&mut self) -> bool {
        self.at == self.filled && matches!(self.file.read(&mut [0u8; 1]), Ok(0))
    }

    /// Writes the file's first `len` bytes into `writer`.
    fn read_prefix(&mut self, len: u64, writer: &mut super::ObjectWriter) -> Result<(), LfsError> {
        let io = |source| LfsError::Io {
            action: "re-reading",
            path: self.path.clone(),
            source,
        };
        self.file.rewind().map_err(io)?;
        (self.at, self.filled) = (0, 0);
        let mut left = len;
        while left > 0 {
            let n = (left as usize).min(self.buf.len());
            self.file.read_exact(&mut self.buf[..n]).map_err(io)?;
            writer.write(&self.buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    }
}

/// Content in borrowed chunks, up to its end (an empty chunk is not the end).
pub trait ChunkSource {
    /// The next chunk, or `None` at the end.
    fn next_chunk(&mut self) -> Result<Option<&[u8]>, LfsError>;
}

/// Git's packets of one file, where they lie in the stream's buffer.
impl<R: io::BufRead> ChunkSource for super::pktline::ContentReader<'_, R> {
    fn next_chunk(&mut self) -> Result<Option<&[u8]>, LfsError> {
        super::pktline::ContentReader::next_chunk(self)
            .map_err(|e| stream_error(io::Error::other(e)))
    }
}

/// Any reader, through a buffer of [`CHUNK`].
pub struct ReadChunks<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: Read> ReadChunks<R> {
    /// Chunks of `inner`.
    pub fn new(inner: R) -> Self {
        ReadChunks {
            inner,
            buf: vec![0u8; CHUNK],
        }
    }
}

impl<R: Read> ChunkSource for ReadChunks<R> {
    fn next_chunk(&mut self) -> Result<Option<&[u8]>, LfsError> {
        let n = read_full(&mut self.inner, &mut self.buf)?;
        Ok((n > 0).then(|| &self.buf[..n]))
    }
}

/// How much of Git's stream one read takes, and the pipe size asked for.
const PIPE_BUFFER: usize = 1 << 20;

/// Asks the kernel for a 1 MiB pipe on `fd` (the default 64 KiB costs a context switch
/// between Git and exp per packet; `git status` on stale multi-GB files is pipe-bound). A
/// refusal (not a pipe, over `/proc/sys/fs/pipe-max-size`) changes nothing.
pub fn widen_pipe(fd: &impl std::os::fd::AsRawFd) {
    #[cfg(target_os = "linux")]
    // SAFETY: F_SETPIPE_SZ only resizes the pipe's buffer; it takes an int and touches no
    // memory of ours.
    unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETPIPE_SZ,
            PIPE_BUFFER as libc::c_int,
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = fd;
}

/// Runs Git's long-running filter protocol on `input`/`output` until Git closes the pipe.
pub fn filter_process(
    filter: &mut Filter,
    input: impl Read,
    output: impl Write,
) -> Result<(), FilterError> {
    let mut reader = PktReader::new(io::BufReader::with_capacity(PIPE_BUFFER, input));
    let mut writer = PktWriter::new(io::BufWriter::with_capacity(1 << 17, output));

    let hello = reader.read_text_list()?.unwrap_or_default();
    if hello.first().map(String::as_str) != Some("git-filter-client")
        || !hello.iter().any(|l| l == "version=2")
    {
        return Err(FilterError::Handshake(hello));
    }
    writer.text("git-filter-server")?;
    writer.text("version=2")?;
    writer.flush_pkt()?;
    writer.flush_io()?;
    let offered = reader.read_text_list()?.unwrap_or_default();
    for capability in ["clean", "smudge"] {
        if offered
            .iter()
            .any(|c| c == &format!("capability={capability}"))
        {
            writer.text(&format!("capability={capability}"))?;
        }
    }
    writer.flush_pkt()?;
    writer.flush_io()?;

    while let Some(header) = reader.read_text_list()? {
        let value = |key: &str| {
            header
                .iter()
                .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
                .map(str::to_string)
        };
        let command = value("command").unwrap_or_default();
        let pathname = value("pathname").unwrap_or_default();
        match command.as_str() {
            "clean" => {
                let mut content = reader.content();
                let result = filter.clean_chunks(&mut content, Some(Path::new(&pathname)));
                content.drain()?;
                match result {
                    Ok(pointer) => {
                        writer.text("status=success")?;
                        writer.flush_pkt()?;
                        writer.data(&pointer)?;
                        writer.flush_pkt()?;
                        writer.flush_pkt()?; // the status list stays "success"
                    }
                    Err(e) => {
                        (filter.messages)(format_args!("exp lfs: cleaning {pathname}: {e}"));
                        writer.text("status=error")?;
                        writer.flush_pkt()?;
                    }
                }
                filter.save_cache();
            }
            "smudge" => {
                // Git writes the whole input before it reads the answer: take it all first
                // (a pointer is tiny; other content spills to a temp file past 16 MiB).
                let mut spool = tempfile::SpooledTempFile::new(16 << 20);
                io::copy(&mut reader.content(), &mut spool)?;
                spool.rewind()?;
                writer.text("status=success")?;
                writer.flush_pkt()?;
                let mut content = writer.content();
                let result = filter.smudge(&mut spool, &mut content);
                content.finish()?;
                writer.flush_pkt()?;
                match result {
                    Ok(outcome) => {
                        if let Some(warning) = outcome.warning(&pathname) {
                            (filter.messages)(format_args!("{warning}"));
                        }
                        writer.flush_pkt()?;
                    }
                    Err(e) => {
                        (filter.messages)(format_args!("exp lfs: smudging {pathname}: {e}"));
                        writer.text("status=error")?;
                        writer.flush_pkt()?;
                    }
                }
            }
            other => {
                reader.content().drain()?;
                (filter.messages)(format_args!(
                    "exp lfs: git asked for {other:?}, which exp's filter does not do"
                ));
                writer.text("status=error")?;
                writer.flush_pkt()?;
            }
        }
        writer.flush_io()?;
    }
    filter.save_cache();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter_in(dir: &Path) -> Filter {
        Filter {
            messages: no_messages,
            store: LfsStore::at(dir.join("lfs")),
            worktree: Some(dir.to_path_buf()),
            cache: StatCache::load(dir.join("cache.json")),
            git_dir: dir.join(".git"),
            remote: std::cell::OnceCell::from(None),
        }
    }

    /// A whole session as Git sends it: handshake, capabilities, a clean, a smudge of what the
    /// clean stored, a smudge of a missing object, an unknown command.
    #[test]
    fn speaks_git_filter_protocol_v2() {
        let dir = tempfile::tempdir().unwrap();
        let mut filter = filter_in(dir.path());
        let content: Vec<u8> = (0..150_000u32).map(|i| (i % 253) as u8).collect();
        let pointer = {
            let mut scratch = filter_in(&dir.path().join("scratch"));
            String::from_utf8(scratch.clean(&mut &content[..], None).unwrap()).unwrap()
        };
        let missing = LfsPointer::new(Oid::parse(&"b".repeat(64)).unwrap(), 9).encode();
        let mut wire = Vec::new();
        {
            let mut w = PktWriter::new(&mut wire);
            for l in ["git-filter-client", "version=2"] {
                w.text(l).unwrap();
            }
            w.flush_pkt().unwrap();
            for l in ["capability=clean", "capability=smudge", "capability=delay"] {
                w.text(l).unwrap();
            }
            w.flush_pkt().unwrap();
            for (command, path, data) in [
                ("clean", "w.bin", &content[..]),
                ("smudge", "w.bin", pointer.as_bytes()),
                ("smudge", "gone.bin", missing.as_bytes()),
                ("frobnicate", "x", b"x".as_slice()),
            ] {
                w.text(&format!("command={command}")).unwrap();
                w.text(&format!("pathname={path}")).unwrap();
                w.flush_pkt().unwrap();
                w.data(data).unwrap();
                w.flush_pkt().unwrap();
            }
        }
        let mut out = Vec::new();
        filter_process(&mut filter, &wire[..], &mut out).unwrap();

        let mut r = PktReader::new(&out[..]);
        let mut list = || r.read_text_list().unwrap().unwrap();
        assert_eq!(list(), vec!["git-filter-server", "version=2"]);
        assert_eq!(list(), vec!["capability=clean", "capability=smudge"]);
        let mut r = PktReader::new(&out[..]);
        r.read_text_list().unwrap();
        r.read_text_list().unwrap();
        let answer = |r: &mut PktReader<&[u8]>| {
            let status = r.read_text_list().unwrap().unwrap();
            let mut body = Vec::new();
            if status == ["status=success"] {
                r.content().read_to_end(&mut body).unwrap();
                let last = r.read_text_list().unwrap().unwrap();
                assert!(last.is_empty(), "{last:?}");
            }
            (status, body)
        };
        let (status, body) = answer(&mut r);
        assert_eq!(status, ["status=success"]);
        assert_eq!(String::from_utf8(body).unwrap(), pointer);
        let (status, body) = answer(&mut r);
        assert_eq!(status, ["status=success"]);
        assert_eq!(body, content);
        let (status, body) = answer(&mut r);
        assert_eq!(status, ["status=success"]);
        assert_eq!(String::from_utf8(body).unwrap(), missing);
        let (status, _) = answer(&mut r);
        assert_eq!(status, ["status=error"]);
        assert!(matches!(r.read_packet(), Ok(None)));
    }

    #[test]
    fn clean_passes_pointers_through_and_smudge_rejects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let mut filter = filter_in(dir.path());
        let pointer = filter.clean(&mut &b"weights"[..], None).unwrap();
        assert_eq!(filter.clean(&mut &pointer[..], None).unwrap(), pointer);
        let parsed = LfsPointer::parse(&pointer).unwrap();
        std::fs::write(filter.store().object_path(&parsed.oid), b"weightz").unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            filter.smudge(&mut &pointer[..], &mut out),
            Err(LfsError::Corrupt { .. })
        ));
        // Not a pointer: unchanged.
        let mut out = Vec::new();
        assert_eq!(
            filter.smudge(&mut &b"plain"[..], &mut out).unwrap(),
            Smudged::NotAPointer
        );
        assert_eq!(out, b"plain");
    }

    #[test]
    fn cleaning_a_regular_file_matches_cleaning_its_stream() {
        let dir = tempfile::tempdir().unwrap();
        let mut filter = filter_in(dir.path());
        let path = dir.path().join("w.bin");
        let content: Vec<u8> = (0..5_000_000u32).map(|i| (i * 31 % 255) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let from_file = filter.clean_file(&mut File::open(&path).unwrap()).unwrap();
        let mut other = filter_in(&dir.path().join("other"));
        assert_eq!(from_file, other.clean(&mut &content[..], None).unwrap());
        let pointer = LfsPointer::parse(&from_file).unwrap();
        assert_eq!(
            std::fs::read(filter.store().object_path(&pointer.oid)).unwrap(),
            content
        );
        // Known object: same answer, nothing left in tmp.
        assert_eq!(
            filter.clean_file(&mut File::open(&path).unwrap()).unwrap(),
            from_file
        );
        let leftovers = std::fs::read_dir(dir.path().join("lfs/tmp"))
            .unwrap()
            .count();
        assert_eq!(leftovers, 0);
        // A pointer file is its own clean.
        std::fs::write(&path, &from_file).unwrap();
        assert_eq!(
            filter.clean_file(&mut File::open(&path).unwrap()).unwrap(),
            from_file
        );
    }

    /// `exp lfs clean < FILE` takes the stat cache as a hint only: a known settled file is
    /// hashed without the speculative copy, and a wrong hint still stores the right object.
    #[test]
    fn clean_file_uses_the_stat_cache_as_a_hint_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut filter = filter_in(dir.path());
        let path = dir.path().join("w.bin");
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(10);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(150));
        let clean = |f: &mut Filter| f.clean_file(&mut File::open(&path).unwrap()).unwrap();
        let expected = filter_in(&dir.path().join("plain"))
            .clean(&mut &content[..], None)
            .unwrap();
        let oid = LfsPointer::parse(&expected).unwrap().oid;
        // New: hashed while copied, and recorded.
        assert_eq!(clean(&mut filter), expected);
        let stat = FileStat::of(&path).unwrap();
        let canonical = path.canonicalize().unwrap();
        assert_eq!(filter.cache.get(&canonical, &stat), Some(oid.clone()));
        // Known: the same answer, the object in place.
        assert_eq!(clean(&mut filter), expected);
        assert_eq!(
            std::fs::read(filter.store().object_path(&oid)).unwrap(),
            content
        );
        // A wrong hint (another stored object under this stat, this object gone): the bytes
        // decide, and the missing object is stored.
        let other = filter.store().insert(&b"other weights"[..]).unwrap();
        filter.cache.insert(canonical.clone(), stat, &other.oid);
        std::fs::remove_file(filter.store().object_path(&oid)).unwrap();
        assert_eq!(clean(&mut filter), expected);
        assert_eq!(
            std::fs::read(filter.store().object_path(&oid)).unwrap(),
            content
        );
        assert_eq!(filter.cache.get(&canonical, &stat), Some(oid.clone()));
        // A right hint whose object a crash left short (written AtCommit, never synced): not
        // known after all; stored again whole.
        File::options()
            .write(true)
            .open(filter.store().object_path(&oid))
            .unwrap()
            .set_len(1000)
            .unwrap();
        assert_eq!(clean(&mut filter), expected);
        assert_eq!(
            std::fs::read(filter.store().object_path(&oid)).unwrap(),
            content
        );
        let leftovers = std::fs::read_dir(dir.path().join("lfs/tmp"))
            .unwrap()
            .count();
        assert_eq!(leftovers, 0);
    }

    /// The stat cache answers only for the file itself: other bytes streamed under the same
    /// path (`git hash-object --path`) are hashed, and a hit is confirmed byte for byte.
    #[test]
    fn stat_cache_never_answers_for_other_content() {
        let dir = tempfile::tempdir().unwrap();
        let mut filter = filter_in(dir.path());
        let file = dir.path().join("w.bin");
        let content = vec![7u8; 3 << 20];
        std::fs::write(&file, &content).unwrap();
        // Back-date the file past the racy window.
        let old = SystemTime::now() - std::time::Duration::from_secs(10);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(old)
            .unwrap();
        // Setting the mtime stamped the ctime now: let it age past the racy margin too.
        std::thread::sleep(std::time::Duration::from_millis(150));
        let rel = Path::new("w.bin");
        let first = filter.clean(&mut &content[..], Some(rel)).unwrap();
        let stat = FileStat::of(&file).unwrap();
        assert!(filter.cache.get(&file, &stat).is_some(), "not cached");
        assert_eq!(filter.clean(&mut &content[..], Some(rel)).unwrap(), first);
        // The object short of its size (a crash before it reached the disk): the entry is no
        // hit, and the stream stores the object again.
        let object = filter
            .store()
            .object_path(&LfsPointer::parse(&first).unwrap().oid);
        std::fs::write(&object, &content[..10]).unwrap();
        assert_eq!(filter.clean(&mut &content[..], Some(rel)).unwrap(), first);
        assert_eq!(std::fs::read(&object).unwrap(), content);
        let mut other = content.clone();
        other[2 << 20] = 8;
        let second = filter.clean(&mut &other[..], Some(rel)).unwrap();
        assert_ne!(second, first);
        let mut plain = filter_in(&dir.path().join("plain"));
        assert_eq!(second, plain.clean(&mut &other[..], None).unwrap());

        // However Git cuts the stream (its 64 KiB packets, empty packets, odd sizes): a hit
        // for the file, and for other bytes (a difference at the start, inside a chunk, at a
        // block boundary of the file, at the end) the oid of those bytes.
        let cuts: [&[usize]; 3] = [&[65516], &[0, 700, 1, 65516, 3 << 20], &[1 << 20, 5]];
        for sizes in cuts {
            assert_eq!(
                filter
                    .clean_chunks(&mut Ragged::new(&content, sizes), Some(rel))
                    .unwrap(),
                first,
                "{sizes:?}"
            );
            for at in [0, 65516 + 3, 1 << 20, (3 << 20) - 1] {
                let mut other = content.clone();
                other[at] ^= 1;
                let expected = plain.clean(&mut &other[..], None).unwrap();
                let got = filter.clean_chunks(&mut Ragged::new(&other, sizes), Some(rel));
                assert_eq!(got.unwrap(), expected, "{sizes:?}, difference at {at}");
            }
        }
        // A pointer cut into pieces is still its own clean.
        assert_eq!(
            filter
                .clean_chunks(&mut Ragged::new(&first, &[7, 0]), Some(rel))
                .unwrap(),
            first
        );
    }

    /// Content in chunks of the given sizes, cycled (0: an empty chunk, which is not the end).
    struct Ragged<'a> {
        data: &'a [u8],
        at: usize,
        sizes: &'a [usize],
        next: usize,
    }

    impl<'a> Ragged<'a> {
        fn new(data: &'a [u8], sizes: &'a [usize]) -> Self {
            Ragged {
                data,
                at: 0,
                sizes,
                next: 0,
            }
        }
    }

    impl ChunkSource for Ragged<'_> {
        fn next_chunk(&mut self) -> Result<Option<&[u8]>, LfsError> {
            if self.at == self.data.len() {
                return Ok(None);
            }
            let n = self.sizes[self.next % self.sizes.len()].min(self.data.len() - self.at);
            self.next += 1;
            self.at += n;
            Ok(Some(&self.data[self.at - n..self.at]))
        }
    }
}
