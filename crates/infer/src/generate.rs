//! Autoregressive generation with a KV cache: prefill the prompt, then one token at a time.

use crate::sample::{Sampler, SamplingConfig};
use anyhow::{bail, Context, Result};
use smelt_core::Tensor;
use smelt_model::{Decoder, KvCache, Model};
use smelt_tokenizer::Tokenizer;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

pub struct GenerateConfig {
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
    /// Ids that end generation (not included in the output).
    pub stop_ids: Vec<u32>,
}

pub struct Generation {
    pub prompt_ids: Vec<u32>,
    /// Generated ids, without the stop id that ended generation.
    pub ids: Vec<u32>,
    pub stopped_on_eos: bool,
    /// Decode speed: generated tokens per second after the prompt was processed.
    pub tokens_per_second: f64,
    pub prefill_seconds: f64,
}

/// The ids that end generation, as transformers' `generate` gathers them: the model config's
/// `eos_token_id` (one or a list), the tokenizer's EOS, and `eos_token_id` of the
/// generation_config.json beside the weights when `model_path` is a folder that has one.
pub fn stop_ids(model: &Model, tok: &Tokenizer, model_path: &Path) -> Result<Vec<u32>> {
    let mut ids = model.cfg.eos_token_ids.clone();
    ids.extend(tok.eos_id());
    let gen = model_path.join("generation_config.json");
    if model_path.is_dir() && gen.exists() {
        let text = std::fs::read_to_string(&gen).with_context(|| format!("reading {}", gen.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", gen.display()))?;
        match &v["eos_token_id"] {
            serde_json::Value::Null => {}
            serde_json::Value::Number(n) => ids.extend(n.as_u64().map(|x| x as u32)),
            serde_json::Value::Array(a) => ids.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32)),
            other => bail!("{}: eos_token_id = {other}, expected an id or a list of ids", gen.display()),
        }
    }
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(*id));
    Ok(ids)
}

/// Generates after `prompt`; `on_token` sees every generated id as it is produced.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    cfg: &GenerateConfig,
    mut on_token: impl FnMut(u32),
) -> Result<Generation> {
    generate_until(model, prompt, cfg, |id| {
        on_token(id);
        ControlFlow::Continue(())
    })
}

/// [`generate`] whose `on_token` may end generation after the id it is shown (a stop string
/// completed, the reader went away): that id stays in `ids`, and `stopped_on_eos` is false.
/// The server's engine runs this, so its greedy output is `smelt generate`'s by construction.
pub fn generate_until(
    model: &Model,
    prompt: &[u32],
    cfg: &GenerateConfig,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<Generation> {
    if prompt.is_empty() {
        bail!("the prompt is empty after tokenisation; give some text (or a tokenizer that adds BOS)");
    }
    let cache = KvCache::new_on(&model.cfg, 1, prompt.len() + cfg.max_tokens + 1, model.device())?;
    let mut dec = Decoder::new(model, cache);
    let mut sampler = Sampler::new(cfg.sampling.clone());
    sampler.observe(prompt);
    let t0 = Instant::now();
    let mut logits = dec.prefill(&Tensor::from_u32(prompt.to_vec(), &[1, prompt.len()])?)?;
    let prefill_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut ids = Vec::new();
    let mut stopped = false;
    while ids.len() < cfg.max_tokens {
        // Sampling runs where the logits are: on a GPU only the chosen id comes back.
        let next = sampler.sample(&logits)?;
        if cfg.stop_ids.contains(&next) {
            stopped = true;
            break;
        }
        ids.push(next);
        if on_token(next).is_break() || ids.len() == cfg.max_tokens {
            break;
        }
        // On a GPU a captured step after the first (`Decoder`): one graph launch a token.
        logits = dec.step(&Tensor::from_u32(vec![next], &[1, 1])?)?;
    }
    let secs = t1.elapsed().as_secs_f64().max(1e-9);
    Ok(Generation {
        prompt_ids: prompt.to_vec(),
        tokens_per_second: ids.len() as f64 / secs,
        ids,
        stopped_on_eos: stopped,
        prefill_seconds,
    })
}
