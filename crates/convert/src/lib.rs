//! smelt-convert: the mapping between a GGUF `llama` model and smelt's one transformer, above
//! the model and the tokenizer: `load` (a GGUF file as a `Model`, weights kept in their block
//! formats), `export` (a `Model` and its tokenizer as a GGUF file llama.cpp loads), and the
//! quantisation aids `imatrix` (importance matrices) and `smooth` (activation smoothing).
//! The container is smelt-gguf's; the block formats and their kernels are smelt-core's `quant`;
//! the `tokenizer.ggml.*` metadata is the tokenizer crate's. docs/GGUF.md has the overview.

pub mod export;
pub mod imatrix;
pub mod load;
pub mod smooth;

pub use load::load_model;
