//! The local executor: `--jobs N` trial processes at once (`exp sweep trial ID INDEX`), each
//! with its share of the CPU threads and, with `--gpus`, a GPU assigned round-robin.
//!
//! Trials run in their own process group, so a Ctrl-C at the terminal reaches only this
//! process; it starts no further trial and forwards one SIGINT to each running one, which stops
//! training and commits nothing (a trial already committing finishes its commit). Finished
//! trials stay recorded; `exp sweep resume` runs the rest.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::state::{StateError, SweepDir, SweepFile};
use crate::train::StopFlag;

/// How to run the trials here.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The `exp` binary the trials run (this one).
    pub exe: PathBuf,
    /// The directory the trials run in (the repository's work tree or git dir).
    pub dir: PathBuf,
    /// Trials at once.
    pub jobs: usize,
    /// GPUs to assign round-robin (`CUDA_VISIBLE_DEVICES`); empty: none assigned.
    pub gpus: Vec<u32>,
    /// CPU threads to divide between the running trials.
    pub threads: usize,
}

/// How a trial's process ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ended {
    /// The trial's index.
    pub index: usize,
    /// Its exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Its wall time.
    pub seconds: f64,
}

/// What the executor reports as trials start and end.
pub trait SweepObserver {
    /// A trial started (its log file).
    fn started(&mut self, index: usize, log: &Path);
    /// A trial ended.
    fn ended(&mut self, ended: &Ended);
}

/// Runs the trials `indices` of `sweep`, `options.jobs` at a time, until all have ended or
/// `stop` is raised (then no further trial starts and the running ones are asked to stop).
pub fn run_local(
    sweep: &SweepFile,
    dir: &SweepDir,
    indices: &[usize],
    options: &LocalOptions,
    stop: &StopFlag,
    observer: &mut dyn SweepObserver,
) -> Result<Vec<Ended>, StateError> {
    let jobs = options.jobs.max(1);
    let threads = (options.threads / jobs).max(1);
    let mut queue: std::collections::VecDeque<usize> = indices.iter().copied().collect();
    let mut running: Vec<(usize, Child, Instant)> = Vec::new();
    let mut ended = Vec::new();
    let mut launched = 0usize;
    let mut forwarded = false;
    loop {
        let stopping = stop.check().is_err();
        if stopping && !forwarded {
            for (_, child, _) in &running {
                // SAFETY: kill(2) on a child we spawned and have not reaped.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, libc::SIGINT);
                }
            }
            forwarded = true;
        }
        while !stopping && running.len() < jobs {
            let Some(index) = queue.pop_front() else {
                break;
            };
            let log = dir.log(index);
            let io = |source| StateError::Io {
                path: log.clone(),
                source,
            };
            std::fs::create_dir_all(log.parent().unwrap_or(Path::new("."))).map_err(io)?;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(io)?;
            let mut cmd = Command::new(&options.exe);
            cmd.current_dir(&options.dir)
                .args(["sweep", "trial", &sweep.id, &index.to_string()])
                .stdin(Stdio::null())
                .stdout(file.try_clone().map_err(io)?)
                .stderr(file)
                .env("RAYON_NUM_THREADS", threads.to_string())
                .process_group(0);
            if !options.gpus.is_empty() {
                let gpu = options.gpus[launched % options.gpus.len()];
                cmd.env("CUDA_VISIBLE_DEVICES", gpu.to_string());
            }
            let child = cmd.spawn().map_err(|source| StateError::Io {
                path: options.exe.clone(),
                source,
            })?;
            launched += 1;
            observer.started(index, &log);
            running.push((index, child, Instant::now()));
        }
        if running.is_empty() && (stopping || queue.is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        let mut i = 0;
        while i < running.len() {
            let status = running[i].1.try_wait().map_err(|source| StateError::Io {
                path: options.exe.clone(),
                source,
            })?;
            match status {
                Some(status) => {
                    let (index, _, start) = running.swap_remove(i);
                    let e = Ended {
                        index,
                        code: status.code(),
                        seconds: start.elapsed().as_secs_f64(),
                    };
                    observer.ended(&e);
                    ended.push(e);
                }
                None => i += 1,
            }
        }
    }
    Ok(ended)
}
