//! Git LFS without git-lfs (exp's own filter), interop with git-lfs, remotes (file system and a
//! real Git LFS server on loopback), and a 2 GB file through the filter in bounded memory.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use crate::common::*;

fn weights(dir: &Path) -> PathBuf {
    dir.join("experiments/mnist-cnn/model.safetensors")
}

fn backdate(path: &Path) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
}

/// With git-lfs absent: init installs exp's filter; a run leaves `git status` clean; the stat
/// cache spares re-hashing; `git add -A` stages pointers; raw weights are refused at commit;
/// clones get their weights through exp's filter (smudge fetches from the remote) or `exp
/// pull`; fsck moves a corrupt object aside; prune deletes only what nothing references.
#[test]
fn exp_filter_without_git_lfs() {
    let env = Env::new();
    let nolfs = env.without_git_lfs();
    let dir = env.path("repo");
    nolfs.ok("exp", env.tmp.path(), &["init", dir.to_str().unwrap()]);
    assert_eq!(
        nolfs
            .ok("git", &dir, &["config", "filter.lfs.process"])
            .trim(),
        "exp lfs filter-process"
    );
    let mut args = vec!["run", "mnist-cnn"];
    args.extend_from_slice(QUICK);
    nolfs.ok("exp", &dir, &args);
    let status = |extra: &[&str]| {
        let mut args = vec!["--no-optional-locks", "status", "--porcelain"];
        args.extend_from_slice(extra);
        let mut cmd = nolfs.cmd("git", &dir, &args);
        cmd.env("EXP_LFS_TRACE", "1");
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr(&out),
        )
    };
    assert_eq!(status(&[]).0, "", "git status after exp run");

    // Stale index entries (a touch): the first status hashes and caches, the next ones only
    // confirm the bytes.
    std::thread::sleep(Duration::from_millis(200));
    let touched = std::fs::File::options()
        .write(true)
        .open(weights(&dir))
        .unwrap();
    touched.set_modified(SystemTime::now()).unwrap();
    drop(touched);
    std::thread::sleep(Duration::from_millis(300));
    let (out, trace) = status(&[]);
    assert_eq!(out, "");
    assert!(trace.contains("hashed and cached"), "{trace}");
    let (out, trace) = status(&[]);
    assert_eq!(out, "");
    assert!(trace.contains("stat cache hit"), "{trace}");

    // `git add -A` stages a pointer for a new weights file; the object is stored.
    let mut extra = std::fs::read(weights(&dir)).unwrap();
    extra.extend_from_slice(b"fine-tuned");
    std::fs::write(dir.join("experiments/extra.safetensors"), &extra).unwrap();
    nolfs.ok("git", &dir, &["add", "-A"]);
    let staged = nolfs.ok(
        "git",
        &dir,
        &["cat-file", "-p", ":experiments/extra.safetensors"],
    );
    let pointer = exp::lfs::LfsPointer::parse(staged.as_bytes()).expect("a pointer is staged");
    assert_eq!(pointer.oid.as_str(), sha256_hex(&extra));
    nolfs.ok("git", &dir, &["commit", "-q", "-m", "extra weights"]);

    // With no filter at all, the pre-commit hook refuses raw weights, with a hint.
    nolfs.ok("exp", &dir, &["hooks", "install"]);
    nolfs.ok("exp", &dir, &["lfs", "uninstall"]);
    std::fs::write(dir.join("raw.safetensors"), &extra[..5000]).unwrap();
    nolfs.ok("git", &dir, &["add", "raw.safetensors"]);
    let refused = nolfs.out("git", &dir, &["commit", "-q", "-m", "raw"]);
    assert!(!refused.status.success(), "{}", describe(&refused));
    assert!(
        stderr(&refused).contains("raw content") && stderr(&refused).contains("exp lfs install"),
        "{}",
        describe(&refused)
    );
    // `git commit -a` commits the index Git prepares in `.git/index.lock` (GIT_INDEX_FILE):
    // a tracked weights file overwritten with raw content is refused there too.
    std::fs::write(dir.join("experiments/extra.safetensors"), &extra[..7000]).unwrap();
    let refused = nolfs.out("git", &dir, &["commit", "-q", "-a", "-m", "raw via -a"]);
    assert!(!refused.status.success(), "{}", describe(&refused));
    assert!(
        stderr(&refused).contains("experiments/extra.safetensors"),
        "{}",
        describe(&refused)
    );
    nolfs.ok(
        "git",
        &dir,
        &["checkout", "--", "experiments/extra.safetensors"],
    );
    // An empty LFS-tracked file is the empty blob, as with git-lfs: not raw content.
    nolfs.ok("git", &dir, &["reset", "-q", "raw.safetensors"]);
    std::fs::write(dir.join("empty.safetensors"), b"").unwrap();
    nolfs.ok("git", &dir, &["add", "empty.safetensors"]);
    nolfs.ok(
        "git",
        &dir,
        &["commit", "-q", "-m", "an empty weights file"],
    );
    nolfs.ok("exp", &dir, &["lfs", "install"]);
    assert_eq!(
        nolfs
            .ok("git", &dir, &["rev-parse", "HEAD:empty.safetensors"])
            .trim(),
        "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    );
    nolfs.ok("exp", &dir, &["lfs", "fsck"]);
    nolfs.ok("git", &dir, &["add", "raw.safetensors"]);
    nolfs.ok("git", &dir, &["add", "--renormalize", "raw.safetensors"]);
    nolfs.ok("git", &dir, &["commit", "-q", "-m", "weights as a pointer"]);
    assert!(exp::lfs::LfsPointer::parse(
        nolfs
            .ok("git", &dir, &["cat-file", "-p", "HEAD:raw.safetensors"])
            .as_bytes()
    )
    .is_ok());

    // With exp's pre-commit hook installed, exp's filter names new objects without waiting for
    // the disk, and the hook syncs them before the commit names them. An object a crash left
    // short is refused at commit, with a hint that stores it again.
    let fresh: Vec<u8> = extra.iter().rev().copied().collect();
    std::fs::write(dir.join("fresh.safetensors"), &fresh).unwrap();
    // Not racily fresh, or Git would clean the file again at commit (which stores the object
    // again: the damage would heal before the hook could see it).
    backdate(&dir.join("fresh.safetensors"));
    let mut add = nolfs.cmd("git", &dir, &["add", "fresh.safetensors"]);
    add.env("EXP_LFS_TRACE", "1");
    let added = add.output().unwrap();
    assert!(added.status.success(), "{}", describe(&added));
    assert!(
        stderr(&added).contains("new objects synced at commit"),
        "{}",
        describe(&added)
    );
    let object = dir
        .join(".git/lfs/objects")
        .join(&sha256_hex(&fresh)[0..2])
        .join(&sha256_hex(&fresh)[2..4])
        .join(sha256_hex(&fresh));
    std::fs::write(&object, &fresh[..100]).unwrap();
    let refused = nolfs.out("git", &dir, &["commit", "-q", "-m", "short object"]);
    assert!(!refused.status.success(), "{}", describe(&refused));
    for needle in [
        "fresh.safetensors",
        "100 of",
        "git add --renormalize fresh.safetensors",
    ] {
        assert!(stderr(&refused).contains(needle), "{}", describe(&refused));
    }
    nolfs.ok("git", &dir, &["add", "--renormalize", "fresh.safetensors"]);
    nolfs.ok("git", &dir, &["commit", "-q", "-m", "fresh weights"]);
    assert_eq!(std::fs::read(&object).unwrap(), fresh);
    // An object that is not here at all (as in a clone that skipped smudging) is a warning:
    // the commit may name weights another copy holds; `exp push` checks before sending.
    nolfs.ok(
        "git",
        &dir,
        &["mv", "fresh.safetensors", "moved.safetensors"],
    );
    std::fs::remove_file(&object).unwrap();
    let warned = nolfs.out("git", &dir, &["commit", "-q", "-m", "moved"]);
    assert!(warned.status.success(), "{}", describe(&warned));
    assert!(
        stderr(&warned).contains("moved.safetensors") && stderr(&warned).contains("not in"),
        "{}",
        describe(&warned)
    );
    std::fs::write(&object, &fresh).unwrap();

    // A clone through exp's filter: smudge fetches each object from the origin's store.
    let branch = nolfs.ok("git", &dir, &["branch", "--show-current"]);
    let branch = branch.trim();
    let clone = env.path("clone");
    git_clone(
        &nolfs,
        &dir,
        &clone,
        branch,
        &[
            "filter.lfs.process=exp lfs filter-process",
            "filter.lfs.required=true",
        ],
    );
    assert_eq!(
        std::fs::read(weights(&clone)).unwrap(),
        std::fs::read(weights(&dir)).unwrap()
    );
    assert_eq!(
        std::fs::read(clone.join("experiments/extra.safetensors")).unwrap(),
        extra
    );
    assert_eq!(nolfs.ok("git", &clone, &["status", "--porcelain"]), "");

    // A plain clone gets pointers; `exp init` + `exp pull` bring the weights.
    let plain = env.path("plain");
    git_clone(&nolfs, &dir, &plain, branch, &[]);
    assert!(exp::lfs::LfsPointer::parse(&std::fs::read(weights(&plain)).unwrap()).is_ok());
    let listed = nolfs.ok("exp", &plain, &["lfs", "ls"]);
    assert!(listed.contains("missing"), "{listed}");
    nolfs.ok("exp", &plain, &["init", "."]);
    let pulled = nolfs.ok("exp", &plain, &["pull"]);
    assert!(
        pulled.contains("restored experiments/mnist-cnn/model.safetensors"),
        "{pulled}"
    );
    assert_eq!(
        std::fs::read(weights(&plain)).unwrap(),
        std::fs::read(weights(&dir)).unwrap()
    );
    assert_eq!(nolfs.ok("git", &plain, &["status", "--porcelain"]), "");
    nolfs.ok("exp", &plain, &["lfs", "fsck"]);

    // fsck: a corrupt object is reported and moved aside, never deleted.
    let oid = sha256_hex(&extra);
    let object = plain
        .join(".git/lfs/objects")
        .join(&oid[0..2])
        .join(&oid[2..4])
        .join(&oid);
    std::fs::write(&object, b"bit rot").unwrap();
    let fsck = nolfs.out("exp", &plain, &["lfs", "fsck"]);
    assert_eq!(fsck.status.code(), Some(1), "{}", describe(&fsck));
    assert!(String::from_utf8_lossy(&fsck.stdout).contains(&format!("corrupt object {oid}")));
    assert_eq!(
        std::fs::read(plain.join(".git/lfs/bad").join(&oid)).unwrap(),
        b"bit rot"
    );
    assert!(!object.exists());

    // prune: an object nothing references goes (after the grace period); referenced ones stay.
    let mut stray = nolfs.cmd("exp", &dir, &["lfs", "clean"]);
    let mut child = stray
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&extra[..20_000])
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stray = exp::lfs::LfsPointer::parse(&out.stdout).unwrap();
    let stray_path = dir
        .join(".git/lfs/objects")
        .join(&stray.oid.as_str()[0..2])
        .join(&stray.oid.as_str()[2..4])
        .join(stray.oid.as_str());
    // Objects only a stash, only a reflog (a commit reset away) or only another work tree's
    // index reaches are kept, whichever work tree prune runs in.
    let store_bytes = |bytes: &[u8], name: &str, repo: &Path| {
        std::fs::write(repo.join(name), bytes).unwrap();
        nolfs.ok("git", repo, &["add", name]);
        let staged = nolfs.ok("git", repo, &["cat-file", "-p", &format!(":{name}")]);
        exp::lfs::LfsPointer::parse(staged.as_bytes()).unwrap().oid
    };
    let stashed = store_bytes(&extra[..30_000], "stashed.safetensors", &dir);
    nolfs.ok("git", &dir, &["stash", "-q"]);
    let reset_away = store_bytes(&extra[..40_000], "reset.safetensors", &dir);
    nolfs.ok("git", &dir, &["commit", "-q", "-m", "to be reset away"]);
    nolfs.ok("git", &dir, &["reset", "-q", "--hard", "HEAD~1"]);
    let linked = env.path("linked");
    nolfs.ok(
        "git",
        &dir,
        &[
            "worktree",
            "add",
            "-q",
            "--detach",
            linked.to_str().unwrap(),
        ],
    );
    let in_other_index = store_bytes(&extra[..50_000], "staged.safetensors", &linked);
    // Temp files of writers that died (a kill before the object took its name): an old one is
    // removed, a fresh one (a writer at work) kept.
    let tmp = dir.join(".git/lfs/tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("exp-object-dead"), b"half an object").unwrap();
    std::fs::write(tmp.join("exp-object-live"), b"being written").unwrap();
    backdate(&tmp.join("exp-object-dead"));
    let young = nolfs.ok("exp", &dir, &["lfs", "prune", "--dry-run"]);
    assert!(young.contains("would delete 0 object(s)"), "{young}");
    assert!(
        young.contains("would delete stale temp file lfs/tmp/exp-object-dead"),
        "{young}"
    );
    assert!(!young.contains("exp-object-live"), "{young}");
    for object in lfs_objects(&dir) {
        backdate(&object);
    }
    let dry = nolfs.ok("exp", &dir, &["lfs", "prune", "--dry-run"]);
    assert!(
        dry.contains(stray.oid.as_str()) && dry.contains("would delete 1 object(s)"),
        "{dry}"
    );
    assert!(stray_path.exists());
    // Run from the linked work tree: the main one's HEAD, index and reflogs still count.
    let pruned = nolfs.ok("exp", &linked, &["lfs", "prune"]);
    assert!(pruned.contains("deleted 1 object(s)"), "{pruned}");
    assert!(!tmp.join("exp-object-dead").exists() && tmp.join("exp-object-live").exists());
    std::fs::remove_file(tmp.join("exp-object-live")).unwrap();
    assert!(!stray_path.exists());
    for kept in [&stashed, &reset_away, &in_other_index] {
        let path = dir
            .join(".git/lfs/objects")
            .join(&kept.as_str()[0..2])
            .join(&kept.as_str()[2..4])
            .join(kept.as_str());
        assert!(path.exists(), "pruned {kept}, which is still reachable");
    }
    nolfs.ok("exp", &dir, &["lfs", "fsck"]);
}

/// git-lfs and exp's filter on the same repositories, both ways.
#[test]
fn interop_with_git_lfs() {
    let env = Env::new();
    // exp's filter writes; git-lfs reads.
    let dir = env.init_repo("exp-writes");
    env.exp_ok(&dir, &["lfs", "install"]);
    assert!(env
        .git(&dir, &["config", "filter.lfs.process"])
        .contains("lfs filter-process"));
    let out = quick_run(&env, &dir, "mnist-cnn", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    env.git(&dir, &["lfs", "fsck"]);
    assert!(env
        .git(&dir, &["lfs", "ls-files"])
        .contains("experiments/mnist-cnn/model.safetensors"));
    let said = env.exp_ok(&dir, &["lfs", "uninstall"]);
    assert!(said.contains("git-lfs now handles"), "{said}");
    assert_eq!(env.git(&dir, &["status", "--porcelain"]), "");
    let original = std::fs::read(weights(&dir)).unwrap();
    std::fs::remove_file(weights(&dir)).unwrap();
    env.git(
        &dir,
        &["checkout", "--", "experiments/mnist-cnn/model.safetensors"],
    );
    assert_eq!(
        std::fs::read(weights(&dir)).unwrap(),
        original,
        "git-lfs smudge"
    );

    // With git-lfs in charge, exp push and exp pull delegate to it.
    let remote = env.path("exp-writes-remote.git");
    env.git(
        env.tmp.path(),
        &["init", "-q", "--bare", remote.to_str().unwrap()],
    );
    env.git(&dir, &["remote", "add", "origin", remote.to_str().unwrap()]);
    let pushed = env.exp_ok(&dir, &["push"]);
    assert!(pushed.contains("pushed by git-lfs"), "{pushed}");
    let oid = sha256_hex(&original);
    assert!(remote
        .join("lfs/objects")
        .join(&oid[0..2])
        .join(&oid[2..4])
        .join(&oid)
        .is_file());
    let branch = env.git(&dir, &["branch", "--show-current"]);
    let clone = env.path("exp-writes-clone");
    env.git(
        env.tmp.path(),
        &[
            "clone",
            "-q",
            "-b",
            branch.trim(),
            remote.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    env.git(&clone, &["lfs", "install", "--local"]);
    let pulled = env.exp_ok(&clone, &["pull"]);
    assert!(pulled.contains("pulled by git-lfs"), "{pulled}");
    assert_eq!(std::fs::read(weights(&clone)).unwrap(), original);

    // git-lfs writes; exp's filter reads.
    let other = env.init_repo("lfs-writes");
    assert!(env
        .git(&other, &["config", "filter.lfs.process"])
        .contains("git-lfs"));
    std::fs::create_dir_all(other.join("w")).unwrap();
    let mut bytes = original.clone();
    bytes.reverse();
    std::fs::write(other.join("w/model.safetensors"), &bytes).unwrap();
    env.git(&other, &["add", "w/model.safetensors"]);
    env.git(&other, &["commit", "-q", "-m", "git-lfs weights"]);
    let listed = env.exp_ok(&other, &["lfs", "ls"]);
    assert!(
        listed.contains("present") && listed.contains("w/model.safetensors"),
        "{listed}"
    );
    env.exp_ok(&other, &["lfs", "install"]);
    assert_eq!(env.git(&other, &["status", "--porcelain"]), "");
    std::fs::remove_file(other.join("w/model.safetensors")).unwrap();
    env.git(&other, &["checkout", "--", "w/model.safetensors"]);
    assert_eq!(
        std::fs::read(other.join("w/model.safetensors")).unwrap(),
        bytes,
        "exp smudge"
    );
    env.exp_ok(&other, &["lfs", "fsck"]);
}

/// A real Git LFS server (giftless, installed by scripts/lfs-server.sh) on loopback, stopped
/// when the test ends however it ends.
pub struct LfsServer {
    dir: PathBuf,
    pub endpoint: String,
}

impl LfsServer {
    pub fn start(dir: PathBuf) -> LfsServer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lfs-server.sh");
        let install = std::process::Command::new(&script)
            .arg("install")
            .output()
            .unwrap();
        assert!(
            install.status.success(),
            "lfs-server.sh install: {}",
            describe(&install)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::create_dir_all(&dir).unwrap();
        let started = std::process::Command::new(&script)
            .args(["start", dir.to_str().unwrap(), &port.to_string()])
            .output()
            .unwrap();
        assert!(
            started.status.success(),
            "lfs-server.sh start: {}",
            describe(&started)
        );
        LfsServer {
            dir,
            endpoint: format!("http://127.0.0.1:{port}/org/repo"),
        }
    }

    pub fn has(&self, oid: &str) -> bool {
        self.dir.join("lfs-storage/org/repo").join(oid).is_file()
    }
}

impl Drop for LfsServer {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lfs-server.sh");
        let _ = std::process::Command::new(script)
            .args(["stop", self.dir.to_str().unwrap()])
            .output();
    }
}

/// Without git-lfs, through the batch API: a plain `git push` uploads via the pre-push hook,
/// `exp push` uploads and confirms before updating refs, a clone through exp's filter and
/// `exp pull` download and verify.
#[test]
fn push_and_pull_through_an_lfs_server() {
    let env = Env::new();
    let server = LfsServer::start(env.path("lfs-server"));
    let nolfs = env.without_git_lfs();
    let dir = env.path("repo");
    nolfs.ok("exp", env.tmp.path(), &["init", dir.to_str().unwrap()]);
    let mut args = vec!["run", "mnist-cnn"];
    args.extend_from_slice(QUICK);
    nolfs.ok("exp", &dir, &args);
    let first = record_at(&env, &dir, "HEAD", "mnist-cnn").model.oid;
    let remote = env.path("remote.git");
    nolfs.ok(
        "git",
        env.tmp.path(),
        &["init", "-q", "--bare", remote.to_str().unwrap()],
    );
    nolfs.ok(
        "git",
        &dir,
        &["remote", "add", "origin", remote.to_str().unwrap()],
    );
    nolfs.ok("git", &dir, &["config", "lfs.url", &server.endpoint]);
    // A pre-push hook of the user's own: kept as pre-push.local, it must not replace the upload.
    let hooks = dir.join(".git/hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    std::fs::write(hooks.join("pre-push"), "#!/bin/sh\necho lint ok >&2\n").unwrap();
    nolfs.ok("chmod", &dir, &["+x", ".git/hooks/pre-push"]);
    nolfs.ok("exp", &dir, &["hooks", "install"]);
    assert!(hooks.join("pre-push.local").is_file());
    let branch = nolfs.ok("git", &dir, &["branch", "--show-current"]);
    let branch = branch.trim();
    nolfs.ok("git", &dir, &["push", "-q", "origin", branch]);
    assert!(
        server.has(&first),
        "plain git push did not upload through the pre-push hook"
    );

    // A second run, pushed with exp push (objects first, then the branch and the run tag).
    let mut args = vec!["run", "mnist-cnn", "--set", "train.seed=2"];
    args.extend_from_slice(QUICK);
    nolfs.ok("exp", &dir, &args);
    let second = record_at(&env, &dir, "HEAD", "mnist-cnn").model.oid;
    let pushed = nolfs.ok("exp", &dir, &["push"]);
    assert!(pushed.contains("1 uploaded and confirmed"), "{pushed}");
    assert!(pushed.contains("refs/tags/run/"), "{pushed}");
    assert!(server.has(&second));
    let tags = nolfs.ok("git", &remote, &["tag"]);
    assert_eq!(
        tags.lines().filter(|t| t.starts_with("run/")).count(),
        2,
        "{tags}"
    );

    // A clone through exp's filter downloads from the server during checkout.
    let clone = env.path("clone");
    let lfs_url = format!("lfs.url={}", server.endpoint);
    git_clone(
        &nolfs,
        &remote,
        &clone,
        branch,
        &[
            &lfs_url,
            "filter.lfs.process=exp lfs filter-process",
            "filter.lfs.required=true",
        ],
    );
    assert_eq!(sha256_hex(&std::fs::read(weights(&clone)).unwrap()), second);

    // A plain clone, then exp pull.
    let plain = env.path("plain");
    git_clone(&nolfs, &remote, &plain, branch, &[]);
    nolfs.ok("exp", &plain, &["init", "."]);
    nolfs.ok("git", &plain, &["config", "lfs.url", &server.endpoint]);
    let pulled = nolfs.ok("exp", &plain, &["pull"]);
    assert!(pulled.contains("1 LFS object(s) downloaded"), "{pulled}");
    assert_eq!(sha256_hex(&std::fs::read(weights(&plain)).unwrap()), second);
    assert_eq!(nolfs.ok("git", &plain, &["status", "--porcelain"]), "");
}

/// `git clone -q -b BRANCH SOURCE DEST` with `-c` settings for the clone (as exp's filter
/// needs before the checkout), git-lfs absent.
fn git_clone(nolfs: &NoLfs, source: &Path, dest: &Path, branch: &str, config: &[&str]) {
    let mut args = vec!["clone", "-q"];
    for c in config {
        args.extend(["-c", c]);
    }
    args.extend([
        "-b",
        branch,
        source.to_str().unwrap(),
        dest.to_str().unwrap(),
    ]);
    nolfs.ok("git", dest.parent().unwrap(), &args);
}

/// Peak resident memory of a running process, from /proc (kB).
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A 2 GB weights file through `exp lfs clean` and `exp lfs smudge`, streamed through pipes:
/// the right oid, the same bytes back, and a peak RSS far below the file's size.
#[test]
fn two_gigabytes_through_clean_and_smudge_in_bounded_memory() {
    const SIZE: u64 = 2 << 30;
    let env = Env::new();
    let dir = env.init_repo("big");
    // Incompressible, reproducible content: a ChaCha block per MiB, varied by the MiB index.
    let mut block = vec![0u8; 1 << 20];
    {
        use rand::{RngCore, SeedableRng};
        rand_chacha::ChaCha8Rng::seed_from_u64(7).fill_bytes(&mut block);
    }
    let chunk = |i: u64, out: &mut Vec<u8>| {
        out.clear();
        out.extend_from_slice(&block);
        out[..8].copy_from_slice(&i.to_le_bytes());
    };

    let mut clean = env.exp_cmd(&dir, &["lfs", "clean", "--", "big.safetensors"]);
    let mut child = clean
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut buf = Vec::new();
    for i in 0..SIZE >> 20 {
        chunk(i, &mut buf);
        sha2::Digest::update(&mut hasher, &buf);
        stdin.write_all(&buf).unwrap();
    }
    let clean_peak = peak_rss_kb(child.id());
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let pointer = exp::lfs::LfsPointer::parse(&out.stdout).unwrap();
    let expected = hex::encode(sha2::Digest::finalize(hasher));
    assert_eq!(pointer.oid.as_str(), expected);
    assert_eq!(pointer.size, SIZE);

    let mut smudge = env.exp_cmd(&dir, &["lfs", "smudge", "--", "big.safetensors"]);
    let mut child = smudge
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut read_back = 0u64;
    let mut smudge_peak = 0;
    let mut i = 0u64;
    let mut got = vec![0u8; 1 << 20];
    loop {
        let n = read_full(&mut stdout, &mut got);
        if n == 0 {
            break;
        }
        chunk(i, &mut buf);
        assert!(got[..n] == buf[..n], "smudged bytes differ in MiB {i}");
        read_back += n as u64;
        i += 1;
        if i % 256 == 0 {
            smudge_peak = smudge_peak.max(peak_rss_kb(child.id()));
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success());
    assert_eq!(read_back, SIZE);
    eprintln!("peak RSS: clean {clean_peak} kB, smudge {smudge_peak} kB");
    assert!(
        clean_peak > 0 && clean_peak < 128 * 1024,
        "clean peak RSS {clean_peak} kB"
    );
    assert!(
        smudge_peak > 0 && smudge_peak < 128 * 1024,
        "smudge peak RSS {smudge_peak} kB"
    );
}

fn read_full(input: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]).unwrap() {
            0 => break,
            n => filled += n,
        }
    }
    filled
}
