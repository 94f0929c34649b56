//! `exp bench` (docs/serving.md, "Precision: latency, throughput, predictions"): what running a
//! run's committed model in f16 or bf16 instead of f32 buys in latency and throughput, and what
//! it costs in predictions.
//!
//! The answer must come from the same model and the same images in every precision, so the
//! weights are the committed ones (through [`crate::artifact`], as `exp serve` loads them) and the
//! images are the run's own test set, rebuilt as `exp verify` rebuilds it (fingerprint checked).
//! For each precision the whole test set is evaluated in that dtype — the model casts its f32
//! weights per layer, as in training and in `exp serve` — and its predictions are compared with
//! f32's on the same device and with the committed `predictions.bin`.
//!
//! Timing measures what a server does with a batch it has received: the batch is already on the
//! device in the compute dtype, a forward pass runs, and the device is synchronised (a GPU runs
//! asynchronously: without it a host clock times only the kernel launches). Batches are real
//! test images, cycled through; a few untimed warm-up batches come first (kernel compilation,
//! allocator pools, caches), then batches are timed one by one for the time asked, at least
//! [`MIN_TIMED_BATCHES`]. The median and the 90th percentile describe latency; throughput is
//! the images of the timed batches over their summed time.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use git2::Repository;
use serde::Serialize;

use crate::artifact::{Artifact, ArtifactError, Provenance};
use crate::compare::Snapshot;
use crate::data::{Dataset, ImageShape, SplitFeed};
use crate::device::OpenedDevice;
use crate::eval::{decode_predictions, evaluate, Metrics};
use crate::model::{Mode, Model};
use crate::record::layout::{self, PREDICTIONS_FILE};

/// Untimed forward passes before each configuration is timed.
pub const WARM_UP_BATCHES: usize = 3;
/// The fewest timed batches per configuration, however short `--seconds`.
pub const MIN_TIMED_BATCHES: usize = 10;
/// The distinct batches prepared for one configuration are at most this many bytes (then they
/// are cycled): a whole large test set at batch 256 need not be copied again.
const POOL_BYTES: usize = 256 << 20;
/// …and at most this many batches (batch 1 of a 10,000-image test set).
const POOL_BATCHES: usize = 1024;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The compute dtypes (F32, F16, BF16); f32 is always measured, first.
    pub dtypes: Vec<DType>,
    /// Images per forward pass, one timing each.
    pub batch_sizes: Vec<usize>,
    /// Seconds of timed batches per precision and batch size.
    pub seconds: f64,
}

/// Why `exp bench` cannot measure.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An option out of range, or a precision the device cannot run.
    #[error("{0}")]
    Option(String),
    /// The run's model cannot be loaded.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// The run's test set cannot be rebuilt, or does not fit its model or record.
    #[error("{0}")]
    Data(String),
    /// Evaluating or timing failed on the device.
    #[error("{what} failed: {source}")]
    Compute {
        /// What was running.
        what: String,
        /// The cause.
        source: candle_core::Error,
    },
}

impl BenchError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            BenchError::Option(_) => None,
            BenchError::Artifact(e) => e.hint(),
            BenchError::Data(_) => Some(
                "put the run's data under the data root (EXP_DATA); `exp verify` says what it \
                 reads"
                    .into(),
            ),
            BenchError::Compute { .. } => Some("try --device cpu and --precision f32".into()),
        }
    }
}

/// The timing of one precision at one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    /// Images per forward pass.
    pub batch_size: usize,
    /// Timed forward passes.
    pub batches: usize,
    /// Their summed time, seconds.
    pub seconds: f64,
    /// Median latency of one batch, milliseconds.
    pub median_ms: f64,
    /// 90th percentile (nearest rank) of the latency, milliseconds.
    pub p90_ms: f64,
    /// Images per second: batch size × batches / seconds.
    pub images_per_second: f64,
    /// This median over f32's at the same batch size (below 1: faster).
    pub median_vs_f32: f64,
    /// This throughput over f32's at the same batch size (above 1: faster).
    pub throughput_vs_f32: f64,
}

/// One precision: its evaluation of the test set and its timings.
#[derive(Debug, Clone, Serialize)]
pub struct PrecisionBench {
    /// `f32`, `f16` or `bf16`.
    pub precision: String,
    /// Accuracy on the test set.
    pub accuracy: f64,
    /// Mean cross-entropy on the test set.
    pub loss: f64,
    /// Test examples whose predicted label differs from f32's on this device.
    pub differing_vs_f32: usize,
    /// Test examples whose predicted label differs from the committed `predictions.bin`.
    pub differing_vs_record: usize,
    /// One per batch size, in the order asked.
    pub timings: Vec<Timing>,
}

/// What `exp bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The run measured.
    pub run: Provenance,
    /// The device, as a run record names it (`cpu`, `cuda:0 NVIDIA H200`).
    pub device: String,
    /// The device in more detail: CPU model and threads, or GPU, memory and CUDA versions.
    pub device_description: String,
    /// Where the run was evaluated (the record's `run.device`), which `differing_vs_record`
    /// depends on.
    pub recorded_device: String,
    /// The record's accuracy.
    pub recorded_accuracy: Option<f64>,
    /// Test examples.
    pub examples: usize,
    /// Untimed batches before each timing.
    pub warm_up_batches: usize,
    /// Seconds asked per timing.
    pub seconds_per_timing: f64,
    /// f32 first, then the other precisions in the order asked.
    pub precisions: Vec<PrecisionBench>,
}

/// The name exp gives a compute dtype (`--precision`, `train.precision`).
pub fn precision_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F32 => "f32",
        _ => "unsupported",
    }
}

/// Checks `options` before anything is loaded: batch sizes from 1, a positive time, and half
/// precisions only on a GPU (exp's CPU kernels are f32; `exp serve` refuses them alike).
pub fn check_options(options: &BenchOptions, device: &OpenedDevice) -> Result<(), BenchError> {
    let option = |m: String| Err(BenchError::Option(m));
    if options.batch_sizes.is_empty() {
        return option("--batch-size: give at least one batch size".into());
    }
    if let Some(b) = options.batch_sizes.iter().find(|&&b| b == 0) {
        return option(format!(
            "--batch-size {b}: a batch holds at least one image"
        ));
    }
    if !(options.seconds.is_finite() && options.seconds > 0.0) {
        return option(format!(
            "--seconds {}: must be a positive number of seconds",
            options.seconds
        ));
    }
    for &dtype in &options.dtypes {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return option(format!(
                "--precision {dtype:?}: exp computes in f32, f16 or bf16"
            ));
        }
        if dtype != DType::F32 && device.device.is_cpu() {
            return option(format!(
                "--precision {} needs a CUDA device; the model would run on {}",
                precision_name(dtype),
                device.description
            ));
        }
    }
    Ok(())
}

/// f32 first (the reference of every comparison), then the others in the order given, each
/// once.
pub fn measured_order(dtypes: &[DType]) -> Vec<DType> {
    let mut out = vec![DType::F32];
    for &d in dtypes {
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

/// Measures the run `source` names (experiment `experiment` when the revision holds several)
/// on `device` as `options` say; the test set is rebuilt under the data root `root`.
/// `progress` is told what is being measured, one line a step.
pub fn bench(
    repo: &Repository,
    source: &str,
    experiment: Option<&str>,
    device: &OpenedDevice,
    options: &BenchOptions,
    root: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<BenchReport, BenchError> {
    check_options(options, device)?;
    let artifact = crate::artifact::load(repo, source, experiment, &device.device, Some(root))?;
    let snapshot = run_snapshot(repo, source, &artifact)?;
    let data = test_set(repo, &snapshot, &artifact, root)?;
    let committed = committed_predictions(repo, &snapshot, &artifact, &data)?;
    let name = &artifact.provenance.experiment;
    let classes = artifact.record.eval.classes;
    let mut precisions: Vec<PrecisionBench> = Vec::new();
    let mut reference: Option<Vec<u32>> = None;
    for dtype in measured_order(&options.dtypes) {
        let precision = precision_name(dtype);
        let compute =
            |what: String| move |source: candle_core::Error| BenchError::Compute { what, source };
        progress(&format!("{name}: evaluating the test set in {precision}"));
        let feed = data
            .feed(&data.test, &device.device, dtype)
            .map_err(compute(format!("uploading the test set in {precision}")))?;
        let evaluation = evaluate(&artifact.model, &feed)
            .map_err(compute(format!("evaluating in {precision}")))?;
        let reference = reference.get_or_insert_with(|| evaluation.predictions.clone());
        let mut timings = Vec::new();
        for &batch in &options.batch_sizes {
            progress(&format!("{name}: timing {precision} at batch {batch}"));
            let timing = time_batches(&artifact.model, &device.device, &feed, batch, options)
                .map_err(compute(format!("timing {precision} at batch {batch}")))?;
            timings.push(timing);
        }
        precisions.push(PrecisionBench {
            precision: precision.to_string(),
            accuracy: Metrics::new(&evaluation, classes).accuracy,
            loss: evaluation.loss,
            differing_vs_f32: differing(reference, &evaluation.predictions),
            differing_vs_record: differing(&committed, &evaluation.predictions),
            timings,
        });
    }
    relate_to_f32(&mut precisions);
    let record = &artifact.record;
    Ok(BenchReport {
        device: device.description.clone(),
        device_description: describe_device(device),
        recorded_device: record.run.device.clone(),
        recorded_accuracy: record.metrics.values.get("accuracy").copied(),
        examples: data.test.len,
        warm_up_batches: WARM_UP_BATCHES,
        seconds_per_timing: options.seconds,
        precisions,
        run: artifact.provenance,
    })
}

/// The commit holding the run, named as the user named it (a release resolves to its tag's
/// commit).
fn run_snapshot<'r>(
    repo: &'r Repository,
    source: &str,
    artifact: &Artifact,
) -> Result<Snapshot<'r>, BenchError> {
    let mut snapshot = crate::compare::resolve(repo, &artifact.provenance.commit)
        .map_err(|e| BenchError::Artifact(e.into()))?;
    snapshot.name = source.to_string();
    Ok(snapshot)
}

/// The run's test set, rebuilt from its record as `exp verify` does, checked against the model.
fn test_set(
    repo: &Repository,
    snapshot: &Snapshot,
    artifact: &Artifact,
    root: &Path,
) -> Result<Dataset, BenchError> {
    let name = &artifact.provenance.experiment;
    let data = crate::verify::rebuilt_test_set(repo, snapshot, name, &artifact.record, root)
        .map_err(BenchError::Data)?;
    let shape = |s: ImageShape| format!("{}×{}×{}", s.channels, s.height, s.width);
    if data.shape != artifact.input || data.classes != artifact.record.eval.classes {
        return Err(BenchError::Data(format!(
            "the rebuilt test set has {} classes of {} images; the model takes {} classes of {}",
            data.classes,
            shape(data.shape),
            artifact.record.eval.classes,
            shape(artifact.input)
        )));
    }
    if data.test.len == 0 {
        return Err(BenchError::Data(format!(
            "the test set of {name} at {} is empty: there is nothing to time",
            snapshot.name
        )));
    }
    Ok(data)
}

/// The committed predictions of the run, whose labels must be the rebuilt test set's.
fn committed_predictions(
    repo: &Repository,
    snapshot: &Snapshot,
    artifact: &Artifact,
    data: &Dataset,
) -> Result<Vec<u32>, BenchError> {
    let name = &artifact.provenance.experiment;
    let file = format!(
        "{} at {}",
        layout::run_file(name, PREDICTIONS_FILE),
        snapshot.name
    );
    let bytes = crate::verify::committed_predictions(repo, snapshot, name)
        .ok_or_else(|| BenchError::Data(format!("{file} is missing")))?;
    let (labels, predictions, _) =
        decode_predictions(&bytes).map_err(|e| BenchError::Data(format!("{file}: {e}")))?;
    let rebuilt: Vec<u32> = data.test.labels.iter().map(|&l| l as u32).collect();
    if labels != rebuilt {
        return Err(BenchError::Data(format!(
            "the true labels in {file} are not those of the rebuilt test set"
        )));
    }
    Ok(predictions)
}

fn differing(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count() + a.len().abs_diff(b.len())
}

/// Warms up, then times forward passes of `batch` images of `feed` for `options.seconds` (at
/// least [`MIN_TIMED_BATCHES`]).
fn time_batches(
    model: &Model,
    device: &Device,
    feed: &SplitFeed,
    batch: usize,
    options: &BenchOptions,
) -> candle_core::Result<Timing> {
    let pool = batch_pool(feed, batch)?;
    let forward = |x: &Tensor| -> candle_core::Result<Duration> {
        let start = Instant::now();
        let logits = model.forward(x, &mut Mode::Eval)?;
        device.synchronize()?;
        let elapsed = start.elapsed();
        drop(logits);
        Ok(elapsed)
    };
    let mut next = pool.iter().cycle();
    for x in next.by_ref().take(WARM_UP_BATCHES) {
        forward(x)?;
    }
    let budget = Duration::from_secs_f64(options.seconds);
    let mut latencies = Vec::new();
    let mut total = Duration::ZERO;
    for x in next {
        if total >= budget && latencies.len() >= MIN_TIMED_BATCHES {
            break;
        }
        let elapsed = forward(x)?;
        total += elapsed;
        latencies.push(elapsed.as_secs_f64() * 1e3);
    }
    let seconds = total.as_secs_f64();
    Ok(Timing {
        batch_size: batch,
        batches: latencies.len(),
        seconds,
        median_ms: median(&mut latencies),
        p90_ms: percentile(&mut latencies, 0.9),
        images_per_second: (batch * latencies.len()) as f64 / seconds,
        median_vs_f32: f64::NAN,
        throughput_vs_f32: f64::NAN,
    })
}

/// Consecutive batches of the test set (wrapping around at its end), on the device and in the
/// feed's dtype, as many as the test set holds within [`POOL_BYTES`] and [`POOL_BATCHES`].
fn batch_pool(feed: &SplitFeed, batch: usize) -> candle_core::Result<Vec<Tensor>> {
    let n = feed.len();
    let first = batch_of(feed, 0, batch)?;
    let bytes = first.elem_count() * first.dtype().size_in_bytes();
    let count = n
        .div_ceil(batch)
        .min(POOL_BATCHES)
        .min((POOL_BYTES / bytes.max(1)).max(1));
    let mut pool = vec![first];
    for i in 1..count {
        pool.push(batch_of(feed, i * batch, batch)?);
    }
    Ok(pool)
}

fn batch_of(feed: &SplitFeed, start: usize, batch: usize) -> candle_core::Result<Tensor> {
    let n = feed.len();
    let indices: Vec<u32> = (start..start + batch).map(|i| (i % n) as u32).collect();
    let order = feed.order(indices)?;
    Ok(feed.batch(&order, 0, batch)?.0)
}

/// The median of `values` (the mean of the middle two for an even count); NaN when empty.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The nearest-rank `q` quantile of `values` (the smallest value with at least q·n values at or
/// below it); NaN when empty.
fn percentile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    let rank = (q * n as f64).ceil() as usize;
    values[rank.clamp(1, n) - 1]
}

/// Fills every timing's ratios to f32's at the same batch size (`precisions[0]`).
fn relate_to_f32(precisions: &mut [PrecisionBench]) {
    let Some(f32_timings) = precisions.first().map(|p| p.timings.clone()) else {
        return;
    };
    for p in precisions {
        for (t, base) in p.timings.iter_mut().zip(&f32_timings) {
            t.median_vs_f32 = t.median_ms / base.median_ms;
            t.throughput_vs_f32 = t.images_per_second / base.images_per_second;
        }
    }
}

/// The device in a line a benchmark can be compared by: the GPU with its memory and CUDA
/// versions, or the CPU model, threads and kernels.
pub fn describe_device(device: &OpenedDevice) -> String {
    if let Some(gpu) = &device.gpu {
        return format!(
            "{}, compute capability {}, {} MiB, driver {}, CUDA {} (built with {})",
            gpu.name,
            gpu.compute_capability,
            gpu.memory_mib,
            gpu.driver,
            gpu.cuda_driver,
            gpu.cuda_build
        );
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU model".into());
    let kernels = if crate::model::candle_cpu_ops_forced() {
        "candle's CPU ops"
    } else {
        "exp's CPU kernels"
    };
    format!(
        "{cpu}, {} threads, {kernels}",
        candle_core::utils::get_num_threads()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu() -> OpenedDevice {
        OpenedDevice {
            device: Device::Cpu,
            description: "cpu".into(),
            gpu: None,
        }
    }

    fn options(dtypes: Vec<DType>, batch_sizes: Vec<usize>, seconds: f64) -> BenchOptions {
        BenchOptions {
            dtypes,
            batch_sizes,
            seconds,
        }
    }

    #[test]
    fn median_and_p90_are_the_textbook_ones() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
        let mut ten: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut ten, 0.9), 9.0);
        let mut eleven: Vec<f64> = (1..=11).map(f64::from).collect();
        assert_eq!(percentile(&mut eleven, 0.9), 10.0);
        assert_eq!(percentile(&mut [5.0], 0.9), 5.0);
    }

    #[test]
    fn f32_is_measured_first_and_once() {
        assert_eq!(
            measured_order(&[DType::F16, DType::F32, DType::BF16, DType::F16]),
            vec![DType::F32, DType::F16, DType::BF16]
        );
        assert_eq!(measured_order(&[]), vec![DType::F32]);
    }

    #[test]
    fn bad_options_are_refused_before_loading() {
        let message = |o: BenchOptions| check_options(&o, &cpu()).unwrap_err().to_string();
        assert!(message(options(vec![DType::F32], vec![1, 0], 1.0)).contains("--batch-size 0"));
        assert!(message(options(vec![DType::F32], vec![], 1.0)).contains("--batch-size"));
        for seconds in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(message(options(vec![DType::F32], vec![1], seconds)).contains("--seconds"));
        }
        assert_eq!(
            message(options(vec![DType::F32, DType::BF16], vec![1], 1.0)),
            "--precision bf16 needs a CUDA device; the model would run on cpu"
        );
        assert!(check_options(&options(vec![DType::F32], vec![1, 256], 0.2), &cpu()).is_ok());
    }

    #[test]
    fn ratios_are_to_f32_at_the_same_batch_size() {
        let timing = |batch_size, median_ms, images_per_second| Timing {
            batch_size,
            batches: 10,
            seconds: 1.0,
            median_ms,
            p90_ms: median_ms,
            images_per_second,
            median_vs_f32: f64::NAN,
            throughput_vs_f32: f64::NAN,
        };
        let precision = |name: &str, timings| PrecisionBench {
            precision: name.into(),
            accuracy: 1.0,
            loss: 0.0,
            differing_vs_f32: 0,
            differing_vs_record: 0,
            timings,
        };
        let mut p = vec![
            precision(
                "f32",
                vec![timing(1, 2.0, 500.0), timing(256, 10.0, 25600.0)],
            ),
            precision(
                "f16",
                vec![timing(1, 1.0, 1000.0), timing(256, 8.0, 32000.0)],
            ),
        ];
        relate_to_f32(&mut p);
        assert_eq!(p[0].timings[1].median_vs_f32, 1.0);
        assert_eq!(p[1].timings[0].median_vs_f32, 0.5);
        assert_eq!(p[1].timings[0].throughput_vs_f32, 2.0);
        assert_eq!(p[1].timings[1].median_vs_f32, 0.8);
        assert_eq!(p[1].timings[1].throughput_vs_f32, 1.25);
    }

    #[test]
    fn differing_counts_labels_and_missing_ones() {
        assert_eq!(differing(&[1, 2, 3], &[1, 0, 3]), 1);
        assert_eq!(differing(&[1, 2, 3], &[1, 2]), 1);
    }
}
