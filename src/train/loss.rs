//! The training loss (cross-entropy with label smoothing and class weights), the class
//! weights a spec asks for, and reading losses back from the device without stalling it.

use candle_core::Tensor;

use super::TrainError;
use crate::spec::{ClassWeightRule, ClassWeights, TrainSpec};

/// On a GPU, reading the loss back forces the host to wait for the step: the loop reads it
/// once every this many steps (each value is still checked, so a divergence names its step).
pub(super) const GPU_LOSS_READ_INTERVAL: usize = 50;

/// Losses of the steps since the last read, kept on the device.
pub(super) struct PendingLosses {
    pub(super) first_step: usize,
    pub(super) values: Vec<Tensor>,
}

impl PendingLosses {
    /// Reads them back; Err on the first non-finite one.
    pub(super) fn drain(&mut self, epoch: usize, sum: &mut f64) -> Result<Option<f32>, TrainError> {
        if self.values.is_empty() {
            return Ok(None);
        }
        let values = Tensor::stack(&self.values, 0)?.to_vec1::<f32>()?;
        self.values.clear();
        for (i, &loss) in values.iter().enumerate() {
            if !loss.is_finite() {
                return Err(TrainError::Diverged {
                    epoch,
                    step: self.first_step + i,
                    loss,
                });
            }
            *sum += loss as f64;
        }
        self.first_step += values.len();
        Ok(values.last().copied())
    }
}

/// Cross-entropy with label smoothing ε and optional class weights, PyTorch's
/// `cross_entropy(weight = w, label_smoothing = ε)` with mean reduction: the target puts 1 − ε
/// on the label and ε spread evenly over the K classes, each term weighted by its class, and
/// the sum divided by the total weight of the batch's labels, W = Σᵢ w(yᵢ):
///
/// loss = (1 − ε)·Σᵢ w(yᵢ)·(−log pᵢ(yᵢ)) / W + (ε / K)·Σᵢ Σ_c w(c)·(−log pᵢ(c)) / W.
///
/// Without weights (all 1) this is (1 − ε)·NLL + ε·mean over classes of −log p; ε = 0 and no
/// weights is candle's cross-entropy itself.
pub fn training_loss(
    logits: &Tensor,
    labels: &Tensor,
    epsilon: f64,
    weights: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    use candle_core::D;
    let Some(weights) = weights else {
        if epsilon == 0.0 {
            return candle_nn::loss::cross_entropy(logits, labels);
        }
        let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        let nll = candle_nn::loss::nll(&log_probs, labels)?;
        let uniform = log_probs.mean(D::Minus1)?.mean_all()?.neg()?;
        return nll.affine(1.0 - epsilon, 0.0)? + uniform.affine(epsilon, 0.0)?;
    };
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let label_weights = weights.index_select(labels, 0)?;
    let total = label_weights.sum_all()?;
    let picked = log_probs.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
    let nll = (picked * &label_weights)?
        .sum_all()?
        .neg()?
        .broadcast_div(&total)?;
    if epsilon == 0.0 {
        return Ok(nll);
    }
    let classes = log_probs.dim(D::Minus1)? as f64;
    let smooth = log_probs
        .broadcast_mul(&weights.unsqueeze(0)?)?
        .sum_all()?
        .neg()?
        .broadcast_div(&total)?;
    nll.affine(1.0 - epsilon, 0.0)? + smooth.affine(epsilon / classes, 0.0)?
}

/// The class weights as the f32 tensor the loss takes.
pub(super) fn weight_tensor(
    weights: &[f64],
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let w: Vec<f32> = weights.iter().map(|&x| x as f32).collect();
    Tensor::from_vec(w, weights.len(), device)
}

/// The class weights `spec` asks for, given the training labels: None without
/// `train.class_weights`.
pub fn class_weights(
    spec: &TrainSpec,
    train_labels: &[u8],
    classes: usize,
) -> Result<Option<Vec<f64>>, TrainError> {
    match &spec.class_weights {
        None => Ok(None),
        Some(ClassWeights::Explicit(w)) if w.len() != classes => {
            Err(TrainError::ClassWeights(format!(
                "train.class_weights lists {} weights but the data has {classes} classes",
                w.len()
            )))
        }
        Some(ClassWeights::Explicit(w)) => Ok(Some(w.clone())),
        Some(ClassWeights::Rule(ClassWeightRule::InverseFrequency)) => {
            let mut counts = vec![0usize; classes];
            for &l in train_labels {
                counts[l as usize] += 1;
            }
            if let Some(c) = counts.iter().position(|&n| n == 0) {
                return Err(TrainError::ClassWeights(format!(
                    "class {c} has no training example: inverse-frequency weights are undefined"
                )));
            }
            let n = train_labels.len() as f64;
            Ok(Some(
                counts
                    .iter()
                    .map(|&n_c| n / (classes as f64 * n_c as f64))
                    .collect(),
            ))
        }
    }
}
