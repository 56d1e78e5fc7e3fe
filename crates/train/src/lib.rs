//! smelt-train: the optimizers, schedules, the training loop (pretraining, SFT, distillation) and checkpoints.

pub mod checkpoint;
pub mod dist;
pub mod distill;
pub mod optim;
pub mod progress;
pub mod run_dir;
pub mod sft;
pub mod trainer;

pub use dist::DataParallel;
pub use distill::{DistillConfig, Teacher};
pub use sft::SftConfig;
pub use trainer::{
    gradients, run, run_distill, run_with, step, step_parallel, step_with, train_step, Layout, StepOutcome,
    TrainConfig, TrainSummary,
};
