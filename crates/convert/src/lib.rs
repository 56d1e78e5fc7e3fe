//! smelt-convert: the mapping between a GGUF `llama` model and smelt's one transformer, above
//! the model and the tokenizer: `load` (a GGUF file as a `Model`, weights kept in their block
//! formats), `export` (a `Model` and its tokenizer as a GGUF file llama.cpp loads), and the
//! quantisation aids `imatrix` (importance matrices) and `smooth` (activation smoothing), and
//! `qbase` (a float base's matrices quantised in memory for QLoRA).
//! The container is smelt-gguf's; the block formats and their kernels are smelt-core's `quant`;
//! the `tokenizer.ggml.*` metadata is the tokenizer crate's. docs/GGUF.md has the overview.

pub mod export;
pub mod imatrix;
pub mod load;
pub mod qbase;
pub mod smooth;

pub use load::load_model;

/// Writes a GGUF file: staged beside `path` under a name of its own and renamed into place,
/// so a failed or interrupted write leaves neither a partial file nor a changed old one.
pub fn write_gguf(w: &smelt_gguf::GgufWriter, path: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let tmp = smelt_files::Temp::new(path);
    let file = std::fs::File::create(tmp.path()).with_context(|| format!("creating {}", tmp.path().display()))?;
    let mut out = std::io::BufWriter::new(file);
    w.write_to(&mut out).with_context(|| format!("writing {}", path.display()))?;
    drop(out);
    tmp.commit(path)
}
