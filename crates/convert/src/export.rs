//! A smelt / Hugging Face `llama` model to a GGUF file llama.cpp loads: `llama.*` metadata,
//! llama.cpp's tensor names, q/k rows permuted for its interleaved RoPE (the inverse of what
//! `load` undoes), weights quantised to the requested type with llama.cpp's fallbacks for rows
//! that are not whole super-blocks (and its Q6_K output matrix for 4/5-bit types), and the full
//! tokenizer metadata.
//!
//! With an importance matrix (`Imatrix`), every matrix it has weights for is quantised by
//! llama.cpp's imatrix-weighted quantisers and the Q4_0 mix changes as llama.cpp's does
//! (ffn_down of the first eighth of the layers in Q4_1); the output records the imatrix as
//! llama-quantize does (`quantize.imatrix.*`), and a smoothing α (`smooth.rs`) as
//! `quantize.smooth.alpha`.
//!
//! Tokenizer metadata comes either from a source GGUF (all `tokenizer.*` keys copied) or from a
//! Hugging Face folder, through the tokenizer crate (`smelt_tokenizer::hf_gguf_metadata`:
//! byte-level BPE only; tokens, merges, token types, bos/eos/pad, add_bos, the chat template,
//! and llama.cpp's name for the pre-tokeniser, recognised from its regex or given with `pre`).

use crate::imatrix::Imatrix;
use crate::load::qk_to_gguf_perm;
use anyhow::{bail, Result};
use smelt_core::quant::{quantize_with, GgmlType};
use smelt_gguf::{GgufFile, GgufWriter, Value};
use smelt_model::params::{self, Role};
use smelt_model::{Activation, Model, NormKind, RopeScaling};
use std::path::Path;

pub enum TokenizerSource<'a> {
    /// Copy every `tokenizer.*` key of this GGUF file.
    Gguf(&'a Path),
    /// A Hugging Face folder: tokenizer.json, tokenizer_config.json, config.json, chat_template.jinja.
    HfDir { dir: &'a Path, pre: Option<&'a str> },
}

/// The type a weight matrix gets when the requested one does not fit its row length
/// (llama.cpp's `llama_tensor_get_type` fallbacks: K-quants need rows of whole 256-blocks).
pub fn type_for(requested: GgmlType, cols: usize) -> GgmlType {
    if cols.is_multiple_of(requested.block_size()) {
        return requested;
    }
    let fallback = match requested {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q6_K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    if cols.is_multiple_of(fallback.block_size()) {
        fallback
    } else {
        GgmlType::F16
    }
}

/// The type llama.cpp's quantizer (`llama_tensor_get_type`) gives a tensor when `requested` is
/// asked for: the output matrix (lm_head, or the tied embedding serving as it) is Q6_K for the
/// 4/5-bit types; Q4_K means llama.cpp's Q4_K_M mix, which also keeps attn_v and ffn_down at
/// Q6_K on the first and last eighth of the layers and every third one between. With an
/// importance matrix (`imatrix`), Q4_0 puts ffn_down of the first eighth of the layers in Q4_1
/// (llama.cpp's guard against those layers going wrong at Q4_0).
pub fn tensor_type(requested: GgmlType, hf: &str, c: &smelt_model::ModelConfig, imatrix: bool) -> GgmlType {
    let is_output = hf == "lm_head.weight" || (c.tie_embeddings && hf == "model.embed_tokens.weight");
    if is_output && matches!(requested, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q4_K) {
        return GgmlType::Q6_K;
    }
    let layer: Option<usize> =
        hf.strip_prefix("model.layers.").and_then(|r| r.split('.').next()).and_then(|l| l.parse().ok());
    let n = c.n_layers;
    if requested == GgmlType::Q4_K && (hf.ends_with("v_proj.weight") || hf.ends_with("down_proj.weight")) {
        let more_bits = |i: usize| i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64).rem_euclid(3) == 2;
        if layer.is_some_and(more_bits) {
            return GgmlType::Q6_K;
        }
    }
    if requested == GgmlType::Q4_0 && imatrix && hf.ends_with("down_proj.weight") && layer.is_some_and(|i| i < n / 8) {
        return GgmlType::Q4_1;
    }
    requested
}

/// An importance matrix to quantise with, and the file it came from (recorded in the output
/// as `quantize.imatrix.file`, as llama-quantize records it).
pub struct WithImatrix<'a> {
    pub imatrix: &'a Imatrix,
    pub file: Option<&'a str>,
    /// The model was smoothed with this α first (`smooth::smooth`); recorded as
    /// `quantize.smooth.alpha` (llama.cpp ignores the key).
    pub smooth_alpha: Option<f32>,
}

/// What an export did with the importance matrix.
#[derive(Debug, Default)]
pub struct ExportReport {
    /// Matrices quantised with importance weights.
    pub weighted: usize,
    /// Matrices in a type with a weighted quantiser that the imatrix has no entry for (quantised
    /// without weights, as llama-quantize does: "did not find weights for …").
    pub unweighted: Vec<String>,
    /// How many tensors of each type the file holds, in order of first use.
    pub types: Vec<(GgmlType, usize)>,
}

/// llama.cpp's `general.file_type` for a model mostly of type `t`.
fn file_type(t: GgmlType) -> u32 {
    match t {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q4_K => 15,
        GgmlType::Q6_K => 18,
        GgmlType::BF16 => 32,
    }
}

pub fn export(
    model: &Model,
    ty: GgmlType,
    tok: TokenizerSource,
    name: &str,
    imatrix: Option<&WithImatrix>,
    out: &Path,
) -> Result<ExportReport> {
    let c = &model.cfg;
    let tensors = params::list(c);
    if let Some(t) = tensors.iter().find(|t| !t.def.llama_gguf) {
        bail!(
            "export-gguf: a GGUF `llama` file has no place for {} ({} with qkv bias {}, q/k norm {})",
            t.name,
            c.arch.hf_name(),
            c.qkv_bias,
            c.qk_norm
        );
    }
    if c.sliding_window.is_some()
        || c.sliding_layers.is_some()
        || c.attn_scale.is_some()
        || c.norm != NormKind::Rms
        || c.act != Activation::Silu
    {
        bail!("export-gguf: a GGUF `llama` file has RMSNorm, SwiGLU, 1/√head_dim attention and no sliding window (got {:?}, {:?}, scale {:?}, window {:?})",
            c.norm, c.act, c.attn_scale, c.sliding_window);
    }
    let mut w = GgufWriter::new();
    let s = |v: &str| Value::String(v.to_string());
    let u = |v: usize| Value::U32(v as u32);
    w.kv("general.architecture", s("llama"));
    w.kv("general.name", s(name));
    w.kv("general.file_type", Value::U32(file_type(ty)));
    w.kv("general.quantization_version", Value::U32(2));
    w.kv("llama.vocab_size", u(c.vocab_size));
    w.kv("llama.context_length", u(c.max_pos));
    w.kv("llama.embedding_length", u(c.dim));
    w.kv("llama.block_count", u(c.n_layers));
    w.kv("llama.feed_forward_length", u(c.ffn_hidden));
    w.kv("llama.attention.head_count", u(c.n_heads));
    w.kv("llama.attention.head_count_kv", u(c.n_kv_heads));
    w.kv("llama.attention.key_length", u(c.head_dim));
    w.kv("llama.attention.value_length", u(c.head_dim));
    w.kv("llama.rope.dimension_count", u(c.head_dim));
    w.kv("llama.rope.freq_base", Value::F32(c.rope_theta as f32));
    w.kv("llama.attention.layer_norm_rms_epsilon", Value::F32(c.norm_eps as f32));
    match &c.rope_scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => {
            w.kv("llama.rope.scaling.type", s("linear"));
            w.kv("llama.rope.scaling.factor", Value::F32(*factor as f32));
        }
        other => bail!("export-gguf: RoPE scaling {other:?} is not exported yet"),
    }
    if let Some(im) = imatrix {
        // llama-quantize's kv overrides (integers as u32, strings cut to 127 bytes there).
        if let Some(f) = im.file {
            w.kv("quantize.imatrix.file", s(f));
        }
        if let Some(d) = im.imatrix.datasets.first() {
            w.kv("quantize.imatrix.dataset", s(d));
        }
        w.kv("quantize.imatrix.entries_count", Value::U32(im.imatrix.entries.len() as u32));
        if im.imatrix.chunk_count > 0 {
            w.kv("quantize.imatrix.chunks_count", Value::U32(im.imatrix.chunk_count));
        }
        if let Some(a) = im.smooth_alpha {
            w.kv("quantize.smooth.alpha", Value::F32(a));
        }
    }
    match tok {
        TokenizerSource::Gguf(p) => {
            let f = GgufFile::open(p)?;
            for (k, v) in &f.metadata {
                if k.starts_with("tokenizer.") {
                    w.kv(k, v.clone());
                }
            }
        }
        TokenizerSource::HfDir { dir, pre } => {
            for (k, v) in smelt_tokenizer::hf_gguf_metadata(dir, pre, c.vocab_size)? {
                w.kv(&k, v);
            }
        }
    }
    let mut report = ExportReport::default();
    for (params::Param { def, name: hf, gguf: gname, shape, .. }, t) in tensors.iter().zip(&model.params) {
        let mut data = t.to_vec_f32()?;
        // A model loaded from GGUF already has llama.cpp's interleaved Q/K rows.
        let half_split = model.rope.layout == smelt_core::ops::rope::RopeLayout::HalfSplit;
        if half_split && matches!(def.role, Role::Wq | Role::Wk) {
            let heads = shape[0] / c.head_dim;
            let cols = shape[1];
            let perm = qk_to_gguf_perm(heads, c.head_dim);
            data = perm.iter().flat_map(|&r| data[r * cols..(r + 1) * cols].to_vec()).collect();
        }
        let cols = *shape.last().unwrap();
        let tt =
            if shape.len() == 1 { GgmlType::F32 } else { type_for(tensor_type(ty, hf, c, imatrix.is_some()), cols) };
        let weighted_type =
            matches!(tt, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q4_K | GgmlType::Q6_K);
        let weights = match imatrix {
            Some(im) if shape.len() == 2 && weighted_type => match im.imatrix.weights(gname) {
                Some(wv) if wv.len() == cols => {
                    report.weighted += 1;
                    Some(wv)
                }
                // llama-quantize ignores a token embedding's mismatched weights, and fails on any other.
                Some(_) if gname == "token_embd.weight" => {
                    report.unweighted.push(gname.clone());
                    None
                }
                Some(wv) => bail!(
                    "imatrix: {} weights for {gname}, which has {cols} columns (an imatrix of another model?)",
                    wv.len()
                ),
                None => {
                    report.unweighted.push(gname.clone());
                    None
                }
            },
            _ => None,
        };
        match report.types.iter_mut().find(|(t, _)| *t == tt) {
            Some((_, n)) => *n += 1,
            None => report.types.push((tt, 1)),
        }
        let bytes = quantize_with(tt, &data, cols, weights.as_deref())?;
        w.tensor(gname, shape, tt, bytes)?;
    }
    crate::write_gguf(&w, out)?;
    Ok(report)
}
