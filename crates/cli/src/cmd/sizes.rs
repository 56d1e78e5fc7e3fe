//! `smelt sizes`: exact parameter counts and memory estimates for every preset.

use anyhow::Result;
use clap::Args;
use smelt_model::presets::{preset, PRESETS};
use smelt_model::ModelConfig;

#[derive(Args, Debug)]
pub struct SizesArgs {
    #[arg(long, default_value_t = 8192)]
    vocab_size: usize,
    /// Batch size for the training-memory estimate.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Sequence length for the training-memory and KV-cache estimates.
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
}

fn gib(b: f64) -> String {
    if b >= (1u64 << 30) as f64 { format!("{:.2} GiB", b / (1u64 << 30) as f64) } else { format!("{:.1} MiB", b / (1 << 20) as f64) }
}

/// Activation bytes kept for backward per token (f32): per layer the block inputs and the
/// outputs of every matmul, norm, rope and the SwiGLU gate; plus logits and their gradient.
fn activation_bytes_per_token(c: &ModelConfig) -> f64 {
    let (d, q, kv, f) = (c.dim as f64, (c.n_heads * c.head_dim) as f64, (c.n_kv_heads * c.head_dim) as f64, c.ffn_hidden as f64);
    let per_layer = 6.0 * d + 3.0 * q + 4.0 * kv + 3.0 * f;
    4.0 * (c.n_layers as f64 * per_layer + 2.0 * c.vocab_size as f64 + 2.0 * d)
}

pub fn run(a: SizesArgs) -> Result<()> {
    println!(
        "{:<7} {:>5} {:>6} {:>5} {:>4} {:>6} {:>14}  {:>11} {:>11} {:>12}",
        "size", "dim", "layers", "heads", "kv", "ffn", "parameters", "infer f32", "infer bf16", "train f32"
    );
    for p in PRESETS {
        let c = preset(p.0, a.vocab_size)?;
        let n = c.n_params() as f64;
        let kv = 2.0 * (c.n_layers * c.n_kv_heads * c.head_dim) as f64 * a.seq_len as f64 * 4.0;
        // Training: weights, gradients and two AdamW moments in f32 (16 B/param) + activations.
        let train = 16.0 * n + activation_bytes_per_token(&c) * (a.batch_size * a.seq_len) as f64;
        println!(
            "{:<7} {:>5} {:>6} {:>5} {:>4} {:>6} {:>14}  {:>11} {:>11} {:>12}",
            p.0, c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_hidden, c.n_params(),
            gib(4.0 * n + kv), gib(2.0 * n + kv / 2.0), gib(train)
        );
    }
    println!(
        "\nvocab {}; inference = weights + KV cache for {} tokens; training = weights, grads, AdamW moments (16 B/param)\n+ activations for batch {} × seq {} (use --grad-checkpoint in `smelt train` to cut those to about 1/layers).",
        a.vocab_size, a.seq_len, a.batch_size, a.seq_len
    );
    Ok(())
}
