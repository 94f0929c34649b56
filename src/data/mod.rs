//! Data sets: the data root, IDX and CIFAR-10 readers, fingerprints, subsets and batching.
//!
//! Data is only ever reached through the data root (docs/design.md §3): `$EXP_DATA`, else
//! `~/.cache/exp/data`. Every file is fingerprinted with BLAKE3 over its decompressed bytes,
//! so a gzipped and a raw copy of the same data agree.

pub mod augment;
pub mod cache;
pub mod cifar;
pub mod decode;
pub mod folder;
pub mod idx;
pub mod scan;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::rng::{ExpRng, Purpose};
use crate::spec::{DataFormat, DataSpec, Normalize, NormalizeSpec};

/// A data set that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The data root cannot be determined.
    #[error("no data root: EXP_DATA is unset and HOME is unknown")]
    NoRoot,
    /// A data file is missing.
    #[error("{origin}: {key}: data file {path} not found (nor {alternative}) under the data root {root}")]
    Missing {
        /// Where the spec names the file (`file:line` or `--set …`).
        origin: String,
        /// The spec key naming the file.
        key: String,
        /// Where it was looked for.
        path: PathBuf,
        /// The other name tried (.gz added or removed).
        alternative: String,
        /// The data root.
        root: PathBuf,
    },
    /// A data file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A data file is not what its format says.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The files of a data set disagree with each other or with the spec.
    #[error("{0}")]
    Inconsistent(String),
}

impl DataError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            DataError::Missing { root, .. } => Some(format!(
                "fill the data root with `scripts/fetch-data.sh {}` (from the exp repository), or point EXP_DATA at a folder holding the files",
                root.display()
            )),
            DataError::NoRoot => Some("set EXP_DATA to the folder holding the data sets".into()),
            DataError::Corrupt { .. } => {
                Some("the file is damaged or not in the format the spec names; fetch it again".into())
            }
            _ => None,
        }
    }
}

/// The data root: `$EXP_DATA` (relative to `cwd` when relative), else `~/.cache/exp/data`.
pub fn data_root(cwd: &Path) -> Result<PathBuf, DataError> {
    if let Some(value) = std::env::var_os("EXP_DATA").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        return Ok(if path.is_absolute() {
            path
        } else {
            cwd.join(path)
        });
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .ok_or(DataError::NoRoot)?;
    Ok(PathBuf::from(home).join(".cache/exp/data"))
}

/// A data file's identity: as given in the spec, and its fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileFingerprint {
    /// The path as given in the spec (relative to the data root).
    pub path: String,
    /// BLAKE3 of the decompressed bytes.
    pub blake3: String,
}

/// Where a spec key's value came from, for messages: `file:line` or `--set KEY=VALUE`.
pub type KeyOrigin<'a> = &'a dyn Fn(&str) -> String;

/// Reads a file under the data root, decompressing gzip; `X.gz` and `X` stand in for each
/// other (docs/design.md §3).
pub fn read_data_file(root: &Path, given: &str) -> Result<(PathBuf, Vec<u8>), DataError> {
    read_spec_file(root, given, "data file", &|_| "data".to_string(), false)
}

/// Reads a data file; `idx`: it is an IDX file, so a gzip stream is decompressed only as far
/// as its IDX header says the file goes (a stream with more is an error, not gigabytes).
fn read_spec_file(
    root: &Path,
    given: &str,
    key: &str,
    origin: KeyOrigin,
    idx: bool,
) -> Result<(PathBuf, Vec<u8>), DataError> {
    let primary = root.join(given);
    let alternative = match given.strip_suffix(".gz") {
        Some(raw) => raw.to_string(),
        None => format!("{given}.gz"),
    };
    let path = if primary.is_file() {
        primary
    } else if root.join(&alternative).is_file() {
        root.join(&alternative)
    } else {
        return Err(DataError::Missing {
            origin: origin(key),
            key: key.to_string(),
            path: primary,
            alternative,
            root: root.to_path_buf(),
        });
    };
    let io = |source| DataError::Io {
        path: path.clone(),
        source,
    };
    let raw = std::fs::read(&path).map_err(io)?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let corrupt = |e: std::io::Error| DataError::Corrupt {
            path: path.clone(),
            message: format!("corrupt or truncated gzip stream: {e}"),
        };
        let mut decoder = flate2::read::MultiGzDecoder::new(&raw[..]);
        let mut out = Vec::with_capacity(raw.len() * 4);
        if idx {
            // The header first (4 bytes, then 4 per dimension), then exactly what it implies.
            let mut head = [0u8; 4];
            decoder.read_exact(&mut head).map_err(corrupt)?;
            out.extend_from_slice(&head);
            if head[0] != 0 || head[1] != 0 {
                // Not an IDX header: idx::parse says so, naming the bad magic.
                decoder.read_to_end(&mut out).map_err(corrupt)?;
                return Ok((path, out));
            }
            let mut dims = vec![0u8; 4 * head[3] as usize];
            decoder.read_exact(&mut dims).map_err(corrupt)?;
            out.extend_from_slice(&dims);
            let size = idx::file_size(&out).ok_or_else(|| DataError::Corrupt {
                path: path.clone(),
                message: "the IDX header implies a file of more than 4 GiB".into(),
            })?;
            (&mut decoder)
                .take((size - out.len()) as u64)
                .read_to_end(&mut out)
                .map_err(corrupt)?;
            let mut extra = [0u8; 1];
            if decoder.read(&mut extra).map_err(corrupt)? > 0 {
                return Err(DataError::Corrupt {
                    path: path.clone(),
                    message: format!(
                        "the gzip stream holds more than the {size} bytes its IDX header implies"
                    ),
                });
            }
        } else {
            decoder.read_to_end(&mut out).map_err(corrupt)?;
        }
        out
    } else {
        raw
    };
    Ok((path, bytes))
}

/// The pixels of a set of examples, CHW order, example after example: in memory, or a
/// memory-mapped decoded-cache file (`folder.rs`), whose pages the OS loads as batches touch
/// them and drops under memory pressure.
pub enum Pixels {
    /// Read into memory (IDX, CIFAR-10, an image folder without a cache).
    Owned(Vec<u8>),
    /// A region of a mapped file.
    Mapped {
        /// The mapping.
        map: memmap2::Mmap,
        /// Where the pixels start.
        offset: usize,
        /// How many bytes they take.
        len: usize,
    },
}

impl std::ops::Deref for Pixels {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Pixels::Owned(v) => v,
            Pixels::Mapped { map, offset, len } => &map[*offset..*offset + *len],
        }
    }
}

impl std::fmt::Debug for Pixels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pixels::Owned(v) => write!(f, "Pixels::Owned({} bytes)", v.len()),
            Pixels::Mapped { len, .. } => write!(f, "Pixels::Mapped({len} bytes)"),
        }
    }
}

/// Images and labels of one split, as bytes, with per-channel normalisation applied when a
/// batch is gathered. The pixels are shared with the other splits of the same files.
#[derive(Debug, Clone)]
pub struct Split {
    /// Examples in this split.
    pub len: usize,
    /// The pixels of the source files' examples (all of them: `selection` picks).
    pixels: Arc<Pixels>,
    /// Class index of every example.
    pub labels: Vec<u8>,
    /// Which examples of the source files this split holds, when not all of them, in order.
    pub selection: Option<Vec<u32>>,
    /// Fingerprint of the split: its files, and the selection when there is one.
    pub blake3: String,
    /// Files of the source left out because they do not decode (`data.skip_corrupt`).
    pub skipped: usize,
}

impl Split {
    /// The pixels of example `i` of the split.
    fn example(&self, i: usize, size: usize) -> &[u8] {
        let row = self.selection.as_ref().map_or(i, |s| s[i] as usize);
        &self.pixels[row * size..(row + 1) * size]
    }
}

/// The shape every image of a data set has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageShape {
    /// Channels.
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl ImageShape {
    /// Values per image.
    pub fn size(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// The training, validation and test splits an experiment uses.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Training split (after `train_limit`).
    pub train: Split,
    /// Validation split (`val_limit` or `val_fraction`, held out of the training files).
    pub val: Option<Split>,
    /// Test split, the eval set (after `test_limit`).
    pub test: Split,
    /// Image shape.
    pub shape: ImageShape,
    /// Number of classes.
    pub classes: usize,
    /// The training files' fingerprints.
    pub train_files: Vec<FileFingerprint>,
    /// The test files' fingerprints.
    pub test_files: Vec<FileFingerprint>,
    /// The normalisation every batch gets (computed over the training split for
    /// `data.normalize = "train"`).
    pub normalisation: Normalisation,
    /// An image folder's class names, after `data.classes`; none for the other formats.
    pub class_names: Option<Vec<String>>,
    /// An image folder's class count (its class folders).
    pub folder_classes: Option<usize>,
    /// Lookup table: normalised value of pixel byte `b` in channel `c` at `c * 256 + b`.
    lut: Vec<f32>,
}

/// The examples of a set of source files, before any selection.
#[derive(Clone)]
pub struct RawSet {
    images: Arc<Pixels>,
    labels: Vec<u8>,
    shape: ImageShape,
    files: Vec<FileFingerprint>,
    /// Files left out because they do not decode (their paths in the folder).
    skipped: Vec<String>,
}

/// Every label must name one of the data set's `classes`: a stray byte is a damaged file, not a
/// class of its own.
fn check_labels(labels: &[u8], classes: usize, path: &Path) -> Result<(), DataError> {
    match labels.iter().position(|&l| l as usize >= classes) {
        None => Ok(()),
        Some(i) => Err(DataError::Corrupt {
            path: path.to_path_buf(),
            message: format!(
                "the label of example {i} is {}, outside the data set's {classes} classes (0–{}); if the data set has more classes, set data.num_classes",
                labels[i],
                classes - 1
            ),
        }),
    }
}

#[allow(clippy::too_many_arguments)]
fn load_raw(
    root: &Path,
    format: DataFormat,
    classes: usize,
    split: &str,
    images: &[String],
    labels: &str,
    origin: KeyOrigin,
) -> Result<RawSet, DataError> {
    let images_key = format!("data.{split}_images");
    match format {
        DataFormat::Idx => {
            let (image_path, image_bytes) =
                read_spec_file(root, &images[0], &images_key, origin, true)?;
            let (label_path, label_bytes) =
                read_spec_file(root, labels, &format!("data.{split}_labels"), origin, true)?;
            let files = vec![
                FileFingerprint {
                    path: images[0].clone(),
                    blake3: blake3::hash(&image_bytes).to_hex().to_string(),
                },
                FileFingerprint {
                    path: labels.to_string(),
                    blake3: blake3::hash(&label_bytes).to_hex().to_string(),
                },
            ];
            let image_array = idx::parse(&image_bytes, &image_path)?;
            drop(image_bytes);
            let label_array = idx::parse(&label_bytes, &label_path)?;
            let shape = match image_array.dims[..] {
                [_, h, w] => ImageShape {
                    channels: 1,
                    height: h,
                    width: w,
                },
                [_, h, w, c] => ImageShape {
                    channels: c,
                    height: h,
                    width: w,
                },
                _ => {
                    return Err(DataError::Corrupt {
                        path: image_path,
                        message: format!(
                            "images need 3 dimensions (N, rows, cols), found {:?}",
                            image_array.dims
                        ),
                    })
                }
            };
            if label_array.dims.len() != 1 {
                return Err(DataError::Corrupt {
                    path: label_path,
                    message: format!("labels need 1 dimension, found {:?}", label_array.dims),
                });
            }
            if label_array.dims[0] != image_array.dims[0] {
                return Err(DataError::Inconsistent(format!(
                    "{} holds {} images but {} holds {} labels",
                    image_path.display(),
                    image_array.dims[0],
                    label_path.display(),
                    label_array.dims[0]
                )));
            }
            check_labels(&label_array.data, classes, &label_path)?;
            let mut pixels = image_array.data;
            if image_array.dims.len() == 4 {
                pixels = hwc_to_chw(&pixels, shape);
            }
            Ok(RawSet {
                images: Arc::new(Pixels::Owned(pixels)),
                labels: label_array.data,
                shape,
                files,
                skipped: Vec::new(),
            })
        }
        DataFormat::Cifar10 => {
            let mut all_images = Vec::new();
            let mut all_labels = Vec::new();
            let mut files = Vec::new();
            for given in images {
                let (path, bytes) = read_spec_file(root, given, &images_key, origin, false)?;
                files.push(FileFingerprint {
                    path: given.clone(),
                    blake3: blake3::hash(&bytes).to_hex().to_string(),
                });
                let (labels, pixels) = cifar::parse(&bytes, &path)?;
                check_labels(&labels, classes, &path)?;
                all_labels.extend(labels);
                all_images.extend(pixels);
            }
            Ok(RawSet {
                images: Arc::new(Pixels::Owned(all_images)),
                labels: all_labels,
                shape: ImageShape {
                    channels: 3,
                    height: 32,
                    width: 32,
                },
                files,
                skipped: Vec::new(),
            })
        }
        DataFormat::ImageFolder => Err(DataError::Inconsistent(
            "an image folder is read whole by folder::read".into(),
        )),
    }
}

fn hwc_to_chw(pixels: &[u8], shape: ImageShape) -> Vec<u8> {
    let (c, hw) = (shape.channels, shape.height * shape.width);
    let mut out = vec![0u8; pixels.len()];
    for (image_in, image_out) in pixels
        .chunks_exact(c * hw)
        .zip(out.chunks_exact_mut(c * hw))
    {
        for p in 0..hw {
            for ch in 0..c {
                image_out[ch * hw + p] = image_in[p * c + ch];
            }
        }
    }
    out
}

/// `data.classes`: which labels of the files are kept, and their new, dense labels.
struct Relabel {
    listed: Vec<u8>,
    new_label: [Option<u8>; 256],
}

impl Relabel {
    fn new(classes: &[u8]) -> Option<Relabel> {
        if classes.is_empty() {
            return None;
        }
        let mut new_label = [None; 256];
        for (i, &c) in classes.iter().enumerate() {
            new_label[c as usize] = Some(i as u8);
        }
        Some(Relabel {
            listed: classes.to_vec(),
            new_label,
        })
    }

    fn map(&self, label: u8) -> Option<u8> {
        self.new_label[label as usize]
    }

    fn classes(&self) -> usize {
        self.listed.len()
    }
}

fn split_fingerprint(
    files: &[FileFingerprint],
    selection: Option<&[u32]>,
    relabel: Option<&Relabel>,
) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"exp-split-v1\0");
    for f in files {
        h.update(f.blake3.as_bytes());
        h.update(b"\0");
    }
    if let Some(selection) = selection {
        h.update(b"selection\0");
        for i in selection {
            h.update(&i.to_le_bytes());
        }
    }
    if let Some(r) = relabel {
        // The same examples under other labels are another data set.
        h.update(b"classes\0");
        h.update(&r.listed);
    }
    h.finalize().to_hex().to_string()
}

impl Split {
    fn select(raw: &RawSet, selection: Option<Vec<u32>>, relabel: Option<&Relabel>) -> Split {
        let mut split = Split::select_examples(raw, selection);
        if let Some(r) = relabel {
            for label in &mut split.labels {
                // Selections under a relabelling hold kept classes only.
                *label = r.map(*label).unwrap_or(u8::MAX);
            }
            split.blake3 = split_fingerprint(&raw.files, split.selection.as_deref(), Some(r));
        }
        split
    }

    fn select_examples(raw: &RawSet, selection: Option<Vec<u32>>) -> Split {
        let blake3 = split_fingerprint(&raw.files, selection.as_deref(), None);
        let (len, labels) = match &selection {
            None => (raw.labels.len(), raw.labels.clone()),
            Some(indices) => (
                indices.len(),
                indices.iter().map(|&i| raw.labels[i as usize]).collect(),
            ),
        };
        Split {
            len,
            pixels: Arc::clone(&raw.images),
            labels,
            selection,
            blake3,
            skipped: raw.skipped.len(),
        }
    }
}

impl Dataset {
    /// Loads the splits `spec` names from the data root; `seed` (the training seed) draws the
    /// training subset unless `data.split_seed` says otherwise; `origin` locates spec keys for
    /// messages; `cache_dir` (`.git/exp/cache`) holds decoded image folders and their stat
    /// caches (none: decode into memory).
    pub fn load(
        root: &Path,
        spec: &DataSpec,
        seed: u64,
        origin: KeyOrigin,
        cache_dir: Option<&Path>,
    ) -> Result<Dataset, DataError> {
        let mut folder_classes = None;
        let (train_raw, val_raw, test_raw) = match spec.format {
            DataFormat::ImageFolder => {
                if spec.path.is_empty() {
                    // A dataset's folder comes from its manifest (`dataset::resolve`), which
                    // needs the repository.
                    return Err(DataError::Inconsistent(format!(
                        "data.dataset {:?}: the dataset's folder is not resolved (the run reads it from datasets/{0}.toml)",
                        spec.dataset
                    )));
                }
                let [height, width] = spec.image_size.ok_or_else(|| {
                    DataError::Inconsistent("image-folder needs data.image_size".into())
                })?;
                let shape = ImageShape {
                    channels: spec.channels.unwrap_or(3),
                    height,
                    width,
                };
                let check_layout = |has_test: bool, has_val: bool| {
                    if spec.test_fraction > 0.0 && has_test {
                        return Err(DataError::Inconsistent(format!(
                            "{} has train/ and test/ folders: remove data.test_fraction (the test set is test/)",
                            spec.path
                        )));
                    }
                    if has_val && (spec.val_fraction > 0.0 || spec.val_limit > 0) {
                        return Err(DataError::Inconsistent(format!(
                            "{} has a val/ folder: remove data.val_fraction and data.val_limit (the validation set is val/)",
                            spec.path
                        )));
                    }
                    Ok(())
                };
                let read = folder::read(
                    &root.join(&spec.path),
                    &spec.path,
                    shape,
                    spec.skip_corrupt,
                    folder::Caches { dir: cache_dir },
                    &check_layout,
                )?;
                folder_classes = Some(read.classes);
                (read.train, read.val, read.test)
            }
            _ => {
                let train = load_raw(
                    root,
                    spec.format,
                    spec.file_classes(),
                    "train",
                    &spec.train_images,
                    &spec.train_labels,
                    origin,
                )?;
                let test = load_raw(
                    root,
                    spec.format,
                    spec.file_classes(),
                    "test",
                    &spec.test_images,
                    &spec.test_labels,
                    origin,
                )?;
                (train, None, Some(test))
            }
        };
        for other in [val_raw.as_ref(), test_raw.as_ref()].into_iter().flatten() {
            if train_raw.shape != other.shape {
                return Err(DataError::Inconsistent(format!(
                    "training images are {:?} but test images are {:?}",
                    train_raw.shape, other.shape
                )));
            }
        }
        let shape = train_raw.shape;
        let file_classes = match &folder_classes {
            Some(names) => {
                if let Some(n) = spec.num_classes.filter(|n| *n != names.len()) {
                    return Err(DataError::Inconsistent(format!(
                        "data.num_classes is {n} but {} has {} class folders ({}): the data changed since the spec (or record) was written",
                        spec.path,
                        names.len(),
                        names.join(", ")
                    )));
                }
                names.len()
            }
            None => spec.file_classes(),
        };
        if let Some(&label) = spec.classes.iter().find(|&&c| c as usize >= file_classes) {
            return Err(DataError::Inconsistent(format!(
                "data.classes lists label {label}, but the data has labels 0–{}",
                file_classes - 1
            )));
        }
        let relabel = Relabel::new(&spec.classes);
        let classes = relabel.as_ref().map_or(file_classes, |r| r.classes());
        if classes < 2 {
            return Err(DataError::Inconsistent(
                "the labels name fewer than two classes".into(),
            ));
        }
        let class_names = folder_classes.as_ref().map(|names| match &relabel {
            Some(r) => r
                .listed
                .iter()
                .map(|&l| names[l as usize].clone())
                .collect(),
            None => names.clone(),
        });
        if let (Some(names), false) = (&class_names, spec.class_names.is_empty()) {
            if *names != spec.class_names {
                return Err(DataError::Inconsistent(format!(
                    "data.class_names is [{}] but the class folders of {} are [{}]: an image folder's classes are its folders' names (remove data.class_names)",
                    spec.class_names.join(", "),
                    spec.path,
                    names.join(", ")
                )));
            }
        }
        let caps = spec.class_caps().map_err(DataError::Inconsistent)?;
        let kept = |label: u8| relabel.as_ref().is_none_or(|r| r.map(label).is_some());
        let subset_seed = spec.split_seed(seed);

        // Without a test folder, the test set is drawn from all images by data.test_fraction,
        // from its own stream of the split seed; training draws from the rest.
        let n_train = train_raw.labels.len();
        let (test_raw, test_base, train_pool) = match test_raw {
            Some(test) => (test, None, None),
            None => {
                if spec.test_fraction <= 0.0 {
                    return Err(DataError::Inconsistent(format!(
                        "{} has class folders but no train/ and test/ folders: set data.test_fraction to hold out a test set (e.g. 0.2), or split the folder",
                        spec.path
                    )));
                }
                let n_test = ((spec.test_fraction * n_train as f64).round() as usize).max(1);
                if n_test >= n_train {
                    return Err(DataError::Inconsistent(format!(
                        "data.test_fraction = {} of {n_train} images leaves none to train on",
                        spec.test_fraction
                    )));
                }
                let order = ExpRng::new(subset_seed, Purpose::Split).permutation(n_train);
                let mut test: Vec<u32> = order[..n_test].to_vec();
                test.sort_unstable();
                let mut in_pool = vec![true; n_train];
                for &i in &test {
                    in_pool[i as usize] = false;
                }
                (train_raw.clone(), Some(test), Some(in_pool))
            }
        };
        let usable =
            |i: usize| kept(train_raw.labels[i]) && train_pool.as_ref().is_none_or(|p| p[i]);
        let n_kept = match (&relabel, &train_pool) {
            (None, None) => n_train,
            _ => (0..n_train).filter(|&i| usable(i)).count(),
        };
        // The examples training may use: with val_fraction, the validation share comes out
        // of them; val_limit holds its examples out besides.
        let pool = match spec.train_limit {
            0 => n_kept,
            limit => limit.min(n_kept),
        };
        let (n_val, train_limit) = if spec.val_fraction > 0.0 {
            let n_val = ((spec.val_fraction * pool as f64).round() as usize).max(1);
            (n_val, pool.saturating_sub(n_val))
        } else {
            (spec.val_limit, spec.train_limit)
        };
        if n_val >= n_kept || (spec.val_fraction > 0.0 && train_limit == 0) {
            return Err(DataError::Inconsistent(if spec.val_fraction > 0.0 {
                format!(
                    "data.val_fraction = {} holds out {n_val} of {pool} examples: none are left to train on",
                    spec.val_fraction
                )
            } else {
                format!(
                    "data.val_limit = {} leaves no training examples out of {n_kept}",
                    spec.val_limit
                )
            }));
        }
        let subset = spec.train_limit > 0 || n_val > 0 || relabel.is_some() || train_pool.is_some();
        let (train_sel, val_sel) = if subset || !caps.is_empty() {
            // One seeded permutation of the kept classes: validation first, then the training
            // subset (each class up to its cap), so a subset never depends on the file order.
            let order: Vec<u32> = ExpRng::new(subset_seed, Purpose::Subset)
                .permutation(n_train)
                .into_iter()
                .filter(|&i| usable(i as usize))
                .collect();
            let (val, rest) = order.split_at(n_val);
            let mut taken = [0usize; 256];
            let mut train: Vec<u32> = rest
                .iter()
                .copied()
                .filter(|&i| {
                    let label = train_raw.labels[i as usize];
                    taken[label as usize] += 1;
                    caps.get(&label)
                        .is_none_or(|&cap| taken[label as usize] <= cap)
                })
                .collect();
            if train_limit > 0 {
                train.truncate(train_limit);
            }
            train.sort_unstable();
            let mut val = val.to_vec();
            val.sort_unstable();
            (Some(train), (!val.is_empty()).then_some(val))
        } else {
            (None, None)
        };
        let n_test = test_raw.labels.len();
        let test_sel = {
            let whole = test_base.is_none() && relabel.is_none();
            let base: Vec<u32> = test_base.unwrap_or_else(|| (0..n_test as u32).collect());
            let mut sel: Vec<u32> = base
                .into_iter()
                .filter(|&i| kept(test_raw.labels[i as usize]))
                .collect();
            if spec.test_limit > 0 {
                sel.truncate(spec.test_limit);
            }
            (!(whole && sel.len() == n_test)).then_some(sel)
        };
        let val = match (&val_raw, val_sel) {
            (Some(raw), _) => {
                let sel = relabel.as_ref().map(|_| {
                    (0..raw.labels.len() as u32)
                        .filter(|&i| kept(raw.labels[i as usize]))
                        .collect()
                });
                Some(Split::select(raw, sel, relabel.as_ref()))
            }
            (None, Some(v)) => Some(Split::select(&train_raw, Some(v), relabel.as_ref())),
            (None, None) => None,
        };
        let train = Split::select(&train_raw, train_sel, relabel.as_ref());
        let normalisation = match &spec.normalize {
            Some(NormalizeSpec::Computed(_)) => Normalisation::over(&train, shape),
            _ => Normalisation::of(spec, shape.channels)?,
        };
        Ok(Dataset {
            val,
            test: Split::select(&test_raw, test_sel, relabel.as_ref()),
            train,
            shape,
            classes,
            train_files: train_raw.files,
            test_files: test_raw.files,
            lut: normalisation.table(),
            normalisation,
            class_names,
            folder_classes: folder_classes.map(|c| c.len()),
        })
    }

    /// Writes into `spec` what loading decided, so a run's record holds the complete data
    /// spec: an image folder's class count, class names and channels, and a normalisation
    /// computed over the training split.
    pub fn resolve_spec(&self, spec: &mut DataSpec) {
        if spec.format == DataFormat::ImageFolder {
            spec.num_classes = self.folder_classes;
            spec.channels = Some(self.shape.channels);
            if let Some(names) = &self.class_names {
                spec.class_names = names.clone();
            }
        }
        if let Some(NormalizeSpec::Computed(_)) = spec.normalize {
            spec.normalize = Some(NormalizeSpec::Given(Normalize {
                mean: self.normalisation.mean.clone(),
                std: self.normalisation.std.clone(),
            }));
        }
    }

    /// Per channel, the normalised value of a black pixel (byte 0): what crop padding holds.
    pub fn black(&self) -> Vec<f32> {
        (0..self.shape.channels)
            .map(|c| self.lut[c * 256])
            .collect()
    }

    /// Gathers examples `indices` of `split` into a normalised NCHW f32 buffer and labels.
    pub fn gather(
        &self,
        split: &Split,
        indices: &[u32],
        images: &mut Vec<f32>,
        labels: &mut Vec<u32>,
    ) {
        let size = self.shape.size();
        let plane = self.shape.height * self.shape.width;
        images.clear();
        labels.clear();
        images.reserve(indices.len() * size);
        for &i in indices {
            let i = i as usize;
            let pixels = split.example(i, size);
            for (c, channel) in pixels.chunks_exact(plane).enumerate() {
                let lut = &self.lut[c * 256..(c + 1) * 256];
                images.extend(channel.iter().map(|&b| lut[b as usize]));
            }
            labels.push(split.labels[i] as u32);
        }
    }
}

/// A split as the training loop and evaluation read it, in batches.
///
/// On a GPU the split is uploaded once, normalised, and batches are gathered there
/// (`index_select`), so a step needs no host transfer. On the CPU each batch is gathered from
/// the split's bytes when it is needed — the same values (one lookup table) — so memory holds
/// the batch, not the data set as f32 (4× its bytes), and a memory-mapped image folder larger
/// than memory trains.
pub enum SplitFeed<'a> {
    /// Uploaded whole.
    Resident {
        /// Normalised images, `(len, channels, height, width)`, in the compute dtype.
        images: candle_core::Tensor,
        /// Labels, `(len,)` u32.
        labels: candle_core::Tensor,
        /// The same labels on the host, for metrics.
        host_labels: Vec<u32>,
    },
    /// Gathered batch by batch on the CPU.
    Host {
        /// The data set (shape, normalisation).
        data: &'a Dataset,
        /// The split.
        split: &'a Split,
        /// The labels, for metrics.
        host_labels: Vec<u32>,
        /// The CPU device.
        device: candle_core::Device,
    },
}

/// The order of one epoch's examples, where the feed needs it.
pub enum EpochOrder {
    /// On the device (resident feeds): batches are slices of it.
    Device(candle_core::Tensor),
    /// On the host.
    Host(Vec<u32>),
}

impl SplitFeed<'_> {
    /// Examples in the split.
    pub fn len(&self) -> usize {
        self.host_labels().len()
    }

    /// True when the split has no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every example's label.
    pub fn host_labels(&self) -> &[u32] {
        match self {
            SplitFeed::Resident { host_labels, .. } | SplitFeed::Host { host_labels, .. } => {
                host_labels
            }
        }
    }

    /// Whether batches are computed on the CPU.
    pub fn on_cpu(&self) -> bool {
        match self {
            SplitFeed::Resident { images, .. } => images.device().is_cpu(),
            SplitFeed::Host { .. } => true,
        }
    }

    /// Examples `start..start + n`, in split order: images and labels.
    pub fn range(
        &self,
        start: usize,
        n: usize,
    ) -> candle_core::Result<(candle_core::Tensor, candle_core::Tensor)> {
        match self {
            SplitFeed::Resident { images, labels, .. } => {
                Ok((images.narrow(0, start, n)?, labels.narrow(0, start, n)?))
            }
            SplitFeed::Host { .. } => {
                let indices: Vec<u32> = (start as u32..(start + n) as u32).collect();
                self.host_batch(&indices)
            }
        }
    }

    /// An epoch's order (a permutation of the split) where batches will read it.
    pub fn order(&self, permutation: Vec<u32>) -> candle_core::Result<EpochOrder> {
        match self {
            SplitFeed::Resident { images, .. } => {
                let n = permutation.len();
                Ok(EpochOrder::Device(candle_core::Tensor::from_vec(
                    permutation,
                    n,
                    images.device(),
                )?))
            }
            SplitFeed::Host { .. } => Ok(EpochOrder::Host(permutation)),
        }
    }

    /// Examples `start..start + n` of `order`: images and labels.
    pub fn batch(
        &self,
        order: &EpochOrder,
        start: usize,
        n: usize,
    ) -> candle_core::Result<(candle_core::Tensor, candle_core::Tensor)> {
        match (self, order) {
            (SplitFeed::Resident { images, labels, .. }, EpochOrder::Device(order)) => {
                let indices = order.narrow(0, start, n)?;
                Ok((
                    images.index_select(&indices, 0)?,
                    labels.index_select(&indices, 0)?,
                ))
            }
            (SplitFeed::Host { .. }, EpochOrder::Host(order)) => {
                self.host_batch(&order[start..start + n])
            }
            _ => Err(candle_core::Error::Msg(
                "an epoch order made for another kind of feed".into(),
            )),
        }
    }

    fn host_batch(
        &self,
        indices: &[u32],
    ) -> candle_core::Result<(candle_core::Tensor, candle_core::Tensor)> {
        let SplitFeed::Host {
            data,
            split,
            device,
            ..
        } = self
        else {
            return Err(candle_core::Error::Msg("not a host feed".into()));
        };
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        data.gather(split, indices, &mut images, &mut labels);
        let n = indices.len();
        let shape = (n, data.shape.channels, data.shape.height, data.shape.width);
        Ok((
            candle_core::Tensor::from_vec(images, shape, device)?,
            candle_core::Tensor::from_vec(labels, n, device)?,
        ))
    }
}

impl Dataset {
    /// `split` as `device` reads it in batches (see [`SplitFeed`]); on a GPU, normalised and
    /// uploaded as `dtype`.
    pub fn feed<'a>(
        &'a self,
        split: &'a Split,
        device: &candle_core::Device,
        dtype: candle_core::DType,
    ) -> candle_core::Result<SplitFeed<'a>> {
        let host_labels: Vec<u32> = split.labels.iter().map(|&l| l as u32).collect();
        if device.is_cpu() && dtype == candle_core::DType::F32 {
            return Ok(SplitFeed::Host {
                data: self,
                split,
                host_labels,
                device: device.clone(),
            });
        }
        let all: Vec<u32> = (0..split.len as u32).collect();
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        self.gather(split, &all, &mut images, &mut labels);
        let shape = (
            split.len,
            self.shape.channels,
            self.shape.height,
            self.shape.width,
        );
        let images = candle_core::Tensor::from_vec(images, shape, device)?.to_dtype(dtype)?;
        Ok(SplitFeed::Resident {
            images,
            labels: candle_core::Tensor::from_slice(&labels, split.len, device)?,
            host_labels: labels,
        })
    }
}

/// How pixel values become model inputs: `(pixel / 255 − mean[c]) / std[c]` per channel `c`,
/// from `data.normalize` (none: pixel / 255). Training, evaluation, export and serving all
/// normalise through this one type.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalisation {
    /// Mean of each channel, of pixel / 255.
    pub mean: Vec<f64>,
    /// Standard deviation of each channel, of pixel / 255.
    pub std: Vec<f64>,
}

impl Normalisation {
    /// The normalisation `spec` asks for, for images of `channels` channels.
    pub fn of(spec: &DataSpec, channels: usize) -> Result<Normalisation, DataError> {
        let (mean, std) = match &spec.normalize {
            Some(NormalizeSpec::Given(n)) => (n.mean.clone(), n.std.clone()),
            Some(NormalizeSpec::Computed(_)) => {
                return Err(DataError::Inconsistent(
                    "data.normalize = \"train\" has no values until the data is loaded (a run's record holds the computed ones)".into(),
                ))
            }
            None => (vec![0.0], vec![1.0]),
        };
        if mean.len() != 1 && mean.len() != channels {
            return Err(DataError::Inconsistent(format!(
                "data.normalize has {} values but the images have {channels} channels",
                mean.len()
            )));
        }
        let per_channel = |v: Vec<f64>| {
            if v.len() == 1 {
                vec![v[0]; channels]
            } else {
                v
            }
        };
        Ok(Normalisation {
            mean: per_channel(mean),
            std: per_channel(std),
        })
    }

    /// The mean and (population) standard deviation of pixel / 255 per channel over `split`,
    /// torchvision's recipe for a data set's normalisation, computed exactly from byte counts.
    /// A channel without variation gets std 1, so it is only centred.
    pub fn over(split: &Split, shape: ImageShape) -> Normalisation {
        let (size, plane) = (shape.size(), shape.height * shape.width);
        let mut counts = vec![[0u64; 256]; shape.channels];
        for i in 0..split.len {
            for (c, channel) in split.example(i, size).chunks_exact(plane).enumerate() {
                for &b in channel {
                    counts[c][b as usize] += 1;
                }
            }
        }
        let (mut mean, mut std) = (Vec::new(), Vec::new());
        for hist in &counts {
            let n: u64 = hist.iter().sum();
            let n = n.max(1) as f64;
            let m = hist
                .iter()
                .enumerate()
                .map(|(b, &k)| k as f64 * b as f64 / 255.0)
                .sum::<f64>()
                / n;
            let var = hist
                .iter()
                .enumerate()
                .map(|(b, &k)| k as f64 * (b as f64 / 255.0 - m).powi(2))
                .sum::<f64>()
                / n;
            mean.push(m);
            std.push(if var > 0.0 { var.sqrt() } else { 1.0 });
        }
        Normalisation { mean, std }
    }

    /// The model input for `pixel` (0–255, fractions allowed) in channel `channel`.
    pub fn value(&self, channel: usize, pixel: f64) -> f32 {
        ((pixel / 255.0 - self.mean[channel]) / self.std[channel]) as f32
    }

    /// Lookup table: the value of pixel byte `b` in channel `c` at `c * 256 + b`.
    fn table(&self) -> Vec<f32> {
        (0..self.mean.len())
            .flat_map(|c| (0..256).map(move |b| self.value(c, b as f64)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hwc_becomes_chw() {
        let shape = ImageShape {
            channels: 2,
            height: 1,
            width: 2,
        };
        assert_eq!(hwc_to_chw(&[1, 2, 3, 4], shape), vec![1, 3, 2, 4]);
    }

    #[test]
    fn split_fingerprint_depends_on_selection() {
        let f = vec![FileFingerprint {
            path: "a".into(),
            blake3: "00".into(),
        }];
        let all = split_fingerprint(&f, None, None);
        let some = split_fingerprint(&f, Some(&[1, 2]), None);
        let other = split_fingerprint(&f, Some(&[1, 3]), None);
        assert_ne!(all, some);
        assert_ne!(some, other);
        let r = Relabel::new(&[1, 0]);
        let relabelled = split_fingerprint(&f, Some(&[1, 2]), r.as_ref());
        assert_ne!(some, relabelled);
    }
}
