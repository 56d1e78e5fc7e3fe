//! smelt-train: the optimizer, schedules, the pretraining loop and checkpoints.

pub mod checkpoint;
pub mod optim;
pub mod progress;
pub mod trainer;

pub use trainer::{run, train_step, TrainConfig, TrainSummary};
