//! Dynamic batching: requests wait in one bounded queue; each of K worker threads takes the
//! first waiting request and everything else already queued (up to the batch size) and runs
//! them as one forward pass. With `max_delay` zero (the default) a worker never waits for more:
//! a lone request on an idle server runs at once, and batches form only from requests that
//! arrived while the workers were busy. A full queue is refused at once (HTTP 503), never
//! buffered without bound.

use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

use super::input::Batch;
use super::metrics::Metrics;

/// The scores of one image: its logits' softmax, in class order.
pub type Probabilities = Vec<f64>;

/// Runs the model on a batch: `n` normalised images (`values`, image after image, CHW) in, `n`
/// rows of probabilities out.
pub trait Infer: Send + Sync + 'static {
    /// Probabilities for every image of the batch.
    fn infer(&self, values: &[f32], n: usize) -> Result<Vec<Probabilities>, String>;
}

/// How batches form.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Worker threads, each running one forward pass at a time.
    pub workers: usize,
    /// The most images in one forward pass.
    pub max_batch_size: usize,
    /// How long an idle worker holding fewer than `max_batch_size` images waits for more.
    pub max_delay: Duration,
    /// Requests that may wait; one more is refused.
    pub max_queue: usize,
}

struct Job {
    batch: Batch,
    reply: oneshot::Sender<Result<Vec<Probabilities>, String>>,
}

/// The queue and its workers.
pub struct Batcher {
    /// None once closed.
    sender: RwLock<Option<Sender<Job>>>,
    receiver: Receiver<Job>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// The queue holds `max_queue` requests already.
#[derive(Debug, thiserror::Error)]
#[error("the queue is full ({0} requests waiting)")]
pub struct QueueFull(pub usize);

impl Batcher {
    /// Starts `policy.workers` threads running `model`; Err when a thread cannot be started.
    pub fn start(
        model: Arc<dyn Infer>,
        policy: BatchPolicy,
        metrics: Arc<Metrics>,
    ) -> Result<Batcher, String> {
        let (sender, receiver) = crossbeam_channel::bounded::<Job>(policy.max_queue.max(1));
        let batcher = Batcher {
            sender: RwLock::new(Some(sender)),
            receiver,
            workers: Mutex::new(Vec::new()),
        };
        for i in 0..policy.workers.max(1) {
            let (model, receiver, metrics) =
                (model.clone(), batcher.receiver.clone(), metrics.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("exp-serve-worker-{i}"))
                .spawn(move || work(&*model, &receiver, policy, &metrics));
            match spawned {
                Ok(worker) => batcher
                    .workers
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(worker),
                Err(e) => {
                    batcher.shutdown();
                    return Err(format!("cannot start worker thread {i}: {e}"));
                }
            }
        }
        Ok(batcher)
    }

    /// Queues `batch`; the answer comes on the returned channel.
    pub fn submit(
        &self,
        batch: Batch,
    ) -> Result<oneshot::Receiver<Result<Vec<Probabilities>, String>>, QueueFull> {
        let (reply, answer) = oneshot::channel();
        let sender = self
            .sender
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(sender) = sender.as_ref() else {
            return Err(QueueFull(0));
        };
        match sender.try_send(Job { batch, reply }) {
            Ok(()) => Ok(answer),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                Err(QueueFull(self.receiver.len()))
            }
        }
    }

    /// Requests waiting for a worker.
    pub fn depth(&self) -> usize {
        self.receiver.len()
    }

    /// Closes the queue, lets the workers finish what is queued, and waits for them.
    pub fn shutdown(&self) {
        *self
            .sender
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        let workers = std::mem::take(
            &mut *self
                .workers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for worker in workers {
            let _ = worker.join();
        }
    }
}

fn work(model: &dyn Infer, queue: &Receiver<Job>, policy: BatchPolicy, metrics: &Metrics) {
    // recv fails once the queue is closed and empty: the shutdown.
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        let mut images = jobs[0].batch.n;
        // What is already waiting joins the batch at no cost.
        while images < policy.max_batch_size {
            match queue.try_recv() {
                Ok(job) => {
                    images += job.batch.n;
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        // Only when asked to: wait a little for more.
        if !policy.max_delay.is_zero() {
            let deadline = Instant::now() + policy.max_delay;
            while images < policy.max_batch_size {
                match queue.recv_deadline(deadline) {
                    Ok(job) => {
                        images += job.batch.n;
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
        }
        metrics.queue_depth.set(queue.len() as i64);
        run(model, jobs, policy.max_batch_size, metrics);
    }
}

/// Runs the jobs' images in forward passes of at most `max_batch_size` images and answers each
/// job with its own rows.
fn run(model: &dyn Infer, jobs: Vec<Job>, max_batch_size: usize, metrics: &Metrics) {
    let total: usize = jobs.iter().map(|j| j.batch.n).sum();
    // One job runs from its own buffer; several are joined into one.
    let joined: Vec<f32>;
    let values: &[f32] = match &jobs[..] {
        [job] => &job.batch.values,
        _ => {
            joined = jobs
                .iter()
                .flat_map(|j| j.batch.values.iter().copied())
                .collect();
            &joined
        }
    };
    let size = (values.len() / total.max(1)).max(1);
    let mut outcome: Result<Vec<Probabilities>, String> = Ok(Vec::with_capacity(total));
    for pass in values.chunks(max_batch_size.max(1) * size) {
        let n = pass.len() / size;
        metrics.batch_size.observe(n as f64);
        match model.infer(pass, n) {
            Ok(out) => {
                if let Ok(rows) = outcome.as_mut() {
                    rows.extend(out);
                }
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    let mut rows = outcome.map(Vec::into_iter);
    for job in jobs {
        let answer = match &mut rows {
            Ok(rows) => Ok(rows.by_ref().take(job.batch.n).collect()),
            Err(e) => Err(e.clone()),
        };
        // A client that went away no longer waits for its answer.
        let _ = job.reply.send(answer);
    }
}
