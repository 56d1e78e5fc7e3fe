//! smelt-train: the optimizer, schedules, the pretraining loop and checkpoints.

pub mod checkpoint;
pub mod optim;
pub mod progress;
pub mod run_dir;
pub mod trainer;

pub use trainer::{run, step, train_step, StepOutcome, TrainConfig, TrainSummary};
