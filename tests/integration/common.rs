//! Shared helpers: isolated Git environments, real `git` and `git lfs`, and the `exp` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// The data root the tests read: `$EXP_DATA`, else `~/.cache/exp/data` (docs/design.md §3).
pub fn data_root() -> PathBuf {
    match std::env::var_os("EXP_DATA").filter(|v| !v.is_empty()) {
        Some(v) => std::fs::canonicalize(&v).unwrap_or_else(|_| PathBuf::from(v)),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME or EXP_DATA"))
            .join(".cache/exp/data"),
    }
}

/// A temp directory with an isolated HOME (identity in ~/.gitconfig, read by git and libgit2
/// alike) and a work area.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub home: PathBuf,
    pub data: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(
            home.join(".gitconfig"),
            "[user]\n\tname = Test User\n\temail = test@example.com\n[init]\n\tdefaultBranch = master\n[protocol \"file\"]\n\tallow = always\n",
        )
        .unwrap();
        let data = data_root();
        assert!(
            data.join("mnist").is_dir(),
            "no MNIST under the data root {}: run the tests with scripts/test.sh (it fetches the data), or set EXP_DATA",
            data.display()
        );
        Env { tmp, home, data }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn apply(&self, cmd: &mut Command) {
        // The installed Git hooks call `exp` from PATH: the binary under test comes first.
        let bin = Path::new(env!("CARGO_BIN_EXE_exp"))
            .parent()
            .expect("bin dir");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![bin.to_path_buf()];
        dirs.extend(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(dirs).expect("PATH"));
        cmd.env("HOME", &self.home)
            .env("EXP_DATA", &self.data)
            .env("GIT_CONFIG_GLOBAL", self.home.join(".gitconfig"))
            // The machine's system gitconfig (which may name git-lfs, or set hooks) must not
            // leak into the tests: every repository says what it needs itself.
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE");
    }

    /// `program` in `dir`, with this environment (exp under test first on PATH).
    pub fn command(&self, program: &str, dir: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(dir);
        self.apply(&mut cmd);
        cmd
    }

    /// `exp ARGS` in `dir`.
    pub fn exp_cmd(&self, dir: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_exp"));
        cmd.current_dir(dir).args(args);
        self.apply(&mut cmd);
        cmd
    }

    pub fn exp(&self, dir: &Path, args: &[&str]) -> Output {
        self.exp_cmd(dir, args).output().expect("run exp")
    }

    /// `exp ARGS`, which must succeed.
    pub fn exp_ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.exp(dir, args);
        assert!(
            out.status.success(),
            "exp {args:?} failed: {}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `git ARGS` in `dir`, which must succeed; returns stdout.
    pub fn git(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.git_out(dir, args);
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn git_out(&self, dir: &Path, args: &[&str]) -> Output {
        let mut cmd = Command::new("git");
        cmd.current_dir(dir).args(args);
        self.apply(&mut cmd);
        cmd.output().expect("run git")
    }

    /// A fresh `exp init` repository at `rel`.
    pub fn init_repo(&self, rel: &str) -> PathBuf {
        let dir = self.path(rel);
        self.exp_ok(self.tmp.path(), &["init", dir.to_str().unwrap()]);
        dir
    }
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The `[data]` table of the real 20-image CIFAR-10 sample, used as training and test set.
pub const CIFAR_SAMPLE_DATA: &str = r#"[data]
format = "cifar10"
train_images = "cifar10-sample/test_batch_first20.bin"
test_images = ["cifar10-sample/test_batch_first20.bin"]
normalize = { mean = [0.4914, 0.4822, 0.4465], std = [0.2470, 0.2435, 0.2616] }
"#;

/// Overrides that make a seed-cnn run take a couple of seconds on real MNIST.
pub const QUICK: &[&str] = &[
    "--set",
    "data.train_limit=1000",
    "--set",
    "data.test_limit=500",
    "--quiet",
];

/// `exp run NAME` with the quick overrides plus `extra`.
pub fn quick_run(env: &Env, dir: &Path, name: &str, extra: &[&str]) -> Output {
    let mut args = vec!["run", name];
    args.extend_from_slice(QUICK);
    args.extend_from_slice(extra);
    env.exp(dir, &args)
}

/// Reads `experiments/NAME/metrics.toml` at a revision.
pub fn record_at(env: &Env, dir: &Path, rev: &str, name: &str) -> exp::record::RunRecord {
    let text = env.git(
        dir,
        &["show", &format!("{rev}:experiments/{name}/metrics.toml")],
    );
    exp::record::RunRecord::from_toml(&text).expect("parse record")
}

/// Files under `.git/lfs/objects`.
pub fn lfs_objects(dir: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&dir.join(".git/lfs/objects"), &mut out);
    out
}

/// Everything that a failed run must leave as it was.
#[derive(Debug, PartialEq, Eq)]
pub struct RepoState {
    pub head: String,
    pub branches: String,
    pub tags: String,
    pub status: String,
    pub lfs_objects: Vec<PathBuf>,
    pub lfs_tmp: usize,
}

pub fn repo_state(env: &Env, dir: &Path) -> RepoState {
    RepoState {
        head: env.git(dir, &["rev-parse", "--symbolic-full-name", "HEAD"])
            + &env.git(dir, &["rev-parse", "HEAD"]),
        branches: env.git(dir, &["for-each-ref", "refs/heads"]),
        tags: env.git(dir, &["tag", "-l"]),
        status: env.git(dir, &["status", "--porcelain", "--untracked-files=all"]),
        lfs_objects: lfs_objects(dir),
        lfs_tmp: std::fs::read_dir(dir.join(".git/lfs/tmp"))
            .map(|r| r.count())
            .unwrap_or(0),
    }
}

/// An environment where git-lfs is honestly absent (docs/design.md §6): no system gitconfig, an
/// identity-only global config, and a PATH of every tool of this machine except git-lfs, with
/// the exp under test first.
pub struct NoLfs<'e> {
    pub env: &'e Env,
    path: std::ffi::OsString,
    global: PathBuf,
}

impl Env {
    /// A folder `rel` of links to every program in this machine's system bin folders except
    /// those `leave_out` names: a PATH without one tool, whatever else is installed.
    pub fn bin_without(&self, rel: &str, leave_out: impl Fn(&str) -> bool) -> PathBuf {
        let bin = self.path(rel);
        std::fs::create_dir_all(&bin).unwrap();
        for dir in ["/usr/local/bin", "/usr/bin", "/bin"] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if leave_out(&name.to_string_lossy()) || bin.join(&name).exists() {
                    continue;
                }
                let _ = std::os::unix::fs::symlink(entry.path(), bin.join(&name));
            }
        }
        bin
    }

    pub fn without_git_lfs(&self) -> NoLfs<'_> {
        let bin = self.bin_without("nolfs-bin", |name| name.starts_with("git-lfs"));
        let exp_dir = Path::new(env!("CARGO_BIN_EXE_exp")).parent().unwrap();
        let path = std::env::join_paths([exp_dir, bin.as_path()]).unwrap();
        let global = self.path("nolfs.gitconfig");
        std::fs::write(
            &global,
            "[user]\n\tname = No LFS\n\temail = nolfs@example.com\n[protocol \"file\"]\n\tallow = always\n",
        )
        .unwrap();
        let probe = Command::new("git")
            .args(["lfs", "version"])
            .env("PATH", &path)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap();
        assert!(!probe.status.success(), "git-lfs is still reachable");
        NoLfs {
            env: self,
            path,
            global,
        }
    }
}

impl NoLfs<'_> {
    pub fn cmd(&self, program: &str, dir: &Path, args: &[&str]) -> Command {
        let program = if program == "exp" {
            env!("CARGO_BIN_EXE_exp")
        } else {
            program
        };
        let mut cmd = Command::new(program);
        cmd.current_dir(dir)
            .args(args)
            .env("PATH", &self.path)
            .env("HOME", &self.env.home)
            .env("EXP_DATA", &self.env.data)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", &self.global)
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE");
        cmd
    }

    pub fn out(&self, program: &str, dir: &Path, args: &[&str]) -> Output {
        self.cmd(program, dir, args).output().expect("run")
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, program: &str, dir: &Path, args: &[&str]) -> String {
        let out = self.out(program, dir, args);
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Reads a run's stderr (not a terminal) until its first epoch line: "loading data", then
/// "loaded data: …", then any periodic step lines, then "epoch 1/N: …", which it returns.
pub fn first_epoch_line(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    train_examples: usize,
) -> String {
    let mut next = || lines.next().expect("a progress line").unwrap();
    assert_eq!(next(), "loading data");
    let loaded = next();
    assert!(
        loaded.starts_with(&format!("loaded data: {train_examples} train, ")),
        "{loaded}"
    );
    loop {
        let line = next();
        if !(line.starts_with("epoch 1/") && line.contains(" step ")) {
            return line;
        }
    }
}

/// The DOM of the HTML file at `path` after a headless Chromium ran its scripts (Debian's
/// `chromium`, which scripts/test.sh installs): what a reader's browser shows.
pub fn rendered_dom(env: &Env, path: &Path) -> String {
    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .unwrap_or_else(|| {
            panic!("no headless Chromium (chromium) to render the report in: run the tests with scripts/test.sh, which installs it (Debian package chromium)")
        });
    let profile = env.path("chromium-profile");
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=20000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", path.display()))
        .env("HOME", &env.home)
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium failed: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A repository `rel` with a feature branch `branch` from develop holding one quick run of
/// mnist-cnn per entry of `train_limits` (run 1 first), checked out.
pub fn runs_on_a_feature_branch(
    env: &Env,
    rel: &str,
    branch: &str,
    train_limits: &[&str],
) -> PathBuf {
    let dir = env.init_repo(rel);
    env.git(&dir, &["switch", "-q", "-c", branch, "develop"]);
    for limit in train_limits {
        let out = quick_run(
            env,
            &dir,
            "mnist-cnn",
            &["--set", &format!("data.train_limit={limit}")],
        );
        assert!(out.status.success(), "{}", describe(&out));
    }
    dir
}

/// Asserts that a report rendered by [`rendered_dom`] drew `charts` charts and caught no script
/// error (the page writes errors into `#exp-errors`).
pub fn assert_report_drawn(dom: &str, charts: usize) {
    assert!(
        dom.contains("<pre id=\"exp-errors\" hidden=\"\"></pre>"),
        "script errors: {}",
        dom.split("exp-errors")
            .nth(1)
            .unwrap_or_default()
            .chars()
            .take(600)
            .collect::<String>()
    );
    assert!(
        dom.contains(&format!("data-charts-drawn=\"{charts}\"")),
        "not every one of the {charts} charts was drawn"
    );
}

/// Asserts that `exp ARGS` in `dir` exits 2 with `message` in its stderr.
pub fn assert_exit_2(env: &Env, dir: &Path, args: &[&str], message: &str) {
    let out = env.exp(dir, args);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
    assert!(
        stderr(&out).contains(message),
        "{args:?}: {}",
        describe(&out)
    );
}
