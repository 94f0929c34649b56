//! Early stopping on a validation metric, keeping the best epoch's weights (a copy on the
//! training device, restored when training ends).

use candle_core::{Result, Tensor, Var};

use crate::eval::Evaluation;
use crate::spec::{EarlyStopping, StopMetric};

/// Watches the validation metric epoch by epoch.
pub struct EarlyStopper {
    rule: EarlyStopping,
    best: Option<Best>,
    epochs_without_improvement: usize,
}

struct Best {
    epoch: usize,
    score: f64,
    weights: Vec<Tensor>,
    evaluation: Evaluation,
}

/// What the loop does after an epoch.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Train on.
    Continue,
    /// `patience` epochs without improvement: stop.
    Stop,
}

impl EarlyStopper {
    /// A stopper following `rule`.
    pub fn new(rule: &EarlyStopping) -> Self {
        EarlyStopper {
            rule: rule.clone(),
            best: None,
            epochs_without_improvement: 0,
        }
    }

    /// Records epoch `epoch`'s validation loss and accuracy; on an improvement, copies the
    /// weights and keeps the epoch's test evaluation.
    pub fn observe(
        &mut self,
        epoch: usize,
        val_loss: f64,
        val_accuracy: f64,
        vars: &[Var],
        evaluation: &Evaluation,
    ) -> Result<Verdict> {
        // Scores are "higher is better".
        let score = match self.rule.metric {
            StopMetric::ValLoss => -val_loss,
            StopMetric::ValAccuracy => val_accuracy,
        };
        let improved = match &self.best {
            None => score.is_finite(),
            Some(best) => score > best.score + self.rule.min_delta,
        };
        if improved {
            self.best = Some(Best {
                epoch,
                score,
                weights: vars
                    .iter()
                    .map(|v| v.as_tensor().copy())
                    .collect::<Result<_>>()?,
                evaluation: evaluation.clone(),
            });
            self.epochs_without_improvement = 0;
        } else {
            self.epochs_without_improvement += 1;
        }
        Ok(if self.epochs_without_improvement >= self.rule.patience {
            Verdict::Stop
        } else {
            Verdict::Continue
        })
    }

    /// Puts the best epoch's weights back into `vars`; its epoch and test evaluation.
    pub fn restore_best(self, vars: &[Var]) -> Result<Option<(usize, Evaluation)>> {
        let Some(best) = self.best else {
            return Ok(None);
        };
        for (var, w) in vars.iter().zip(&best.weights) {
            var.set(w)?;
        }
        Ok(Some((best.epoch, best.evaluation)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn stops_after_patience_and_restores_the_best() -> Result<()> {
        let var = Var::new(&[0f32], &Device::Cpu)?;
        let vars = [var.clone()];
        let eval = |loss| Evaluation {
            labels: vec![],
            predictions: vec![],
            loss,
        };
        let mut s = EarlyStopper::new(&EarlyStopping {
            patience: 2,
            metric: StopMetric::ValLoss,
            min_delta: 0.01,
        });
        let losses = [1.0, 0.5, 0.495, 0.6];
        let mut verdicts = Vec::new();
        for (i, loss) in losses.iter().enumerate() {
            var.set(&Tensor::new(&[i as f32], &Device::Cpu)?)?;
            verdicts.push(s.observe(i + 1, *loss, 0.0, &vars, &eval(*loss))?);
        }
        // 0.495 is not better than 0.5 by more than min_delta: epochs 3 and 4 count.
        assert_eq!(
            verdicts,
            [
                Verdict::Continue,
                Verdict::Continue,
                Verdict::Continue,
                Verdict::Stop
            ]
        );
        let (epoch, e) = s.restore_best(&vars)?.unwrap();
        assert_eq!((epoch, e.loss), (2, 0.5));
        assert_eq!(var.as_tensor().to_vec1::<f32>()?, vec![1.0]);
        Ok(())
    }
}
