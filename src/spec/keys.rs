//! The one table of spec keys (docs/design.md §3). `exp run --help` lists the keys from it,
//! `--set` reads it to tell string keys from the others, and a test checks docs/spec.md
//! against it, so a key added to the schema without its documentation fails the suite.
//! The typed structs in `spec/mod.rs` are the schema itself; a test checks that every key the
//! resolved spec holds is in this table.

/// How `--set KEY=VALUE` reads VALUE for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A string: the raw text is the value unless it is a quoted TOML string, so
    /// `init.from=2024` is the string "2024".
    String,
    /// Anything else: VALUE is parsed as TOML (text that is not TOML becomes a string, which
    /// the schema then refuses with the key's name).
    Toml,
}

/// One key of the spec.
#[derive(Debug, Clone, Copy)]
pub struct SpecKey {
    /// `table.key`, as `--set` takes it.
    pub key: &'static str,
    /// How `--set` reads its value.
    pub kind: ValueKind,
    /// The allowed values or the shape, for `exp run --help` (empty: the name says enough).
    pub choices: &'static str,
}

const fn key(key: &'static str, kind: ValueKind, choices: &'static str) -> SpecKey {
    SpecKey { key, kind, choices }
}

use ValueKind::{String as S, Toml as T};

/// Every key of the spec, table by table, in the order the help and docs/spec.md list them.
pub const SPEC_KEYS: &[SpecKey] = &[
    key(
        "model.name",
        S,
        "mlp | seed-cnn | cnn | resnet18 | resnet50 | vit",
    ),
    key("model.hidden", T, ""),
    key("model.dropout", T, ""),
    key("model.conv_dropout", T, ""),
    key("model.width", T, ""),
    key("model.stem", S, "resnets: cifar | imagenet"),
    key("model.patch_size", T, ""),
    key("model.depth", T, ""),
    key("model.heads", T, ""),
    key("model.mlp_dim", T, ""),
    key("data.format", S, "idx | cifar10 | image-folder"),
    key("data.dataset", S, "a dataset of exp data add"),
    key("data.path", S, "image-folder: a folder under the data root"),
    key("data.channels", T, "image-folder: 1 | 3"),
    key("data.image_size", T, "image-folder: [height, width]"),
    key("data.test_fraction", T, ""),
    key("data.split_seed", T, ""),
    key("data.skip_corrupt", T, ""),
    key("data.train_images", S, ""),
    key("data.train_labels", S, ""),
    key("data.test_images", S, ""),
    key("data.test_labels", S, ""),
    key("data.normalize", T, "{ mean, std } | \"train\""),
    key("data.train_limit", T, ""),
    key("data.val_limit", T, ""),
    key("data.val_fraction", T, ""),
    key("data.test_limit", T, ""),
    key("data.num_classes", T, ""),
    key("data.classes", T, ""),
    key("data.class_limit", T, ""),
    key("data.class_names", T, "[\"name\", …]"),
    key("train.optimizer", S, "adam | adamw | sgd"),
    key("train.lr", T, ""),
    key("train.momentum", T, ""),
    key("train.weight_decay", T, ""),
    key("train.batch_size", T, ""),
    key("train.epochs", T, ""),
    key("train.seed", T, ""),
    key("train.device", S, "auto | cpu | cuda[:N]"),
    key(
        "train.precision",
        S,
        "f32 | tf32 | bf16 | f16; all but f32 need CUDA",
    ),
    key("train.accumulate", T, ""),
    key("train.schedule", S, "constant | cosine | step"),
    key("train.warmup_epochs", T, ""),
    key("train.min_lr", T, ""),
    key("train.step_size", T, ""),
    key("train.gamma", T, ""),
    key("train.label_smoothing", T, ""),
    key(
        "train.early_stopping",
        T,
        "{ patience, metric = val_loss | val_accuracy, min_delta }",
    ),
    key("train.class_weights", T, "\"inverse-frequency\" | [w, …]"),
    key("train.augment.crop_padding", T, ""),
    key("train.augment.flip", T, ""),
    key("init.from", S, "run tag, commit or branch"),
    key("init.freeze", T, "tensor-name prefixes"),
    key("gate.metrics", T, ""),
    key("gate.max_drop", T, ""),
    key("gate.max_relative_drop", T, ""),
    key("gate.min", T, ""),
    key("gate.max", T, ""),
    key("gate.alpha", T, ""),
    key("gate.allow_different_eval_set", T, ""),
];

/// How `--set` reads the value of `dotted` (a key inside a table key, such as
/// `train.early_stopping.patience`, is read as TOML).
pub fn value_kind(dotted: &str) -> ValueKind {
    SPEC_KEYS
        .iter()
        .find(|k| k.key == dotted)
        .map_or(ValueKind::Toml, |k| k.kind)
}

/// Whether `dotted` is a key of the table, or lies inside one (`train.early_stopping.patience`),
/// or is a table holding keys (`train.augment`).
pub fn is_known(dotted: &str) -> bool {
    SPEC_KEYS.iter().any(|k| {
        k.key == dotted
            || dotted
                .strip_prefix(k.key)
                .is_some_and(|r| r.starts_with('.'))
            || k.key
                .strip_prefix(dotted)
                .is_some_and(|r| r.starts_with('.'))
    })
}

/// The key list of `exp run --help`: `[model] name (mlp | …), hidden, …; [data] …`.
pub fn help_text() -> String {
    let mut sections: Vec<(&str, Vec<String>)> = Vec::new();
    for k in SPEC_KEYS {
        let (table, name) = k.key.split_once('.').unwrap_or(("", k.key));
        let entry = if k.choices.is_empty() {
            name.to_string()
        } else {
            format!("{name} ({})", k.choices)
        };
        match sections.last_mut() {
            Some((t, names)) if *t == table => names.push(entry),
            _ => sections.push((table, vec![entry])),
        }
    }
    let tables: Vec<String> = sections
        .iter()
        .map(|(table, names)| format!("[{table}] {}", names.join(", ")))
        .collect();
    format!(
        "Spec keys (docs/spec.md): {}. [gate] is read by exp gate, not by the run.",
        tables.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_lists_every_key_by_table() {
        let help = help_text();
        assert!(
            help.starts_with("Spec keys (docs/spec.md): [model] name (mlp | seed-cnn | cnn | resnet18 | resnet50 | vit), hidden, dropout, conv_dropout, width, stem (resnets: cifar | imagenet), patch_size, depth, heads, mlp_dim; [data] format (idx | cifar10 | image-folder), "),
            "{help}"
        );
        assert!(help.contains("; [init] from (run tag, commit or branch), freeze (tensor-name prefixes); [gate] metrics, "), "{help}");
        for k in SPEC_KEYS {
            let name = k.key.split_once('.').unwrap().1;
            assert!(help.contains(name), "{} missing from the help", k.key);
        }
    }

    #[test]
    fn string_keys_and_known_keys() {
        assert_eq!(value_kind("init.from"), ValueKind::String);
        assert_eq!(value_kind("train.epochs"), ValueKind::Toml);
        assert_eq!(value_kind("train.early_stopping.patience"), ValueKind::Toml);
        assert!(is_known("train.early_stopping.patience"));
        assert!(is_known("train.augment"));
        assert!(!is_known("train.augmentation"));
        assert!(!is_known("trai"));
    }

    /// The keys docs/spec.md documents: the first column of each table under a `` ## `[t]` ``
    /// heading (`` `a`, `b` `` rows name two keys).
    fn documented_keys() -> Vec<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/spec.md");
        let text = std::fs::read_to_string(&path).expect("read docs/spec.md");
        let mut table = None;
        let mut keys = Vec::new();
        for line in text.lines() {
            if let Some(heading) = line.strip_prefix("## ") {
                table = heading
                    .trim()
                    .strip_prefix("`[")
                    .and_then(|h| h.strip_suffix("]`"))
                    .map(str::to_string);
                continue;
            }
            let (Some(table), Some(row)) = (&table, line.strip_prefix("| `")) else {
                continue;
            };
            let first = row.split(" |").next().unwrap_or("");
            for name in first.split(", ") {
                keys.push(format!("{table}.{}", name.trim_matches('`')));
            }
        }
        keys
    }

    #[test]
    fn docs_spec_md_documents_exactly_the_table() {
        let documented = documented_keys();
        let table: Vec<String> = SPEC_KEYS.iter().map(|k| k.key.to_string()).collect();
        let missing: Vec<&String> = table.iter().filter(|k| !documented.contains(k)).collect();
        let unknown: Vec<&String> = documented.iter().filter(|k| !table.contains(k)).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "docs/spec.md and spec::keys::SPEC_KEYS disagree:\n  not documented: {missing:?}\n  documented but not in the table: {unknown:?}"
        );
    }
}
