//! Transfer learning: `init.from` a run tag, `init.freeze`, the re-initialised head, the
//! parent in the record, `exp lineage`, and the errors a user can fix.

use std::path::Path;

use crate::common::*;

/// The tensors of the safetensors file at `path`, as raw bytes by name.
fn tensors(path: &Path) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| (name, (view.shape().to_vec(), view.data().to_vec())))
        .collect()
}

fn lfs_object(dir: &Path, oid: &str) -> std::path::PathBuf {
    dir.join(".git/lfs/objects")
        .join(&oid[0..2])
        .join(&oid[2..4])
        .join(oid)
}

#[test]
fn transfer_freeze_and_lineage() {
    let env = Env::new();
    let dir = env.init_repo("transfer");
    env.git(&dir, &["switch", "-q", "-c", "feature/transfer", "develop"]);
    let out = quick_run(&env, &dir, "mnist-cnn", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let parent_tag = "run/feature-transfer/mnist-cnn/1";
    let parent = record_at(&env, &dir, parent_tag, "mnist-cnn");
    let parent_commit = env.git(&dir, &["rev-parse", &format!("{parent_tag}^{{commit}}")]);
    let parent_weights = tensors(&lfs_object(&dir, &parent.model.oid));

    // Runs on three of the ten digits from `from`, with `extra` overrides.
    let child_run = |from: &str, extra: &[&str]| {
        let from = format!("init.from={from}");
        let mut args = vec!["--set", &from, "--set", "data.classes=[0,1,2]"];
        for e in extra {
            args.extend(["--set", e]);
        }
        let out = quick_run(&env, &dir, "mnist-cnn", &args);
        assert!(out.status.success(), "{}", describe(&out));
    };
    // The convolution frozen: the head is new, the conv stays.
    child_run(parent_tag, &["init.freeze=[\"conv.\"]"]);
    let child = record_at(&env, &dir, "HEAD", "mnist-cnn");
    let init = child.init.as_ref().expect("the record names the parent");
    assert_eq!(init.commit, parent_commit.trim());
    assert_eq!(init.run_id, parent.run.id);
    assert_eq!(init.tag.as_deref(), Some(parent_tag));
    assert_eq!(init.experiment, "mnist-cnn");
    assert_eq!(init.tensor_hash, parent.model.tensor_hash);
    assert_eq!(init.reinitialized, ["fc.bias", "fc.weight"]);
    assert_eq!(init.frozen, ["conv.bias", "conv.weight"]);
    let child_weights = tensors(&dir.join("experiments/mnist-cnn/model.safetensors"));
    for name in ["conv.weight", "conv.bias"] {
        assert_eq!(
            child_weights[name], parent_weights[name],
            "{name} changed although frozen"
        );
    }
    assert_eq!(child_weights["fc.weight"].0, vec![3, 5408]);

    // The same without freezing: training moves the convolution (so the check above can fail).
    child_run(parent_tag, &[]);
    let unfrozen = tensors(&dir.join("experiments/mnist-cnn/model.safetensors"));
    assert_ne!(unfrozen["conv.weight"], parent_weights["conv.weight"]);
    let r = record_at(&env, &dir, "HEAD", "mnist-cnn");
    assert!(r.init.as_ref().unwrap().frozen.is_empty());
    assert_ne!(r.run.id, child.run.id);

    // A grandchild of the frozen child: lineage walks back through both.
    child_run("run/feature-transfer/mnist-cnn/2", &[]);
    let grandchild = record_at(&env, &dir, "HEAD", "mnist-cnn");
    assert!(grandchild.init.as_ref().unwrap().reinitialized.is_empty());
    let json = env.exp_ok(&dir, &["lineage", "--json"]);
    let chain: serde_json::Value = serde_json::from_str(&json).unwrap();
    let tags: Vec<&str> = chain
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["tag"].as_str().unwrap())
        .collect();
    assert_eq!(
        tags,
        [
            "run/feature-transfer/mnist-cnn/4",
            "run/feature-transfer/mnist-cnn/2",
            parent_tag
        ]
    );
    assert_eq!(chain[1]["frozen"][0], "conv.bias");
    let text = env.exp_ok(&dir, &["lineage", "run/feature-transfer/mnist-cnn/2"]);
    assert!(
        text.contains("parent 1") && text.contains(parent_tag),
        "{text}"
    );
}

#[test]
fn transfer_errors_say_what_to_do() {
    let env = Env::new();
    let dir = env.init_repo("transfer-errors");
    env.git(&dir, &["switch", "-q", "-c", "feature/errors", "develop"]);
    let out = quick_run(&env, &dir, "mnist-cnn", &["--set", "data.train_limit=200"]);
    assert!(out.status.success(), "{}", describe(&out));
    let tag = "run/feature-errors/mnist-cnn/1";
    let expect_error = |sets: &[&str], needles: &[&str]| {
        let mut args = vec!["--set", "data.train_limit=200"];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = quick_run(&env, &dir, "mnist-cnn", &args);
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        for n in needles {
            assert!(stderr(&out).contains(n), "{n:?} not in {}", describe(&out));
        }
    };
    expect_error(&["init.from=no-such-rev"], &["init.from", "no-such-rev"]);
    expect_error(&["init.freeze=[\"conv.\"]"], &["init.freeze", "init.from"]);
    expect_error(
        &[&format!("init.from={tag}"), "init.freeze=[\"conv1.\"]"],
        &["init.freeze", "conv1."],
    );
    expect_error(
        &[&format!("init.from={tag}"), "model.name=mlp"],
        &["seed-cnn", "mlp"],
    );
    // The weights object gone from the store: a hint to fetch it, nothing trained.
    let oid = record_at(&env, &dir, tag, "mnist-cnn").model.oid;
    let object = std::fs::read(lfs_object(&dir, &oid)).unwrap();
    std::fs::remove_file(lfs_object(&dir, &oid)).unwrap();
    expect_error(&[&format!("init.from={tag}")], &[&oid, "git lfs fetch"]);

    // With the object on the default remote's store, the run fetches it (verified) and trains.
    let remote = env.path("transfer-remote.git");
    env.git(
        env.tmp.path(),
        &["init", "-q", "--bare", remote.to_str().unwrap()],
    );
    env.git(&dir, &["remote", "add", "origin", remote.to_str().unwrap()]);
    let remote_object = remote
        .join("lfs/objects")
        .join(&oid[0..2])
        .join(&oid[2..4])
        .join(&oid);
    std::fs::create_dir_all(remote_object.parent().unwrap()).unwrap();
    std::fs::write(&remote_object, &object).unwrap();
    let out = quick_run(
        &env,
        &dir,
        "mnist-cnn",
        &[
            "--set",
            "data.train_limit=200",
            "--set",
            &format!("init.from={tag}"),
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(std::fs::read(lfs_object(&dir, &oid)).unwrap(), object);
}
