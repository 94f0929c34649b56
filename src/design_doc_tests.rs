//! docs/design.md stays true where a test can tell: every "docs/design.md §n" a comment points
//! at exists, and every environment variable the library or binary reads is in its §10 table.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn design() -> String {
    std::fs::read_to_string(Path::new(ROOT).join("docs/design.md")).expect("read docs/design.md")
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("read dir").path();
        if path.is_dir() {
            files_under(&path, out);
        } else if path.extension().is_none_or(|e| e != "pyc") {
            out.push(path);
        }
    }
}

/// The section numbers of the `## n. Title` headings.
fn sections(design: &str) -> BTreeSet<u32> {
    design
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .filter_map(|l| l.split_once('.'))
        .filter_map(|(n, _)| n.parse().ok())
        .collect()
}

/// Every `docs/design.md §n` in `text`, as n.
fn references(text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("design.md §") {
        let digits: String = text[i + "design.md §".len()..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        if let Ok(n) = digits.parse() {
            out.push(n);
        }
    }
    out
}

/// The `EXP_…` and `CANDLE_…` names passed to `env::var`/`var_os` or set as defaults in `text`.
fn env_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices('"') {
        let rest = &text[i + 1..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        let quoted = rest[name.len()..].starts_with('"');
        let prefixed = ["EXP_", "CANDLE_"]
            .iter()
            .any(|p| name.strip_prefix(p).is_some_and(|rest| !rest.is_empty()));
        if quoted && prefixed {
            out.insert(name);
        }
    }
    out
}

#[test]
fn every_design_reference_names_a_section() {
    let known = sections(&design());
    assert!(known.len() >= 12, "docs/design.md headings: {known:?}");
    let mut files = Vec::new();
    for dir in ["src", "tests", "hooks", "scripts", "docs", ".ci"] {
        files_under(&Path::new(ROOT).join(dir), &mut files);
    }
    files.push(Path::new(ROOT).join("README.md"));
    let mut checked = 0;
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for n in references(&text) {
            checked += 1;
            assert!(
                known.contains(&n),
                "{} points at docs/design.md §{n}, which has no such section",
                file.display()
            );
        }
    }
    assert!(
        checked > 20,
        "only {checked} references found: is the scan broken?"
    );
}

#[test]
fn every_environment_variable_read_is_documented() {
    let design = design();
    let table = design
        .split("## 10.")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("docs/design.md §10");
    let mut files = Vec::new();
    files_under(&Path::new(ROOT).join("src"), &mut files);
    let mut names = BTreeSet::new();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "rs"))
    {
        if file.ends_with("design_doc_tests.rs") {
            continue;
        }
        names.extend(env_names(
            &std::fs::read_to_string(file).expect("read source"),
        ));
    }
    assert!(names.contains("EXP_DATA"), "scan found {names:?}");
    for name in &names {
        assert!(
            table.contains(&format!("`{name}")),
            "{name} is read by the code but not in docs/design.md §10"
        );
    }
}

#[test]
fn the_scanners_find_what_they_should() {
    assert_eq!(
        references("see docs/design.md §4 and docs/design.md §12."),
        [4, 12]
    );
    assert_eq!(
        env_names(r#"std::env::var("EXP_DATA") and "EXP_" and "PATH" "CANDLE_X""#),
        ["CANDLE_X", "EXP_DATA"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}
