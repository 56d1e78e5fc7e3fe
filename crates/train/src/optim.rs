//! The learning-rate schedules. AdamW's state and update live together in
//! `smelt_core::ops::adamw` (re-exported here).

use serde::{Deserialize, Serialize};
pub use smelt_core::ops::adamw::AdamWState;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Cosine,
    /// Warmup, stable, decay: constant after warmup, then a linear decay to `min_lr` over the
    /// last 20% of steps.
    Wsd,
    Constant,
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cosine" => Ok(Schedule::Cosine),
            "wsd" => Ok(Schedule::Wsd),
            "constant" => Ok(Schedule::Constant),
            _ => Err(format!("unknown schedule {s:?} (cosine, wsd, constant)")),
        }
    }
}

/// Learning rate for update number `step` (0-based) of `total`.
pub fn lr_at(schedule: Schedule, step: u64, total: u64, warmup: u64, lr: f64, min_lr: f64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let total = total.max(warmup + 1);
    match schedule {
        Schedule::Constant => lr,
        Schedule::Cosine => {
            let p = ((step - warmup) as f64 / (total - warmup) as f64).min(1.0);
            min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * p).cos())
        }
        Schedule::Wsd => {
            let decay_start = warmup + ((total - warmup) as f64 * 0.8) as u64;
            if step < decay_start {
                lr
            } else {
                let p = ((step - decay_start) as f64 / (total - decay_start).max(1) as f64).min(1.0);
                lr + (min_lr - lr) * p
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        assert_eq!(lr_at(Schedule::Cosine, 0, 100, 10, 1.0, 0.1), 0.1);
        assert!((lr_at(Schedule::Cosine, 10, 100, 10, 1.0, 0.1) - 1.0).abs() < 1e-12);
        assert!((lr_at(Schedule::Cosine, 100, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-12);
        assert_eq!(lr_at(Schedule::Wsd, 50, 100, 10, 1.0, 0.0), 1.0);
        assert!((lr_at(Schedule::Wsd, 100, 100, 10, 1.0, 0.0)).abs() < 1e-12);
        assert_eq!(lr_at(Schedule::Constant, 99, 100, 10, 1.0, 0.0), 1.0);
    }
}
