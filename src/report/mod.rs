//! Output for people: tables, charts and the HTML report, built from the same data structures
//! that `--json` serialises.

use std::fmt;
use std::io::Write;

/// A table for people: left-aligned columns separated by three spaces (tabwriter's elastic
/// tabstops), a rule under the header, no wrapping, so output is the same on every terminal
/// and in golden tests, and a 1,000-row `exp log` costs about a millisecond to lay out.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// A table with these column headers.
pub fn table(header: Vec<String>) -> Table {
    Table {
        header,
        rows: Vec::new(),
    }
}

impl Table {
    /// Appends a row (one cell per column).
    pub fn add_row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut tw = tabwriter::TabWriter::new(Vec::new()).padding(3);
        let line = |cells: &[String]| {
            let mut l = cells
                .iter()
                .map(|c| c.replace(['\t', '\n'], " "))
                .collect::<Vec<_>>()
                .join("\t");
            l.push('\n');
            l
        };
        let rule: Vec<String> = self
            .header
            .iter()
            .map(|h| "-".repeat(h.chars().count()))
            .collect();
        let mut text = line(&self.header) + &line(&rule);
        for row in &self.rows {
            text.push_str(&line(row));
        }
        tw.write_all(text.as_bytes()).map_err(|_| fmt::Error)?;
        let bytes = tw.into_inner().map_err(|_| fmt::Error)?;
        let out = String::from_utf8(bytes).map_err(|_| fmt::Error)?;
        // tabwriter pads the last column too; trailing blanks help no one.
        for l in out.lines() {
            writeln!(f, "{}", l.trim_end())?;
        }
        Ok(())
    }
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
    prefix(id, 10)
}

/// The first `n` characters of `s` (all of it when shorter), never splitting a character.
pub fn prefix(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// A revision as people read it: a full hex id shortened, any other name as given.
pub fn rev_name(rev: &str) -> String {
    if rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()) {
        short(rev).to_string()
    } else {
        rev.to_string()
    }
}
pub mod curves;
pub mod page;
