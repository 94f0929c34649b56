//! A sweep's trials: `[sweep]` expanded into grid × samples × seeds, each trial a list of
//! `(spec key, value)`, with its id and the spec text that reproduces it.

use std::path::Path;

use crate::rng::{ExpRng, Purpose};
use crate::spec::sweep::{SweepSpec, SEED_KEY};
use crate::spec::{ResolvedSpec, SpecError};

/// One trial: the swept values, in key order.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    /// 0-based position in the sweep (the Slurm array index).
    pub index: usize,
    /// Spec key → value, sorted by key.
    pub values: Vec<(String, toml::Value)>,
}

impl Trial {
    /// The values as `--set KEY=VALUE` arguments (VALUE in TOML).
    pub fn overrides(&self) -> Vec<String> {
        self.values
            .iter()
            .map(|(key, value)| format!("{key}={}", inline(value)))
            .collect()
    }

    /// The trial's id: BLAKE3 of the sweep id and the values. A trial already recorded on the
    /// sweep's branch under this id is never recorded again (a retry, a requeue, a resume).
    pub fn id(&self, sweep_id: &str) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"exp-trial-v1\0");
        h.update(sweep_id.as_bytes());
        for (key, value) in &self.values {
            h.update(b"\0");
            h.update(key.as_bytes());
            h.update(b"\0");
            h.update(inline(value).as_bytes());
        }
        h.finalize().to_hex().to_string()
    }

    /// `key=value key=value`, for tables and logs.
    pub fn describe(&self) -> String {
        self.overrides().join(" ")
    }
}

/// A value as TOML inline text (`0.001`, `"sgd"`, `[1, 2]`).
pub fn inline(value: &toml::Value) -> String {
    value.to_string()
}

/// Every trial of `sweep`: for each grid point (keys in order, the last varying fastest), each
/// random sample, each seed. Random samples are drawn from exp's seeded stream under `seed` (the
/// spec's `train.seed`), so the same `[sweep]` always plans the same trials.
pub fn expand(sweep: &SweepSpec, seed: u64) -> Vec<Trial> {
    let mut points: Vec<Vec<(String, toml::Value)>> = vec![Vec::new()];
    for (key, values) in &sweep.grid {
        points = points
            .into_iter()
            .flat_map(|point| {
                values.iter().map(move |v| {
                    let mut p = point.clone();
                    p.push((key.clone(), v.clone()));
                    p
                })
            })
            .collect();
    }
    let mut rng = ExpRng::new(seed, Purpose::Sweep);
    let samples: Vec<Vec<(String, toml::Value)>> = match sweep.samples {
        Some(n) if !sweep.random.is_empty() => (0..n)
            .map(|_| {
                sweep
                    .random
                    .iter()
                    .map(|(key, d)| (key.clone(), d.value(rng.unit())))
                    .collect()
            })
            .collect(),
        _ => vec![Vec::new()],
    };
    let seeds: Vec<Option<u64>> = match &sweep.seeds {
        Some(seeds) => seeds.iter().copied().map(Some).collect(),
        None => vec![None],
    };
    let mut trials = Vec::new();
    for point in &points {
        for sample in &samples {
            for seed in &seeds {
                let mut values: Vec<(String, toml::Value)> =
                    point.iter().chain(sample).cloned().collect();
                if let Some(seed) = seed {
                    values.push((SEED_KEY.to_string(), toml::Value::Integer(*seed as i64)));
                }
                values.sort_by(|a, b| a.0.cmp(&b.0));
                trials.push(Trial {
                    index: trials.len(),
                    values,
                });
            }
        }
    }
    trials
}

/// A trial whose values the spec refuses.
#[derive(Debug, thiserror::Error)]
#[error("trial {index} ({values}): {source}")]
pub struct TrialError {
    /// The trial's index.
    pub index: usize,
    /// Its values.
    pub values: String,
    /// Why the spec refuses them.
    #[source]
    pub source: SpecError,
}

/// Resolves every trial against the spec text (`path` for messages), the command line's
/// `--set` first: every key and value is checked by the schema before anything runs.
pub fn resolve_all(
    path: &Path,
    text: &str,
    overrides: &[String],
    trials: &[Trial],
) -> Result<Vec<ResolvedSpec>, TrialError> {
    trials
        .iter()
        .map(|trial| {
            let mut all = overrides.to_vec();
            all.extend(trial.overrides());
            crate::spec::parse(path, text, &all).map_err(|source| TrialError {
                index: trial.index,
                values: trial.describe(),
                source,
            })
        })
        .collect()
}

/// The spec text with `values` written in (the rest of the file, comments included, kept), so
/// that `exp run` on a trial's commit reproduces the trial.
pub fn write_values(text: &str, values: &[(String, toml::Value)]) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    for (key, value) in values {
        let parts: Vec<&str> = key.split('.').collect();
        let (last, parents) = parts.split_last().ok_or("empty key")?;
        let mut table: &mut dyn toml_edit::TableLike = doc.as_table_mut();
        for part in parents {
            if table.get(part).is_none() {
                let mut t = toml_edit::Table::new();
                t.set_implicit(true);
                table.insert(part, toml_edit::Item::Table(t));
            }
            table = table
                .get_mut(part)
                .and_then(|item| item.as_table_like_mut())
                .ok_or_else(|| format!("{key}: {part} is not a table in the spec"))?;
        }
        let item: toml_edit::Item = inline(value)
            .parse::<toml_edit::Value>()
            .map(toml_edit::Item::Value)
            .map_err(|e| format!("{key}: {e}"))?;
        table.insert(last, item);
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::sweep::Distribution;

    fn sweep(text: &str) -> SweepSpec {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn grid_samples_and_seeds_cross() {
        let s = sweep(
            r#"grid = { "train.lr" = [0.001, 0.003], "model.dropout" = [0.0, 0.5] }
random = { "train.momentum" = { uniform = [0.8, 0.99] } }
samples = 2
seeds = [1, 2, 3]"#,
        );
        let trials = expand(&s, 7);
        assert_eq!(trials.len(), 2 * 2 * 2 * 3);
        assert_eq!(
            trials[0].describe(),
            format!(
                "model.dropout=0.0 train.lr=0.001 train.momentum={} train.seed=1",
                trials[0].values[2].1
            )
        );
        // Seeds vary fastest, then samples, then the grid's last key.
        assert_eq!(trials[1].values[3].1, toml::Value::Integer(2));
        assert_ne!(
            trials[0].values[2], trials[3].values[2],
            "two samples drew the same"
        );
        assert_eq!(
            trials[0].values[2], trials[6].values[2],
            "a sample differs across the grid"
        );
        assert_eq!(trials[6].values[1].1, toml::Value::Float(0.003));
        // The same table and seed plan the same trials; another seed draws other samples.
        assert_eq!(expand(&s, 7), trials);
        assert_ne!(expand(&s, 8)[0].values[2], trials[0].values[2]);
        for (i, t) in trials.iter().enumerate() {
            assert_eq!(t.index, i);
            let m = t.values[2].1.as_float().unwrap();
            assert!((0.8..0.99).contains(&m), "{m}");
        }
        let ids: std::collections::BTreeSet<String> =
            trials.iter().map(|t| t.id("abc1234")).collect();
        assert_eq!(ids.len(), trials.len());
        assert_ne!(trials[0].id("abc1234"), trials[0].id("abc1235"));
    }

    #[test]
    fn trial_ids_are_pinned() {
        let t = Trial {
            index: 0,
            values: vec![("train.lr".into(), toml::Value::Float(0.001))],
        };
        let mut h = blake3::Hasher::new();
        h.update(b"exp-trial-v1\0s1\0train.lr\x000.001");
        assert_eq!(t.id("s1"), h.finalize().to_hex().to_string());
        assert_eq!(t.overrides(), ["train.lr=0.001"]);
        let d = Distribution::IntUniform([3, 3]);
        assert_eq!(d.value(0.5), toml::Value::Integer(3));
    }

    #[test]
    fn written_values_reproduce_the_trial() {
        let text = "# my experiment\n[model]\nname = \"mlp\" # small\n\n[data]\nformat = \"idx\"\ntrain_images = \"mnist/train-images-idx3-ubyte.gz\"\ntrain_labels = \"mnist/train-labels-idx1-ubyte.gz\"\ntest_images = \"mnist/t10k-images-idx3-ubyte.gz\"\ntest_labels = \"mnist/t10k-labels-idx1-ubyte.gz\"\n\n[sweep]\ngrid = { \"train.lr\" = [0.5] }\n";
        let values = vec![
            ("model.dropout".to_string(), toml::Value::Float(0.25)),
            ("train.lr".to_string(), toml::Value::Float(0.5)),
            (
                "train.optimizer".to_string(),
                toml::Value::String("sgd".into()),
            ),
            ("train.seed".to_string(), toml::Value::Integer(3)),
        ];
        let written = write_values(text, &values).unwrap();
        assert!(
            written.starts_with("# my experiment\n[model]\nname = \"mlp\" # small\n"),
            "{written}"
        );
        let path = Path::new("experiments/x.toml");
        let trial = Trial { index: 0, values };
        let via_set = crate::spec::parse(path, text, &trial.overrides()).unwrap();
        let via_text = crate::spec::parse(path, &written, &[]).unwrap();
        assert_eq!(via_text.spec, via_set.spec);
        assert_eq!(via_text.spec.train.lr, 0.5);
    }
}
