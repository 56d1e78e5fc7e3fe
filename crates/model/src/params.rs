//! Parameter naming and order. Names are Hugging Face's (`model.layers.3.self_attn.q_proj.weight`),
//! so a smelt checkpoint is a Hugging Face checkpoint. The order here is the order of the
//! parameter list everywhere (optimizer state, gradient norms, saving).

use crate::config::ModelConfig;
use smelt_core::rng::Rng;
use smelt_core::Tensor;

/// Where one layer's parameters sit in the parameter list.
#[derive(Clone, Copy, Debug)]
pub struct LayerIdx {
    pub attn_norm: usize,
    pub wq: usize,
    pub wk: usize,
    pub wv: usize,
    pub wo: usize,
    pub bq: Option<usize>,
    pub bk: Option<usize>,
    pub bv: Option<usize>,
    pub q_norm: Option<usize>,
    pub k_norm: Option<usize>,
    pub ffn_norm: usize,
    pub w_gate: usize,
    pub w_up: usize,
    pub w_down: usize,
}

#[derive(Clone, Debug)]
pub struct Index {
    pub embed: usize,
    pub layers: Vec<LayerIdx>,
    pub norm: usize,
    /// The output head; the embedding when tied.
    pub head: usize,
}

/// (name, shape) of every parameter, in order.
pub fn layout(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<(String, Vec<usize>)> = vec![("model.embed_tokens.weight".into(), vec![c.vocab_size, c.dim])];
    let (q, kv) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    for l in 0..c.n_layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        v.push((p("input_layernorm.weight"), vec![c.dim]));
        v.push((p("self_attn.q_proj.weight"), vec![q, c.dim]));
        v.push((p("self_attn.k_proj.weight"), vec![kv, c.dim]));
        v.push((p("self_attn.v_proj.weight"), vec![kv, c.dim]));
        v.push((p("self_attn.o_proj.weight"), vec![c.dim, q]));
        if c.qkv_bias {
            v.push((p("self_attn.q_proj.bias"), vec![q]));
            v.push((p("self_attn.k_proj.bias"), vec![kv]));
            v.push((p("self_attn.v_proj.bias"), vec![kv]));
        }
        if c.qk_norm {
            v.push((p("self_attn.q_norm.weight"), vec![c.head_dim]));
            v.push((p("self_attn.k_norm.weight"), vec![c.head_dim]));
        }
        v.push((p("post_attention_layernorm.weight"), vec![c.dim]));
        v.push((p("mlp.gate_proj.weight"), vec![c.ffn_hidden, c.dim]));
        v.push((p("mlp.up_proj.weight"), vec![c.ffn_hidden, c.dim]));
        v.push((p("mlp.down_proj.weight"), vec![c.dim, c.ffn_hidden]));
    }
    v.push(("model.norm.weight".into(), vec![c.dim]));
    if !c.tie_embeddings {
        v.push(("lm_head.weight".into(), vec![c.vocab_size, c.dim]));
    }
    v
}

pub fn index(c: &ModelConfig) -> Index {
    let mut i = 1;
    let mut next = || { i += 1; i - 1 };
    let layers = (0..c.n_layers)
        .map(|_| {
            let (attn_norm, wq, wk, wv, wo) = (next(), next(), next(), next(), next());
            let (bq, bk, bv) = if c.qkv_bias { (Some(next()), Some(next()), Some(next())) } else { (None, None, None) };
            let (q_norm, k_norm) = if c.qk_norm { (Some(next()), Some(next())) } else { (None, None) };
            let (ffn_norm, w_gate, w_up, w_down) = (next(), next(), next(), next());
            LayerIdx { attn_norm, wq, wk, wv, wo, bq, bk, bv, q_norm, k_norm, ffn_norm, w_gate, w_up, w_down }
        })
        .collect();
    let norm = next();
    let head = if c.tie_embeddings { 0 } else { next() };
    Index { embed: 0, layers, norm, head }
}

/// Fresh weights: N(0, 0.02) for matrices, with the projections that write into the residual
/// stream (o_proj, down_proj) scaled by 1/sqrt(2·layers) as in GPT-2; norms 1, biases 0.
pub fn init(c: &ModelConfig, seed: u64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    let resid_scale = 1.0 / (2.0 * c.n_layers as f64).sqrt();
    layout(c)
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if name.ends_with("norm.weight") {
                vec![1.0; n]
            } else if name.ends_with(".bias") {
                vec![0.0; n]
            } else {
                let std = if name.contains("o_proj") || name.contains("down_proj") { 0.02 * resid_scale } else { 0.02 };
                (0..n).map(|_| (rng.normal() * std) as f32).collect()
            };
            Tensor::from_f32(data, &shape).expect("shape matches data")
        })
        .collect()
}

/// Whether weight decay applies: matrices and embeddings yes, norm gains and biases no.
pub fn decays(shape: &[usize]) -> bool {
    shape.len() >= 2
}
