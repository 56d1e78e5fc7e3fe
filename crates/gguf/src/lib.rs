//! smelt-gguf: GGUF files (llama.cpp's model container), and nothing above them.
//!
//! This crate owns the container format (`reader`, `writer`: header, metadata key/values,
//! tensor infos, the aligned data section) and ggml's type table (`GgmlType`: id, name, block
//! size and bytes), which is what sizing a tensor's data needs. It depends on no other smelt
//! crate: the block formats' kernels live in smelt-core (`quant`), the tokenizer crate reads
//! `tokenizer.ggml.*` itself, and the mapping between a GGUF `llama` model and smelt's one
//! transformer is smelt-convert's. docs/GGUF.md has the overview.

mod ggml_type;
mod reader;
mod writer;

pub use ggml_type::{ggml_type_name, GgmlType};
pub use writer::GgufWriter;

pub use reader::{GgufFile, TensorInfo, Value, ValueType};
