//! Loading a spec: the file, then each `--set KEY=VALUE` in turn, then validation (the three
//! steps of the module docs), keeping where each key came from for later messages.

use std::path::{Path, PathBuf};

use super::keys::{self, ValueKind};
use super::lines::{schema_error, Origins};
use super::validate::validate;
use super::{Spec, SpecError};

/// A spec as it ran: the typed, resolved spec plus where each key came from.
#[derive(Debug, Clone)]
pub struct ResolvedSpec {
    /// The resolved spec: defaults filled in.
    pub spec: Spec,
    /// The spec file.
    pub path: PathBuf,
    /// The `--set` arguments, in order.
    pub overrides: Vec<String>,
    /// The spec file's text, for locating keys in later messages.
    text: String,
    /// The key path of each override, with the argument as given.
    override_keys: Vec<(Vec<String>, String)>,
}

impl ResolvedSpec {
    /// The spec file's text as it was loaded (what was trained).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Where `dotted.key`'s value came from: `file:line`, `--set KEY=VALUE`, or the default.
    pub fn origin(&self, key: &str) -> String {
        Origins {
            path: &self.path,
            text: &self.text,
            overrides: &self.override_keys,
        }
        .of(key)
    }
}

/// Loads `path`, applies `--set` overrides, validates and resolves.
pub fn load(path: &Path, overrides: &[String]) -> Result<ResolvedSpec, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text, overrides)
}

/// [`load`] on text already read; `path` is used in messages only.
pub fn parse(path: &Path, text: &str, overrides: &[String]) -> Result<ResolvedSpec, SpecError> {
    // 1. The file alone, for errors with file lines.
    let mut table: toml::Table = toml::from_str(text).map_err(|e| schema_error(path, text, &e))?;
    toml::from_str::<Spec>(text).map_err(|e| schema_error(path, text, &e))?;

    // 2. Each override in turn.
    let mut parsed_overrides = Vec::new();
    for arg in overrides {
        let (key, value) = parse_override(arg)?;
        set_key(&mut table, &key, value).map_err(|message| SpecError::Override {
            arg: arg.clone(),
            message,
        })?;
        toml::Value::Table(table.clone())
            .try_into::<Spec>()
            .map_err(|e| SpecError::Override {
                arg: arg.clone(),
                message: e.message().trim().to_string(),
            })?;
        parsed_overrides.push((key, arg.clone()));
    }
    let spec: Spec = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| SpecError::Override {
            arg: overrides.join(" "),
            message: e.message().to_string(),
        })?;

    // 3. Semantic checks and defaults.
    let origins = Origins {
        path,
        text,
        overrides: &parsed_overrides,
    };
    let spec = validate(spec, &origins)?;
    Ok(ResolvedSpec {
        spec,
        path: path.to_path_buf(),
        overrides: overrides.to_vec(),
        text: text.to_string(),
        override_keys: parsed_overrides,
    })
}

/// A `--set KEY=VALUE` argument as the dotted key and the value it sets (read as `--set` reads
/// it: string keys take plain text).
pub fn override_value(arg: &str) -> Result<(String, toml::Value), SpecError> {
    parse_override(arg).map(|(path, value)| (path.join("."), value))
}

fn parse_override(arg: &str) -> Result<(Vec<String>, toml::Value), SpecError> {
    let bad = |message: &str| SpecError::Override {
        arg: arg.to_string(),
        message: message.to_string(),
    };
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| bad("expected KEY=VALUE"))?;
    let key = key.trim();
    let path: Vec<String> = key.split('.').map(|s| s.trim().to_string()).collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(bad("the key is empty or has an empty part"));
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"));
    let value = if keys::value_kind(key) == ValueKind::String {
        match parsed {
            Some(toml::Value::String(s)) if is_quoted(raw) => toml::Value::String(s),
            // Array of paths for the image keys.
            Some(v @ toml::Value::Array(_)) if key.ends_with("_images") => v,
            _ => toml::Value::String(raw.to_string()),
        }
    } else {
        parsed.unwrap_or_else(|| toml::Value::String(raw.to_string()))
    };
    Ok((path, value))
}

fn is_quoted(raw: &str) -> bool {
    let t = raw.trim();
    t.len() >= 2
        && ((t.starts_with('"') && t.ends_with('"')) || (t.starts_with('\'') && t.ends_with('\'')))
}

fn set_key(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut current = table;
    for (i, part) in parents.iter().enumerate() {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("{} is not a table", path[..=i].join(".")))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}
