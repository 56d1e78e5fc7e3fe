//! What a model needs in memory, estimated from its config alone (in f64, so that absurd
//! sizes from a flag or a file give a large number, not an overflow): checked against
//! `smelt_core::mem::available` before weights, KV caches or activations are allocated, and
//! printed by `smelt sizes`.

use crate::ModelConfig;

/// Parameters, computed in closed form (no layout is built).
pub fn params(c: &ModelConfig) -> f64 {
    let (d, q, kv, f, v) = (
        c.dim as f64,
        c.n_heads as f64 * c.head_dim as f64,
        c.n_kv_heads as f64 * c.head_dim as f64,
        c.ffn_hidden as f64,
        c.vocab_size as f64,
    );
    let mut layer = 2.0 * d + 2.0 * q * d + 2.0 * kv * d + 3.0 * f * d;
    if c.qkv_bias {
        layer += q + 2.0 * kv;
    }
    if c.qk_norm {
        layer += 2.0 * c.head_dim as f64;
    }
    let head = if c.tie_embeddings { 0.0 } else { v * d };
    v * d + c.n_layers as f64 * layer + d + head
}

/// Activation bytes kept for backward per token (f32): per layer the block inputs and the
/// outputs of every matmul, norm, rope and the SwiGLU gate; plus logits and their gradient.
pub fn activation_bytes_per_token(c: &ModelConfig) -> f64 {
    let (d, q, kv, f) = (
        c.dim as f64,
        c.n_heads as f64 * c.head_dim as f64,
        c.n_kv_heads as f64 * c.head_dim as f64,
        c.ffn_hidden as f64,
    );
    let per_layer = 6.0 * d + 3.0 * q + 4.0 * kv + 3.0 * f;
    4.0 * (c.n_layers as f64 * per_layer + 2.0 * c.vocab_size as f64 + 2.0 * d)
}

/// Training: f32 weights, gradients and two AdamW moments (16 B/parameter) plus the
/// activations of one micro-batch of `tokens`; with gradient checkpointing only each block's
/// input is kept for all layers and one layer's activations at a time.
pub fn training_bytes(c: &ModelConfig, tokens: f64, grad_checkpoint: bool) -> f64 {
    let act = if grad_checkpoint {
        let one_layer = activation_bytes_per_token(&ModelConfig { n_layers: 1, ..c.clone() });
        one_layer + 4.0 * c.n_layers as f64 * c.dim as f64
    } else {
        activation_bytes_per_token(c)
    };
    16.0 * params(c) + act * tokens
}

/// A KV cache of `positions` for `batch` sequences, `bytes` per value (4 for f32).
pub fn kv_cache_bytes(c: &ModelConfig, batch: f64, positions: f64, bytes: f64) -> f64 {
    2.0 * c.n_layers as f64 * c.n_kv_heads as f64 * c.head_dim as f64 * batch * positions * bytes
}

/// An inference forward over `tokens` (f32): the widest intermediates of one layer (attention
/// scores of a `seq`-long window included) and the logits.
pub fn forward_bytes(c: &ModelConfig, tokens: f64, seq: f64) -> f64 {
    let (d, f) = (c.dim as f64, c.ffn_hidden as f64);
    4.0 * tokens * (8.0 * d + 3.0 * f + c.n_heads as f64 * seq + c.vocab_size as f64)
}
