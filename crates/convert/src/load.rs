//! A GGUF `llama` model as smelt's one transformer: `ModelConfig` from the `llama.*` metadata,
//! llama.cpp's tensor names mapped to Hugging Face's, weights kept in their block format
//! (`QTensor` inside a `Tensor`) except F32 matrices, which stay plain f32.
//!
//! Q/K layout: llama.cpp's converter permutes the rows of `attn_q`/`attn_k` within each head so
//! that its RoPE can rotate adjacent pairs (interleaved); Hugging Face rotates the two halves of
//! each head. The permutation is NOT undone here: a loaded model keeps llama.cpp's interleaved
//! rows and gets an interleaved `RopeTable::ggml` (`model.rope`), so q·k sums the same products
//! in the same order as llama.cpp, bit for bit (docs/GGUF.md "Q/K layout"). The layout thus
//! follows the model's provenance: `export` applies `qk_to_gguf_perm` only to half-split
//! (Hugging Face) models, and `Model::save_as` of a GGUF-loaded model writes the rows back in
//! Hugging Face's order.

use anyhow::{bail, Context, Result};
use smelt_core::ops::rope::RopeTable;
use smelt_core::quant::{GgmlType, QTensor};
use smelt_core::Tensor;
use smelt_gguf::GgufFile;
use smelt_model::{params, Model, ModelConfig, RopeScaling};
use std::path::Path;
use std::sync::Arc;

/// llama.cpp's name for a Hugging Face parameter name (from the model's parameter table).
pub use smelt_model::params::gguf_name;

/// The gather that turns Hugging Face q/k rows (half-split heads) into llama.cpp's
/// (interleaved pairs): row r of the GGUF tensor is row `perm[r]` of the HF tensor, as
/// convert_hf_to_gguf.py's `permute` does.
pub fn qk_to_gguf_perm(n_heads: usize, head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    let mut p = vec![0; n_heads * head_dim];
    for h in 0..n_heads {
        for i in 0..half {
            for s in 0..2 {
                p[h * head_dim + 2 * i + s] = h * head_dim + s * half + i;
            }
        }
    }
    p
}

fn meta_usize(f: &GgufFile, key: &str) -> Result<usize> {
    let v = f.require(key)?;
    v.as_u64()
        .map(|v| v as usize)
        .with_context(|| format!("{}: {key} = {v:?}, expected a non-negative integer", f.path().display()))
}

fn meta_f64(f: &GgufFile, key: &str) -> Result<Option<f64>> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => {
            v.as_f64().map(Some).with_context(|| format!("{}: {key} = {v:?}, expected a number", f.path().display()))
        }
    }
}

/// The model config a GGUF `llama` file describes.
pub fn config(f: &GgufFile) -> Result<ModelConfig> {
    let p = f.path().display();
    let arch = f.get_str("general.architecture").with_context(|| format!("{p}: missing general.architecture"))?;
    if arch != "llama" {
        bail!("{p}: architecture {arch:?} is not supported (smelt runs GGUF `llama` models)");
    }
    let k = |s: &str| format!("llama.{s}");
    let embd = f.tensor("token_embd.weight").with_context(|| format!("{p}: no token_embd.weight tensor"))?;
    let vocab = match f.get(&k("vocab_size")) {
        Some(v) => v.as_u64().with_context(|| format!("{p}: llama.vocab_size = {v:?}"))? as usize,
        None => *embd.dims.get(1).with_context(|| format!("{p}: token_embd.weight is not 2-D"))? as usize,
    };
    let dim = meta_usize(f, &k("embedding_length"))?;
    let n_heads = meta_usize(f, &k("attention.head_count"))?;
    let n_kv = if f.get(&k("attention.head_count_kv")).is_some() {
        meta_usize(f, &k("attention.head_count_kv"))?
    } else {
        n_heads
    };
    let mut c = ModelConfig::llama(
        vocab,
        dim,
        meta_usize(f, &k("block_count"))?,
        n_heads,
        n_kv,
        meta_usize(f, &k("feed_forward_length"))?,
    );
    if f.get(&k("attention.key_length")).is_some() {
        c.head_dim = meta_usize(f, &k("attention.key_length"))?;
    }
    if let Some(rd) = f.get(&k("rope.dimension_count")) {
        if rd.as_u64() != Some(c.head_dim as u64) {
            bail!(
                "{p}: llama.rope.dimension_count {rd:?} differs from the head dim {} (partial RoPE is not supported)",
                c.head_dim
            );
        }
    }
    c.max_pos = meta_usize(f, &k("context_length"))?;
    c.norm_eps = meta_f64(f, &k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5);
    c.rope_theta = meta_f64(f, &k("rope.freq_base"))?.unwrap_or(10000.0);
    c.rope_scaling = match f.get_str(&k("rope.scaling.type")) {
        None | Some("none") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear {
            factor: meta_f64(f, &k("rope.scaling.factor"))?
                .with_context(|| format!("{p}: linear RoPE scaling without llama.rope.scaling.factor"))?,
        },
        Some(other) => bail!("{p}: RoPE scaling {other:?} is not supported"),
    };
    c.tie_embeddings = f.tensor("output.weight").is_none();
    c.bos_token_id = f.get("tokenizer.ggml.bos_token_id").and_then(|v| v.as_u64()).map(|v| v as u32);
    c.eos_token_ids =
        f.get("tokenizer.ggml.eos_token_id").and_then(|v| v.as_u64()).map(|v| vec![v as u32]).unwrap_or_default();
    c.validate().with_context(|| format!("{p}: llama.* metadata"))?;
    Ok(c)
}

/// Loads a GGUF `llama` model, weights kept in their block formats.
pub fn load_model(path: &Path) -> Result<Model> {
    let f = GgufFile::open(path)?;
    let cfg = config(&f)?;
    let p = path.display();
    cfg.check_claims(f.tensors.iter().map(|t| t.name.as_str()), "blk.", &format!("{p}: llama.block_count"))?;
    let mut out = Vec::new();
    for params::Param { gguf: gname, shape, .. } in params::list(&cfg) {
        let t = f.tensor(&gname).with_context(|| format!("{p}: tensor {gname} is missing"))?;
        let dims: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
        if dims != shape {
            bail!("{p}: tensor {gname} has shape {dims:?}, the llama.* metadata implies {shape:?}");
        }
        let (ty, bytes) = f.tensor_bytes(t)?;
        let tensor = if shape.len() == 1 || ty == GgmlType::F32 {
            let n = shape.iter().product();
            Tensor::from_f32(smelt_core::quant::dequantize(ty, bytes, n)?, &shape)?
        } else {
            QTensor::new(ty, shape[0], shape[1], bytes.to_vec())
                .with_context(|| format!("{p}: tensor {gname}"))?
                .into_tensor()
        };
        out.push(tensor);
    }
    // Q/K stay in llama.cpp's row order (interleaved RoPE pairs) and RoPE runs as llama.cpp's
    // does, so q·k sums the same products in the same order and the model computes what
    // llama.cpp computes, bit for bit (docs/GGUF.md).
    let freq_scale = match cfg.rope_scaling {
        RopeScaling::Linear { factor } => 1.0 / factor as f32,
        _ => 1.0,
    };
    let rope = Arc::new(RopeTable::ggml(cfg.rope_theta as f32, cfg.head_dim, freq_scale));
    let mut model = Model::new(cfg, out).with_context(|| format!("{p}: building the model"))?;
    model.rope = rope;
    Ok(model)
}
