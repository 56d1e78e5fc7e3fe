//! smelt-data: token files and the stages that make them (prepare, process, mix).
pub mod tokens;
pub use tokens::{TokenFile, TokenWriter};
