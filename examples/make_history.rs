//! Builds a repository with N run commits for the comparison benchmark (scripts/bench/bench-compare.sh):
//! records written by exp's own record writer, predictions.bin and history.csv as `exp run`
//! writes them, an annotated run tag per commit. With `--dvc`, the equivalent DVC repository:
//! `params.yaml` and `metrics.json` declared in `dvc.yaml`, one commit per run.
//!
//! Usage: cargo run --release --example make_history -- DIR N [--dvc]

use std::path::Path;

use exp::eval::encode_predictions;
use exp::record::RunRecord;
use git2::{Repository, Signature, Time};

const TEMPLATE: &str = include_str!("../tests/fixtures/record.toml");
const EXAMPLES: usize = 10_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: make_history DIR N [--dvc]");
        std::process::exit(2);
    }
    let dir = Path::new(&args[1]);
    let n: usize = args[2].parse().expect("N");
    let dvc = args.get(3).is_some_and(|a| a == "--dvc");
    let repo = Repository::init(dir).expect("init");
    let labels: Vec<u32> = (0..EXAMPLES as u32).map(|i| (i * 7 + 3) % 10).collect();
    let mut parent: Option<git2::Oid> = None;
    for i in 0..n {
        // A run: learning rate and seed vary, accuracy drifts up, predictions differ a little.
        let lr = [1e-3, 5e-4, 2e-3, 1e-4][i % 4];
        let seed = (i / 4 + 1) as u64;
        let right = |j: usize| (j * 31 + i * 17) % 1000 < 960 + (i * 30 / n.max(1));
        let predictions: Vec<u32> = labels
            .iter()
            .enumerate()
            .map(|(j, &l)| if right(j) { l } else { (l + 1) % 10 })
            .collect();
        let correct = (0..EXAMPLES).filter(|&j| right(j)).count();
        let accuracy = correct as f64 / EXAMPLES as f64;
        let loss = 0.2 - accuracy / 10.0 + (i % 7) as f64 / 1000.0;
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        if dvc {
            files.push((
                "dvc.yaml".into(),
                b"params:\n  - params.yaml\nmetrics:\n  - metrics.json\n".to_vec(),
            ));
            files.push((".dvc/config".into(), Vec::new()));
            files.push((".dvcignore".into(), Vec::new()));
            files.push(("params.yaml".into(), format!("train:\n  lr: {lr}\n  seed: {seed}\n  batch_size: 64\n  epochs: 1\nmodel:\n  name: seed-cnn\n").into_bytes()));
            files.push((
                "metrics.json".into(),
                format!(
                    "{{\"accuracy\": {accuracy}, \"loss\": {loss}, \"macro_f1\": {}}}\n",
                    accuracy - 0.001
                )
                .into_bytes(),
            ));
        } else {
            let mut record = RunRecord::from_toml(TEMPLATE).expect("template");
            record.run.experiment = "mnist-cnn".into();
            record.run.branch = "feature/bench".into();
            record.run.seed = seed;
            record.params.train.lr = lr;
            record.params.train.seed = seed;
            record.data.test.examples = EXAMPLES;
            record.metrics.values.insert("accuracy".into(), accuracy);
            record.metrics.values.insert("loss".into(), loss);
            record
                .metrics
                .values
                .insert("macro_f1".into(), accuracy - 0.001);
            let history = format!(
                "epoch,lr,train_loss,val_loss,val_accuracy,eval_loss,eval_accuracy,seconds\n1,{lr},{},,,{loss},{accuracy},60.0\n",
                loss * 2.0
            );
            files.push((
                "experiments/mnist-cnn.toml".into(),
                b"[model]\nname = \"seed-cnn\"\n".to_vec(),
            ));
            files.push((
                "experiments/mnist-cnn/metrics.toml".into(),
                record.to_toml().expect("record").into_bytes(),
            ));
            files.push((
                "experiments/mnist-cnn/predictions.bin".into(),
                encode_predictions(&labels, &predictions, 10),
            ));
            files.push((
                "experiments/mnist-cnn/history.csv".into(),
                history.into_bytes(),
            ));
        }
        let mut index = git2::Index::new().expect("index");
        if let Some(p) = parent {
            index
                .read_tree(&repo.find_commit(p).unwrap().tree().unwrap())
                .unwrap();
        }
        for (path, content) in &files {
            let blob = repo.blob(content).unwrap();
            let entry = git2::IndexEntry {
                ctime: git2::IndexTime::new(0, 0),
                mtime: git2::IndexTime::new(0, 0),
                dev: 0,
                ino: 0,
                mode: 0o100644,
                uid: 0,
                gid: 0,
                file_size: content.len() as u32,
                id: blob,
                flags: path.len() as u16,
                flags_extended: 0,
                path: path.as_bytes().to_vec(),
            };
            index.add(&entry).unwrap();
        }
        let tree = repo.find_tree(index.write_tree_to(&repo).unwrap()).unwrap();
        let sig = Signature::new(
            "bench",
            "bench@localhost",
            &Time::new(1_700_000_000 + i as i64 * 60, 0),
        )
        .unwrap();
        let parents: Vec<git2::Commit> = parent
            .map(|p| repo.find_commit(p).unwrap())
            .into_iter()
            .collect();
        let parent_refs: Vec<&git2::Commit> = parents.iter().collect();
        let commit = repo
            .commit(
                Some("refs/heads/main"),
                &sig,
                &sig,
                &format!("exp run mnist-cnn: accuracy={accuracy:.4}"),
                &tree,
                &parent_refs,
            )
            .unwrap();
        if !dvc {
            let object = repo.find_object(commit, None).unwrap();
            repo.tag(
                &format!("run/feature-bench/mnist-cnn/{}", i + 1),
                &object,
                &sig,
                "run",
                false,
            )
            .unwrap();
        }
        parent = Some(commit);
    }
    repo.set_head("refs/heads/main").unwrap();
    repo.checkout_head(Some(git2::build::CheckoutBuilder::new().force()))
        .unwrap();
    println!("{} commits in {}", n, dir.display());
}
