//! `exp serve`: an HTTP inference server for a run's model (docs/design.md §10). The model is
//! loaded as `exp export` loads it (`artifact`), its inputs normalised by the code that
//! normalises training batches, and `/ready` answers 200 only after a warm-up forward pass.
//! Requests are batched dynamically (batcher.rs) on worker threads; the HTTP layer (http.rs,
//! axum on tokio) is the edge, so tests drive the router in-process.

pub mod batcher;
pub mod http;
pub mod input;
pub mod metrics;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::artifact::Artifact;
use crate::data::ImageShape;
use crate::model::{Mode, Model};
use batcher::{BatchPolicy, Batcher, Infer, Probabilities};
use input::InputSpec;
use metrics::Metrics;

/// Why the server cannot start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// An option out of range.
    #[error("{0}")]
    Option(String),
    /// The address cannot be listened on.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The warm-up forward pass failed: the model cannot serve on this device.
    #[error("the warm-up forward pass failed: {0}")]
    WarmUp(String),
    /// The async runtime or the server failed.
    #[error("the server failed: {0}")]
    Server(String),
}

impl ServeError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            ServeError::Bind { .. } => {
                Some("another process may hold the port: pick another with --addr".into())
            }
            ServeError::WarmUp(_) => Some("try --device cpu and --precision f32".into()),
            ServeError::Option(_) | ServeError::Server(_) => None,
        }
    }
}

/// The options of `exp serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen.
    pub addr: SocketAddr,
    /// How requests are batched.
    pub policy: BatchPolicy,
    /// The largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// The compute dtype: F32, or F16/BF16 on a GPU.
    pub dtype: DType,
}

/// What `/v1/model` says about the model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// The experiment.
    pub experiment: String,
    /// The architecture (model.name).
    pub architecture: String,
    /// The commit holding the run.
    pub commit: String,
    /// The run id.
    pub run_id: String,
    /// The run tag, when there is one.
    pub run_tag: Option<String>,
    /// The release version, when served as NAME@VERSION.
    pub release: Option<String>,
    /// The LFS oid of the weights.
    pub weights_oid: String,
    /// The run's metrics.
    pub metrics: BTreeMap<String, f64>,
    /// What a request sends: the shape of one image and the pixel range.
    pub input: InputInfo,
    /// The class names, in label order.
    pub classes: Vec<String>,
    /// The device and dtype the model runs in.
    pub device: String,
    /// How requests are batched.
    pub batching: BatchingInfo,
}

/// The input a request sends.
#[derive(Debug, Clone, Serialize)]
pub struct InputInfo {
    /// `[C, H, W]` of one image.
    pub shape: [usize; 3],
    /// Pixel values, as in image files.
    pub range: [u8; 2],
    /// The normalisation exp applies (the request sends raw pixels).
    pub normalize: BTreeMap<&'static str, Vec<f64>>,
}

/// The batching settings, for `/v1/model`.
#[derive(Debug, Clone, Serialize)]
pub struct BatchingInfo {
    /// Worker threads.
    pub workers: usize,
    /// Images per forward pass, at most.
    pub max_batch_size: usize,
    /// How long an idle worker waits to fill a batch.
    pub max_delay_ms: u64,
    /// Requests that may wait.
    pub max_queue: usize,
}

/// What the routes share.
pub struct ServeState {
    /// `/v1/model`.
    pub info: ModelInfo,
    /// How request bodies become inputs.
    pub input: InputSpec,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The largest body accepted.
    pub max_body_bytes: usize,
    /// Set once the model has run its warm-up pass: the server is ready.
    batcher: OnceLock<Batcher>,
}

impl ServeState {
    /// The state for `artifact`, not yet ready.
    pub fn new(
        artifact: &Artifact,
        device: &str,
        options: &ServeOptions,
    ) -> Result<ServeState, ServeError> {
        let s = artifact.input;
        let p = &artifact.provenance;
        let policy = options.policy;
        let info = ModelInfo {
            experiment: p.experiment.clone(),
            architecture: artifact.record.model.architecture.clone(),
            commit: p.commit.clone(),
            run_id: p.run_id.clone(),
            run_tag: p.run_tag.clone(),
            release: p.release.clone(),
            weights_oid: p.weights_oid.clone(),
            metrics: artifact.record.metrics.values.clone(),
            input: InputInfo {
                shape: [s.channels, s.height, s.width],
                range: [0, 255],
                normalize: BTreeMap::from([
                    ("mean", artifact.normalisation.mean.clone()),
                    ("std", artifact.normalisation.std.clone()),
                ]),
            },
            classes: artifact.class_names.clone(),
            device: format!("{device} {:?}", options.dtype).to_lowercase(),
            batching: BatchingInfo {
                workers: policy.workers,
                max_batch_size: policy.max_batch_size,
                max_delay_ms: policy.max_delay.as_millis() as u64,
                max_queue: policy.max_queue,
            },
        };
        Ok(ServeState {
            info,
            input: InputSpec {
                shape: s,
                normalisation: artifact.normalisation.clone(),
            },
            metrics: Arc::new(Metrics::new().map_err(|e| ServeError::Server(e.to_string()))?),
            max_body_bytes: options.max_body_bytes,
            batcher: OnceLock::new(),
        })
    }

    /// The batcher, once the server is ready.
    pub fn batcher(&self) -> Option<&Batcher> {
        self.batcher.get()
    }

    /// Warms `model` up (one forward pass of a full batch) and starts the workers: from then
    /// on the server is ready.
    pub fn warm_up_and_start(
        &self,
        model: Arc<dyn Infer>,
        policy: BatchPolicy,
    ) -> Result<(), ServeError> {
        let size = self.input.shape.size();
        let n = policy.max_batch_size.max(1);
        model
            .infer(&vec![0.0; n * size], n)
            .map_err(ServeError::WarmUp)?;
        let batcher =
            Batcher::start(model, policy, self.metrics.clone()).map_err(ServeError::Server)?;
        if self.batcher.set(batcher).is_ok() {
            self.metrics.ready.set(1);
        }
        Ok(())
    }

    /// Closes the queue and waits for the workers to answer what it holds.
    fn drain(&self) {
        if let Some(batcher) = self.batcher.get() {
            batcher.shutdown();
        }
    }
}

/// A model on a device, answering batches of normalised images with probabilities.
pub struct Forward {
    model: Model,
    device: Device,
    dtype: DType,
    shape: ImageShape,
}

impl Forward {
    /// Wraps `model` (loaded on `device`) to run in `dtype`.
    pub fn new(model: Model, device: Device, dtype: DType, shape: ImageShape) -> Forward {
        Forward {
            model,
            device,
            dtype,
            shape,
        }
    }
}

impl Infer for Forward {
    fn infer(&self, values: &[f32], n: usize) -> Result<Vec<Probabilities>, String> {
        let s = self.shape;
        let logits = Tensor::from_slice(values, (n, s.channels, s.height, s.width), &Device::Cpu)
            .and_then(|x| x.to_device(&self.device))
            .and_then(|x| x.to_dtype(self.dtype))
            .and_then(|x| self.model.forward(&x, &mut Mode::Eval))
            .and_then(|y| y.to_dtype(DType::F32))
            .and_then(|y| y.to_device(&Device::Cpu))
            .and_then(|y| y.to_vec2::<f32>())
            .map_err(|e| e.to_string())?;
        Ok(logits.iter().map(|row| softmax(row)).collect())
    }
}

/// Softmax of one row of logits, in f64.
fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// How often the server logs a summary at info level.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// How long a client may take to send a request's headers: a connection that sends nothing
/// useful is closed rather than held open forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take, body reading, queueing and the forward pass included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a drain waits for requests in flight before it closes their connections.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// The bounds of the batching options: beyond them a server would allocate without limit (the
/// queue's slots, the warm-up batch, threads) or hold a request forever.
pub const MAX_WORKERS: usize = 256;
/// See [`MAX_WORKERS`].
pub const MAX_BATCH_SIZE: usize = 4096;
/// See [`MAX_WORKERS`].
pub const MAX_QUEUE: usize = 65536;
/// See [`MAX_WORKERS`].
pub const MAX_DELAY: Duration = Duration::from_secs(10);

/// Checks the options against their bounds, before anything is bound or allocated.
pub fn check_options(options: &ServeOptions) -> Result<(), ServeError> {
    let p = options.policy;
    for (flag, value, max) in [
        ("--workers", p.workers, MAX_WORKERS),
        ("--max-batch-size", p.max_batch_size, MAX_BATCH_SIZE),
        ("--max-queue", p.max_queue, MAX_QUEUE),
    ] {
        if value == 0 || value > max {
            return Err(ServeError::Option(format!(
                "{flag} {value}: must be from 1 to {max}"
            )));
        }
    }
    if p.max_delay > MAX_DELAY {
        return Err(ServeError::Option(format!(
            "--max-delay-ms {}: at most {} (a batch wait longer than that holds requests, not batches them)",
            p.max_delay.as_millis(),
            MAX_DELAY.as_millis()
        )));
    }
    if options.max_body_bytes == 0 {
        return Err(ServeError::Option(
            "--max-body-bytes 0 would refuse every request".into(),
        ));
    }
    Ok(())
}

/// Serves `artifact` (its model loaded on `device`, described as `device_name`) until SIGTERM or
/// SIGINT, then drains: the listener closes, requests in flight are answered (for up to 30 s),
/// the workers finish, and this returns Ok. `listening` is called with the bound address before
/// the model is warmed up; a warm-up that fails (or panics) ends the server with an error.
pub fn serve(
    artifact: Artifact,
    device: Device,
    device_name: &str,
    options: ServeOptions,
    listening: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    check_options(&options)?;
    let policy = options.policy;
    let state = Arc::new(ServeState::new(&artifact, device_name, &options)?);
    // The model holds its own copy of the weights: the loaded tensors and the record go now,
    // not at shutdown.
    let Artifact { model, input, .. } = artifact;
    let forward: Arc<dyn Infer> = Arc::new(Forward::new(model, device, options.dtype, input));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("exp-serve-http")
        .build()
        .map_err(|e| ServeError::Server(e.to_string()))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: options.addr,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| ServeError::Server(e.to_string()))?;
        listening(addr);
        // The warm-up, off the async threads; its failure or panic stops the server.
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<ServeError>();
        let warming = state.clone();
        tokio::spawn(async move {
            let warm = warming.clone();
            let outcome =
                tokio::task::spawn_blocking(move || warm.warm_up_and_start(forward, policy)).await;
            let failure = match outcome {
                Ok(Ok(())) => {
                    tracing::info!("ready: {} serves on http://{addr}", warming.info.experiment);
                    return;
                }
                Ok(Err(e)) => e,
                Err(panic) => ServeError::WarmUp(format!("it panicked: {panic}")),
            };
            let _ = failed_tx.send(failure);
        });
        tokio::spawn(summaries(state.clone()));
        let stop = async move {
            tokio::select! {
                signal = termination() => {
                    tracing::info!("{signal}: draining in-flight requests");
                    None
                }
                Ok(e) = failed_rx => {
                    tracing::error!("{e}");
                    Some(e)
                }
            }
        };
        let failure = accept_until(listener, http::router(state.clone()), stop).await;
        state.metrics.ready.set(0);
        let drained = state.clone();
        tokio::task::spawn_blocking(move || drained.drain())
            .await
            .map_err(|e| ServeError::Server(e.to_string()))?;
        match failure {
            Some(e) => Err(e),
            None => {
                tracing::info!("drained; exiting");
                Ok(())
            }
        }
    })
}

/// Accepts HTTP/1 connections for `router` until `stop` resolves, then closes the listener and
/// waits (at most [`DRAIN_DEADLINE`]) for the connections' requests in flight. Returns what
/// `stop` returned.
async fn accept_until<T>(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    stop: impl std::future::Future<Output = T>,
) -> T {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(stop);
    let stopped = loop {
        let (stream, _) = tokio::select! {
            value = &mut stop => break value,
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                // Out of file descriptors, or a connection reset before accept: wait a
                // moment rather than spin, and keep serving the connections there are.
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection: {e}");
            }
        });
    };
    drop(listener);
    if tokio::time::timeout(DRAIN_DEADLINE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in flight after {} s: their connections are closed",
            DRAIN_DEADLINE.as_secs()
        );
    }
    stopped
}

/// Waits for SIGTERM or SIGINT; returns which.
async fn termination() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the server runs until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Logs, every minute, the requests answered since the last summary.
async fn summaries(state: Arc<ServeState>) {
    // (all requests for predictions, those not answered 200)
    let total = |state: &ServeState| -> (u64, u64) {
        let mut counts = (0, 0);
        for family in prometheus::core::Collector::collect(&state.metrics.requests) {
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                        .unwrap_or_default()
                };
                if !matches!(label("endpoint").as_str(), "/invocations" | "/predict") {
                    continue;
                }
                let n = metric.get_counter().get_value() as u64;
                counts.0 += n;
                if label("status") != "200" {
                    counts.1 += n;
                }
            }
        }
        counts
    };
    let mut last = total(&state);
    let mut ticks = tokio::time::interval(SUMMARY_EVERY);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let now = total(&state);
        let (requests, failed) = (now.0 - last.0, now.1 - last.1);
        tracing::info!(
            "last minute: {requests} predictions requested ({:.1}/s), {failed} refused or failed, {} queued",
            requests as f64 / SUMMARY_EVERY.as_secs_f64(),
            state.batcher().map_or(0, |b| b.depth()),
        );
        last = now;
    }
}
