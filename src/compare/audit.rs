//! Does a committed record agree with its committed artifacts? (docs/design.md §7)
//!
//! A record is text anyone can edit; what the gate and `exp diff` compare must be what the
//! committed files show. The audit checks, reading only Git objects:
//!
//! 1. the bindings: each file of `layout::BOUND_FILES` hashes to its `[artifacts]` entry (a
//!    record written before bindings existed has none: a warning, never a refusal);
//! 2. every metric is a finite number;
//! 3. every known metric's recorded direction is the one of `metric::KNOWN_METRICS`;
//! 4. `predictions.bin` holds N = `data.test.examples` = each metric's `samples` examples of
//!    K = `eval.classes` classes, every label and prediction below K;
//! 5. the recomputable metrics, per-class accuracy and the confusion matrix, recomputed from
//!    `predictions.bin` by the code that wrote them (`eval::Metrics::new`), equal the recorded
//!    ones bit for bit.
//!
//! Loss cannot be recomputed from predictions; only `exp verify`, which re-evaluates the
//! weights, checks it.

use std::path::Path;

use git2::{ObjectType, Repository};

use super::{Snapshot, StoredRecord};
use crate::eval::{decode_predictions, Evaluation, Metrics};
use crate::metric::{known, KNOWN_METRICS};
use crate::record::artifact_hash;
use crate::record::layout::{self, BOUND_FILES, PREDICTIONS_FILE, RECORD_FILE};

/// Checks experiment `name`'s record in `snapshot` against its committed artifacts. `Ok` holds
/// warnings (an old record without bindings); `Err` says what disagrees, naming the field, the
/// recorded and the recomputed value.
pub fn audit(
    repo: &Repository,
    snapshot: &Snapshot,
    name: &str,
    stored: &StoredRecord,
) -> Result<Vec<String>, String> {
    let record = &stored.record;
    let mut warnings = Vec::new();
    let committed = |file: &str| committed_file(repo, snapshot, name, file);

    // The files a record names are exp's fixed names: a record pointing the gate at another
    // file (a good model's pointer beside a bad model.safetensors) is forged.
    for (field, value, expected) in [
        ("model.weights", &record.model.weights, layout::WEIGHTS_FILE),
        (
            "eval.predictions",
            &record.eval.predictions,
            PREDICTIONS_FILE,
        ),
    ] {
        if value != expected {
            return Err(format!(
                "{field} is {value:?}; exp always writes {expected:?}"
            ));
        }
    }
    if record.run.experiment != name {
        return Err(format!(
            "run.experiment is {:?}, but the record is in the directory of {name:?}",
            record.run.experiment
        ));
    }
    if let Some(ops) = record.run.cpu_ops.as_deref().filter(|o| *o != "candle") {
        return Err(format!(
            "run.cpu_ops is {ops:?}; exp writes only \"candle\""
        ));
    }

    if record.artifacts.is_empty() && binds_artifacts(&record.run.exp_version) {
        return Err(format!(
            "the record says exp {} wrote it, which binds its artifacts, yet it has no [artifacts]",
            record.run.exp_version
        ));
    }
    if record.artifacts.is_empty() {
        warnings.push(format!(
            "{} at {} was written before records bound their artifacts: its {} are taken as committed",
            layout::run_file(name, RECORD_FILE),
            snapshot.name,
            BOUND_FILES.join(" and ")
        ));
    } else {
        for file in BOUND_FILES {
            let path = layout::run_file(name, file);
            let Some(bound) = record.artifacts.get(file) else {
                return Err(format!("the record's [artifacts] does not bind {file}"));
            };
            let bytes = committed(file)?
                .ok_or_else(|| format!("{path} is not committed, but the record binds it"))?;
            let actual = artifact_hash(&bytes);
            if &actual != bound {
                return Err(format!(
                    "{path} is not the file the record binds: [artifacts] \"{file}\" is {bound}, the committed file hashes to {actual}"
                ));
            }
        }
    }

    for (metric, value) in &record.metrics.values {
        if !value.is_finite() {
            return Err(format!("metrics.{metric} is {value}, not a finite number"));
        }
    }
    for (metric, meta) in &record.metrics.meta {
        if let Some(k) = known(metric) {
            if meta.direction != k.direction {
                return Err(format!(
                    "metrics.meta.{metric}.direction is recorded as \"{}\", but {metric} is a \"{}\" metric",
                    meta.direction.as_str(),
                    k.direction.as_str()
                ));
            }
        }
    }

    let path = layout::run_file(name, PREDICTIONS_FILE);
    let bytes = committed(PREDICTIONS_FILE)?.ok_or_else(|| {
        format!("{path} is not committed, so the recorded metrics cannot be recomputed")
    })?;
    let (labels, predictions, classes) =
        decode_predictions(&bytes).map_err(|e| format!("{path}: {e}"))?;
    if classes > MAX_CLASSES {
        return Err(format!(
            "{path} has {classes} classes; exp records at most {MAX_CLASSES}"
        ));
    }
    if classes != record.eval.classes {
        return Err(format!(
            "eval.classes is recorded as {}, but {path} has {classes} classes",
            record.eval.classes
        ));
    }
    let n = labels.len();
    if n != record.data.test.examples {
        return Err(format!(
            "data.test.examples is recorded as {}, but {path} has {n} examples",
            record.data.test.examples
        ));
    }
    for (metric, meta) in &record.metrics.meta {
        if meta.samples != n {
            return Err(format!(
                "metrics.meta.{metric}.samples is recorded as {}, but {path} has {n} examples",
                meta.samples
            ));
        }
    }
    for (what, values) in [("label", &labels), ("prediction", &predictions)] {
        if let Some(i) = values.iter().position(|&v| v as usize >= classes) {
            return Err(format!(
                "{path}: the {what} of example {i} is class {}, but there are {classes} classes",
                values[i]
            ));
        }
    }

    // Shapes before the K × K recomputation.
    if record.eval.per_class_accuracy.len() != classes {
        return Err(format!(
            "eval.per_class_accuracy has {} entries, but there are {classes} classes",
            record.eval.per_class_accuracy.len()
        ));
    }
    if record.eval.confusion.len() != classes
        || record.eval.confusion.iter().any(|row| row.len() != classes)
    {
        return Err(format!(
            "eval.confusion is not a {classes}×{classes} matrix"
        ));
    }
    let evaluation = Evaluation {
        labels,
        predictions,
        loss: f64::NAN,
    };
    let recomputed = Metrics::new(&evaluation, classes);
    for k in KNOWN_METRICS.iter().filter(|k| k.recomputable) {
        let (Some(recorded), Some(again)) =
            (record.metrics.values.get(k.name), recomputed.get(k.name))
        else {
            // A missing metric is the gate's to refuse when it is gated; diff shows it absent.
            continue;
        };
        if recorded.to_bits() != again.to_bits() {
            return Err(mismatch(
                &format!("metrics.{}", k.name),
                recorded,
                &again,
                &path,
            ));
        }
    }
    for (c, (recorded, again)) in record
        .eval
        .per_class_accuracy
        .iter()
        .zip(&recomputed.per_class_accuracy)
        .enumerate()
    {
        if recorded.to_bits() != again.to_bits() {
            let field = format!("eval.per_class_accuracy[{c}]");
            return Err(mismatch(&field, recorded, again, &path));
        }
    }
    if record.eval.confusion.len() != classes
        || record.eval.confusion.iter().any(|row| row.len() != classes)
    {
        return Err(format!(
            "eval.confusion is not a {classes}×{classes} matrix"
        ));
    }
    for (t, (recorded, again)) in record
        .eval
        .confusion
        .iter()
        .zip(&recomputed.confusion)
        .enumerate()
    {
        if let Some(p) = (0..classes).find(|&p| recorded[p] != again[p]) {
            let field = format!("eval.confusion[{t}][{p}]");
            return Err(mismatch(&field, &recorded[p], &again[p], &path));
        }
    }
    Ok(warnings)
}

/// The most classes a record may have: the audit recomputes a K × K confusion matrix, and a
/// forged K must not exhaust a server's memory (predictions.bin stores labels as u16 at most).
pub const MAX_CLASSES: usize = 65_536;

/// Whether exp `version` writes `[artifacts]` (from 0.2.0 on): its records without them were
/// stripped.
fn binds_artifacts(version: &str) -> bool {
    semver::Version::parse(version).is_ok_and(|v| v >= semver::Version::new(0, 2, 0))
}

fn mismatch(
    field: &str,
    recorded: &dyn std::fmt::Display,
    recomputed: &dyn std::fmt::Display,
    path: &str,
) -> String {
    format!("{field} is recorded as {recorded}, but {path} gives {recomputed}")
}

/// The bytes of `experiments/<name>/<file>` in the snapshot; `None` when not committed.
fn committed_file(
    repo: &Repository,
    snapshot: &Snapshot,
    name: &str,
    file: &str,
) -> Result<Option<Vec<u8>>, String> {
    let path = layout::run_file(name, file);
    let Ok(entry) = snapshot.tree.get_path(Path::new(&path)) else {
        return Ok(None);
    };
    if entry.kind() != Some(ObjectType::Blob) {
        return Err(format!("{path} is not a file"));
    }
    let blob = repo
        .find_blob(entry.id())
        .map_err(|e| format!("{path} is unreadable: {}", e.message()))?;
    Ok(Some(blob.content().to_vec()))
}
