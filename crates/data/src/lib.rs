//! smelt-data: token files and the stages that make them (prepare, process, mix), and the batch
//! loader that feeds them to training.
pub mod documents;
pub mod dpo;
pub mod hash;
pub mod loader;
pub mod mix;
pub mod prepare;
pub mod process;
pub mod sft;
pub mod tokens;
pub use loader::{Batcher, Share};
pub use tokens::{TokenFile, TokenWriter};
