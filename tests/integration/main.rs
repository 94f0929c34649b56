//! exp's integration tests: one binary (one link, one build), real Git repositories in temp
//! directories, real `git` and `git lfs`, real data from the data root (docs/design.md §3).

mod apply;
mod bench;
mod ci;
mod common;
mod compare;
mod data;
mod datasets;
mod export;
mod failures;
mod flow;
mod full_epoch;
mod gate;
mod image_folder;
mod init;
mod init_from;
mod lfs;
mod lfs_compat;
mod models;
mod recipes;
mod run;
mod safety;
mod serve;
mod sweep;
mod trust;

/// Every file in tests/integration/ is a module of this binary: a file nobody declared would
/// compile into nothing and its tests would never run.
#[test]
fn every_test_file_is_part_of_the_binary() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration");
    let main = std::fs::read_to_string(dir.join("main.rs")).unwrap();
    let declared: Vec<&str> = main
        .lines()
        .filter_map(|l| l.strip_prefix("mod ")?.strip_suffix(';'))
        .collect();
    let mut forgotten = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let Some(module) = name.strip_suffix(".rs") else {
            forgotten.push(name); // a folder or another file: not compiled either
            continue;
        };
        if module != "main" && !declared.contains(&module) {
            forgotten.push(name);
        }
    }
    assert!(
        forgotten.is_empty(),
        "not part of the integration test binary (add `mod NAME;` to tests/integration/main.rs): {forgotten:?}"
    );
    assert!(
        declared.contains(&"common") && declared.len() > 10,
        "{declared:?}"
    );
}
