//! Runs a model folder on given token ids, for `scripts/hf_parity_live.py` (the CLI takes text,
//! and this branch has no Hugging Face tokenizer yet, so parity is driven at the id level).
//!
//! cargo run --release -p smelt-infer --example hf_parity -- MODEL_DIR REQUEST.json OUT.safetensors
//! REQUEST.json: {"prompt_ids": [...], "gen_tokens": 64, "ppl_ids": [...], "window": 64}
//! Writes OUT.safetensors (logits (T, V) f32 over the prompt, greedy_ids i32 with no stop ids)
//! and prints {"mean_nll": .., "predicted": .., "load_s": .., "run_s": ..} on stdout.

use anyhow::{Context, Result};
use smelt_core::Tensor;
use smelt_infer::{generate, perplexity, GenerateConfig, SamplingConfig};
use smelt_model::{Logits, Model};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [dir, req, out] = args.as_slice() else {
        anyhow::bail!("usage: hf_parity MODEL_DIR REQUEST.json OUT.safetensors");
    };
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(req).with_context(|| format!("reading {}", req.display()))?)?;
    let ids = |k: &str| -> Result<Vec<u32>> {
        r[k].as_array()
            .with_context(|| format!("{}: {k} missing", req.display()))?
            .iter()
            .map(|x| x.as_u64().map(|i| i as u32).context("ids must be integers"))
            .collect()
    };
    let t0 = Instant::now();
    let m = Model::load(dir)?;
    let load_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let prompt = ids("prompt_ids")?;
    let logits = m.logits(&Tensor::from_u32(prompt.clone(), &[1, prompt.len()])?, None, Logits::All)?;
    let gen = GenerateConfig {
        max_tokens: r["gen_tokens"].as_u64().unwrap_or(64) as usize,
        sampling: SamplingConfig::default(),
        stop_ids: vec![],
    };
    let g = generate(&m, &prompt, &gen, |_| {})?;
    let p = perplexity(&m, &ids("ppl_ids")?, r["window"].as_u64().unwrap_or(64) as usize, |_, _| {})?;
    let greedy = Tensor::from_i32(g.ids.iter().map(|&i| i as i32).collect(), &[g.ids.len()])?;
    smelt_model::io::write_safetensors(
        out,
        &[("logits".into(), logits), ("greedy_ids".into(), greedy)],
        smelt_core::DType::F32,
        None,
    )?;
    println!(
        "{}",
        serde_json::json!({"mean_nll": p.mean_nll, "predicted": p.predicted, "load_s": load_s, "run_s": t1.elapsed().as_secs_f64()})
    );
    Ok(())
}
