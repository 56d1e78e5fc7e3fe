//! Bounds from what is real, checked before allocating: new tokens capped at what the model's
//! context leaves after the prompt (with a warning), and KV caches and forward passes refused
//! when their estimated memory exceeds what the device has (`smelt_core::mem`).

use anyhow::Result;
use smelt_model::{memory, Model};

/// Bytes of one cached value on the model's device (bf16 activations on a GPU by default).
fn value_bytes(model: &Model) -> f64 {
    match model.device().activation_dtype() {
        smelt_core::DType::F32 => 4.0,
        _ => 2.0,
    }
}

/// `requested` new tokens after a `prompt`-token prompt, capped at the model's context (with a
/// warning naming `flag`), once their KV cache is known to fit in memory.
pub fn new_tokens(model: &Model, prompt: usize, requested: usize, flag: &str) -> Result<usize> {
    let context = model.cfg.max_pos;
    let room = context.saturating_sub(prompt);
    if prompt >= context {
        eprintln!(
            "warning: the prompt ({prompt} tokens) fills the model's context of {context} tokens; nothing is generated"
        );
    } else if requested > room {
        eprintln!("warning: {flag} {requested} capped at {room}: the model's context is {context} tokens and the prompt takes {prompt}");
    }
    let n = requested.min(room);
    let positions = (prompt + n + 1) as f64;
    let need = memory::kv_cache_bytes(&model.cfg, 1.0, positions, value_bytes(model))
        + memory::forward_bytes(&model.cfg, prompt as f64, prompt as f64);
    smelt_core::mem::ensure_fits(model.device(), need, &format!("a KV cache of {positions} positions"))?;
    Ok(n)
}

/// Refuses a forward pass over a `tokens`-long window that would not fit in memory.
pub fn forward_fits(model: &Model, tokens: usize, what: &str) -> Result<()> {
    let need = memory::forward_bytes(&model.cfg, tokens as f64, tokens as f64);
    smelt_core::mem::ensure_fits(model.device(), need, &format!("{what} ({tokens} tokens)"))
}
