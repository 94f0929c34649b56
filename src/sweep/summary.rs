//! `exp sweep show`'s second table: per combination of swept values (seeds pooled), each
//! metric's mean and standard deviation over the recorded trials.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{TrialPhase, TrialStatus};
use crate::spec::sweep::SEED_KEY;

/// Mean and sample standard deviation (0 for a single trial).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanStd {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1).
    pub std: f64,
}

/// One combination of swept values.
#[derive(Debug, Clone, Serialize)]
pub struct Combination {
    /// The swept values other than the seed.
    pub values: BTreeMap<String, toml::Value>,
    /// Recorded trials pooled.
    pub trials: usize,
    /// Metric → mean ± std.
    pub metrics: BTreeMap<String, MeanStd>,
}

/// The recorded trials grouped by their values without `train.seed`, in first-trial order.
pub fn by_combination(statuses: &[TrialStatus]) -> Vec<Combination> {
    let mut order: Vec<BTreeMap<String, toml::Value>> = Vec::new();
    let mut samples: Vec<BTreeMap<String, Vec<f64>>> = Vec::new();
    for s in statuses.iter().filter(|s| s.state == TrialPhase::Completed) {
        let mut values = s.values.clone();
        values.remove(SEED_KEY);
        let i = match order.iter().position(|v| *v == values) {
            Some(i) => i,
            None => {
                order.push(values);
                samples.push(BTreeMap::new());
                order.len() - 1
            }
        };
        for (metric, value) in &s.metrics {
            samples[i].entry(metric.clone()).or_default().push(*value);
        }
    }
    order
        .into_iter()
        .zip(samples)
        .map(|(values, metrics)| Combination {
            values,
            trials: metrics.values().map(Vec::len).max().unwrap_or(0),
            metrics: metrics
                .into_iter()
                .map(|(m, xs)| (m, mean_std(&xs)))
                .collect(),
        })
        .collect()
}

/// Mean and sample standard deviation of `xs` (non-empty).
pub fn mean_std(xs: &[f64]) -> MeanStd {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let std = if xs.len() < 2 {
        0.0
    } else {
        (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    };
    MeanStd { mean, std }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(index: usize, lr: f64, seed: i64, accuracy: f64) -> TrialStatus {
        TrialStatus {
            index,
            id: String::new(),
            values: [
                ("train.lr".to_string(), toml::Value::Float(lr)),
                ("train.seed".to_string(), toml::Value::Integer(seed)),
            ]
            .into(),
            state: TrialPhase::Completed,
            commit: None,
            tag: None,
            metrics: [("accuracy".to_string(), accuracy)].into(),
            slurm_job: None,
            log: String::new(),
            message: None,
        }
    }

    #[test]
    fn seeds_pool_into_mean_and_sample_std() {
        let mut failed = status(4, 0.1, 3, 0.0);
        failed.state = TrialPhase::Failed;
        let groups = by_combination(&[
            status(0, 0.1, 1, 0.90),
            status(1, 0.1, 2, 0.94),
            status(2, 0.2, 1, 0.80),
            failed,
        ]);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].trials, 2);
        let a = groups[0].metrics["accuracy"];
        assert!((a.mean - 0.92).abs() < 1e-12);
        assert!((a.std - 0.02 * 2f64.sqrt()).abs() < 1e-12, "{a:?}");
        assert_eq!(
            groups[1].metrics["accuracy"],
            MeanStd {
                mean: 0.80,
                std: 0.0
            }
        );
        assert!(!groups[0].values.contains_key("train.seed"));
    }
}
