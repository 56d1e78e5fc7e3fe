//! Progress display for long runs: a bar with loss, tokens/s, lr and ETA on a terminal; plain
//! periodic lines when stderr is not one (logs, CI).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    start: Instant,
    first: u64,
}

impl Progress {
    pub fn new(total: u64, done: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]").unwrap(),
            );
            b.set_position(done);
            b
        });
        Progress { bar, total, start: Instant::now(), first: done }
    }

    /// `note`: more of the step to show after the loss (DPO's accuracies and margins).
    pub fn update(&self, done: u64, loss: f64, tps: f64, lr: f64, val: Option<f64>, note: &str) {
        let val = val.map(|v| format!(" val {v:.4}")).unwrap_or_default();
        let msg = format!("loss {loss:.4}{val}{note} | {tps:.0} tok/s | lr {lr:.2e}");
        match &self.bar {
            Some(b) => {
                b.set_position(done);
                b.set_message(msg);
            }
            None => {
                let every = (self.total / 20).max(1);
                if done.is_multiple_of(every) || done == self.total || !val.is_empty() {
                    let el = self.start.elapsed().as_secs_f64();
                    let eta = el / (done - self.first).max(1) as f64 * (self.total - done) as f64;
                    eprintln!("step {done}/{} {msg} | eta {eta:.0}s", self.total);
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}
