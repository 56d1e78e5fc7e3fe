//! smelt-gguf: reading GGUF files (llama.cpp's model container).
//!
//! This crate owns the container format: header, metadata key/values, tensor infos and the
//! aligned data section. It does not interpret tensors (no dequantisation here: quantised block
//! formats build on top of [`GgufFile::tensor_data`]) nor metadata meaning (the tokenizer crate
//! reads `tokenizer.ggml.*`, the model crate reads architecture keys).

mod reader;

pub use reader::{GgufFile, TensorInfo, Value, ValueType};
