//! Image folders (`data.format = "image-folder"`): `<path>/<split>/<class>/…/<file>` with
//! splits `train`, `test` and optionally `val`, or `<path>/<class>/…/<file>` with the test set
//! drawn by `data.test_fraction`. Classes are the class folders' names, sorted by bytes (as
//! torchvision's `ImageFolder` sorts them); images are the `.png`, `.jpg` and `.jpeg` files
//! (any case) below them, other files are left alone as torchvision leaves them.
//!
//! Each split is decoded once (`decode::decode_image`: channels, resize) into a cache file
//! under `.git/exp/cache/decoded/`, named by the split's fingerprint (its manifest lines) and
//! the decode settings, so a changed file, channel count or size is another entry and an entry
//! is never stale. The file is memory-mapped: a data set larger than memory trains with only
//! the pages of the current batch resident. Decoding streams into the cache file in chunks,
//! so the first run's memory is bounded too.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;

use super::decode::decode_image;
use super::scan::{self, FileEntry};
use super::{DataError, FileFingerprint, ImageShape, Pixels, RawSet};

/// The split folder names, in the order they are looked for.
pub const SPLIT_FOLDERS: [&str; 3] = ["train", "val", "test"];
/// Extensions of the files read as images (compared case-insensitively).
const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];
/// Images decoded per chunk: what the first run holds in memory besides the cache file.
const DECODE_CHUNK: usize = 2048;
/// The decoded-cache file format; a new layout gets a new magic, so old entries are misses.
const MAGIC: &[u8; 8] = b"EXPDEC01";
/// The header: magic, examples, channels, height, width, skipped-list bytes.
const HEADER: usize = 8 + 8 + 4 * 3 + 8;
/// Where the pixels start: after the header, aligned to 64 bytes. Labels and the skipped
/// files' paths (`\n`-separated) follow the pixels.
const PIXELS_AT: usize = HEADER.div_ceil(64) * 64;

/// An image folder, read: its classes and its splits as raw sets.
pub struct ImageFolder {
    /// The class names, sorted by bytes; a label is an index into it.
    pub classes: Vec<String>,
    /// The training images (all images, without split folders).
    pub train: RawSet,
    /// The `val/` images, when the folder has them.
    pub val: Option<RawSet>,
    /// The `test/` images; none without split folders (the test set is drawn by fraction).
    pub test: Option<RawSet>,
}

/// Where an image folder's decoded splits and stat cache are kept (`.git/exp/cache`).
#[derive(Debug, Clone, Copy)]
pub struct Caches<'a> {
    /// The cache folder; none: decode into memory and hash every file.
    pub dir: Option<&'a Path>,
}

/// One image of a split: its file and its label.
struct Image {
    entry: FileEntry,
    label: u8,
}

/// Reads the image folder `folder` (`given`: as the spec names it, for the record), decoding
/// its images to `shape`.
/// `check_layout` is called with (has test/, has val/) before anything is decoded, so a spec
/// that does not fit the folder fails fast.
pub fn read(
    folder: &Path,
    given: &str,
    shape: ImageShape,
    skip_corrupt: bool,
    caches: Caches,
    check_layout: &dyn Fn(bool, bool) -> Result<(), DataError>,
) -> Result<ImageFolder, DataError> {
    if !folder.is_dir() {
        return Err(DataError::Inconsistent(format!(
            "data.path: {} is not a folder (image-folder reads <path>/train/<class>/<file> and <path>/test/…, or <path>/<class>/<file> with data.test_fraction)",
            folder.display()
        )));
    }
    let entries: Vec<FileEntry> = scan::scan(folder, caches.dir)?
        .into_iter()
        .filter(|e| is_image(&e.path))
        .collect();
    let has = |split: &str| folder.join(split).is_dir();
    let layout = if has("train") || has("test") {
        if !(has("train") && has("test")) {
            return Err(DataError::Inconsistent(format!(
                "{} has a {} folder but no {} folder: split folders are train/ and test/ (and optionally val/), each holding class folders",
                folder.display(),
                if has("train") { "train/" } else { "test/" },
                if has("train") { "test/" } else { "train/" },
            )));
        }
        Layout::Splits
    } else {
        Layout::Single
    };
    let mut by_split: Vec<(&str, Vec<(String, FileEntry)>)> = Vec::new();
    for e in entries {
        let (split, within) = match layout {
            Layout::Single => ("all", e.path.as_str()),
            Layout::Splits => match e.path.split_once('/') {
                Some((s, rest)) if SPLIT_FOLDERS.contains(&s) => (s, rest),
                _ => {
                    return Err(DataError::Inconsistent(format!(
                        "{}: images belong in train/, val/ or test/ (under a class folder)",
                        folder.join(&e.path).display()
                    )))
                }
            },
        };
        let Some((class, _)) = within.split_once('/') else {
            return Err(DataError::Inconsistent(format!(
                "{}: an image must be inside a class folder (<split>/<class>/<file>); its class cannot be told",
                folder.join(&e.path).display()
            )));
        };
        let class = class.to_string();
        let split = SPLIT_FOLDERS
            .iter()
            .copied()
            .find(|s| *s == split)
            .unwrap_or("all");
        match by_split.iter_mut().find(|(s, _)| *s == split) {
            Some((_, list)) => list.push((class, e)),
            None => by_split.push((split, vec![(class, e)])),
        }
    }
    let take = |name: &str, by_split: &mut Vec<(&str, Vec<(String, FileEntry)>)>| {
        by_split
            .iter()
            .position(|(s, _)| *s == name)
            .map(|i| by_split.remove(i).1)
            .unwrap_or_default()
    };
    let train_name = if layout == Layout::Single {
        "all"
    } else {
        "train"
    };
    let train_images = take(train_name, &mut by_split);
    let mut classes: Vec<String> = train_images.iter().map(|(c, _)| c.clone()).collect();
    classes.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    classes.dedup();
    if classes.is_empty() {
        return Err(DataError::Inconsistent(format!(
            "{} holds no PNG or JPEG images in class folders",
            folder
                .join(if layout == Layout::Single {
                    ""
                } else {
                    "train"
                })
                .display()
        )));
    }
    if classes.len() > 256 {
        return Err(DataError::Inconsistent(format!(
            "{} has {} class folders; exp handles up to 256 classes",
            folder.display(),
            classes.len()
        )));
    }
    let label_of = |split: &str, class: &str| -> Result<u8, DataError> {
        classes
            .binary_search_by(|c| c.as_bytes().cmp(class.as_bytes()))
            .map(|i| i as u8)
            .map_err(|_| {
                DataError::Inconsistent(format!(
                    "{}: class folder {class:?} has no counterpart in train/ (the classes are train/'s: {})",
                    folder.join(split).display(),
                    classes.join(", ")
                ))
            })
    };
    let labelled = |split: &str, list: Vec<(String, FileEntry)>| -> Result<Vec<Image>, DataError> {
        list.into_iter()
            .map(|(class, entry)| {
                Ok(Image {
                    label: label_of(split, &class)?,
                    entry,
                })
            })
            .collect()
    };
    let train = labelled(train_name, train_images)?;
    let val = take("val", &mut by_split);
    let test = take("test", &mut by_split);
    let val = (!val.is_empty())
        .then(|| labelled("val", val))
        .transpose()?;
    let test = match layout {
        Layout::Single => None,
        Layout::Splits if test.is_empty() => {
            return Err(DataError::Inconsistent(format!(
                "{} holds no PNG or JPEG images in class folders",
                folder.join("test").display()
            )))
        }
        Layout::Splits => Some(labelled("test", test)?),
    };
    check_layout(test.is_some(), val.is_some())?;
    let decode = |name: &str, images: Vec<Image>| {
        let path = if name == "all" {
            given.to_string()
        } else {
            format!("{}/{name}", given.trim_end_matches('/'))
        };
        decode_split(folder, path, images, shape, skip_corrupt, caches)
    };
    Ok(ImageFolder {
        train: decode(train_name, train)?,
        val: val.map(|v| decode("val", v)).transpose()?,
        test: test.map(|t| decode("test", t)).transpose()?,
        classes,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `train/`, `test/` (and `val/`) folders.
    Splits,
    /// Class folders at the top; the test set is drawn by fraction.
    Single,
}

/// The class of a file of an image folder, from its path in the folder: `<split>/<class>/…`
/// or `<class>/…`.
pub fn class_of(path: &str) -> &str {
    let mut parts = path.split('/');
    let first = parts.next().unwrap_or("");
    if SPLIT_FOLDERS.contains(&first) {
        parts.next().unwrap_or(first)
    } else {
        first
    }
}

fn is_image(path: &str) -> bool {
    path.rsplit_once('.').is_some_and(|(_, ext)| {
        IMAGE_EXTENSIONS
            .iter()
            .any(|known| ext.eq_ignore_ascii_case(known))
    })
}

/// The decoded images of one split: from the cache when an entry exists, else decoded (into
/// the cache when there is one).
fn decode_split(
    folder: &Path,
    given: String,
    images: Vec<Image>,
    shape: ImageShape,
    skip_corrupt: bool,
    caches: Caches,
) -> Result<RawSet, DataError> {
    let fingerprint = scan::fingerprint(images.iter().map(|i| &i.entry));
    let files = vec![FileFingerprint {
        path: given,
        blake3: fingerprint.clone(),
    }];
    let key = cache_key(&fingerprint, shape);
    if let Some(dir) = caches.dir {
        let path = super::cache::decoded_dir(dir).join(format!("{key}.bin"));
        if let Some(cached) = open_cached(&path, shape) {
            touch(&path);
            if let (false, Some(first)) = (skip_corrupt, cached.skipped.first()) {
                // Decoded with skip_corrupt: without it, the first bad file is the error.
                if let Some(image) = images.iter().find(|i| &i.entry.path == first) {
                    if let Some(Err(e)) =
                        decode_chunk(folder, std::slice::from_ref(image), shape).pop()
                    {
                        return Err(e);
                    }
                }
            }
            return Ok(RawSet { files, ..cached });
        }
        let decoded = decode_into_file(folder, &images, shape, skip_corrupt, &path)?;
        super::cache::prune_to_bound(dir);
        return Ok(RawSet { files, ..decoded });
    }
    let mut pixels = Vec::with_capacity(images.len() * shape.size());
    let (labels, skipped) = decode_all(folder, &images, shape, skip_corrupt, &mut |bytes| {
        pixels.extend_from_slice(bytes);
        Ok(())
    })?;
    Ok(RawSet {
        images: Arc::new(Pixels::Owned(pixels)),
        labels,
        shape,
        files,
        skipped,
    })
}

/// Decodes `images` in parallel chunks, handing each decoded image to `put` in order (memory
/// holds one chunk); returns the labels of the images put and the paths of those skipped
/// (`skip_corrupt`: files that do not decode; without it, the first such is the error).
fn decode_all(
    folder: &Path,
    images: &[Image],
    shape: ImageShape,
    skip_corrupt: bool,
    put: &mut dyn FnMut(&[u8]) -> Result<(), DataError>,
) -> Result<(Vec<u8>, Vec<String>), DataError> {
    let mut labels = Vec::with_capacity(images.len());
    let mut skipped = Vec::new();
    for chunk in images.chunks(DECODE_CHUNK) {
        for (image, decoded) in chunk.iter().zip(decode_chunk(folder, chunk, shape)) {
            match decoded {
                Ok(bytes) => {
                    put(&bytes)?;
                    labels.push(image.label);
                }
                Err(DataError::Corrupt { .. }) if skip_corrupt => {
                    skipped.push(image.entry.path.clone())
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok((labels, skipped))
}

/// The cache entry's name: the split's fingerprint and every setting that changes the bytes.
/// `skip_corrupt` is not one: an entry lists the files it skipped, and a load without the
/// setting fails on the first of them.
fn cache_key(fingerprint: &str, shape: ImageShape) -> String {
    let mut h = blake3::Hasher::new();
    h.update(MAGIC);
    h.update(fingerprint.as_bytes());
    for v in [shape.channels, shape.height, shape.width] {
        h.update(&(v as u64).to_le_bytes());
    }
    h.finalize().to_hex()[..40].to_string()
}

fn decode_chunk(
    folder: &Path,
    chunk: &[Image],
    shape: ImageShape,
) -> Vec<Result<Vec<u8>, DataError>> {
    chunk
        .par_iter()
        .map(|image| {
            let path = folder.join(&image.entry.path);
            let bytes = std::fs::read(&path).map_err(|source| DataError::Io {
                path: path.clone(),
                source,
            })?;
            decode_image(&bytes, shape).map_err(|e| DataError::Corrupt {
                path,
                message: format!("{e} (set data.skip_corrupt = true to skip such files)"),
            })
        })
        .collect()
}

/// Decodes `images` straight into a new cache file at `path` (a temp file renamed when
/// complete: a killed run leaves no half entry), then maps it.
fn decode_into_file(
    folder: &Path,
    images: &[Image],
    shape: ImageShape,
    skip_corrupt: bool,
    path: &Path,
) -> Result<RawSet, DataError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(crate::files::TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(io)?;
    // Pixels first, after room for the header; labels and the skipped list follow them, so
    // nothing but the labels is held in memory.
    {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        out.write_all(&[0u8; PIXELS_AT]).map_err(io)?;
        let (labels, skipped) = decode_all(folder, images, shape, skip_corrupt, &mut |bytes| {
            out.write_all(bytes).map_err(io)
        })?;
        let skipped_text = skipped.join("\n");
        out.write_all(&labels).map_err(io)?;
        out.write_all(skipped_text.as_bytes()).map_err(io)?;
        out.flush().map_err(io)?;
        let header = header(labels.len(), shape, skipped_text.len());
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header).map_err(io)?;
    }
    tmp.persist(path).map_err(|e| io(e.error))?;
    open_cached(path, shape).ok_or_else(|| DataError::Corrupt {
        path: path.to_path_buf(),
        message: "the decoded cache entry just written does not read back".into(),
    })
}

fn header(n: usize, shape: ImageShape, skipped_len: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&(n as u64).to_le_bytes());
    for v in [shape.channels, shape.height, shape.width] {
        h.extend_from_slice(&(v as u32).to_le_bytes());
    }
    h.extend_from_slice(&(skipped_len as u64).to_le_bytes());
    h
}

/// Maps a cache entry; none when it is missing or not exactly what its header says.
fn open_cached(path: &Path, shape: ImageShape) -> Option<RawSet> {
    let file = std::fs::File::open(path).ok()?;
    // SAFETY: cache entries are written whole (temp file + rename) and never modified in
    // place; a prune deletes the name, which leaves an existing mapping intact.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    // Batches read rows in shuffled order: read-ahead around each fault would fetch pages no
    // batch asked for, which under memory pressure evicts the ones it did (a hint only).
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Random);
    if map.len() < HEADER || &map[..8] != MAGIC {
        return None;
    }
    let u64_at = |at: usize| u64::from_le_bytes(map[at..at + 8].try_into().unwrap_or([0; 8]));
    let u32_at = |at: usize| u32::from_le_bytes(map[at..at + 4].try_into().unwrap_or([0; 4]));
    let n = u64_at(8) as usize;
    let stored = ImageShape {
        channels: u32_at(16) as usize,
        height: u32_at(20) as usize,
        width: u32_at(24) as usize,
    };
    let skipped_len = u64_at(28) as usize;
    if stored != shape {
        return None;
    }
    let pixels_at = PIXELS_AT;
    let pixel_bytes = n.checked_mul(shape.size())?;
    let labels_at = pixels_at.checked_add(pixel_bytes)?;
    let end = labels_at.checked_add(n)?.checked_add(skipped_len)?;
    if map.len() != end {
        return None;
    }
    let labels = map[labels_at..labels_at + n].to_vec();
    let skipped_text = std::str::from_utf8(&map[labels_at + n..end]).ok()?;
    let skipped = if skipped_text.is_empty() {
        Vec::new()
    } else {
        skipped_text.split('\n').map(str::to_string).collect()
    };
    Some(RawSet {
        images: Arc::new(Pixels::Mapped {
            map,
            offset: pixels_at,
            len: pixel_bytes,
        }),
        labels,
        shape,
        files: Vec::new(),
        skipped,
    })
}

/// Marks an entry used (its mtime), so pruning removes the least recently used first.
fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}
