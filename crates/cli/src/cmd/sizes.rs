//! `smelt sizes`: exact parameter counts and memory estimates for every preset.

use anyhow::Result;
use clap::Args;
use smelt_model::memory;
use smelt_model::presets::{preset, PRESETS};

#[derive(Args, Debug)]
pub struct SizesArgs {
    #[arg(long, default_value_t = 8192, value_parser = super::checks::vocab_size)]
    vocab_size: usize,
    /// Batch size for the training-memory estimate.
    #[arg(long, default_value_t = 8, value_parser = super::checks::count)]
    batch_size: usize,
    /// Sequence length for the training-memory and KV-cache estimates.
    #[arg(long, default_value_t = 512, value_parser = super::checks::count)]
    seq_len: usize,
}

fn gib(b: f64) -> String {
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b / (1 << 20) as f64)
    }
}

pub fn run(a: SizesArgs) -> Result<()> {
    println!(
        "{:<7} {:>5} {:>6} {:>5} {:>4} {:>6} {:>14}  {:>11} {:>11} {:>12}",
        "size", "dim", "layers", "heads", "kv", "ffn", "parameters", "infer f32", "infer bf16", "train f32"
    );
    for p in PRESETS {
        let c = preset(p.0, a.vocab_size)?;
        let n = c.n_params() as f64;
        let kv = memory::kv_cache_bytes(&c, 1.0, a.seq_len as f64, 4.0);
        // Training: weights, gradients and two AdamW moments in f32 (16 B/param) + activations.
        let train = memory::training_bytes(&c, a.batch_size as f64 * a.seq_len as f64, false);
        println!(
            "{:<7} {:>5} {:>6} {:>5} {:>4} {:>6} {:>14}  {:>11} {:>11} {:>12}",
            p.0,
            c.dim,
            c.n_layers,
            c.n_heads,
            c.n_kv_heads,
            c.ffn_hidden,
            c.n_params(),
            gib(4.0 * n + kv),
            gib(2.0 * n + kv / 2.0),
            gib(train)
        );
    }
    println!(
        "\nvocab {}; inference = weights + KV cache for {} tokens; training = weights, grads, AdamW moments (16 B/param)\n+ activations for batch {} × seq {} (use --grad-checkpoint in `smelt train` to cut those to about 1/layers).",
        a.vocab_size, a.seq_len, a.batch_size, a.seq_len
    );
    Ok(())
}
