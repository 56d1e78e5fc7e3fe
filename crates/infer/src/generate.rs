//! Autoregressive generation with a KV cache: prefill the prompt, then one token at a time.

use crate::sample::{Sampler, SamplingConfig};
use anyhow::{bail, Result};
use smelt_core::Tensor;
use smelt_model::{KvCache, Logits, Model};
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

/// Generates after `prompt`; `on_token` sees every generated id as it is produced.
pub fn generate(model: &Model, prompt: &[u32], cfg: &GenerateConfig, mut on_token: impl FnMut(u32)) -> Result<Generation> {
    if prompt.is_empty() {
        bail!("the prompt is empty after tokenisation; give some text (or a tokenizer that adds BOS)");
    }
    let mut cache = KvCache::new_on(&model.cfg, 1, prompt.len() + cfg.max_tokens + 1, model.device())?;
    let mut sampler = Sampler::new(cfg.sampling.clone());
    sampler.observe(prompt);
    let t0 = Instant::now();
    let mut logits = model.logits(&Tensor::from_u32(prompt.to_vec(), &[1, prompt.len()])?, Some(&mut cache), Logits::Last)?;
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
        on_token(next);
        if ids.len() == cfg.max_tokens {
            break;
        }
        logits = model.logits(&Tensor::from_u32(vec![next], &[1, 1])?, Some(&mut cache), Logits::Last)?;
    }
    let secs = t1.elapsed().as_secs_f64().max(1e-9);
    Ok(Generation { prompt_ids: prompt.to_vec(), tokens_per_second: ids.len() as f64 / secs, ids, stopped_on_eos: stopped, prefill_seconds })
}
