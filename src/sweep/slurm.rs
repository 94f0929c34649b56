//! The Slurm executor: one batch script with a job array, `sbatch --parsable`, and the
//! scheduler's view of pending and running tasks from `squeue`/`scontrol` — never `sacct`
//! (accounting is often disabled). Each array task runs `exp sweep trial ID $SLURM_ARRAY_TASK_ID`
//! inside the repository, on a file system the nodes share (as on HPC clusters).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use super::state::{SweepDir, SweepFile};
use crate::spec::sweep::SlurmSpec;

/// A Slurm command failed.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// The command could not be started (Slurm's clients not installed?).
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The command.
        command: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The command said no.
    #[error("{command} failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// Writing the batch script failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The script.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What the batch script asks for and runs.
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// The absolute path of the `exp` binary the tasks run.
    pub exe: PathBuf,
    /// The directory the tasks run in (the repository).
    pub dir: PathBuf,
    /// Array tasks at once (`%P`).
    pub parallel: usize,
    /// Resources and extra `#SBATCH` lines.
    pub resources: SlurmSpec,
    /// Wait for the array to finish (`sbatch --wait`).
    pub wait: bool,
}

/// The scheduler's view of one array task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    /// `<array job>_<index>`.
    pub job: String,
    /// Slurm's state name (PENDING, RUNNING, CANCELLED, …).
    pub state: String,
}

/// `--array` for `indices`: ranges where they are consecutive, then `%parallel`.
pub fn array_spec(indices: &[usize], parallel: usize) -> String {
    let mut sorted = indices.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    format!("{}%{}", parts.join(","), parallel.max(1))
}

/// The batch script for the trials `indices` of `sweep`.
pub fn batch_script(
    sweep: &SweepFile,
    dir: &SweepDir,
    indices: &[usize],
    options: &SlurmOptions,
) -> String {
    let r = &options.resources;
    let mut lines = vec![
        "#!/bin/sh".to_string(),
        format!("#SBATCH --job-name=exp-sweep-{}", sweep.id),
        format!("#SBATCH --array={}", array_spec(indices, options.parallel)),
        format!("#SBATCH --output={}/%a.log", dir.0.join("logs").display()),
        "#SBATCH --open-mode=append".to_string(),
        // A requeued task runs again; the trial id keeps it from recording twice.
        "#SBATCH --requeue".to_string(),
    ];
    if let Some(p) = &r.partition {
        lines.push(format!("#SBATCH --partition={p}"));
    }
    if let Some(t) = &r.time {
        lines.push(format!("#SBATCH --time={t}"));
    }
    if let Some(c) = r.cpus_per_task {
        lines.push(format!("#SBATCH --cpus-per-task={c}"));
    }
    if let Some(g) = &r.gres {
        lines.push(format!("#SBATCH --gres={g}"));
    }
    for extra in &r.extra {
        lines.push(format!("#SBATCH {extra}"));
    }
    lines.push(format!("# exp sweep {} of {}", sweep.id, sweep.experiment));
    lines.push(format!("export EXP_DATA={}", shell_quote(&sweep.data_root)));
    lines.push(format!(
        "cd {} || exit 2",
        shell_quote(&options.dir.display().to_string())
    ));
    lines.push(format!(
        "exec {} sweep trial {} \"$SLURM_ARRAY_TASK_ID\"",
        shell_quote(&options.exe.display().to_string()),
        sweep.id
    ));
    lines.join("\n") + "\n"
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Writes the batch script and submits it; returns the array job's id.
pub fn submit(
    sweep: &SweepFile,
    dir: &SweepDir,
    indices: &[usize],
    options: &SlurmOptions,
) -> Result<String, SlurmError> {
    let script = batch_script(sweep, dir, indices, options);
    let path = dir.batch_script();
    std::fs::create_dir_all(dir.0.join("logs")).map_err(|source| SlurmError::Write {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, script).map_err(|source| SlurmError::Write {
        path: path.clone(),
        source,
    })?;
    let mut args = vec!["--parsable".to_string()];
    if options.wait {
        args.push("--wait".into());
    }
    args.push(path.display().to_string());
    let out = run("sbatch", &args)?;
    // `--parsable` prints "jobid" or "jobid;cluster".
    Ok(out.trim().split(';').next().unwrap_or_default().to_string())
}

/// The scheduler's view of the tasks of array jobs `jobs`, by array index: pending and running
/// ones from `squeue`, finished ones `scontrol` still remembers (for `MinJobAge`).
pub fn query(jobs: &[String]) -> Result<BTreeMap<usize, TaskState>, SlurmError> {
    let mut out = BTreeMap::new();
    if jobs.is_empty() {
        return Ok(out);
    }
    for job in jobs {
        // Finished tasks first; squeue's live view overrides them (a requeued task).
        if let Ok(text) = run(
            "scontrol",
            &["show".into(), "job".into(), "-o".into(), job.clone()],
        ) {
            for line in text.lines() {
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                };
                if let (Some(task), Some(state), Some(array)) =
                    (field("ArrayTaskId"), field("JobState"), field("ArrayJobId"))
                {
                    if let Ok(index) = task.parse::<usize>() {
                        out.insert(
                            index,
                            TaskState {
                                job: format!("{array}_{index}"),
                                state: state.to_string(),
                            },
                        );
                    }
                }
            }
        }
    }
    let text = run(
        "squeue",
        &[
            "-h".into(),
            "-r".into(),
            "-j".into(),
            jobs.join(","),
            "-o".into(),
            "%i %T".into(),
        ],
    )?;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(id), Some(state)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let Some(index) = id
            .rsplit_once('_')
            .and_then(|(_, i)| i.parse::<usize>().ok())
        {
            out.insert(
                index,
                TaskState {
                    job: id.to_string(),
                    state: state.to_string(),
                },
            );
        }
    }
    Ok(out)
}

fn run(program: &str, args: &[String]) -> Result<String, SlurmError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| SlurmError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(SlurmError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_specs_compress_ranges() {
        assert_eq!(array_spec(&[0, 1, 2, 3, 4, 5], 2), "0-5%2");
        assert_eq!(array_spec(&[3, 7], 2), "3,7%2");
        assert_eq!(array_spec(&[7, 3, 4, 5, 9], 1), "3-5,7,9%1");
        assert_eq!(array_spec(&[2], 0), "2%1");
    }

    #[test]
    fn the_batch_script_names_everything_absolutely() {
        let sweep = SweepFile {
            id: "abc1234".into(),
            experiment: "mnist-cnn".into(),
            branch: "feature/sweep-mnist-cnn-abc1234".into(),
            fork: "0".repeat(40),
            created: String::new(),
            spec_path: "experiments/mnist-cnn.toml".into(),
            spec_text: String::new(),
            overrides: vec![],
            data_root: "/data/it's here".into(),
            executor: "slurm".into(),
            jobs: 2,
            gpus: vec![],
            slurm_jobs: vec![],
            trials: vec![],
        };
        let dir = SweepDir(PathBuf::from("/repo/.git/exp/sweeps/abc1234"));
        let options = SlurmOptions {
            exe: PathBuf::from("/usr/local/bin/exp"),
            dir: PathBuf::from("/repo"),
            parallel: 2,
            resources: SlurmSpec {
                partition: Some("gpu".into()),
                time: Some("00:30:00".into()),
                cpus_per_task: Some(4),
                gres: Some("gpu:1".into()),
                extra: vec!["--mem=8G".into()],
            },
            wait: false,
        };
        let script = batch_script(&sweep, &dir, &[0, 1, 2, 3, 4, 5], &options);
        assert_eq!(
            script,
            "#!/bin/sh
#SBATCH --job-name=exp-sweep-abc1234
#SBATCH --array=0-5%2
#SBATCH --output=/repo/.git/exp/sweeps/abc1234/logs/%a.log
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --partition=gpu
#SBATCH --time=00:30:00
#SBATCH --cpus-per-task=4
#SBATCH --gres=gpu:1
#SBATCH --mem=8G
# exp sweep abc1234 of mnist-cnn
export EXP_DATA='/data/it'\\''s here'
cd '/repo' || exit 2
exec '/usr/local/bin/exp' sweep trial abc1234 \"$SLURM_ARRAY_TASK_ID\"
"
        );
    }
}
