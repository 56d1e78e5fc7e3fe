//! Checkpoints: a Hugging Face model folder (config.json, model.safetensors, tokenizer.json,
//! generation_config.json) plus, for exact resume, `optimizer.safetensors` (AdamW moments) and
//! `trainer_state.json` (step, settings, data position).
//!
//! Every checkpoint is written into a temporary sibling folder and renamed into place, so an
//! interrupted write never damages the checkpoint that was there before.

use crate::optim::AdamWState;
use crate::TrainConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use smelt_core::Tensor;
use smelt_model::Model;
use smelt_tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainerState {
    /// Updates completed.
    pub step: u64,
    /// Tokens consumed so far.
    pub tokens_seen: u64,
    /// The data position: batches are a pure function of (seed, step), so the step is all
    /// the loader needs; recorded separately for readers of the file.
    pub data_position: u64,
    pub config: TrainConfig,
    pub smelt_version: String,
}

pub fn step_dir_name(step: u64) -> String { format!("step-{step:06}") }

fn generation_config(model: &Model, tok: &Tokenizer) -> serde_json::Value {
    let mut v = json!({"do_sample": false, "transformers_version": "4.46.0"});
    if let Some(b) = model.cfg.bos_token_id.or(tok.bos_id()) {
        v["bos_token_id"] = json!(b);
    }
    if let Some(e) = model.cfg.eos_token_ids.first().copied().or(tok.eos_id()) {
        v["eos_token_id"] = json!(e);
    }
    v
}

/// Writes a complete checkpoint folder at `dir` atomically.
pub fn save(dir: &Path, model: &Model, tok: &Tokenizer, train: Option<(&AdamWState, &TrainerState)>) -> Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = dir.file_name().context("checkpoint path has no folder name")?.to_string_lossy().to_string();
    let tmp = parent.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    model.save(&tmp)?;
    tok.save(&tmp.join("tokenizer.json"))?;
    std::fs::write(tmp.join("generation_config.json"), serde_json::to_string_pretty(&generation_config(model, tok))?)?;
    if let Some((opt, state)) = train {
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for (i, n) in model.names.iter().enumerate() {
            named.push((format!("{n}.exp_avg"), opt.m[i].clone()));
            named.push((format!("{n}.exp_avg_sq"), opt.v[i].clone()));
        }
        let mut meta = std::collections::HashMap::new();
        meta.insert("adamw_t".to_string(), opt.t.to_string());
        smelt_model::io::write_safetensors(&tmp.join("optimizer.safetensors"), &named, smelt_core::DType::F32, Some(meta))?;
        std::fs::write(tmp.join("trainer_state.json"), serde_json::to_string_pretty(state)?)?;
    }
    // Swap in: the old folder (if any) is moved aside first and removed only after the rename.
    let old = parent.join(format!(".old-{name}-{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).with_context(|| format!("moving old {} aside", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// Loads the optimizer state and trainer state saved beside a model.
pub fn load_train_state(dir: &Path, model: &Model) -> Result<(AdamWState, TrainerState)> {
    let sp = dir.join("trainer_state.json");
    let state: TrainerState = serde_json::from_str(&std::fs::read_to_string(&sp).with_context(|| format!("reading {} (is this a training checkpoint?)", sp.display()))?)
        .with_context(|| format!("{}: invalid trainer state", sp.display()))?;
    let op = dir.join("optimizer.safetensors");
    let mut t = smelt_model::io::read_safetensors(&op)?;
    let (mut m, mut v) = (Vec::new(), Vec::new());
    for (n, p) in model.names.iter().zip(&model.params) {
        for (suffix, out) in [("exp_avg", &mut m), ("exp_avg_sq", &mut v)] {
            let key = format!("{n}.{suffix}");
            let x = t.remove(&key).with_context(|| format!("{}: missing {key}", op.display()))?;
            if x.shape() != p.shape() {
                bail!("{}: {key} has shape {:?}, parameter has {:?}", op.display(), x.shape(), p.shape());
            }
            out.push(x);
        }
    }
    Ok((AdamWState { m, v, t: state.step }, state))
}

/// Removes all but the newest `keep` `step-*` folders in `root`.
pub fn rotate(root: &Path, keep: usize) -> Result<()> {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
        .collect();
    steps.sort();
    if steps.len() > keep {
        for p in &steps[..steps.len() - keep] {
            std::fs::remove_dir_all(p).with_context(|| format!("removing old checkpoint {}", p.display()))?;
        }
    }
    Ok(())
}
