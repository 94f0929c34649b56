//! The training loop: seeded shuffling, gradient accumulation, per-epoch evaluation,
//! divergence and signal checks, progress on stderr and a time breakdown per phase.

pub mod optim;
mod progress;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::error::ExitCode;
use crate::eval::{evaluate, Evaluation};
use crate::model::{Mode, Model};
use crate::rng::{ExpRng, Purpose};
use crate::spec::TrainSpec;
pub use optim::Optimizer;
pub use progress::Progress;

/// A training run that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A tensor operation failed.
    #[error("training failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// The loss became NaN or infinite.
    #[error("the run diverged: loss is {loss} at epoch {epoch}, step {step}")]
    Diverged {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step within the epoch.
        step: usize,
        /// The non-finite loss.
        loss: f32,
    },
    /// SIGINT or SIGTERM arrived.
    #[error("interrupted by {0}; nothing was recorded")]
    Interrupted(Signal),
    /// The requested device is not available.
    #[error("device {requested:?} is not available: {reason}")]
    Device {
        /// The request as written.
        requested: String,
        /// Why not.
        reason: String,
    },
}

impl TrainError {
    /// DESIGN §5: a diverged run is a negative answer (1), a signal 130/143, the rest 2.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            TrainError::Diverged { .. } => ExitCode::Negative,
            TrainError::Interrupted(Signal::Int) => ExitCode::Interrupted,
            TrainError::Interrupted(Signal::Term) => ExitCode::Terminated,
            _ => ExitCode::Usage,
        }
    }

    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            TrainError::Diverged { .. } => Some(
                "lower train.lr (e.g. --set train.lr=1e-4) or check the data normalisation".into(),
            ),
            TrainError::Device { .. } => Some("use --set train.device=cpu, or auto".into()),
            _ => None,
        }
    }
}

/// The signal that stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Ctrl-C.
    Int,
    /// `kill`, a CI timeout.
    Term,
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
        })
    }
}

/// Flags set by SIGINT/SIGTERM handlers; the loop checks them between steps so a run stops
/// cleanly, committing nothing.
#[derive(Clone, Default)]
pub struct StopFlag {
    int: Arc<AtomicBool>,
    term: Arc<AtomicBool>,
}

impl StopFlag {
    /// Installs handlers for SIGINT and SIGTERM. A second signal of the same kind ends the
    /// process at once, for a user who does not want to wait for the current step.
    pub fn install() -> std::io::Result<StopFlag> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let flag = StopFlag::default();
        for (signal, state) in [(SIGINT, &flag.int), (SIGTERM, &flag.term)] {
            signal_hook::flag::register_conditional_shutdown(
                signal,
                128 + signal,
                Arc::clone(state),
            )?;
            signal_hook::flag::register(signal, Arc::clone(state))?;
        }
        Ok(flag)
    }

    /// Err when a signal has arrived.
    pub fn check(&self) -> Result<(), TrainError> {
        if self.int.load(Ordering::Relaxed) {
            Err(TrainError::Interrupted(Signal::Int))
        } else if self.term.load(Ordering::Relaxed) {
            Err(TrainError::Interrupted(Signal::Term))
        } else {
            Ok(())
        }
    }
}

/// `train.device` as requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// CUDA when this build has it and a GPU answers, else CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl DeviceRequest {
    /// Parses `auto`, `cpu`, `cuda` or `cuda:N`.
    pub fn parse(text: &str) -> Result<DeviceRequest, String> {
        match text {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" => Ok(DeviceRequest::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceRequest::Cuda)
                .ok_or_else(|| format!("expected auto, cpu, cuda or cuda:N, got {other:?}")),
        }
    }

    /// Opens the device; returns it with the description the record stores.
    pub fn open(self, requested: &str) -> Result<(Device, String), TrainError> {
        let unavailable = |reason: String| TrainError::Device {
            requested: requested.to_string(),
            reason,
        };
        match self {
            DeviceRequest::Cpu => Ok((Device::Cpu, "cpu".into())),
            DeviceRequest::Auto => {
                if cfg!(feature = "cuda") {
                    if let Ok(device) = Device::new_cuda(0) {
                        return Ok((device, "cuda:0".into()));
                    }
                }
                Ok((Device::Cpu, "cpu".into()))
            }
            DeviceRequest::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    return Err(unavailable(
                        "this exp was built without CUDA support (rebuild with `--features cuda`)"
                            .into(),
                    ));
                }
                Device::new_cuda(n)
                    .map(|d| (d, format!("cuda:{n}")))
                    .map_err(|e| unavailable(e.to_string()))
            }
        }
    }
}

/// One row of `history.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Validation loss (empty without `val_limit`).
    pub val_loss: Option<f64>,
    /// Validation accuracy (empty without `val_limit`).
    pub val_accuracy: Option<f64>,
    /// Loss on the eval (test) set.
    pub eval_loss: f64,
    /// Accuracy on the eval (test) set.
    pub eval_accuracy: f64,
    /// Wall seconds of the epoch, evaluation included.
    pub seconds: f64,
}

/// Where training time went, summed over the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Gathering and normalising batches.
    pub data_seconds: f64,
    /// Forward pass and loss.
    pub forward_seconds: f64,
    /// Backward pass.
    pub backward_seconds: f64,
    /// Gradient accumulation and optimiser updates.
    pub optimizer_seconds: f64,
    /// Per-epoch evaluation.
    pub eval_seconds: f64,
    /// Training images per second (training steps only, evaluation excluded).
    pub images_per_second: f64,
}

/// What a completed training run produced.
pub struct TrainOutcome {
    /// One row per epoch.
    pub history: Vec<EpochRecord>,
    /// The final evaluation on the eval set.
    pub evaluation: Evaluation,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Time breakdown.
    pub timing: Timing,
}

/// Trains `model` on `data` as `spec` says, evaluating after every epoch.
pub fn train(
    model: &Model,
    data: &Dataset,
    spec: &TrainSpec,
    device: &Device,
    stop: &StopFlag,
    progress: &mut Progress,
) -> Result<TrainOutcome, TrainError> {
    let mut optimizer = Optimizer::new(model.params().vars(), spec);
    let mut shuffle = ExpRng::new(spec.seed, Purpose::Shuffle);
    let mut dropout = ExpRng::new(spec.seed, Purpose::Dropout);
    let shape = data.shape;
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    let mut timing = Timing::default();
    let mut history = Vec::new();
    let mut steps = 0;
    let mut train_time = Duration::ZERO;
    let mut evaluation = None;
    let scale = 1.0 / spec.accumulate as f64;
    let batches_per_epoch = data.train.len.div_ceil(spec.batch_size);

    for epoch in 1..=spec.epochs {
        let epoch_start = Instant::now();
        progress.start_epoch(epoch, spec.epochs, batches_per_epoch);
        // Like PyTorch's DataLoader(shuffle=True): a fresh permutation each epoch, the last
        // partial batch kept.
        let order = shuffle.permutation(data.train.len);
        let mut loss_sum = 0.0f64;
        let mut accumulated: Vec<Option<Tensor>> = vec![None; optimizer.vars().len()];
        let mut pending = 0;
        for (step, batch) in order.chunks(spec.batch_size).enumerate() {
            stop.check()?;
            let t0 = Instant::now();
            data.gather(&data.train, batch, &mut images, &mut labels);
            let xs = Tensor::from_slice(
                &images,
                (batch.len(), shape.channels, shape.height, shape.width),
                device,
            )?;
            let ys = Tensor::from_slice(&labels, batch.len(), device)?;
            let t1 = Instant::now();
            let logits = model.forward(&xs, &mut Mode::Train(&mut dropout))?;
            let loss = candle_nn::loss::cross_entropy(&logits, &ys)?;
            let loss_value = loss.to_scalar::<f32>()?;
            if !loss_value.is_finite() {
                return Err(TrainError::Diverged {
                    epoch,
                    step: step + 1,
                    loss: loss_value,
                });
            }
            loss_sum += loss_value as f64;
            let t2 = Instant::now();
            let loss = if spec.accumulate > 1 {
                loss.affine(scale, 0.0)?
            } else {
                loss
            };
            let grads = loss.backward()?;
            let t3 = Instant::now();
            for (slot, var) in accumulated.iter_mut().zip(optimizer.vars()) {
                if let Some(g) = grads.get(var) {
                    *slot = Some(match slot.take() {
                        Some(sum) => (sum + g)?,
                        None => g.clone(),
                    });
                }
            }
            pending += 1;
            // Step every `accumulate` micro-batches, and once more for the epoch's remainder.
            if pending == spec.accumulate || step + 1 == batches_per_epoch {
                optimizer.step(&accumulated)?;
                accumulated.iter_mut().for_each(|g| *g = None);
                pending = 0;
                steps += 1;
            }
            let t4 = Instant::now();
            timing.data_seconds += (t1 - t0).as_secs_f64();
            timing.forward_seconds += (t2 - t1).as_secs_f64();
            timing.backward_seconds += (t3 - t2).as_secs_f64();
            timing.optimizer_seconds += (t4 - t3).as_secs_f64();
            train_time += t4 - t0;
            progress.step(step + 1, loss_value, batch.len());
        }
        let train_loss = loss_sum / batches_per_epoch as f64;

        stop.check()?;
        let eval_start = Instant::now();
        let (val_loss, val_accuracy) = match &data.val {
            Some(val) => {
                let e = evaluate(model, data, val, device)?;
                (Some(e.loss), Some(accuracy(&e)))
            }
            None => (None, None),
        };
        let e = evaluate(model, data, &data.test, device)?;
        timing.eval_seconds += eval_start.elapsed().as_secs_f64();
        let row = EpochRecord {
            epoch,
            lr: optimizer.learning_rate(),
            train_loss,
            val_loss,
            val_accuracy,
            eval_loss: e.loss,
            eval_accuracy: accuracy(&e),
            seconds: epoch_start.elapsed().as_secs_f64(),
        };
        progress.end_epoch(&row);
        history.push(row);
        evaluation = Some(e);
    }
    let examples = data.train.len * spec.epochs;
    timing.images_per_second = examples as f64 / train_time.as_secs_f64().max(1e-9);
    let evaluation = match evaluation {
        Some(e) => e,
        None => evaluate(model, data, &data.test, device)?,
    };
    Ok(TrainOutcome {
        history,
        evaluation,
        steps,
        timing,
    })
}

fn accuracy(e: &Evaluation) -> f64 {
    let correct = e
        .labels
        .iter()
        .zip(&e.predictions)
        .filter(|(a, b)| a == b)
        .count();
    correct as f64 / e.labels.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_requests_parse() {
        assert_eq!(DeviceRequest::parse("auto"), Ok(DeviceRequest::Auto));
        assert_eq!(DeviceRequest::parse("cuda"), Ok(DeviceRequest::Cuda(0)));
        assert_eq!(DeviceRequest::parse("cuda:3"), Ok(DeviceRequest::Cuda(3)));
        assert!(DeviceRequest::parse("gpu").is_err());
        assert!(DeviceRequest::parse("cuda:x").is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let e = DeviceRequest::Cuda(0).open("cuda").unwrap_err();
        assert!(e.to_string().contains("without CUDA support"), "{e}");
        assert_eq!(e.exit_code(), ExitCode::Usage);
        assert_eq!(DeviceRequest::Auto.open("auto").unwrap().1, "cpu");
    }
}
