//! `exp verify [REV]`: re-evaluate the committed weights and compare with the record.

use clap::Args;

use exp::verify::{verify, VerifyOutcome, VerifyReport};
use exp::Error;

/// The long help of `exp verify`.
pub(super) const VERIFY_LONG_ABOUT: &str =
    "Re-evaluate the committed weights of a run and check that they produce its record.

The eval set is rebuilt from the record's own [params.data] (not today's spec) under the data \
root ($EXP_DATA), and its fingerprint must be the record's data.test.blake3. The weights come \
from the LFS store (fetched from the default remote if missing) and must hash to the record's \
tensor_hash. The model runs on the CPU in f32.

A run evaluated on this CPU path must give predictions.bin byte for byte and its loss within \
1e-6. A run evaluated elsewhere (a GPU, f16/bf16, the other CPU kernels) may differ in at most \
max(1, N/1000) predictions and its loss by 1e-4; the output says which tolerance was used.

Exit: 0 verified, 1 a record does not match its weights (what differs is printed), 2 cannot \
verify (no data, no LFS object, unknown revision).";

/// Arguments of `exp verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The revision holding the runs (default: HEAD); a run tag works.
    #[arg(default_value = "HEAD")]
    pub rev: String,
    /// Only this experiment (default: every experiment recorded at the revision).
    #[arg(long, value_name = "NAME")]
    pub experiment: Option<String>,
    /// Machine-readable JSON (the exit code is the same).
    #[arg(long)]
    pub json: bool,
}

pub(super) fn execute(args: VerifyArgs) -> Result<(), Error> {
    let cwd = super::cwd()?;
    let repo = exp::git::open(&cwd)?;
    let snapshot = exp::compare::resolve(&repo, &args.rev)?;
    let root = exp::data::data_root(&cwd)?;
    let report = verify(&repo, &snapshot, args.experiment.as_deref(), &root)?;
    if args.json {
        super::emit_json(&report)?;
    } else {
        print(&report)?;
    }
    let code = report.exit_code();
    if code == exp::ExitCode::Success {
        return Ok(());
    }
    let failing: Vec<String> = report
        .experiments
        .iter()
        .filter(|e| e.outcome != VerifyOutcome::Verified)
        .map(|e| format!("{}: {}", e.name, e.reason))
        .collect();
    let hint = if code == exp::ExitCode::Negative {
        "the record, predictions.bin and the weights were not produced together; re-record the run \
         (exp run) or find who changed them (`git log -p -- experiments/NAME`)"
    } else {
        "put the run's data under the data root (EXP_DATA) and its LFS object in the store \
         (`exp pull`), then verify again"
    };
    Err(exp::error::Verdict {
        message: format!(
            "exp verify: {} at {}:\n  {}",
            if code == exp::ExitCode::Negative {
                "does not match"
            } else {
                "cannot verify"
            },
            report.rev,
            failing.join("\n  ")
        ),
        hint: hint.into(),
        code,
    }
    .into())
}

fn print(report: &VerifyReport) -> Result<(), Error> {
    for e in &report.experiments {
        let status = match e.outcome {
            VerifyOutcome::Verified => "verified",
            VerifyOutcome::Mismatch => "DOES NOT MATCH",
            VerifyOutcome::CannotVerify => "CANNOT VERIFY",
        };
        super::outln!("{} at {}: {status}", e.name, report.rev);
        if let (Some(n), Some(differing)) = (e.examples, e.differing_predictions) {
            super::outln!("  predictions: {differing} of {n} differ from predictions.bin");
        }
        if let (Some(recorded), Some(loss)) = (e.recorded_loss, e.loss) {
            super::outln!(
                "  loss: recorded {recorded}, re-evaluated {loss} (|Δ| = {:.3e})",
                (loss - recorded).abs()
            );
        }
        super::outln!("  {}", e.reason);
    }
    Ok(())
}
