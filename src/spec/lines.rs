//! Finding keys in the spec's text, so that errors name the file, line and column of the key
//! they are about (toml_edit keeps the spans that serde's view of the document drops).

use std::path::Path;

use super::SpecError;

/// A schema error of the file, with the line, column and key it points at.
pub(super) fn schema_error(path: &Path, text: &str, e: &toml::de::Error) -> SpecError {
    let (line, column, key) = match e.span() {
        Some(span) => {
            let (l, c) = line_col(text, span.start);
            (
                l,
                c,
                key_at(text, span.start)
                    .map(|k| format!("{k}: "))
                    .unwrap_or_default(),
            )
        }
        None => (1, 1, String::new()),
    };
    SpecError::Schema {
        path: path.to_path_buf(),
        line,
        column,
        key,
        message: e.message().trim().to_string(),
    }
}

/// 1-based line and column of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The byte offset of `dotted.key` in the document, if it is written there.
pub(super) fn key_span(text: &str, dotted: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item: &toml_edit::Item = doc.as_item();
    let mut span = None;
    for part in dotted.split('.') {
        let table = item.as_table_like()?;
        let (key, value) = table.get_key_value(part)?;
        span = key.span().or_else(|| value.span());
        item = value;
    }
    span.map(|s| s.start)
}

/// The dotted key whose key or value contains `offset`, the innermost one.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut found = None;
    fn walk(prefix: &str, item: &toml_edit::Item, offset: usize, found: &mut Option<String>) {
        let Some(table) = item.as_table_like() else {
            return;
        };
        for (k, v) in table.iter() {
            let key = if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            };
            let key_span = table.get_key_value(k).and_then(|(kk, _)| kk.span());
            let hit = |s: Option<std::ops::Range<usize>>| {
                s.is_some_and(|s| s.contains(&offset) || s.start == offset)
            };
            if hit(key_span) || hit(v.span()) {
                *found = Some(key.clone());
            }
            walk(&key, v, offset, found);
        }
    }
    walk("", doc.as_item(), offset, &mut found);
    // A key missing from a table is reported at the table's header: name the table.
    found.or_else(|| {
        let line_start = text[..offset.min(text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let line = text[line_start..].lines().next()?.trim();
        line.strip_prefix('[')
            .and_then(|l| l.strip_suffix(']'))
            .map(|t| t.trim().to_string())
    })
}

/// Where a key's value came from, for error messages.
pub(super) struct Origins<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
    pub(super) overrides: &'a [(Vec<String>, String)],
}

impl Origins<'_> {
    pub(super) fn of(&self, key: &str) -> String {
        // An override of the key, of a key inside it (`train.early_stopping.patience` for
        // `train.early_stopping`) or of the table holding it.
        let touches = |set: &str| {
            set == key
                || set.strip_prefix(key).is_some_and(|r| r.starts_with('.'))
                || key.strip_prefix(set).is_some_and(|r| r.starts_with('.'))
        };
        if let Some((_, arg)) = self
            .overrides
            .iter()
            .rev()
            .find(|(k, _)| touches(&k.join(".")))
        {
            return format!("--set {arg}");
        }
        match key_span(self.text, key) {
            Some(offset) => format!("{}:{}", self.path.display(), line_col(self.text, offset).0),
            None => format!("{} (default)", self.path.display()),
        }
    }
}
