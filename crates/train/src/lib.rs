//! smelt-train: the optimizers, schedules, the training loop (pretraining, SFT, distillation and
//! DPO) and checkpoints.

pub mod captured;
pub mod checkpoint;
pub mod dist;
pub mod distill;
pub mod dpo;
pub mod optim;
pub mod progress;
pub mod run_dir;
pub mod sft;
pub mod trainer;

pub use dist::DataParallel;
pub use distill::{DistillConfig, Teacher};
pub use dpo::{DpoConfig, DpoStats};
pub use sft::SftConfig;
pub use trainer::{
    gradients, gradients_and_stats, run, run_distill, run_with, step, step_parallel, step_with, train_step, Layout,
    StepOutcome, TrainConfig, TrainSummary,
};
