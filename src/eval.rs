//! Evaluation: predictions, metrics (accuracy, loss, macro-F1, per-class accuracy, confusion
//! matrix) and the `predictions.bin` format of docs/design.md §4.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::SplitFeed;
use crate::model::{Mode, Model};

/// Examples per evaluation batch on the CPU: large enough to amortise per-call overhead, small
/// enough to keep activations of the larger models in a few hundred MB.
const EVAL_BATCH_CPU: usize = 500;
/// On a GPU, fewer, larger batches: each batch is a handful of kernel launches, and 5,000
/// images of the deeper CNN need about 1.3 GB of activations in f32.
const EVAL_BATCH_GPU: usize = 5000;

/// Labels and predictions of every example of a split, and the mean loss.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// True class of each example.
    pub labels: Vec<u32>,
    /// Predicted class (argmax of the logits) of each example.
    pub predictions: Vec<u32>,
    /// Mean cross-entropy.
    pub loss: f64,
}

/// Runs `model` over `split` without dropout. Predictions and losses stay on the device until
/// the end: one transfer per evaluation, not one per batch.
pub fn evaluate(model: &Model, split: &SplitFeed) -> candle_core::Result<Evaluation> {
    let labels = split.host_labels().to_vec();
    if split.is_empty() {
        return Ok(Evaluation {
            labels,
            predictions: Vec::new(),
            loss: f64::NAN,
        });
    }
    let batch = if split.on_cpu() {
        EVAL_BATCH_CPU
    } else {
        EVAL_BATCH_GPU
    };
    let mut predictions = Vec::new();
    let mut losses = Vec::new();
    let mut start = 0;
    while start < split.len() {
        let n = batch.min(split.len() - start);
        let (xs, ys) = split.range(start, n)?;
        // Detached: the parameters are Vars, so the logits carry the batch's whole computation
        // graph (inputs and activations); kept in `losses` it would hold every batch's at once
        // (hundreds of MB for a conv net's 10k-image test set).
        let logits = model
            .forward(&xs, &mut Mode::Eval)?
            .to_dtype(DType::F32)?
            .detach();
        // Summed, not mean, loss per batch so the last, smaller batch weighs what it holds.
        losses.push(candle_nn::loss::cross_entropy(&logits, &ys)?.affine(n as f64, 0.0)?);
        predictions.push(logits.argmax(1)?);
        start += n;
    }
    let loss_sum = Tensor::stack(&losses, 0)?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?;
    Ok(Evaluation {
        labels,
        predictions: Tensor::cat(&predictions, 0)?.to_vec1::<u32>()?,
        loss: loss_sum / split.len() as f64,
    })
}

/// The metrics of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Fraction of examples predicted correctly.
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Unweighted mean over classes of F1 (a class never predicted nor present counts as 0).
    pub macro_f1: f64,
    /// Accuracy within each true class (NaN-free: a class without examples gets 0).
    pub per_class_accuracy: Vec<f64>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

impl Metrics {
    /// The value of the known metric `name` (crate::metric::KNOWN_METRICS).
    pub fn get(&self, name: &str) -> Option<f64> {
        match name {
            "accuracy" => Some(self.accuracy),
            "loss" => Some(self.loss),
            "macro_f1" => Some(self.macro_f1),
            _ => None,
        }
    }

    /// Metrics of `evaluation` over `classes` classes.
    pub fn new(evaluation: &Evaluation, classes: usize) -> Metrics {
        let mut confusion = vec![vec![0u64; classes]; classes];
        for (&t, &p) in evaluation.labels.iter().zip(&evaluation.predictions) {
            confusion[t as usize][p as usize] += 1;
        }
        let n = evaluation.labels.len() as f64;
        let correct: u64 = (0..classes).map(|c| confusion[c][c]).sum();
        let mut f1_sum = 0.0;
        let mut per_class_accuracy = Vec::with_capacity(classes);
        for c in 0..classes {
            let tp = confusion[c][c] as f64;
            let actual: u64 = confusion[c].iter().sum();
            let predicted: u64 = confusion.iter().map(|row| row[c]).sum();
            per_class_accuracy.push(if actual == 0 { 0.0 } else { tp / actual as f64 });
            let denom = (actual + predicted) as f64;
            f1_sum += if denom == 0.0 { 0.0 } else { 2.0 * tp / denom };
        }
        Metrics {
            accuracy: if n == 0.0 { 0.0 } else { correct as f64 / n },
            loss: evaluation.loss,
            macro_f1: f1_sum / classes as f64,
            per_class_accuracy,
            confusion,
        }
    }
}

/// An unreadable `predictions.bin`.
#[derive(Debug, thiserror::Error)]
#[error("predictions.bin: {0}")]
pub struct PredictionsError(String);

const MAGIC: &[u8; 8] = b"EXPPRED\0";
const FORMAT_VERSION: u32 = 1;

/// Encodes labels and predictions as docs/design.md §4's `predictions.bin`.
pub fn encode_predictions(labels: &[u32], predictions: &[u32], classes: usize) -> Vec<u8> {
    let wide = classes > 256;
    let width = if wide { 2 } else { 1 };
    let mut out = Vec::with_capacity(20 + 2 * labels.len() * width);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_le_bytes());
    out.extend_from_slice(&(classes as u32).to_le_bytes());
    for values in [labels, predictions] {
        for &v in values {
            if wide {
                out.extend_from_slice(&(v as u16).to_le_bytes());
            } else {
                out.push(v as u8);
            }
        }
    }
    out
}

/// Decodes `predictions.bin` into (labels, predictions, classes).
pub fn decode_predictions(bytes: &[u8]) -> Result<(Vec<u32>, Vec<u32>, usize), PredictionsError> {
    let err = |m: &str| PredictionsError(m.to_string());
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return Err(err("not a predictions file (bad magic)"));
    }
    let u32_at =
        |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    if u32_at(8) != FORMAT_VERSION {
        return Err(PredictionsError(format!(
            "unsupported format version {}",
            u32_at(8)
        )));
    }
    let n = u32_at(12) as usize;
    let classes = u32_at(16) as usize;
    let width = if classes > 256 { 2 } else { 1 };
    if bytes.len() != 20 + 2 * n * width {
        return Err(PredictionsError(format!(
            "{n} examples need {} bytes, found {}",
            20 + 2 * n * width,
            bytes.len()
        )));
    }
    let read = |start: usize| -> Vec<u32> {
        (0..n)
            .map(|i| {
                let o = start + i * width;
                if width == 2 {
                    u16::from_le_bytes([bytes[o], bytes[o + 1]]) as u32
                } else {
                    bytes[o] as u32
                }
            })
            .collect()
    };
    let labels = read(20);
    let predictions = read(20 + n * width);
    if labels
        .iter()
        .chain(&predictions)
        .any(|&v| v as usize >= classes)
    {
        return Err(err("a label or prediction is out of the class range"));
    }
    Ok((labels, predictions, classes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_metric_is_computed() {
        let e = Evaluation {
            labels: vec![0, 1],
            predictions: vec![0, 0],
            loss: 0.5,
        };
        let m = Metrics::new(&e, 2);
        for known in crate::metric::KNOWN_METRICS {
            assert!(
                m.get(known.name).is_some(),
                "{} is not computed",
                known.name
            );
        }
        assert_eq!(m.get("loss"), Some(0.5));
        assert_eq!(m.get("f1"), None);
    }

    #[test]
    fn metrics_by_hand() {
        let e = Evaluation {
            labels: vec![0, 0, 1, 1, 2],
            predictions: vec![0, 1, 1, 1, 0],
            loss: 0.5,
        };
        let m = Metrics::new(&e, 3);
        assert_eq!(m.accuracy, 0.6);
        assert_eq!(
            m.confusion,
            vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]
        );
        assert_eq!(m.per_class_accuracy, vec![0.5, 1.0, 0.0]);
        // F1: class0 2·1/(2+2)=0.5, class1 2·2/(2+3)=0.8, class2 0 → mean 0.4333…
        assert!((m.macro_f1 - 1.3 / 3.0).abs() < 1e-12);
    }

    /// The byte layout of predictions.bin, pinned: a server-side hook reads these files from
    /// Git with no data set, so every byte is part of the format (docs/design.md §4).
    #[test]
    fn predictions_layout_known_answer() {
        let narrow = encode_predictions(&[0, 1, 2], &[0, 2, 2], 3);
        let mut want = b"EXPPRED\0".to_vec();
        want.extend([1, 0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0]); // version 1, N 3, K 3 (u32 LE)
        want.extend([0, 1, 2, 0, 2, 2]); // labels, then predictions, a byte each
        assert_eq!(narrow, want);
        let wide = encode_predictions(&[0, 299], &[258, 299], 300);
        let mut want = b"EXPPRED\0".to_vec();
        want.extend([1, 0, 0, 0, 2, 0, 0, 0, 0x2c, 1, 0, 0]); // N 2, K 300
        want.extend([0, 0, 0x2b, 1, 2, 1, 0x2b, 1]); // u16 LE each when K > 256
        assert_eq!(wide, want);
        assert_eq!(
            decode_predictions(&want).unwrap(),
            (vec![0, 299], vec![258, 299], 300)
        );
    }

    #[test]
    fn predictions_round_trip_narrow_and_wide() {
        for classes in [10, 300] {
            let labels = vec![0, 9, 5];
            let preds = vec![1, 9, 5];
            let bytes = encode_predictions(&labels, &preds, classes);
            assert_eq!(&bytes[..8], b"EXPPRED\0");
            let (l, p, k) = decode_predictions(&bytes).unwrap();
            assert_eq!((l, p, k), (labels.clone(), preds.clone(), classes));
        }
        assert!(decode_predictions(b"EXPPRED\0\x01\0\0\0").is_err());
    }
}
