//! Training progress on stderr (docs/design.md §5): a bar when stderr is a terminal; otherwise
//! (CI logs, pipes, Slurm) plain lines — when data loading starts and ends, one every
//! [`LINE_INTERVAL`] with step, loss, throughput and ETA, and one per epoch — so a long run is
//! never silent. The library reports through [`exp::train::TrainObserver`]; printing is the
//! command line's business.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use exp::record::EpochRecord;
use exp::train::{DataLoaded, TrainObserver};

/// How often a plain progress line is printed when stderr is not a terminal:
/// `EXP_PROGRESS_SECONDS`, else 10 s.
fn line_interval() -> std::time::Duration {
    let seconds = match std::env::var("EXP_PROGRESS_SECONDS") {
        Err(_) => LINE_INTERVAL,
        Ok(v) => match v.parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 0.0 => s,
            _ => {
                eprintln!(
                    "warning: EXP_PROGRESS_SECONDS={v:?} is not a number of seconds ≥ 0; using {LINE_INTERVAL}"
                );
                LINE_INTERVAL
            }
        },
    };
    std::time::Duration::from_secs_f64(seconds)
}

/// The default seconds between plain progress lines.
pub const LINE_INTERVAL: f64 = 10.0;

/// Reports training progress.
pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    terminal: bool,
    epoch_start: Instant,
    images: usize,
    epoch: usize,
    epochs: usize,
    steps: usize,
    last_line: Instant,
    interval: std::time::Duration,
}

impl Progress {
    /// Progress on stderr; `quiet` prints nothing.
    pub fn stderr(quiet: bool) -> Progress {
        Progress {
            bar: None,
            quiet,
            terminal: std::io::stderr().is_terminal(),
            epoch_start: Instant::now(),
            images: 0,
            epoch: 0,
            epochs: 0,
            steps: 0,
            last_line: Instant::now(),
            interval: line_interval(),
        }
    }
}

/// `1h02m`, `3m05s`, `42s`.
fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m{sec:02}s"),
        (h, min, _) => format!("{h}h{min:02}m"),
    }
}

impl TrainObserver for Progress {
    fn loading_data(&mut self, loaded: Option<DataLoaded>) {
        if self.quiet {
            return;
        }
        match loaded {
            None => eprintln!("loading data"),
            Some(d) => {
                let val = if d.val > 0 {
                    format!(", {} val", d.val)
                } else {
                    String::new()
                };
                eprintln!(
                    "loaded data: {} train{val}, {} eval examples ({:.1} s)",
                    d.train, d.eval, d.seconds
                );
            }
        }
    }

    fn start_epoch(&mut self, epoch: usize, epochs: usize, steps: usize) {
        self.epoch_start = Instant::now();
        self.last_line = self.epoch_start;
        self.images = 0;
        self.epoch = epoch;
        self.epochs = epochs;
        self.steps = steps;
        if self.quiet || !self.terminal {
            return;
        }
        let bar = ProgressBar::new(steps as u64);
        let style = ProgressStyle::with_template(
            "epoch {prefix} [{bar:30}] {pos}/{len} steps, {msg} ({eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("{epoch}/{epochs}"));
        self.bar = Some(bar);
    }

    fn step(&mut self, step: usize, loss: f32, batch: usize) {
        self.images += batch;
        if !self.quiet && !self.terminal && self.last_line.elapsed() >= self.interval {
            self.last_line = Instant::now();
            let elapsed = self.epoch_start.elapsed().as_secs_f64();
            let rate = self.images as f64 / elapsed.max(1e-9);
            // The rest of this epoch at this epoch's pace, and the epochs after it at the
            // same pace (evaluation not counted).
            let per_step = elapsed / step.max(1) as f64;
            let left = per_step * (self.steps.saturating_sub(step)) as f64
                + per_step * self.steps as f64 * self.epochs.saturating_sub(self.epoch) as f64;
            eprintln!(
                "epoch {}/{} step {step}/{}: loss {loss:.4}, {rate:.0} img/s, ETA {}",
                self.epoch,
                self.epochs,
                self.steps,
                duration(left)
            );
        }
        if let Some(bar) = &self.bar {
            // Redrawing every step costs more than a small model's step; every 10th is plenty.
            if step % 10 == 0 {
                let rate = self.images as f64 / self.epoch_start.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!("loss {loss:.4}, {rate:.0} img/s"));
                bar.set_position(step as u64);
            }
        }
    }

    fn end_epoch(&mut self, row: &EpochRecord) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.quiet {
            return;
        }
        let val = match (row.val_loss, row.val_accuracy) {
            (Some(l), Some(a)) => format!(" val_loss {l:.4} val_accuracy {a:.4}"),
            _ => String::new(),
        };
        eprintln!(
            "epoch {}/{}: train_loss {:.4}{val} eval_loss {:.4} eval_accuracy {:.4} ({:.1} s, training {:.0} img/s)",
            row.epoch,
            self.epochs,
            row.train_loss,
            row.eval_loss,
            row.eval_accuracy,
            row.seconds,
            self.images as f64 / row.train_seconds.max(1e-9)
        );
    }
}
