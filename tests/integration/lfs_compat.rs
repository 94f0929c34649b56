//! exp's LFS filter against the real git-lfs, byte for byte (docs/design.md §6). In a team where
//! some clone with git-lfs and some with exp's filter, every input the two clean differently
//! becomes two blobs for one file; every pointer they smudge differently, two work trees.
//!
//! A corpus of pointer-like inputs (the spec's edge cases and the variants git-lfs's decoder
//! accepts or refuses) and seeded mutations of a valid pointer go through both filters:
//! `git lfs clean`/`exp lfs clean` and `git lfs smudge`/`exp lfs smudge` one file at a time, and
//! `git add` of all of them at once through each filter's long-running process.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use rand::{Rng, SeedableRng};

use crate::common::*;

/// The object every valid pointer of the corpus names; both stores hold it.
const CONTENT: &[u8] = b"weights for the differential test against git-lfs\n";
/// Mutations of the valid pointer (the seed makes them the same on every run).
const MUTATIONS: usize = 200;
const SEED: u64 = 15;

fn canonical(oid: &str, size: u64) -> Vec<u8> {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n")
        .into_bytes()
}

/// Hand-written inputs: what git-lfs's decoder (lfs/pointer.go) reads as a pointer — which its
/// clean passes through unchanged — and what it reads as content.
fn corpus(oid: &str, size: u64) -> Vec<(String, Vec<u8>)> {
    let p = String::from_utf8(canonical(oid, size)).unwrap();
    let other = "b".repeat(64);
    let v = "version https://git-lfs.github.com/spec/v1";
    let ext = |n: u8, name: &str| format!("ext-{n}-{name} sha256:{other}\n");
    let lines = |ls: &[&str]| ls.iter().map(|l| format!("{l}\n")).collect::<String>();
    let o = format!("oid sha256:{oid}");
    let s = format!("size {size}");
    let mut c: Vec<(&str, Vec<u8>)> = vec![
        ("canonical", p.clone().into_bytes()),
        ("crlf", p.replace('\n', "\r\n").into_bytes()),
        ("no final newline", p.trim_end().as_bytes().to_vec()),
        ("trailing blank line", format!("{p}\n").into_bytes()),
        ("leading blank line", format!("\n{p}").into_bytes()),
        (
            "blank line inside",
            p.replacen('\n', "\n\n", 1).into_bytes(),
        ),
        ("leading spaces", format!("  \t{p}").into_bytes()),
        ("trailing spaces", format!("{p}   ").into_bytes()),
        ("trailing nbsp", format!("{p}\u{a0}").into_bytes()),
        (
            "trailing ideographic space",
            format!("{p}\u{3000}").into_bytes(),
        ),
        ("trailing cr cr", p.replace('\n', "\r\r\n").into_bytes()),
        ("mixed line ends", p.replacen('\n', "\r\n", 2).into_bytes()),
        (
            "hawser version",
            p.replace("git-lfs.github.com", "hawser.github.com")
                .into_bytes(),
        ),
        (
            "git-media version",
            p.replace(
                "https://git-lfs.github.com/spec/v1",
                "http://git-media.io/v/2",
            )
            .into_bytes(),
        ),
        ("v2 version", p.replace("spec/v1", "spec/v2").into_bytes()),
        (
            "version with trailing space",
            p.replacen("v1\n", "v1 \n", 1).into_bytes(),
        ),
        (
            "version double space",
            p.replacen("version ", "version  ", 1).into_bytes(),
        ),
        (
            "tab separator",
            p.replacen("size ", "size\t", 1).into_bytes(),
        ),
        (
            "unknown key after size",
            format!("{p}foo bar\n").into_bytes(),
        ),
        (
            "unknown key inside",
            lines(&[v, "foo bar", &o, &s]).into_bytes(),
        ),
        (
            "unknown key before version",
            lines(&["a b", v, &o, &s]).into_bytes(),
        ),
        (
            "extension",
            format!("{v}\n{}{o}\n{s}\n", ext(0, "foo")).into_bytes(),
        ),
        (
            "extension before version",
            format!("{}{p}", ext(0, "foo")).into_bytes(),
        ),
        (
            "extension after oid",
            format!("{v}\n{o}\n{}{s}\n", ext(0, "foo")).into_bytes(),
        ),
        (
            "extension after size",
            format!("{p}{}", ext(0, "foo")).into_bytes(),
        ),
        (
            "extensions out of order",
            format!("{v}\n{}{}{o}\n{s}\n", ext(2, "b"), ext(1, "a")).into_bytes(),
        ),
        (
            "extensions same priority",
            format!("{v}\n{}{}{o}\n{s}\n", ext(1, "b"), ext(1, "a")).into_bytes(),
        ),
        (
            "extension twice",
            format!("{v}\n{}{}{o}\n{s}\n", ext(1, "a"), ext(1, "a")).into_bytes(),
        ),
        (
            "extension bad then good",
            format!("{v}\next-1-a sha256:zz\n{}{o}\n{s}\n", ext(1, "a")).into_bytes(),
        ),
        (
            "extension two-digit priority",
            format!("{v}\n{}{o}\n{s}\n", ext(10, "a")).into_bytes(),
        ),
        (
            "extension odd name",
            format!("{v}\n{}{o}\n{s}\n", ext(3, "a-b!c")).into_bytes(),
        ),
        (
            "extension non-utf8 name",
            [
                format!("{v}\next-4-a").into_bytes(),
                vec![0xff, 0xfe],
                format!(" sha256:{other}\n{o}\n{s}\n").into_bytes(),
            ]
            .concat(),
        ),
        (
            "extension bad oid",
            format!("{v}\next-0-foo md5:{other}\n{o}\n{s}\n").into_bytes(),
        ),
        ("size before oid", lines(&[v, &s, &o]).into_bytes()),
        ("no size", lines(&[v, &o]).into_bytes()),
        ("no oid", lines(&[v, &s]).into_bytes()),
        ("no version", lines(&[&o, &s]).into_bytes()),
        ("version twice", lines(&[v, v, &o, &s]).into_bytes()),
        ("size twice", lines(&[v, &o, &s, &s]).into_bytes()),
        (
            "uppercase oid",
            p.replace(oid, &oid.to_uppercase()).into_bytes(),
        ),
        ("short oid", p.replace(oid, &oid[..63]).into_bytes()),
        ("md5 oid", p.replace("sha256:", "md5:").into_bytes()),
        ("oid without type", p.replace("sha256:", "").into_bytes()),
        (
            "path in oid",
            p.replace(oid, "../../../../etc/passwd").into_bytes(),
        ),
        (
            "size plus",
            p.replace(&s, &format!("size +{size}")).into_bytes(),
        ),
        ("size minus zero", p.replace(&s, "size -0").into_bytes()),
        ("size negative", p.replace(&s, "size -1").into_bytes()),
        (
            "size leading zeros",
            p.replace(&s, &format!("size 000{size}")).into_bytes(),
        ),
        ("size hex", p.replace(&s, "size 0x10").into_bytes()),
        ("size underscore", p.replace(&s, "size 1_0").into_bytes()),
        ("size empty", p.replace(&s, "size ").into_bytes()),
        // Not i64::MAX: git-lfs 3.3.0 panics (humanize.FormatBytes) smudging a size of about 10^18
        // or more; the parser's unit test has the limit.
        (
            "size 17 digits",
            p.replace(&s, "size 99999999999999999").into_bytes(),
        ),
        (
            "size over i64",
            p.replace(&s, "size 9223372036854775808").into_bytes(),
        ),
        (
            "size over u64",
            p.replace(&s, "size 18446744073709551616").into_bytes(),
        ),
        ("size zero", p.replace(&s, "size 0").into_bytes()),
        ("size zero, other oid", canonical(&other, 0)),
        (
            "size mismatch",
            p.replace(&s, &format!("size {}", size + 1)).into_bytes(),
        ),
        ("missing object", canonical(&other, 12)),
        (
            "missing object, crlf",
            String::from_utf8(canonical(&other, 12))
                .unwrap()
                .replace('\n', "\r\n")
                .into_bytes(),
        ),
        ("nul after", [p.as_bytes(), b"\0"].concat()),
        (
            "non-utf8 after",
            [p.as_bytes(), &[0xff, 0xfe, b'\n']].concat(),
        ),
        (
            "non-utf8 before",
            [&[0xc3, 0x28][..], p.as_bytes()].concat(),
        ),
        (
            "key with space before",
            p.replacen("oid", " oid", 1).into_bytes(),
        ),
        ("empty", Vec::new()),
        ("only newlines", b"\n\n\n".to_vec()),
        ("only spaces", b"   ".to_vec()),
        ("text", b"hello\n".to_vec()),
        ("version line only", format!("{v}\n").into_bytes()),
    ];
    // The size limit: git-lfs reads at most 1023 bytes as a pointer (blobSizeCutoff 1024).
    // Its smudge decodes the first 1024 bytes, whatever follows them.
    for total in [1022usize, 1023, 1024, 1025, 4096] {
        let mut padded = p.clone().into_bytes();
        padded.resize(total, b'\n');
        c.push(("padded to size", padded));
    }
    let mut tail = p.clone().into_bytes();
    tail.resize(1024, b' ');
    tail.extend_from_slice(b"anything after the first 1024 bytes");
    c.push(("pointer, then more after 1024 bytes", tail));
    let mut noise = rand_chacha::ChaCha8Rng::seed_from_u64(SEED ^ 0xa5);
    for len in [1, 100, 1023, 5000] {
        let mut bytes = vec![0u8; len];
        noise.fill(&mut bytes[..]);
        c.push(("random bytes", bytes));
    }
    c.into_iter()
        .map(|(name, bytes)| (format!("{name} ({} bytes)", bytes.len()), bytes))
        .collect()
}

/// Seeded mutations of `pointer`: byte flips and replacements, insertions and deletions of
/// the bytes a pointer parser cares about, lines dropped, duplicated, swapped, appended.
fn mutations(pointer: &[u8], oid: &str) -> Vec<(String, Vec<u8>)> {
    const BYTES: &[u8] = b" \r\n\t\0\x0b\x0c:+-0a\xff\xc2\xa0";
    let extra_lines = [
        format!("ext-0-foo sha256:{oid}"),
        "foo bar".to_string(),
        String::new(),
        "\r".to_string(),
        "size 1".to_string(),
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(SEED);
    let mut out = Vec::new();
    for i in 0..MUTATIONS {
        let mut bytes = pointer.to_vec();
        let mut what = Vec::new();
        for _ in 0..rng.random_range(1..=3) {
            let at = rng.random_range(0..=bytes.len());
            let mut lines: Vec<Vec<u8>> =
                bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
            let line = rng.random_range(0..lines.len());
            match rng.random_range(0..9) {
                0 if at < bytes.len() => {
                    bytes[at] ^= 1 << rng.random_range(0..8);
                    what.push(format!("flip@{at}"));
                }
                1 if at < bytes.len() => {
                    bytes[at] = BYTES[rng.random_range(0..BYTES.len())];
                    what.push(format!("replace@{at}"));
                }
                2 => {
                    bytes.insert(at, BYTES[rng.random_range(0..BYTES.len())]);
                    what.push(format!("insert@{at}"));
                }
                3 if at < bytes.len() => {
                    bytes.remove(at);
                    what.push(format!("delete@{at}"));
                }
                4 => {
                    lines.remove(line);
                    bytes = lines.join(&b'\n');
                    what.push(format!("drop line {line}"));
                }
                5 => {
                    lines.insert(line, lines[line].clone());
                    bytes = lines.join(&b'\n');
                    what.push(format!("duplicate line {line}"));
                }
                6 if line + 1 < lines.len() => {
                    lines.swap(line, line + 1);
                    bytes = lines.join(&b'\n');
                    what.push(format!("swap lines {line}"));
                }
                7 => {
                    let l = &extra_lines[rng.random_range(0..extra_lines.len())];
                    lines.insert(line, l.clone().into_bytes());
                    bytes = lines.join(&b'\n');
                    what.push(format!("add line {l:?} at {line}"));
                }
                _ => {
                    bytes.truncate(at);
                    what.push(format!("truncate@{at}"));
                }
            }
        }
        out.push((format!("mutation {i}: {}", what.join(", ")), bytes));
    }
    out
}

/// `program ARGS` in `dir` with the test environment's variables (taken from the one
/// `Env::exp_cmd` sets, so git-lfs and exp see the same HOME, config and PATH), standard input
/// from `input`.
fn run_with_input(env: &Env, program: &str, dir: &Path, args: &[&str], input: &Path) -> Output {
    let template = env.exp_cmd(dir, &[]);
    let mut cmd = Command::new(program);
    cmd.current_dir(dir).args(args);
    for (key, value) in template.get_envs() {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    cmd.stdin(Stdio::from(std::fs::File::open(input).unwrap()));
    cmd.output().expect("run")
}

/// What a filter answered: its exit status and its output.
fn answer(out: &Output) -> (bool, Vec<u8>) {
    (out.status.success(), out.stdout.clone())
}

fn show(bytes: &[u8]) -> String {
    let shown: String = bytes
        .iter()
        .take(300)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    if bytes.len() > 300 {
        format!("\"{shown}\"… ({} bytes)", bytes.len())
    } else {
        format!("\"{shown}\"")
    }
}

#[test]
fn exp_filter_writes_what_git_lfs_writes() {
    let env = Env::new();
    let probe = env.git_out(env.tmp.path(), &["lfs", "version"]);
    assert!(
        probe.status.success(),
        "git-lfs is not installed, and this test compares exp's filter with it: run the tests with scripts/test.sh (it installs git-lfs): {}",
        describe(&probe)
    );
    let lfs = env.path("git-lfs");
    let ours = env.path("exp");
    for dir in [&lfs, &ours] {
        env.git(env.tmp.path(), &["init", "-q", dir.to_str().unwrap()]);
        std::fs::write(
            dir.join(".gitattributes"),
            "*.bin filter=lfs diff=lfs merge=lfs -text\n",
        )
        .unwrap();
    }
    env.git(&lfs, &["lfs", "install", "--local"]);
    // exp writes the pointer and goes on when an object is missing (docs/design.md §6); git-lfs
    // writes the same pointer, then exits 2 unless told to go on.
    env.git(&lfs, &["config", "lfs.skipdownloaderrors", "true"]);
    env.exp_ok(&ours, &["lfs", "install"]);
    assert!(env
        .git(&lfs, &["config", "filter.lfs.process"])
        .contains("git-lfs"));
    assert!(env
        .git(&ours, &["config", "filter.lfs.process"])
        .contains("exp lfs"));

    let inputs_dir = env.path("inputs");
    std::fs::create_dir_all(&inputs_dir).unwrap();
    let content = inputs_dir.join("content");
    std::fs::write(&content, CONTENT).unwrap();
    let stored = run_with_input(
        &env,
        "git",
        &lfs,
        &["lfs", "clean", "--", "w.bin"],
        &content,
    );
    let pointer = stored.stdout.clone();
    assert_eq!(
        answer(&stored),
        answer(&run_with_input(
            &env,
            "exp",
            &ours,
            &["lfs", "clean", "--", "w.bin"],
            &content
        ))
    );
    let oid = sha256_hex(CONTENT);
    assert_eq!(pointer, canonical(&oid, CONTENT.len() as u64));
    let object = |repo: &Path| {
        repo.join(".git/lfs/objects")
            .join(&oid[0..2])
            .join(&oid[2..4])
            .join(&oid)
    };
    assert_eq!(std::fs::read(object(&lfs)).unwrap(), CONTENT);
    assert_eq!(std::fs::read(object(&ours)).unwrap(), CONTENT);

    let mut inputs = corpus(&oid, CONTENT.len() as u64);
    inputs.extend(mutations(&pointer, &oid));

    let mut differences: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut differ =
        |mode: &'static str, name: &str, theirs: &(bool, Vec<u8>), mine: &(bool, Vec<u8>)| {
            if theirs != mine {
                differences.entry(mode).or_default().push(format!(
                    "{name}: git-lfs {} {}, exp {} {}",
                    if theirs.0 { "ok" } else { "failed" },
                    show(&theirs.1),
                    if mine.0 { "ok" } else { "failed" },
                    show(&mine.1)
                ));
            }
        };
    for (i, (name, bytes)) in inputs.iter().enumerate() {
        let input = inputs_dir.join(format!("{i:03}.bin"));
        std::fs::write(&input, bytes).unwrap();
        let file = format!("{i:03}.bin");
        let args = ["lfs", "clean", "--", file.as_str()];
        let theirs = answer(&run_with_input(&env, "git", &lfs, &args, &input));
        let mine = answer(&run_with_input(&env, "exp", &ours, &args, &input));
        differ("clean", name, &theirs, &mine);

        // git-lfs deletes an object whose size disagrees with the pointer it smudges: put it
        // back before every smudge.
        std::fs::write(object(&lfs), CONTENT).unwrap();
        let args = ["lfs", "smudge", "--", file.as_str()];
        let theirs = answer(&run_with_input(&env, "git", &lfs, &args, &input));
        let mine = answer(&run_with_input(&env, "exp", &ours, &args, &input));
        differ("smudge", name, &theirs, &mine);

        for repo in [&lfs, &ours] {
            std::fs::create_dir_all(repo.join("c")).unwrap();
            std::fs::write(repo.join("c").join(&file), bytes).unwrap();
        }
    }
    // All at once through each filter's long-running process, as `git add` runs it.
    let staged = |repo: &Path| -> BTreeMap<String, String> {
        env.git(repo, &["add", "c"]);
        env.git(repo, &["ls-files", "-s", "c"])
            .lines()
            .map(|l| {
                let (meta, path) = l.split_once('\t').unwrap();
                (
                    path.to_string(),
                    meta.split(' ').nth(1).unwrap().to_string(),
                )
            })
            .collect()
    };
    let (theirs, mine) = (staged(&lfs), staged(&ours));
    assert_eq!(theirs.len(), inputs.len());
    for (i, (name, _)) in inputs.iter().enumerate() {
        let path = format!("c/{i:03}.bin");
        let blob = |repo: &Path, map: &BTreeMap<String, String>| {
            let id = map.get(&path).cloned().unwrap_or_default();
            let out = env.git_out(repo, &["cat-file", "blob", &id]);
            (out.status.success(), out.stdout)
        };
        if theirs.get(&path) != mine.get(&path) {
            differ("git add", name, &blob(&lfs, &theirs), &blob(&ours, &mine));
        }
    }

    let total: usize = differences.values().map(Vec::len).sum();
    eprintln!(
        "compared {} inputs ({} hand-written, {MUTATIONS} mutations) with git-lfs: clean, smudge and `git add`; {total} differences",
        inputs.len(),
        inputs.len() - MUTATIONS
    );
    let differing: std::collections::BTreeSet<&str> = differences
        .values()
        .flatten()
        .map(|d| d.split(": git-lfs").next().unwrap())
        .collect();
    assert!(
        differences.is_empty(),
        "exp's filter and git-lfs differ on {} of {} inputs:\n{}",
        differing.len(),
        inputs.len(),
        differences
            .iter()
            .map(|(mode, ds)| format!("{mode} ({}):\n  {}", ds.len(), ds.join("\n  ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
