//! `exp serve REV|NAME@VERSION`: an HTTP inference server for a run's model.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

use exp::serve::batcher::BatchPolicy;
use exp::serve::{ServeError, ServeOptions};
use exp::Error;

/// The long help of `exp serve`.
pub(super) const SERVE_LONG_ABOUT: &str =
    "Serve a run's model over HTTP. The weights come from the LFS store, checked against the run \
record, as `exp export` reads them; inputs are normalised by the code that normalises training \
batches.

SOURCE is a revision holding a run (run tag, commit, branch) or NAME@VERSION for a release.

Endpoints:
  POST /invocations  MLflow's JSON formats (inputs, instances, dataframe_split, \
dataframe_records): images as nested lists of pixel values 0-255, shape [C, H, W] (or [H, W], \
or C*H*W values) as GET /v1/model says
  POST /predict      a PNG or JPEG body, decoded and resized to the model's input
  GET /ping          200 once the model serves (MLflow's health check), else 503
  GET /health        liveness: 200 while the process answers
  GET /ready         503 until the weights are loaded and a warm-up forward pass has run
  GET /version, /v1/model (experiment, commit, run tag, release, metrics, weights oid, input), \
/metrics (Prometheus)
Answers: {\"predictions\": [{\"label\": 7, \"class\": \"7\", \"probabilities\": [...]}]}.

Requests are batched dynamically: a worker takes the first queued request and all others \
already waiting, up to --max-batch-size images; it waits for more only with --max-delay-ms, so \
a lone request on an idle server is never delayed. A full queue answers 503 with Retry-After; a \
body over --max-body-bytes 413; malformed input 400 naming what is wrong. SIGTERM or SIGINT \
stops accepting connections, answers the requests in flight, then exits 0. One log line per \
request at --log-level debug, a summary per minute at info.

Exit: 0 after a drain on SIGTERM/SIGINT, 2 a bad source or option, a port in use, or a model that \
cannot run on the device.";

/// Compute precision of the served model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    /// 32-bit floats (any device).
    F32,
    /// IEEE half precision (CUDA only).
    F16,
    /// bfloat16 (CUDA only).
    Bf16,
}

impl Precision {
    /// The dtype the model computes in.
    pub(super) fn dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::F16 => candle_core::DType::F16,
            Precision::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Start, readiness, a summary per minute, shutdown.
    Info,
    /// Also one line per request.
    Debug,
}

/// Arguments of `exp serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The run: a revision (run tag, commit, branch) or NAME@VERSION of a release.
    pub source: String,
    /// The experiment, when the revision holds several runs.
    #[arg(long, short = 'e', value_name = "NAME")]
    pub experiment: Option<String>,
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    pub addr: SocketAddr,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Compute precision; f16 and bf16 need a CUDA device.
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: Precision,
    /// The most images in one forward pass.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub max_batch_size: usize,
    /// How long an idle worker may wait to fill a batch (0: never waits).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub max_delay_ms: u64,
    /// Worker threads running forward passes.
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub workers: usize,
    /// Requests that may wait for a worker; more are answered 503.
    #[arg(long, default_value_t = 256, value_name = "Q")]
    pub max_queue: usize,
    /// The largest request body accepted; larger ones are answered 413.
    #[arg(long, default_value_t = 16 << 20, value_name = "B")]
    pub max_body_bytes: usize,
    /// Log verbosity on stderr.
    #[arg(long, value_enum, default_value = "info")]
    pub log_level: LogLevel,
}

pub(super) fn execute(args: ServeArgs) -> Result<(), Error> {
    let usage = |m: String| Error::Usage(super::UsageError(m));
    let level = match args.log_level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
    };
    // exp's own events at the chosen level; the HTTP stack's only when they are warnings.
    let filter = tracing_subscriber::EnvFilter::new(format!("warn,exp={level}"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let request = exp::device::DeviceRequest::parse(&args.device)
        .map_err(|e| usage(format!("--device: {e}")))?;
    let opened = request.open(&args.device)?;
    let dtype = args.precision.dtype();
    if dtype != candle_core::DType::F32 && opened.device.is_cpu() {
        return Err(usage(format!(
            "--precision {} needs a CUDA device; the model would run on {}",
            exp::bench::precision_name(dtype),
            opened.description
        )));
    }
    let (_, _, artifact) =
        super::export::load(&args.source, args.experiment.as_deref(), &opened.device)?;
    let options = ServeOptions {
        addr: args.addr,
        policy: BatchPolicy {
            workers: args.workers,
            max_batch_size: args.max_batch_size,
            max_delay: Duration::from_millis(args.max_delay_ms),
            max_queue: args.max_queue,
        },
        max_body_bytes: args.max_body_bytes,
        dtype,
    };
    let p = artifact.provenance.clone();
    let served = exp::serve::serve(
        artifact,
        opened.device,
        &opened.description,
        options,
        |addr| {
            // Before warm-up: a supervisor can poll /ready from here on.
            println!(
                "Serving {} (run {}, commit {}) on http://{addr}",
                p.experiment,
                p.run_tag.as_deref().unwrap_or(&p.run_id),
                exp::report::short(&p.commit)
            );
        },
    );
    served.map_err(|e| match e {
        ServeError::Option(m) => usage(m),
        other => Error::Serve(other),
    })
}
