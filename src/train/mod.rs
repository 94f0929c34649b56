//! The training loop: seeded shuffling, gradient accumulation, per-epoch evaluation,
//! divergence and signal checks, progress on stderr and a time breakdown per phase.

mod accumulate;
mod early_stop;
mod loss;
pub mod optim;
mod scaler;
mod signals;

use std::time::{Duration, Instant};

use candle_core::{DType, Device};

use crate::data::augment::Augmenter;
use crate::data::Dataset;
use crate::device::DeviceError;
use crate::eval::{evaluate, Evaluation};
use crate::exit::ExitCode;
use crate::model::{Mode, Model};
use crate::profile::span;
use crate::record::{EpochRecord, Timing};
use crate::rng::{ExpRng, Purpose};
use crate::spec::{Precision, TrainSpec};
use accumulate::Accumulator;
use early_stop::{EarlyStopper, Verdict};
pub use loss::{class_weights, training_loss};
use loss::{PendingLosses, GPU_LOSS_READ_INTERVAL};
pub use optim::Optimizer;
use scaler::LossScaler;
pub use signals::{Signal, StopFlag};

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
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The class weights do not fit the data.
    #[error("{0}")]
    ClassWeights(String),
    /// The precision cannot run on the device.
    #[error(
        "train.precision = {precision:?} needs a CUDA device, but this run's device is the CPU"
    )]
    PrecisionNeedsCuda {
        /// The precision as written.
        precision: String,
    },
}

impl TrainError {
    /// docs/design.md §8: a diverged run is a negative answer (1), a signal 130/143, the rest 2.
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
            TrainError::Device(_) => Some("use --device cpu, or --device auto".into()),
            TrainError::ClassWeights(_) => Some(
                "give one weight per class (after data.classes), or use train.class_weights = \"inverse-frequency\""
                    .into(),
            ),
            TrainError::PrecisionNeedsCuda { .. } => Some(
                "train on a GPU (--device cuda, with a CUDA build of exp), or use --set train.precision=f32"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// Who hears about training as it goes (the command line draws a progress bar from it).
pub trait TrainObserver {
    /// The data set is being read (`None`), or was read: examples in the train, val and eval
    /// splits and the seconds it took. Reading a large set takes a while before the first epoch.
    fn loading_data(&mut self, _loaded: Option<DataLoaded>) {}
    /// Epoch `epoch` of `epochs` starts, with `steps` micro-batches.
    fn start_epoch(&mut self, epoch: usize, epochs: usize, steps: usize);
    /// Micro-batch `step` (1-based) of `images` images is done; `loss` is the latest loss read
    /// (on a GPU read every few steps, NaN before the first read).
    fn step(&mut self, step: usize, loss: f32, images: usize);
    /// The epoch is done and evaluated.
    fn end_epoch(&mut self, row: &EpochRecord);
}

/// What [`TrainObserver::loading_data`] reports once the data is read.
#[derive(Debug, Clone, Copy)]
pub struct DataLoaded {
    /// Training examples.
    pub train: usize,
    /// Validation examples (0 without a validation split).
    pub val: usize,
    /// Eval (test) examples.
    pub eval: usize,
    /// Seconds spent reading and decoding.
    pub seconds: f64,
}

/// An observer that ignores everything.
pub struct Silent;

impl TrainObserver for Silent {
    fn start_epoch(&mut self, _: usize, _: usize, _: usize) {}
    fn step(&mut self, _: usize, _: f32, _: usize) {}
    fn end_epoch(&mut self, _: &EpochRecord) {}
}

/// What a completed training run produced.
pub struct TrainOutcome {
    /// One row per epoch.
    pub history: Vec<EpochRecord>,
    /// The final evaluation on the eval set.
    pub evaluation: Evaluation,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Steps skipped by f16 loss scaling because a gradient overflowed.
    pub skipped_steps: usize,
    /// Time breakdown.
    pub timing: Timing,
    /// The class weights of the training loss, when it had any.
    pub class_weights: Option<Vec<f64>>,
    /// With early stopping: the epoch whose weights (and evaluation) are the outcome.
    pub best_epoch: Option<usize>,
    /// The per-operation time table, with `EXP_PROFILE_OPS=1`.
    pub op_profile: Option<String>,
}

/// The dtype activations are computed in; parameters stay f32 (the optimiser's master copy)
/// and are cast to it in the forward pass, so their gradients arrive in f32.
pub fn compute_dtype(precision: Precision) -> DType {
    match precision {
        Precision::F32 | Precision::Tf32 => DType::F32,
        Precision::Bf16 => DType::BF16,
        Precision::F16 => DType::F16,
    }
}

/// Trains `model` on `data` as `spec` says, evaluating after every epoch.
///
/// Every split is uploaded to `device` once; a batch is gathered there from an index tensor,
/// so a GPU step makes no host transfer and waits for the GPU only when losses are read.
pub fn train(
    model: &Model,
    data: &Dataset,
    spec: &TrainSpec,
    device: &Device,
    stop: &StopFlag,
    progress: &mut dyn TrainObserver,
) -> Result<TrainOutcome, TrainError> {
    let dtype = compute_dtype(spec.precision);
    if device.is_cpu() && spec.precision != Precision::F32 {
        return Err(TrainError::PrecisionNeedsCuda {
            precision: spec.precision.as_str().to_string(),
        });
    }
    let on_cpu = device.is_cpu();
    // TF32 is an explicit opt-in: every other precision keeps f32 work exact FP32.
    #[cfg(feature = "cuda")]
    if !on_cpu {
        crate::cuda::cudnn::set_tf32(spec.precision == Precision::Tf32);
    }
    let mut optimizer = Optimizer::new(model.params().trainable_vars(), spec);
    let mut shuffle = ExpRng::new(spec.seed, Purpose::Shuffle);
    let mut dropout = ExpRng::new(spec.seed, Purpose::Dropout);
    if !on_cpu {
        // GPU dropout masks come from the device's generator (curand), seeded from the run's
        // dropout stream: reproducible on the same GPU, never a per-step host upload.
        device.set_seed(dropout.next_u64())?;
    }
    let mut scaler = (spec.precision == Precision::F16).then(LossScaler::new);
    let train_split = data.feed(&data.train, device, dtype)?;
    let val_split = match &data.val {
        Some(val) => Some(data.feed(val, device, dtype)?),
        None => None,
    };
    let test_split = data.feed(&data.test, device, dtype)?;
    let weights = class_weights(spec, &data.train.labels, data.classes)?;
    let weight_tensor = weights
        .as_deref()
        .map(|w| loss::weight_tensor(w, device))
        .transpose()?;
    let mut stopper = spec.early_stopping.as_ref().map(EarlyStopper::new);
    let mut augmenter = Augmenter::new(&spec.augment, spec.seed, &data.black(), device, dtype)?;
    let profile = std::env::var_os("EXP_PROFILE_SYNC").is_some_and(|v| v == "1");
    let sync = |d: &Device| -> Result<(), TrainError> {
        if profile {
            d.synchronize()?;
        }
        Ok(())
    };

    let mut timing = Timing::default();
    let mut history = Vec::new();
    let mut steps = 0;
    let mut skipped_steps = 0;
    let mut train_time = Duration::ZERO;
    let mut evaluation = None;
    let n = data.train.len;
    let batches_per_epoch = n.div_ceil(spec.batch_size);

    for epoch in 1..=spec.epochs {
        optimizer.set_learning_rate(spec.learning_rate(epoch));
        let epoch_start = Instant::now();
        progress.start_epoch(epoch, spec.epochs, batches_per_epoch);
        // Like PyTorch's DataLoader(shuffle=True): a fresh permutation each epoch, the last
        // partial batch kept. Uploaded once per epoch; batches are slices of it.
        let order = train_split.order(shuffle.permutation(n))?;
        let mut loss_sum = 0.0f64;
        let mut last_loss = f32::NAN;
        let mut pending_losses = PendingLosses {
            first_step: 1,
            values: Vec::new(),
        };
        let mut accumulator = Accumulator::new(optimizer.vars().len(), spec.accumulate);
        for step in 0..batches_per_epoch {
            stop.check()?;
            let t0 = Instant::now();
            let start = step * spec.batch_size;
            let len = spec.batch_size.min(n - start);
            let (xs, ys) = span("data gather", device, || {
                let (images, labels) = train_split.batch(&order, start, len)?;
                Ok((
                    match augmenter.as_mut() {
                        Some(a) => a.apply(&images)?,
                        None => images,
                    },
                    labels,
                ))
            })?;
            sync(device)?;
            let t1 = Instant::now();
            let logits = model
                .forward(&xs, &mut Mode::Train(&mut dropout))?
                .to_dtype(DType::F32)?;
            let loss = span("fwd loss", device, || {
                training_loss(&logits, &ys, spec.label_smoothing, weight_tensor.as_ref())
            })?;
            if on_cpu {
                // Reading a CPU tensor costs nothing: check every step.
                last_loss = loss.to_scalar::<f32>()?;
                if !last_loss.is_finite() {
                    return Err(TrainError::Diverged {
                        epoch,
                        step: step + 1,
                        loss: last_loss,
                    });
                }
                loss_sum += last_loss as f64;
            } else {
                pending_losses.values.push(loss.detach());
                if pending_losses.values.len() == GPU_LOSS_READ_INTERVAL {
                    if let Some(l) = pending_losses.drain(epoch, &mut loss_sum)? {
                        last_loss = l;
                    }
                }
            }
            sync(device)?;
            let t2 = Instant::now();
            // The loss is scaled by 1/accumulate (the accumulated gradient is the mean over
            // the micro-batches) and, in f16, by the loss scale (undone before the update).
            let loss_scale = scaler.as_ref().map_or(1.0, |s| s.scale());
            let factor = loss_scale / spec.accumulate as f64;
            let grads = span("backward (all, incl. the bwd rows)", device, || {
                if factor != 1.0 {
                    loss.affine(factor, 0.0)?.backward()
                } else {
                    loss.backward()
                }
            })?;
            sync(device)?;
            let t3 = Instant::now();
            let overflowed = match &scaler {
                Some(_) => !LossScaler::all_finite(&grads, optimizer.vars())?,
                None => false,
            };
            if overflowed {
                // PyTorch's GradScaler: drop this update (all its micro-batches), halve the
                // scale, go on.
                if let Some(s) = scaler.as_mut() {
                    s.overflowed();
                }
                accumulator.discard();
                skipped_steps += 1;
            } else {
                accumulator.add(&grads, optimizer.vars())?;
            }
            if accumulator.ready(step + 1 == batches_per_epoch) {
                let sums = accumulator.unscaled(loss_scale)?;
                span("optimizer step", device, || optimizer.step(sums))?;
                if let Some(s) = scaler.as_mut() {
                    s.stepped();
                }
                accumulator.discard();
                steps += 1;
            }
            sync(device)?;
            let t4 = Instant::now();
            timing.data_seconds += (t1 - t0).as_secs_f64();
            timing.forward_seconds += (t2 - t1).as_secs_f64();
            timing.backward_seconds += (t3 - t2).as_secs_f64();
            timing.optimizer_seconds += (t4 - t3).as_secs_f64();
            progress.step(step + 1, last_loss, len);
        }
        // Reading the last losses waits for the epoch's work: the epoch's time is true.
        pending_losses.drain(epoch, &mut loss_sum)?;
        let epoch_train_time = epoch_start.elapsed();
        train_time += epoch_train_time;
        let train_loss = loss_sum / batches_per_epoch as f64;

        stop.check()?;
        let eval_start = Instant::now();
        let (val, e) = evaluate_epoch(model, val_split.as_ref(), &test_split)?;
        timing.eval_seconds += eval_start.elapsed().as_secs_f64();
        let (val_loss, val_accuracy) = (val.map(|v| v.0), val.map(|v| v.1));
        let row = EpochRecord {
            epoch,
            lr: optimizer.learning_rate(),
            train_loss,
            val_loss,
            val_accuracy,
            eval_loss: e.loss,
            eval_accuracy: accuracy(&e),
            seconds: epoch_start.elapsed().as_secs_f64(),
            train_seconds: epoch_train_time.as_secs_f64(),
        };
        progress.end_epoch(&row);
        history.push(row);
        let verdict = match (stopper.as_mut(), val_loss, val_accuracy) {
            (Some(s), Some(loss), Some(acc)) => {
                s.observe(epoch, loss, acc, model.params().state_vars().as_slice(), &e)?
            }
            _ => Verdict::Continue,
        };
        evaluation = Some(e);
        if verdict == Verdict::Stop {
            break;
        }
    }
    let mut best_epoch = None;
    if let Some(s) = stopper {
        if let Some((epoch, e)) = s.restore_best(model.params().state_vars().as_slice())? {
            best_epoch = Some(epoch);
            evaluation = Some(e);
        }
    }
    let op_profile = crate::profile::enabled()
        .then(|| profile_table(train_time.as_secs_f64() + timing.eval_seconds));
    let examples = n * history.len();
    timing.images_per_second = examples as f64 / train_time.as_secs_f64().max(1e-9);
    let evaluation = match evaluation {
        Some(e) => e,
        None => evaluate(model, &test_split)?,
    };
    Ok(TrainOutcome {
        history,
        evaluation,
        steps,
        skipped_steps,
        timing,
        class_weights: weights,
        best_epoch,
        op_profile,
    })
}

/// The epoch's evaluation: the validation set's (loss, accuracy) when there is one, and the
/// test set's full evaluation.
fn evaluate_epoch(
    model: &Model,
    val: Option<&crate::data::SplitFeed>,
    test: &crate::data::SplitFeed,
) -> Result<(Option<(f64, f64)>, Evaluation), TrainError> {
    let val = match val {
        Some(val) => {
            let e = evaluate(model, val)?;
            Some((e.loss, accuracy(&e)))
        }
        None => None,
    };
    Ok((val, evaluate(model, test)?))
}

/// The per-operation table of `EXP_PROFILE_OPS=1` (Markdown), for the caller to print.
fn profile_table(total_seconds: f64) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "op profile (EXP_PROFILE_OPS=1; each op synchronised; training and evaluation):\n\
         | op | calls | total s | ms per call | share of run |\n|---|---|---|---|---|\n",
    );
    for (name, seconds, calls) in crate::profile::take() {
        let _ = writeln!(
            out,
            "| {name} | {calls} | {seconds:.3} | {:.3} | {:.1} % |",
            1e3 * seconds / calls.max(1) as f64,
            100.0 * seconds / total_seconds.max(1e-9)
        );
    }
    out
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
    use crate::spec::{ClassWeightRule, ClassWeights};
    use candle_core::Tensor;

    /// Against the formula computed by hand: logits [2, 0, 0] with label 0, ε = 0.3, K = 3.
    #[test]
    fn label_smoothing_matches_the_formula() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[2.0f32, 0.0, 0.0]], &dev).unwrap();
        let labels = Tensor::new(&[0u32], &dev).unwrap();
        let z = (2f64.exp() + 2.0).ln();
        let (lp0, lp1) = (2.0 - z, -z);
        let expected = 0.7 * -lp0 + 0.3 * -(lp0 + 2.0 * lp1) / 3.0;
        let got = training_loss(&logits, &labels, 0.3, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
        let plain = training_loss(&logits, &labels, 0.0, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!((plain + lp0).abs() < 1e-6);
    }

    /// Against PyTorch's formula worked by hand: two examples, three classes, weights
    /// [1, 2, 0.5], with and without smoothing; unit weights give the unweighted loss.
    #[test]
    fn class_weights_follow_pytorch() {
        let dev = Device::Cpu;
        let rows = [[2.0f64, 0.0, -1.0], [0.5, 1.5, 0.0]];
        let logits = Tensor::new(&[[2.0f32, 0.0, -1.0], [0.5, 1.5, 0.0]], &dev).unwrap();
        let labels = Tensor::new(&[0u32, 2], &dev).unwrap();
        let w = [1.0f64, 2.0, 0.5];
        let weights = Tensor::new(&[1.0f32, 2.0, 0.5], &dev).unwrap();
        let log_p = |r: &[f64; 3], c: usize| {
            let z = r.iter().map(|x| x.exp()).sum::<f64>().ln();
            r[c] - z
        };
        let total = w[0] + w[2];
        let nll = (w[0] * -log_p(&rows[0], 0) + w[2] * -log_p(&rows[1], 2)) / total;
        let smooth = rows
            .iter()
            .map(|r| (0..3).map(|c| w[c] * -log_p(r, c)).sum::<f64>())
            .sum::<f64>()
            / total;
        let loss = |eps: f64, weights: Option<&Tensor>| {
            training_loss(&logits, &labels, eps, weights)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let got = loss(0.0, Some(&weights));
        assert!((got - nll).abs() < 1e-6, "{got} vs {nll}");
        let expected = 0.8 * nll + 0.2 / 3.0 * smooth;
        let got = loss(0.2, Some(&weights));
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
        let ones = Tensor::ones(3, DType::F32, &dev).unwrap();
        for eps in [0.0, 0.2] {
            assert!((loss(eps, Some(&ones)) - loss(eps, None)).abs() < 1e-6);
        }
    }

    #[test]
    fn inverse_frequency_weights() {
        let spec = TrainSpec {
            class_weights: Some(ClassWeights::Rule(ClassWeightRule::InverseFrequency)),
            ..TrainSpec::default()
        };
        // 6 examples: class 0 ×4, class 1 ×2 → 6/(2·4), 6/(2·2).
        let w = class_weights(&spec, &[0, 0, 1, 0, 1, 0], 2)
            .unwrap()
            .unwrap();
        assert_eq!(w, vec![0.75, 1.5]);
        assert!(class_weights(&spec, &[0, 0], 2).is_err());
        let explicit = TrainSpec {
            class_weights: Some(ClassWeights::Explicit(vec![1.0, 2.0])),
            ..TrainSpec::default()
        };
        assert!(class_weights(&explicit, &[0, 1], 3).is_err());
    }
}
