//! Training progress on stderr (docs/design.md §5): a bar when stderr is a terminal, one plain
//! line per epoch otherwise (CI logs, pipes). The library reports through
//! [`exp::train::TrainObserver`]; printing is the command line's business.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use exp::record::EpochRecord;
use exp::train::TrainObserver;

/// Reports training progress.
pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    terminal: bool,
    epoch_start: Instant,
    images: usize,
    epoch: usize,
    epochs: usize,
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
        }
    }
}

impl TrainObserver for Progress {
    fn start_epoch(&mut self, epoch: usize, epochs: usize, steps: usize) {
        self.epoch_start = Instant::now();
        self.images = 0;
        self.epoch = epoch;
        self.epochs = epochs;
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
