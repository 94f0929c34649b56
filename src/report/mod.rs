//! Output for people: tables (and, later, plots and HTML), built from the same data structures
//! that `--json` serialises.

use comfy_table::{presets, ContentArrangement, Table};

/// A plain table: ASCII borders, no wrapping, so output is the same on every terminal and in
/// golden tests.
pub fn table(header: Vec<String>) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::ASCII_BORDERS_ONLY_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header);
    t
}

/// A Markdown table.
pub fn markdown_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut out = format!(
        "| {} |\n|{}|\n",
        header.join(" | "),
        header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for row in rows {
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    out
}

/// A metric value: 4 decimals.
pub fn metric(v: f64) -> String {
    format!("{v:.4}")
}

/// A signed delta: 4 decimals.
pub fn delta(v: f64) -> String {
    format!("{v:+.4}")
}

/// A p-value: 4 decimals, or scientific notation when small.
pub fn p_value(p: f64) -> String {
    if p < 1e-4 {
        format!("{p:.2e}")
    } else {
        format!("{p:.4}")
    }
}

/// The first 10 characters of an id (12 for LFS oids are used by callers as they like).
pub fn short(id: &str) -> &str {
    &id[..id.len().min(10)]
}
pub mod plot;
