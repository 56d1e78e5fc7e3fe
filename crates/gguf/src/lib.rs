//! smelt-gguf: GGUF files (llama.cpp's model container) and ggml's quantised formats.
//!
//! This crate owns the container format (`reader`, `writer`: header, metadata key/values,
//! tensor infos, the aligned data section), ggml's block formats and their kernels (`quant`),
//! and the mapping between a GGUF `llama` model and smelt's one transformer (`load`, `export`).
//! The tokenizer crate reads `tokenizer.ggml.*` itself. docs/GGUF.md has the overview.

pub mod export;
pub mod imatrix;
pub mod load;
pub mod quant;
pub mod smooth;
mod reader;
mod writer;

pub use load::load_model;
pub use writer::GgufWriter;

pub use reader::{GgufFile, TensorInfo, Value, ValueType};
