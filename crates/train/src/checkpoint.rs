//! Checkpoints: a Hugging Face model folder (config.json, model.safetensors, tokenizer.json,
//! generation_config.json) plus, for exact resume, `optimizer.safetensors` (AdamW moments, Muon
//! momentum buffers) and
//! `trainer_state.json` (step, settings, data position).
//!
//! Every checkpoint is written into a temporary sibling folder (removed on an error or Ctrl-C)
//! and swapped into place atomically, so an interrupted write never damages the checkpoint that
//! was there before and `final/` is never missing. Each run lineage (a fresh run and its
//! resumes) has an id in `trainer_state.json`; rotation only ever deletes that lineage's
//! `step-*` folders.

use crate::optim::Optimizer;
use crate::TrainConfig;
use anyhow::{Context, Result};
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
    /// The run lineage: made by a fresh run, kept by its resumes (empty in older checkpoints).
    #[serde(default)]
    pub run_id: String,
}

pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:06}")
}

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
pub fn save(dir: &Path, model: &Model, tok: &Tokenizer, train: Option<(&Optimizer, &TrainerState)>) -> Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    dir.file_name().context("checkpoint path has no folder name")?;
    let staged = smelt_files::Temp::new(dir);
    let tmp = staged.path().to_path_buf();
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    write_into(&tmp, model, tok, train).with_context(|| format!("saving checkpoint {}", dir.display()))?;
    staged.commit_dir(dir)
}

fn write_into(tmp: &Path, model: &Model, tok: &Tokenizer, train: Option<(&Optimizer, &TrainerState)>) -> Result<()> {
    match &model.adapter {
        // A LoRA run's checkpoint is its adapter in PEFT's format; the base stays where
        // `init` names it (trainer_state.json).
        Some(a) => a.save(tmp, model.cfg.head_dim)?,
        None => model.save(tmp)?,
    }
    // tokenizer.json and tokenizer_config.json (BOS/EOS names, the chat template): the folder
    // is then a model `generate --chat` and transformers' apply_chat_template can use.
    tok.save_hf(tmp)?;
    std::fs::write(tmp.join("generation_config.json"), serde_json::to_string_pretty(&generation_config(model, tok))?)?;
    if let Some((opt, state)) = train {
        let named: Vec<(String, Tensor)> = opt.named(&model.trainable_names());
        let mut meta = std::collections::HashMap::new();
        meta.insert("adamw_t".to_string(), opt.t().to_string());
        let kind = serde_json::to_value(state.config.optimizer)?;
        meta.insert("optimizer".to_string(), kind.as_str().unwrap_or_default().to_string());
        smelt_model::io::write_safetensors(
            &tmp.join("optimizer.safetensors"),
            &named,
            smelt_core::DType::F32,
            Some(meta),
        )?;
        std::fs::write(tmp.join("trainer_state.json"), serde_json::to_string_pretty(state)?)?;
    }
    Ok(())
}

/// A checkpoint folder of a run directory (`step-*` or `final`) and what its state says.
#[derive(Debug)]
pub struct Found {
    pub path: PathBuf,
    /// (run id, step) from its trainer_state.json; `None` when it has none or it is unreadable.
    pub state: Option<(String, u64)>,
}

impl Found {
    pub fn name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

/// The checkpoint folders in `root`, sorted by name.
pub fn list(root: &Path) -> Result<Vec<Found>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))?.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if !(path.is_dir() && (name.starts_with("step-") || name == "final")) {
            continue;
        }
        let state = std::fs::read_to_string(path.join("trainer_state.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| Some((v["run_id"].as_str().unwrap_or("").to_string(), v["step"].as_u64()?)));
        out.push(Found { path, state });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// A base model from a folder (smelt's or Hugging Face's) or a GGUF file: a GGUF's matrices
/// stay in their block formats under an adapter (`lora`: QLoRA), else they are dequantised to
/// f32 for a full fine-tune.
pub fn load_base(path: &Path, lora: bool) -> Result<Model> {
    if path.extension().is_some_and(|e| e == "gguf") {
        let m = smelt_convert::load_model(path)?;
        return if lora { Ok(m) } else { m.dequantized() };
    }
    Model::load(path)
}

/// The model of a checkpoint: its weights, or for a LoRA run's checkpoint (an adapter folder)
/// the base its `trainer_state.json` names (`init`; for DPO on an SFT adapter, with that
/// adapter merged in) with the adapter attached.
pub fn load_model(dir: &Path) -> Result<Model> {
    if !dir.join(smelt_model::lora::CONFIG_FILE).exists() {
        return Model::load(dir);
    }
    let sp = dir.join("trainer_state.json");
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&sp)
            .with_context(|| format!("reading {} (is this a training checkpoint?)", sp.display()))?,
    )
    .with_context(|| format!("{}: invalid JSON", sp.display()))?;
    let base = v["config"]["init"]
        .as_str()
        .with_context(|| format!("{}: a LoRA checkpoint's state names no base model (config.init)", sp.display()))?;
    let mut model =
        load_base(Path::new(base), true).with_context(|| format!("loading the base model of {}", dir.display()))?;
    // Rebuilt in the order `smelt dpo` built it: a DPO run on an SFT adapter trains on base + SFT
    // merged in f32 (a GGUF base dequantised first), and only then quantised if asked.
    if let Some(sft) = v["config"]["dpo"]["adapter"].as_str() {
        model = model.dequantized()?;
        model.attach_dir(Path::new(sft)).with_context(|| format!("the SFT adapter {sft} of {}", dir.display()))?;
        model = model.merged()?;
    }
    if let Some(q) = v["config"]["quantize_base"].as_str() {
        // The same float base and type give the same blocks: the base the run trained on.
        model = smelt_convert::qbase::quantize_base(&model, smelt_convert::qbase::parse_type(q)?)?;
    }
    model.attach_dir(dir)?;
    Ok(model)
}

/// A checkpoint's `trainer_state.json` (what `--resume` continues: its settings, its step).
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let sp = dir.join("trainer_state.json");
    serde_json::from_str(
        &std::fs::read_to_string(&sp)
            .with_context(|| format!("reading {} (is this a training checkpoint?)", sp.display()))?,
    )
    .with_context(|| format!("{}: invalid trainer state", sp.display()))
}

/// Loads the optimizer state and trainer state saved beside a model (its `trainable` tensors').
pub fn load_train_state(dir: &Path, model: &Model) -> Result<(Optimizer, TrainerState)> {
    let state = read_state(dir)?;
    let op = dir.join("optimizer.safetensors");
    let t = smelt_model::io::read_safetensors(&op)?;
    let opt = Optimizer::from_named(
        state.config.optimizer,
        &model.trainable_names(),
        model.trainable(),
        &model.trainable_matrices(),
        t,
        state.step,
        &op.display().to_string(),
    )?;
    Ok((opt, state))
}

/// Removes all but the newest `keep` `step-*` folders of the lineage `run_id` in `root`;
/// checkpoints of any other run are never touched.
pub fn rotate(root: &Path, keep: usize, run_id: &str) -> Result<()> {
    let mut ours: Vec<(u64, PathBuf)> = list(root)?
        .into_iter()
        .filter(|f| f.name().starts_with("step-"))
        .filter_map(|f| match f.state {
            Some((id, step)) if id == run_id => Some((step, f.path)),
            _ => None,
        })
        .collect();
    ours.sort();
    if ours.len() > keep {
        for (_, p) in &ours[..ours.len() - keep] {
            std::fs::remove_dir_all(p).with_context(|| format!("removing old checkpoint {}", p.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(root: &Path, name: &str, run_id: &str, step: u64) {
        std::fs::create_dir_all(root.join(name)).unwrap();
        let v = serde_json::json!({ "run_id": run_id, "step": step });
        std::fs::write(root.join(name).join("trainer_state.json"), v.to_string()).unwrap();
    }

    #[test]
    fn rotation_only_deletes_this_lineage() {
        let root = std::env::temp_dir().join(format!("smelt-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        // Another run's higher steps sort after ours by name; they must survive.
        for s in [1, 2, 3] {
            fake(&root, &step_dir_name(s), "ours", s);
        }
        fake(&root, &step_dir_name(700), "theirs", 700);
        fake(&root, &step_dir_name(800), "theirs", 800);
        std::fs::create_dir_all(root.join("step-notes")).unwrap();
        rotate(&root, 2, "ours").unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(&root).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["step-000002", "step-000003", "step-000700", "step-000800", "step-notes"]);
        let _ = std::fs::remove_dir_all(&root);
    }
}
