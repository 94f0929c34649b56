//! The library's modules import only downward (docs/design.md §1). This test reads the paths
//! each module names (`use crate::…`, `use super::…`, inline `crate::…` paths) and fails on any
//! cycle, so none comes back unnoticed. It is a text scan, not a compiler: tools that resolve
//! Rust properly (rust-analyzer) take too long to build on these machines.
//!
//! Two rules, the ones the layer diagram states:
//! - the top-level modules (`crate::X`) form no cycle;
//! - inside a folder module, its files (siblings) form no cycle. The folder's `mod.rs` is its
//!   facade: it holds the types the files share and may call them, so edges between a file and
//!   its own `mod.rs` do not count.
//!
//! Test-only code (`#[cfg(test)]` modules, inline or in their own files) is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path below the crate root, e.g. `["lfs", "filter"]`.
type ModPath = Vec<String>;

struct SourceFile {
    module: ModPath,
    text: String,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("read src/").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file
        .strip_prefix(src)
        .expect("under src/")
        .with_extension("");
    let mut parts: ModPath = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The text with line comments removed and `#[cfg(test)]` items cut out; the names of child
/// modules declared test-only (`#[cfg(test)] mod x;`) go to `test_children`.
fn production_code(text: &str, test_children: &mut Vec<String>) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let code = line.split("//").next().unwrap_or("");
        if code.trim() == "#[cfg(test)]" {
            // Skip the next item: a `mod x;` line, or everything up to its closing brace.
            let Some(item) = lines.next() else { break };
            let item_code = item.split("//").next().unwrap_or("").trim().to_string();
            if let Some(name) = item_code
                .trim_start_matches("pub(crate) ")
                .strip_prefix("mod ")
                .and_then(|rest| rest.strip_suffix(';'))
            {
                test_children.push(name.trim().to_string());
                continue;
            }
            let mut depth =
                item_code.matches('{').count() as i64 - item_code.matches('}').count() as i64;
            let mut opened = depth > 0;
            while !(opened && depth <= 0) {
                let Some(next) = lines.next() else { break };
                let next = next.split("//").next().unwrap_or("");
                depth += next.matches('{').count() as i64 - next.matches('}').count() as i64;
                opened |= next.contains('{');
                if !opened && next.trim_end().ends_with(';') {
                    break; // a one-line item without a body
                }
            }
            continue;
        }
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand_braces(path: &str, out: &mut Vec<String>) {
    let Some(open) = path.find('{') else {
        out.push(path.to_string());
        return;
    };
    let close = path.rfind('}').unwrap_or(path.len());
    let (prefix, inner) = (path[..open].trim(), &path[open + 1..close]);
    let mut depth = 0;
    let mut start = 0;
    let mut items = Vec::new();
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    for item in items {
        let item = item.split(" as ").next().unwrap_or("").trim();
        if !item.is_empty() {
            expand_braces(&format!("{prefix}{item}"), out);
        }
    }
}

/// Every path the code names: `use` trees and inline `crate::`/`super::`/`self::` paths, as
/// segment lists (`["crate", "lfs", "pointer", "MAX_POINTER"]`).
fn named_paths(code: &str) -> Vec<Vec<String>> {
    let mut raw = Vec::new();
    // `use` statements, which may span lines and hold brace groups and bare child names.
    let flat: String = code.split_whitespace().collect::<Vec<_>>().join(" ");
    for statement in flat.split(';') {
        let statement = statement.trim();
        let body = statement
            .split_once("use ")
            .filter(|(before, _)| {
                let b = before.trim();
                b.is_empty()
                    || b.ends_with('}')
                    || b.ends_with(']')
                    || b.starts_with("pub")
                    || b.ends_with('{')
            })
            .map(|(_, body)| body);
        if let Some(body) = body {
            expand_braces(body, &mut raw);
        }
    }
    // Inline paths anywhere in the code.
    for anchor in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(anchor) {
            let start = from + i;
            from = start + anchor.len();
            if code[..start]
                .chars()
                .next_back()
                .is_some_and(|c| is_ident_char(c) || c == '$')
            {
                continue;
            }
            let rest = &code[start..];
            let end = rest
                .find(|c: char| !(is_ident_char(c) || c == ':'))
                .unwrap_or(rest.len());
            raw.push(rest[..end].trim_end_matches(':').to_string());
        }
    }
    raw.into_iter()
        .map(|p| {
            p.split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// The module a path names: the longest prefix that is a module of the crate.
fn resolve(
    current: &ModPath,
    path: &[String],
    modules: &BTreeSet<ModPath>,
    reexports: &BTreeMap<ModPath, ModPath>,
) -> Option<ModPath> {
    let first = path.first()?;
    let mut full: ModPath = match first.as_str() {
        "crate" => Vec::new(),
        "self" | "super" => current.clone(),
        _ => {
            // A bare path in a `use` names a child of the current module (2018 edition) or
            // an external crate; only the former matters here.
            let mut child = current.clone();
            child.push(first.clone());
            if !modules.contains(&child) {
                return None;
            }
            current.clone()
        }
    };
    let mut rest = path;
    if first == "crate" {
        rest = &path[1..];
    } else {
        while let Some(seg) = rest.first() {
            match seg.as_str() {
                "self" => rest = &rest[1..],
                "super" => {
                    full.pop();
                    rest = &rest[1..];
                }
                _ => break,
            }
        }
    }
    full.extend(rest.iter().cloned());
    // A facade's re-export (`crate::Error` from lib.rs, `super::LfsStore` from lfs/mod.rs)
    // counts as the module the item comes from.
    if let Some(module) = (1..=full.len())
        .rev()
        .find_map(|n| reexports.get(&full[..n]))
    {
        return Some(module.clone());
    }
    (0..=full.len())
        .rev()
        .map(|n| full[..n].to_vec())
        .find(|candidate| modules.contains(candidate))
}

/// The library's module graph: module -> modules it names.
fn module_graph() -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut sources = Vec::new();
    let mut test_only: BTreeSet<ModPath> = BTreeSet::new();
    let mut reexports: BTreeMap<ModPath, ModPath> = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        let text = std::fs::read_to_string(file).expect("read a source file");
        let is_facade = module == ["lib"] || file.file_name().is_some_and(|n| n == "mod.rs");
        let facade: ModPath = if module == ["lib"] {
            Vec::new()
        } else {
            module.clone()
        };
        if is_facade {
            // A facade's `pub use child::…::Item;` makes `facade::Item` name `child`.
            for line in text.lines() {
                let Some(used) = line.trim().strip_prefix("pub use ") else {
                    continue;
                };
                for path in named_paths(&format!("use {used}")) {
                    let path: Vec<String> = path.into_iter().filter(|s| s != "self").collect();
                    let (child, name) = match &path[..] {
                        [first, .., name] if first == "crate" && path.len() >= 3 => {
                            (path[1..path.len() - 1].to_vec(), name.clone())
                        }
                        [first, .., name] if first != "crate" && first != "super" => {
                            let mut child = facade.clone();
                            child.extend(path[..path.len() - 1].iter().cloned());
                            (child, name.clone())
                        }
                        _ => continue,
                    };
                    let mut key = facade.clone();
                    key.push(name);
                    reexports.insert(key, child);
                }
            }
        }
        if module == ["lib"] {
            continue;
        }
        // The binary (main.rs and its `cli/`) is above the library.
        if matches!(module.first().map(String::as_str), Some("main" | "cli")) {
            continue;
        }
        let mut test_children = Vec::new();
        let code = production_code(&text, &mut test_children);
        for child in test_children {
            let mut path = module.clone();
            path.push(child);
            test_only.insert(path);
        }
        sources.push((file.clone(), SourceFile { module, text: code }));
    }
    sources.retain(|(_, s)| {
        !test_only.contains(&s.module) && !s.module.ends_with(&["layering_tests".to_string()])
    });
    let modules: BTreeSet<ModPath> = sources.iter().map(|(_, s)| s.module.clone()).collect();
    let mut graph: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (_, source) in &sources {
        let entry = graph.entry(source.module.clone()).or_default();
        for path in named_paths(&source.text) {
            if let Some(target) = resolve(&source.module, &path, &modules, &reexports) {
                if target != source.module && !target.is_empty() {
                    entry.insert(target);
                }
            }
        }
    }
    graph
}

/// A cycle among `nodes` under `edges`, if there is one (depth-first search).
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(node, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// The cycles the two rules find, one line each.
fn cycles(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<String> {
    let mut found = Vec::new();
    // Rule 1: top-level modules.
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, targets) in graph {
        for to in targets {
            if from[0] != to[0] {
                top.entry(from[0].clone())
                    .or_default()
                    .insert(to[0].clone());
            }
        }
    }
    if let Some(cycle) = find_cycle(&top) {
        found.push(format!("top-level modules: {}", cycle.join(" -> ")));
    }
    // Rule 2: the files of each folder module.
    let folders: BTreeSet<ModPath> = graph
        .keys()
        .filter(|m| m.len() > 1)
        .map(|m| m[..m.len() - 1].to_vec())
        .collect();
    for folder in folders {
        let depth = folder.len();
        let mut siblings: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, targets) in graph {
            if from.len() <= depth || from[..depth] != folder[..] {
                continue;
            }
            for to in targets {
                if to.len() > depth && to[..depth] == folder[..] && from[depth] != to[depth] {
                    siblings
                        .entry(from[depth].clone())
                        .or_default()
                        .insert(to[depth].clone());
                }
            }
        }
        if let Some(cycle) = find_cycle(&siblings) {
            found.push(format!("in {}/: {}", folder.join("/"), cycle.join(" -> ")));
        }
    }
    found
}

#[test]
fn library_modules_form_no_cycle() {
    let graph = module_graph();
    // The scan sees the modules it must: a broken scan would find no edges and pass.
    let names = |m: &[&str]| m.iter().map(|s| s.to_string()).collect::<ModPath>();
    assert!(
        graph[&names(&["run"])].contains(&names(&["train"])),
        "{graph:?}"
    );
    assert!(graph[&names(&["lfs", "filter"])].contains(&names(&["lfs", "store"])));
    assert!(graph[&names(&["compare", "diff"])].contains(&names(&["record"])));
    // `crate::ExitCode`, `crate::Error` count as the modules lib.rs re-exports them from.
    assert!(graph[&names(&["error"])].contains(&names(&["exit"])));
    let found = cycles(&graph);
    assert!(found.is_empty(), "module cycles:\n  {}", found.join("\n  "));
}

#[test]
fn the_cycle_check_finds_cycles() {
    let m = |s: &str| s.split("::").map(str::to_string).collect::<ModPath>();
    let graph: BTreeMap<ModPath, BTreeSet<ModPath>> = [
        (m("a"), [m("b::x")].into()),
        (m("b::x"), [m("a")].into()),
        (m("c::p"), [m("c::q")].into()),
        (m("c::q"), [m("c::p"), m("c")].into()),
        (m("c"), [m("c::p")].into()),
    ]
    .into();
    assert_eq!(
        cycles(&graph),
        ["top-level modules: a -> b -> a", "in c/: p -> q -> p"]
    );
    // A folder's mod.rs and its files may name each other.
    let facade: BTreeMap<ModPath, BTreeSet<ModPath>> =
        [(m("c"), [m("c::p")].into()), (m("c::p"), [m("c")].into())].into();
    assert!(cycles(&facade).is_empty());
}

#[test]
fn paths_are_read_from_use_trees_and_code() {
    let code = "use crate::lfs::{pointer::MAX_POINTER, store::{LfsStore, Oid as O}};\n\
                use super::remote;\nfn f() { crate::record::layout::run_dir(\"x\"); }\n";
    let paths: Vec<String> = named_paths(code).iter().map(|p| p.join("::")).collect();
    for want in [
        "crate::lfs::pointer::MAX_POINTER",
        "crate::lfs::store::LfsStore",
        "crate::lfs::store::Oid",
        "super::remote",
        "crate::record::layout::run_dir",
    ] {
        assert!(paths.iter().any(|p| p == want), "{want} not in {paths:?}");
    }
    let mut children = Vec::new();
    let kept = production_code(
        "use crate::a;\n#[cfg(test)]\nmod tests {\n    use crate::b;\n}\n#[cfg(test)]\nmod helper;\n",
        &mut children,
    );
    assert!(
        kept.contains("crate::a") && !kept.contains("crate::b"),
        "{kept}"
    );
    assert_eq!(children, ["helper"]);
}
