//! `exp bench`: a trained run timed on the CPU, its test set evaluated as the run evaluated it,
//! and the options it refuses.

use crate::common::{assert_exit_2, record_at, Env};
use crate::export::trained;

#[test]
fn bench_times_f32_on_the_cpu_and_reproduces_the_record() {
    let env = Env::new();
    let (dir, tag) = trained(&env, "mnist-cnn", &[]);
    let record = record_at(&env, &dir, &tag, "mnist-cnn");
    let bench = ["--device", "cpu", "--batch-size", "1,4", "--seconds", "0.2"];

    let mut args = vec!["bench", tag.as_str()];
    args.extend_from_slice(&bench);
    let out = env.exp_ok(&dir, &args);
    assert!(
        out.contains(&format!("mnist-cnn — run {tag} (commit "))
            && out.contains("500 test examples")
            && out.contains("device: cpu (")
            && out.contains("threads, exp's CPU kernels)"),
        "{out}"
    );
    let rows: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| l.starts_with("f32 "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    let accuracy = format!("{:.4}", record.metrics.values["accuracy"]);
    for (row, batch) in rows.iter().zip(["1", "4"]) {
        // precision, batch, median, p90, img/s, ×f32 twice, accuracy, ≠ f32, ≠ record
        assert_eq!(row.len(), 10, "{out}");
        assert_eq!(row[1], batch, "{out}");
        assert!(row[2].parse::<f64>().unwrap() > 0.0, "{out}");
        assert_eq!(
            &row[5..],
            ["1.00", "1.00", accuracy.as_str(), "0", "0"],
            "{out}"
        );
    }

    // The revision defaults to HEAD, the run commit.
    let mut args = vec!["bench", "--json"];
    args.extend_from_slice(&bench);
    let json = env.exp_ok(&dir, &args);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["run"]["experiment"], "mnist-cnn", "{json}");
    assert_eq!(report["run"]["run_tag"], tag.as_str(), "{json}");
    assert_eq!(report["device"], "cpu", "{json}");
    assert_eq!(report["examples"], 500, "{json}");
    let precisions = report["precisions"].as_array().unwrap();
    assert_eq!(precisions.len(), 1, "{json}");
    let f32 = &precisions[0];
    assert_eq!(f32["precision"], "f32", "{json}");
    // The same CPU path as the run's own evaluation: the same accuracy, bit for bit.
    assert_eq!(
        f32["accuracy"].as_f64(),
        Some(record.metrics.values["accuracy"]),
        "{json}"
    );
    assert_eq!(f32["differing_vs_record"], 0, "{json}");
    assert_eq!(f32["differing_vs_f32"], 0, "{json}");
    let timings = f32["timings"].as_array().unwrap();
    assert_eq!(timings.len(), 2, "{json}");
    for (t, batch) in timings.iter().zip([1, 4]) {
        assert_eq!(t["batch_size"], batch, "{json}");
        assert!(t["batches"].as_u64().unwrap() >= 10, "{json}");
        let (median, p90) = (
            t["median_ms"].as_f64().unwrap(),
            t["p90_ms"].as_f64().unwrap(),
        );
        assert!(median > 0.0 && p90 >= median, "{json}");
        let throughput = t["images_per_second"].as_f64().unwrap();
        let expected =
            (batch * t["batches"].as_u64().unwrap()) as f64 / t["seconds"].as_f64().unwrap();
        assert!((throughput - expected).abs() <= 1e-9 * expected, "{json}");
        assert_eq!(t["median_vs_f32"], 1.0, "{json}");
    }

    // Half precision needs a GPU, as for exp serve; nonsense options exit 2 before any work.
    assert_exit_2(
        &env,
        &dir,
        &["bench", "--device", "cpu", "--precision", "f32,f16"],
        "--precision f16 needs a CUDA device; the model would run on cpu",
    );
    assert_exit_2(
        &env,
        &dir,
        &["bench", "--batch-size", "1,0"],
        "--batch-size 0: a batch holds at least one image",
    );
    assert_exit_2(&env, &dir, &["bench", "--seconds", "0"], "--seconds 0");
    assert_exit_2(&env, &dir, &["bench", "--precision", "f64"], "f64");
    assert_exit_2(
        &env,
        &dir,
        &["bench", "develop"],
        "no run record at develop",
    );
}
