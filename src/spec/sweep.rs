//! `[sweep]`: the trials `exp sweep` runs (docs/design.md §3). Like `[gate]` it is not a
//! training parameter: it stays out of the run record's `[params]` and the run id.
//!
//! ```toml
//! [sweep]
//! grid = { "train.lr" = [1e-3, 3e-3], "model.dropout" = [0.0, 0.5] }
//! random = { "train.momentum" = { uniform = [0.8, 0.99] } }
//! samples = 8
//! seeds = [1, 2, 3]
//! ```
//!
//! trials = grid × samples × seeds; `sweep::plan` expands them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::keys::SPEC_KEYS;

/// `[sweep]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// Spec key → the values to try; every combination is a point of the grid.
    #[serde(default)]
    pub grid: BTreeMap<String, Vec<toml::Value>>,
    /// Spec key → the distribution each random sample draws from.
    #[serde(default)]
    pub random: BTreeMap<String, Distribution>,
    /// Random draws (with `random`), each crossed with every grid point.
    #[serde(default)]
    pub samples: Option<usize>,
    /// `train.seed` values crossed with everything.
    #[serde(default)]
    pub seeds: Option<Vec<u64>>,
    /// What the Slurm executor asks for.
    #[serde(default)]
    pub slurm: SlurmSpec,
}

/// A distribution a random sample draws a value from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Distribution {
    /// Uniform in [low, high).
    Uniform([f64; 2]),
    /// log-uniform in [low, high), 0 < low.
    LogUniform([f64; 2]),
    /// An integer uniform in [low, high], both included.
    IntUniform([i64; 2]),
}

/// `[sweep.slurm]`: the job array's resources.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSpec {
    /// `#SBATCH --partition`.
    pub partition: Option<String>,
    /// `#SBATCH --time` (Slurm's formats, e.g. "00:30:00").
    pub time: Option<String>,
    /// `#SBATCH --cpus-per-task`.
    pub cpus_per_task: Option<u32>,
    /// `#SBATCH --gres` (e.g. "gpu:1").
    pub gres: Option<String>,
    /// Further `#SBATCH` lines, given without the prefix (e.g. "--mem=8G").
    #[serde(default)]
    pub extra: Vec<String>,
}

impl SweepSpec {
    /// Checks the table on its own (each trial's values are then checked against the schema by
    /// resolving the spec with them); the key of the first bad entry and why.
    pub fn check(&self) -> Result<(), (String, String)> {
        let err = |key: &str, m: String| Err((key.to_string(), m));
        if self.grid.is_empty() && self.random.is_empty() && self.seeds.is_none() {
            return err(
                "sweep",
                "name something to sweep: grid, random (with samples) or seeds".into(),
            );
        }
        for (key, values) in &self.grid {
            check_key(key).or_else(|m| err(&format!("sweep.grid.{key}"), m))?;
            if values.is_empty() {
                return err(
                    &format!("sweep.grid.{key}"),
                    "give at least one value".into(),
                );
            }
        }
        for (key, distribution) in &self.random {
            check_key(key).or_else(|m| err(&format!("sweep.random.{key}"), m))?;
            if self.grid.contains_key(key) {
                return err(
                    &format!("sweep.random.{key}"),
                    "is swept by grid as well; sweep a key one way".into(),
                );
            }
            distribution
                .check()
                .or_else(|m| err(&format!("sweep.random.{key}"), m))?;
        }
        match (self.random.is_empty(), self.samples) {
            (false, None) => {
                return err(
                    "sweep.samples",
                    "random needs samples: how many draws to make".into(),
                )
            }
            (true, Some(_)) => {
                return err(
                    "sweep.samples",
                    "samples needs random: the keys to draw".into(),
                )
            }
            (false, Some(0)) => return err("sweep.samples", "must be at least 1".into()),
            _ => {}
        }
        if let Some(seeds) = &self.seeds {
            if seeds.is_empty() {
                return err("sweep.seeds", "give at least one seed".into());
            }
            let mut sorted = seeds.clone();
            sorted.sort_unstable();
            if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
                return err("sweep.seeds", format!("{} is listed twice", w[0]));
            }
            if self.grid.contains_key(SEED_KEY) || self.random.contains_key(SEED_KEY) {
                return err(
                    "sweep.seeds",
                    format!("{SEED_KEY} is swept by grid or random as well"),
                );
            }
        }
        Ok(())
    }
}

/// The key `seeds` sets.
pub const SEED_KEY: &str = "train.seed";

/// Only training parameters can be swept: a key of the spec table, outside `[gate]`.
fn check_key(key: &str) -> Result<(), String> {
    if key.starts_with("gate.") {
        return Err("is a gate policy, not a training parameter".into());
    }
    if !SPEC_KEYS.iter().any(|k| k.key == key) {
        return Err("is not a spec key (exp run --help lists them)".into());
    }
    Ok(())
}

impl Distribution {
    fn check(&self) -> Result<(), String> {
        match *self {
            Distribution::Uniform([low, high])
                if low.is_finite() && high.is_finite() && low < high =>
            {
                Ok(())
            }
            Distribution::LogUniform([low, high])
                if low.is_finite() && high.is_finite() && 0.0 < low && low < high =>
            {
                Ok(())
            }
            Distribution::IntUniform([low, high]) if low <= high => Ok(()),
            Distribution::Uniform(_) => Err("uniform = [low, high] needs finite low < high".into()),
            Distribution::LogUniform(_) => {
                Err("log_uniform = [low, high] needs finite 0 < low < high".into())
            }
            Distribution::IntUniform(_) => Err("int_uniform = [low, high] needs low ≤ high".into()),
        }
    }

    /// The value for a uniform draw `u` in [0, 1).
    pub fn value(&self, u: f64) -> toml::Value {
        match *self {
            Distribution::Uniform([low, high]) => toml::Value::Float(low + u * (high - low)),
            Distribution::LogUniform([low, high]) => {
                toml::Value::Float((low.ln() + u * (high.ln() - low.ln())).exp())
            }
            Distribution::IntUniform([low, high]) => {
                let span = (high - low + 1) as f64;
                toml::Value::Integer(low + ((u * span).floor() as i64).min(high - low))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> SweepSpec {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_documented_table_parses_and_checks() {
        let s = parse(
            r#"grid = { "train.lr" = [1e-3, 3e-3], "model.dropout" = [0.0, 0.5] }
random = { "train.momentum" = { uniform = [0.8, 0.99] }, "train.weight_decay" = { log_uniform = [1e-5, 1e-2] } }
samples = 8
seeds = [1, 2, 3]
[slurm]
partition = "gpu"
extra = ["--mem=8G"]
"#,
        );
        assert_eq!(s.check(), Ok(()));
        assert_eq!(
            s.random["train.weight_decay"],
            Distribution::LogUniform([1e-5, 1e-2])
        );
        assert_eq!(s.slurm.extra, ["--mem=8G"]);
    }

    #[test]
    fn bad_tables_name_the_key() {
        let bad = |text: &str, key: &str, says: &str| {
            let (k, m) = parse(text).check().unwrap_err();
            assert_eq!(k, key, "{text}");
            assert!(m.contains(says), "{text}: {m}");
        };
        bad("", "sweep", "name something to sweep");
        bad(
            r#"grid = { "train.lr" = [] }"#,
            "sweep.grid.train.lr",
            "at least one",
        );
        bad(
            r#"grid = { "train.rate" = [1] }"#,
            "sweep.grid.train.rate",
            "not a spec key",
        );
        bad(
            r#"grid = { "gate.max_drop" = [1] }"#,
            "sweep.grid.gate.max_drop",
            "gate policy",
        );
        bad(
            r#"random = { "train.lr" = { uniform = [1, 1] } }
samples = 2"#,
            "sweep.random.train.lr",
            "low < high",
        );
        bad(
            r#"random = { "train.lr" = { log_uniform = [0, 1] } }
samples = 2"#,
            "sweep.random.train.lr",
            "0 < low",
        );
        bad(
            r#"random = { "train.lr" = { uniform = [0, 1] } }"#,
            "sweep.samples",
            "random needs samples",
        );
        bad(
            "samples = 3\nseeds = [1]",
            "sweep.samples",
            "samples needs random",
        );
        bad("seeds = [1, 2, 1]", "sweep.seeds", "1 is listed twice");
        bad(
            r#"grid = { "train.seed" = [1] }
seeds = [2]"#,
            "sweep.seeds",
            "swept by grid or random",
        );
        assert!(
            toml::from_str::<SweepSpec>(r#"random = { "train.lr" = { normal = [0, 1] } }"#)
                .is_err()
        );
        assert!(toml::from_str::<SweepSpec>("grid_ = {}").is_err());
    }

    #[test]
    fn distributions_map_the_unit_interval() {
        assert_eq!(
            Distribution::Uniform([2.0, 4.0]).value(0.5),
            toml::Value::Float(3.0)
        );
        let v = Distribution::LogUniform([1e-4, 1e-2]).value(0.5);
        assert!((v.as_float().unwrap() - 1e-3).abs() < 1e-12, "{v}");
        assert_eq!(
            Distribution::IntUniform([1, 3]).value(0.0),
            toml::Value::Integer(1)
        );
        assert_eq!(
            Distribution::IntUniform([1, 3]).value(0.999_999),
            toml::Value::Integer(3)
        );
    }
}
