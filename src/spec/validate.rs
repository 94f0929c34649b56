//! What a schema cannot say, checked section by section after the types have parsed:
//! ranges, options that belong to another model or optimiser, keys that need each other.
//! Defaults that depend on other keys (a model's dropout) are filled in here, so the record
//! holds the complete spec that ran.

use std::collections::BTreeSet;

use super::lines::Origins;
use super::{
    ClassWeights, DataFormat, DataSpec, InitSpec, ModelName, ModelSpec, NormalizeSpec,
    OptimizerName, Spec, SpecError, Stem, TrainSpec,
};

/// The largest `train.augment.crop_padding`: beyond it a crop is mostly padding.
const MAX_CROP_PADDING: usize = 64;

/// Checks every section and fills in the defaults that depend on other keys.
pub(super) fn validate(mut spec: Spec, origins: &Origins) -> Result<Spec, SpecError> {
    model(&mut spec.model, origins)?;
    data(&spec.data, origins)?;
    train(&spec.train, &spec.data, origins)?;
    init(&spec.init, origins)?;
    spec.gate
        .check()
        .map_err(|(key, message)| error_at(origins, key, message))?;
    if let Some(sweep) = &spec.sweep {
        sweep
            .check()
            .map_err(|(key, message)| error_at(origins, &key, message))?;
    }
    Ok(spec)
}

/// `key` is invalid: the message names where its value came from.
fn error_at(origins: &Origins, key: &str, message: String) -> SpecError {
    SpecError::Invalid {
        origin: origins.of(key),
        key: key.to_string(),
        message,
    }
}

/// A probability-like value in [0, 1).
fn check_fraction(origins: &Origins, key: &str, p: Option<f64>) -> Result<(), SpecError> {
    match p {
        Some(p) if !(0.0..1.0).contains(&p) => Err(error_at(
            origins,
            key,
            format!("must be in [0, 1), got {p}"),
        )),
        _ => Ok(()),
    }
}

/// `[model]`: options apply to some models only.
fn model(m: &mut ModelSpec, origins: &Origins) -> Result<(), SpecError> {
    let invalid = |key: &str, message: String| error_at(origins, key, message);
    let not_for = |key: &str, name: ModelName| {
        invalid(key, format!("does not apply to model {:?}", name.as_str()))
    };
    // Model options apply to some models only: an option that would be silently ignored is
    // an error, not a no-op.
    match m.name {
        ModelName::Mlp => {
            if m.conv_dropout.is_some() {
                return Err(not_for("model.conv_dropout", m.name));
            }
            let hidden = m.hidden.get_or_insert_with(|| vec![128]);
            if hidden.contains(&0) {
                return Err(invalid(
                    "model.hidden",
                    "layer widths must be positive".into(),
                ));
            }
            m.dropout.get_or_insert(0.0);
        }
        ModelName::Cnn => {
            if m.hidden.is_some() {
                return Err(not_for("model.hidden", m.name));
            }
            m.dropout.get_or_insert(0.5);
            m.conv_dropout.get_or_insert(0.25);
        }
        ModelName::SeedCnn | ModelName::Resnet18 | ModelName::Resnet50 => {
            for (key, set) in [
                ("model.hidden", m.hidden.is_some()),
                ("model.dropout", m.dropout.is_some()),
                ("model.conv_dropout", m.conv_dropout.is_some()),
            ] {
                if set {
                    return Err(not_for(key, m.name));
                }
            }
            if m.name != ModelName::SeedCnn {
                if *m.width.get_or_insert(64) == 0 {
                    return Err(invalid("model.width", "must be at least 1".into()));
                }
                if m.name == ModelName::Resnet50 {
                    // resnet18 records made before the key keep their run ids.
                    m.stem.get_or_insert(Stem::Cifar);
                }
            }
        }
        ModelName::Vit => {
            for (key, set) in [
                ("model.hidden", m.hidden.is_some()),
                ("model.conv_dropout", m.conv_dropout.is_some()),
            ] {
                if set {
                    return Err(not_for(key, m.name));
                }
            }
            let width = *m.width.get_or_insert(64);
            let heads = *m.heads.get_or_insert(4);
            let defaults = [
                ("model.width", width),
                ("model.heads", heads),
                ("model.patch_size", *m.patch_size.get_or_insert(4)),
                ("model.depth", *m.depth.get_or_insert(4)),
                ("model.mlp_dim", *m.mlp_dim.get_or_insert(2 * width)),
            ];
            if let Some((key, _)) = defaults.iter().find(|(_, v)| *v == 0) {
                return Err(invalid(key, "must be at least 1".into()));
            }
            if width % heads != 0 {
                return Err(invalid(
                    "model.heads",
                    format!("must divide model.width ({width}) into equal heads, got {heads}"),
                ));
            }
            m.dropout.get_or_insert(0.0);
        }
    }
    for (key, set, applies) in [
        (
            "model.stem",
            m.stem.is_some(),
            matches!(m.name, ModelName::Resnet18 | ModelName::Resnet50),
        ),
        (
            "model.patch_size",
            m.patch_size.is_some(),
            m.name == ModelName::Vit,
        ),
        ("model.depth", m.depth.is_some(), m.name == ModelName::Vit),
        ("model.heads", m.heads.is_some(), m.name == ModelName::Vit),
        (
            "model.mlp_dim",
            m.mlp_dim.is_some(),
            m.name == ModelName::Vit,
        ),
        (
            "model.width",
            m.width.is_some(),
            matches!(
                m.name,
                ModelName::Resnet18 | ModelName::Resnet50 | ModelName::Vit
            ),
        ),
    ] {
        if set && !applies {
            return Err(not_for(key, m.name));
        }
    }
    check_fraction(origins, "model.dropout", m.dropout)?;
    check_fraction(origins, "model.conv_dropout", m.conv_dropout)?;

    Ok(())
}

/// `[data]`: files per format, splits, classes, normalisation.
fn data(d: &DataSpec, origins: &Origins) -> Result<(), SpecError> {
    let invalid = |key: &str, message: String| error_at(origins, key, message);
    let folder_keys = [
        ("data.path", !d.path.is_empty()),
        ("data.channels", d.channels.is_some()),
        ("data.image_size", d.image_size.is_some()),
        ("data.test_fraction", d.test_fraction != 0.0),
        ("data.skip_corrupt", d.skip_corrupt),
    ];
    if d.format == DataFormat::ImageFolder {
        for (key, set) in [
            ("data.train_images", !d.train_images.is_empty()),
            ("data.train_labels", !d.train_labels.is_empty()),
            ("data.test_images", !d.test_images.is_empty()),
            ("data.test_labels", !d.test_labels.is_empty()),
        ] {
            if set {
                return Err(invalid(
                    key,
                    "data.format is image-folder (its default), which reads the folder data.path names: set data.format = \"idx\" or \"cifar10\" to read files, or remove this key".into(),
                ));
            }
        }
        if !d.dataset.is_empty() {
            if !d.path.is_empty() {
                return Err(invalid(
                    "data.path",
                    format!(
                        "data.dataset {:?} names the folder (its manifest's); remove data.path",
                        d.dataset
                    ),
                ));
            }
            if let Err(message) = crate::spec::check_dataset_name(&d.dataset) {
                return Err(invalid("data.dataset", message));
            }
        } else if d.path.trim().is_empty() {
            return Err(invalid(
                "data.format",
                "image-folder needs data.path, the folder of class folders (under the data root), or data.dataset"
                    .into(),
            ));
        }
        match d.image_size {
            None => {
                return Err(invalid(
                    "data.format",
                    "image-folder needs data.image_size = [height, width]: every image is resized to it".into(),
                ))
            }
            Some([h, w]) if !(1..=4096).contains(&h) || !(1..=4096).contains(&w) => {
                return Err(invalid(
                    "data.image_size",
                    format!("height and width must be between 1 and 4096, got [{h}, {w}]"),
                ))
            }
            Some(_) => {}
        }
        if let Some(c) = d.channels.filter(|c| *c != 1 && *c != 3) {
            return Err(invalid(
                "data.channels",
                format!("must be 1 (grey) or 3 (RGB), got {c}"),
            ));
        }
        if !(0.0..1.0).contains(&d.test_fraction) {
            return Err(invalid(
                "data.test_fraction",
                format!("must be in [0, 1), got {}", d.test_fraction),
            ));
        }
    } else {
        if !d.dataset.is_empty() {
            return Err(invalid(
                "data.dataset",
                format!(
                    "datasets are image folders; remove data.format = \"{}\"",
                    d.format.as_str()
                ),
            ));
        }
        if let Some((key, _)) = folder_keys.iter().find(|(_, set)| *set) {
            return Err(invalid(
                key,
                format!(
                    "applies to data.format = \"image-folder\" only (this spec reads {})",
                    d.format.as_str()
                ),
            ));
        }
        if d.train_images.is_empty() || d.train_images.iter().any(|p| p.is_empty()) {
            return Err(invalid("data.train_images", "must name a file".into()));
        }
        if d.test_images.is_empty() || d.test_images.iter().any(|p| p.is_empty()) {
            return Err(invalid("data.test_images", "must name a file".into()));
        }
    }
    match d.format {
        DataFormat::ImageFolder => {}
        DataFormat::Idx => {
            for (key, images, labels) in [
                ("data.train", &d.train_images, &d.train_labels),
                ("data.test", &d.test_images, &d.test_labels),
            ] {
                if images.len() != 1 {
                    return Err(invalid(
                        &format!("{key}_images"),
                        "idx takes one images file".into(),
                    ));
                }
                if labels.is_empty() {
                    return Err(invalid(
                        &format!("{key}_labels"),
                        "idx needs a labels file".into(),
                    ));
                }
            }
        }
        DataFormat::Cifar10 => {
            for key in ["data.train_labels", "data.test_labels"] {
                let set = if key == "data.train_labels" {
                    &d.train_labels
                } else {
                    &d.test_labels
                };
                if !set.is_empty() {
                    return Err(invalid(
                        key,
                        "cifar10 files carry their labels; remove this key".into(),
                    ));
                }
            }
        }
    }
    match (d.format, d.num_classes) {
        (_, Some(n)) if !(2..=256).contains(&n) => {
            return Err(invalid(
                "data.num_classes",
                format!("must be between 2 and 256 (labels are bytes), got {n}"),
            ))
        }
        (DataFormat::Cifar10, Some(n)) if n != 10 => {
            return Err(invalid(
                "data.num_classes",
                format!("cifar10 has 10 classes, got {n}; remove this key"),
            ))
        }
        _ => {}
    }
    if !(0.0..1.0).contains(&d.val_fraction) {
        return Err(invalid(
            "data.val_fraction",
            format!("must be in [0, 1), got {}", d.val_fraction),
        ));
    }
    if d.val_fraction > 0.0 && d.val_limit > 0 {
        return Err(invalid(
            "data.val_fraction",
            "give data.val_fraction or data.val_limit, not both".into(),
        ));
    }
    let mut seen = BTreeSet::new();
    if let Some(dup) = d.classes.iter().find(|c| !seen.insert(**c)) {
        return Err(invalid(
            "data.classes",
            format!("label {dup} is listed twice"),
        ));
    }
    if d.classes.len() == 1 {
        return Err(invalid(
            "data.classes",
            "list at least two classes (or none, for all)".into(),
        ));
    }
    let caps = d.class_caps().map_err(|m| invalid("data.class_limit", m))?;
    for label in caps.keys() {
        if !d.classes.is_empty() && !d.classes.contains(label) {
            return Err(invalid(
                "data.class_limit",
                format!("label {label} is not one of data.classes {:?}", d.classes),
            ));
        }
    }
    if caps.values().any(|&n| n == 0) {
        return Err(invalid(
            "data.class_limit",
            "a cap must be at least 1 (leave a class out with data.classes)".into(),
        ));
    }
    if !d.class_names.is_empty() {
        let classes = d.model_classes();
        // An image folder's class count is its folders': checked when it is read.
        if classes > 0 && d.class_names.len() != classes {
            return Err(invalid(
                "data.class_names",
                format!(
                    "names {} classes, the data has {classes}{}",
                    d.class_names.len(),
                    if d.classes.is_empty() {
                        ""
                    } else {
                        " (data.classes)"
                    }
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        if let Some(bad) = d
            .class_names
            .iter()
            .find(|n| n.trim().is_empty() || n.contains(['\n', '\r']) || !seen.insert(n.as_str()))
        {
            return Err(invalid(
                "data.class_names",
                format!("{bad:?}: every name must be non-empty, on one line, and used once"),
            ));
        }
    }
    if let Some(NormalizeSpec::Given(n)) = &d.normalize {
        if n.mean.is_empty() || n.mean.len() != n.std.len() {
            return Err(invalid(
                "data.normalize",
                "mean and std need the same number of values (one, or one per channel)".into(),
            ));
        }
        if n.mean.iter().any(|m| !m.is_finite()) {
            return Err(invalid(
                "data.normalize",
                "mean values must be finite numbers".into(),
            ));
        }
        if n.std.iter().any(|s| *s <= 0.0 || !s.is_finite()) {
            return Err(invalid(
                "data.normalize",
                "std values must be positive".into(),
            ));
        }
    }

    Ok(())
}

/// `[train]`: the optimiser, schedule, early stopping, class weights and augmentation.
fn train(t: &TrainSpec, data: &DataSpec, origins: &Origins) -> Result<(), SpecError> {
    let invalid = |key: &str, message: String| error_at(origins, key, message);
    if !(t.lr > 0.0 && t.lr.is_finite()) {
        return Err(invalid(
            "train.lr",
            format!("must be positive, got {}", t.lr),
        ));
    }
    if !(0.0..1.0).contains(&t.momentum) {
        return Err(invalid(
            "train.momentum",
            format!("must be in [0, 1), got {}", t.momentum),
        ));
    }
    if t.momentum != 0.0 && t.optimizer != OptimizerName::Sgd {
        return Err(invalid(
            "train.momentum",
            "applies to optimizer \"sgd\" only".into(),
        ));
    }
    if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
        return Err(invalid("train.weight_decay", "must be >= 0".into()));
    }
    for (key, v) in [
        ("train.batch_size", t.batch_size),
        ("train.epochs", t.epochs),
        ("train.accumulate", t.accumulate),
    ] {
        if v == 0 {
            return Err(invalid(key, "must be at least 1".into()));
        }
    }
    crate::device::DeviceRequest::parse(&t.device).map_err(|m| invalid("train.device", m))?;
    if t.warmup_epochs > 0 && t.warmup_epochs >= t.epochs {
        return Err(invalid(
            "train.warmup_epochs",
            format!(
                "must be fewer than train.epochs ({}), got {}",
                t.epochs, t.warmup_epochs
            ),
        ));
    }
    if t.step_size == 0 {
        return Err(invalid("train.step_size", "must be at least 1".into()));
    }
    if !(t.gamma > 0.0 && t.gamma <= 1.0) {
        return Err(invalid(
            "train.gamma",
            format!("must be in (0, 1], got {}", t.gamma),
        ));
    }
    if !(t.min_lr >= 0.0 && t.min_lr <= t.lr) {
        return Err(invalid(
            "train.min_lr",
            format!("must be in [0, train.lr], got {}", t.min_lr),
        ));
    }
    if !(0.0..1.0).contains(&t.label_smoothing) {
        return Err(invalid(
            "train.label_smoothing",
            format!("must be in [0, 1), got {}", t.label_smoothing),
        ));
    }
    if let Some(stop) = &t.early_stopping {
        if stop.patience == 0 {
            return Err(invalid(
                "train.early_stopping",
                "patience must be at least 1".into(),
            ));
        }
        if !(stop.min_delta >= 0.0 && stop.min_delta.is_finite()) {
            return Err(invalid(
                "train.early_stopping",
                format!("min_delta must be a number ≥ 0, got {}", stop.min_delta),
            ));
        }
        if data.val_limit == 0 && data.val_fraction == 0.0 {
            return Err(invalid(
                "train.early_stopping",
                "needs a validation set (data.val_fraction or data.val_limit): early stopping never looks at the test set".into(),
            ));
        }
    }
    if let Some(ClassWeights::Explicit(w)) = &t.class_weights {
        if w.len() < 2 || w.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
            return Err(invalid(
                "train.class_weights",
                "give one positive weight per class (at least two)".into(),
            ));
        }
    }
    if t.augment.crop_padding > MAX_CROP_PADDING {
        return Err(invalid(
            "train.augment.crop_padding",
            format!(
                "must be at most {MAX_CROP_PADDING}, got {}",
                t.augment.crop_padding
            ),
        ));
    }
    Ok(())
}

/// `[init]`: freezing needs a parent, and prefixes end at a '.'.
fn init(init: &InitSpec, origins: &Origins) -> Result<(), SpecError> {
    let invalid = |key: &str, message: String| error_at(origins, key, message);
    if !init.freeze.is_empty() && init.from.trim().is_empty() {
        return Err(invalid(
            "init.freeze",
            "freezing needs init.from: frozen random weights would stay random".into(),
        ));
    }
    if let Some(p) = init
        .freeze
        .iter()
        .find(|p| p.is_empty() || !p.ends_with('.'))
    {
        return Err(invalid(
            "init.freeze",
            format!("{p:?}: a prefix ends at a '.' boundary, e.g. \"conv1.\""),
        ));
    }
    Ok(())
}
