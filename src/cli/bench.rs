//! `exp bench [REV]`: latency, throughput and changed predictions of a run's model per precision.

use std::io::IsTerminal;

use clap::Args;

use exp::bench::{BenchOptions, BenchReport};
use exp::Error;

use super::serve::Precision;

/// The long help of `exp bench`.
pub(super) const BENCH_LONG_ABOUT: &str =
    "Measure a run's committed model in each compute precision: latency at small batches, \
throughput at large ones, and whether the predictions change.

The weights come from the LFS store, checked against the record (as for `exp serve`); the images \
are the run's own test set, rebuilt from the record's [params.data] under the data root \
($EXP_DATA) with its fingerprint checked (as for `exp verify`).

For each precision (f32 always first; the default is f32 on the CPU and f32,bf16,f16 on a GPU), \
the whole test set is evaluated in that dtype (accuracy; labels that differ from f32's on the \
same device and from the committed predictions.bin). Then, for each batch size, forward passes \
of real test images are timed: the batch is already on the device in that dtype, as a server \
holds a batch it received, and the device is synchronised after each pass. 3 untimed warm-up \
batches, then --seconds of timed batches (at least 10). The table gives the median and 90th \
percentile latency of one batch, images per second (batch × batches / time) and both as a ratio \
to f32 at the same batch size.

f16 and bf16 need a CUDA device (exp's CPU kernels are f32). Weights stay f32 and are cast per \
layer in each pass, as in training and `exp serve`.

Exit: 0 measured, 2 a bad revision or option, a precision the device cannot run, or data or \
weights that cannot be read.";

/// Arguments of `exp bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The run: a revision (run tag, commit, branch; default HEAD) or NAME@VERSION of a release.
    #[arg(default_value = "HEAD")]
    pub source: String,
    /// The experiment, when the revision holds several runs.
    #[arg(long, short = 'e', value_name = "NAME")]
    pub experiment: Option<String>,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Precisions, comma-separated (default: f32 on the CPU, f32,bf16,f16 on a GPU).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    pub precision: Vec<Precision>,
    /// Images per forward pass, comma-separated: one timing each (default: 1,256).
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = [1, 256],
        hide_default_value = true,
        value_name = "LIST"
    )]
    pub batch_size: Vec<usize>,
    /// Seconds of timed batches per precision and batch size.
    #[arg(long, default_value_t = 2.0, value_name = "S")]
    pub seconds: f64,
    /// Machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn execute(args: BenchArgs) -> Result<(), Error> {
    let usage = |m: String| Error::Usage(super::UsageError(m));
    let cwd = super::cwd()?;
    let request = exp::device::DeviceRequest::parse(&args.device)
        .map_err(|e| usage(format!("--device: {e}")))?;
    let opened = request.open(&args.device)?;
    let dtypes = if !args.precision.is_empty() {
        args.precision.iter().map(|p| p.dtype()).collect()
    } else if opened.device.is_cpu() {
        vec![candle_core::DType::F32]
    } else {
        vec![
            candle_core::DType::F32,
            candle_core::DType::BF16,
            candle_core::DType::F16,
        ]
    };
    let options = BenchOptions {
        dtypes,
        batch_sizes: args.batch_size,
        seconds: args.seconds,
    };
    // Bad options exit before the repository or the data are read.
    exp::bench::check_options(&options, &opened)?;
    let repo = exp::git::open(&cwd)?;
    let root = exp::data::data_root(&cwd)?;
    let talk = std::io::stderr().is_terminal();
    let report = exp::bench::bench(
        &repo,
        &args.source,
        args.experiment.as_deref(),
        &opened,
        &options,
        &root,
        &mut |step| {
            if talk {
                eprintln!("{step}");
            }
        },
    )?;
    if args.json {
        super::emit_json(&report)
    } else {
        print(&report)
    }
}

fn print(report: &BenchReport) -> Result<(), Error> {
    let run = &report.run;
    super::outln!(
        "{} — run {} (commit {}), {} test examples",
        run.experiment,
        run.run_tag.as_deref().unwrap_or(&run.run_id),
        exp::report::short(&run.commit),
        report.examples
    );
    if let Some(accuracy) = report.recorded_accuracy {
        super::outln!(
            "recorded: accuracy {} on {}",
            exp::report::metric(accuracy),
            report.recorded_device
        );
    }
    super::outln!("device: {} ({})", report.device, report.device_description);
    super::outln!(
        "timed: forward passes of batches already on the device, synchronised after each; {} warm-up batches, then {} s per row (at least {} batches)",
        report.warm_up_batches,
        report.seconds_per_timing,
        exp::bench::MIN_TIMED_BATCHES
    );
    super::outln!();
    let mut table = exp::report::table(
        [
            "precision",
            "batch",
            "median ms",
            "p90 ms",
            "img/s",
            "latency ×f32",
            "img/s ×f32",
            "accuracy",
            "≠ f32",
            "≠ record",
        ]
        .map(String::from)
        .to_vec(),
    );
    for p in &report.precisions {
        for t in &p.timings {
            table.add_row(vec![
                p.precision.clone(),
                t.batch_size.to_string(),
                format!("{:.3}", t.median_ms),
                format!("{:.3}", t.p90_ms),
                format!("{:.0}", t.images_per_second),
                format!("{:.2}", t.median_vs_f32),
                format!("{:.2}", t.throughput_vs_f32),
                exp::report::metric(p.accuracy),
                p.differing_vs_f32.to_string(),
                p.differing_vs_record.to_string(),
            ]);
        }
    }
    super::outln!("{table}");
    super::outln!(
        "≠ f32, ≠ record: test labels predicted differently from f32 on this device, and from the committed predictions.bin."
    );
    Ok(())
}
