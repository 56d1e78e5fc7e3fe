//! smelt-gguf: reading GGUF files (llama.cpp's model container).
//!
//! This crate owns the container format (header, metadata key/values, tensor infos and the
//! aligned data section), ggml's quantised block formats and their kernels (`quant`), and the
//! mapping between a GGUF `llama` model and smelt's one transformer (`load`). The tokenizer
//! crate reads `tokenizer.ggml.*` itself.

pub mod export;
pub mod load;
pub mod quant;
mod reader;
mod writer;

pub use load::load_model;
pub use writer::GgufWriter;

pub use reader::{GgufFile, TensorInfo, Value, ValueType};
