//! The one table of metrics exp knows (docs/design.md §4): each metric's better direction and
//! whether it can be recomputed from `predictions.bin`.
//!
//! A metric's direction is a fact about the metric, not about a run: the gate and `exp diff`
//! take it from here, never from a record (a record saying `direction = "min"` for accuracy
//! would otherwise turn a drop into an improvement).

use serde::{Deserialize, Serialize};

/// Whether larger or smaller is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Larger is better.
    Max,
    /// Smaller is better.
    Min,
}

impl Direction {
    /// As written in records: `max` or `min`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Max => "max",
            Direction::Min => "min",
        }
    }
}

/// One known metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownMetric {
    /// Name, as in `[metrics]` and `gate.metrics`.
    pub name: &'static str,
    /// Better direction.
    pub direction: Direction,
    /// Whether `exp gate`/`exp diff` recompute it from the committed `predictions.bin`
    /// (otherwise only `exp verify`, which re-evaluates the weights, checks it).
    pub recomputable: bool,
}

/// Every metric a run records, in the order records list them.
pub const KNOWN_METRICS: &[KnownMetric] = &[
    KnownMetric {
        name: "accuracy",
        direction: Direction::Max,
        recomputable: true,
    },
    KnownMetric {
        name: "loss",
        direction: Direction::Min,
        recomputable: false,
    },
    KnownMetric {
        name: "macro_f1",
        direction: Direction::Max,
        recomputable: true,
    },
];

/// The known metric called `name`.
pub fn known(name: &str) -> Option<&'static KnownMetric> {
    KNOWN_METRICS.iter().find(|m| m.name == name)
}

/// The known metrics' names, comma-separated, for messages.
pub fn known_names() -> String {
    KNOWN_METRICS
        .iter()
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_are_the_documented_ones() {
        let table: Vec<(&str, Direction, bool)> = KNOWN_METRICS
            .iter()
            .map(|m| (m.name, m.direction, m.recomputable))
            .collect();
        assert_eq!(
            table,
            [
                ("accuracy", Direction::Max, true),
                ("loss", Direction::Min, false),
                ("macro_f1", Direction::Max, true),
            ]
        );
        assert_eq!(known("loss").map(|m| m.direction), Some(Direction::Min));
        assert_eq!(known("Accuracy"), None);
        assert_eq!(known_names(), "accuracy, loss, macro_f1");
    }
}
