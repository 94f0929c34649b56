//! The one test that trains a full epoch: the README example as a user runs it.

use crate::common::*;

#[test]
fn mnist_cnn_full_epoch_reaches_tutorial_accuracy() {
    let env = Env::new();
    let dir = env.init_repo("full");
    let out = env.exp(&dir, &["run", "mnist-cnn"]);
    assert!(out.status.success(), "{}", describe(&out));
    let r = record_at(&env, &dir, "HEAD", "mnist-cnn");
    assert_eq!(r.data.train.examples, 60_000);
    assert_eq!(r.data.test.examples, 10_000);
    assert_eq!(r.training.steps, 938, "60000 / 64, last partial batch kept");
    let accuracy = r.metrics.values["accuracy"];
    assert!(
        accuracy >= 0.965,
        "one epoch of seed-cnn reached only {accuracy}"
    );
    eprintln!(
        "full epoch: accuracy {accuracy:.4}, {:.0} img/s",
        r.training.timing.images_per_second
    );
}
