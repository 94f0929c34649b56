//! `exp lineage [REV]`: the chain of runs a model descends from through `init.from`.

use clap::Args;

use exp::report;
use exp::Error;

/// Arguments of `exp lineage`.
#[derive(Debug, Args)]
pub struct LineageArgs {
    /// The revision holding the model (default: HEAD); a run tag names its experiment.
    #[arg(default_value = "HEAD")]
    pub rev: String,
    /// The experiment, when the revision records several.
    #[arg(long, value_name = "NAME")]
    pub experiment: Option<String>,
    /// Machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn execute(args: LineageArgs) -> Result<(), Error> {
    exp::compare::fast_reads();
    let repo = exp::git::open(&super::cwd()?)?;
    let chain = exp::init_from::lineage(&repo, &args.rev, args.experiment.as_deref())?;
    if args.json {
        return super::emit_json(&chain);
    }
    let header = [
        "generation",
        "experiment",
        "run tag",
        "commit",
        "accuracy",
        "frozen",
    ];
    let mut table = report::table(header.iter().map(|s| s.to_string()).collect());
    for (i, run) in chain.iter().enumerate() {
        table.add_row(vec![
            if i == 0 {
                "this".to_string()
            } else {
                format!("parent {i}")
            },
            run.experiment.clone(),
            run.tag.clone().unwrap_or_else(|| "-".into()),
            run.commit[..run.commit.len().min(12)].to_string(),
            run.accuracy
                .map(|a| format!("{a:.4}"))
                .unwrap_or_else(|| "-".into()),
            if run.frozen.is_empty() {
                "-".into()
            } else {
                run.frozen.join(" ")
            },
        ]);
    }
    super::outln!("{table}");
    Ok(())
}
