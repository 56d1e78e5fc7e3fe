//! smelt-train: the optimizer, schedules, the pretraining loop and checkpoints.

pub mod checkpoint;
#[cfg(feature = "cuda")]
mod gpu_step;
pub mod optim;
pub mod progress;
pub mod run_dir;
pub mod trainer;

pub use trainer::{run, step, train_step, StepOutcome, TrainConfig, TrainSummary};
