//! The LoRA flags, defined once: `smelt train` (and `smelt sft`) flatten `LoraArgs`; the
//! commands that run a model take `--adapter DIR` through `load_model_adapted`.

use anyhow::Result;
use clap::Args;
use smelt_model::{LoraConfig, Model};
use std::path::Path;

/// Train a LoRA adapter instead of every weight (PEFT's format; the base frozen).
#[derive(Args, Clone, Debug, Default)]
pub struct LoraArgs {
    /// Train a LoRA adapter of this rank on the frozen base (--init) instead of every weight;
    /// checkpoints are then PEFT adapter folders (adapter_config.json,
    /// adapter_model.safetensors) that `PeftModel.from_pretrained` and `--adapter` load.
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u32).range(1..))]
    pub lora_r: Option<u32>,
    /// LoRA's alpha: the update B·A is scaled by alpha/r (alpha/√r with --use-rslora).
    /// PEFT's default.
    #[arg(long, value_name = "A", default_value_t = 8.0, requires = "lora_r")]
    pub lora_alpha: f64,
    /// Dropout on each adapted projection's input to A, in training only (on CPU and CUDA, the same masks).
    #[arg(long, value_name = "P", default_value_t = 0.0, requires = "lora_r", value_parser = super::checks::fraction)]
    pub lora_dropout: f64,
    /// The projections to adapt: all-linear (q, k, v, o, gate, up, down: every linear layer
    /// but the head) or a comma list of q,k,v,o,gate,up,down (PEFT's q_proj, … also accepted).
    #[arg(long, value_name = "LIST", default_value = "all-linear", requires = "lora_r")]
    pub lora_targets: String,
    /// Rank-stabilised LoRA: scale by alpha/√r instead of alpha/r.
    #[arg(long, requires = "lora_r")]
    pub use_rslora: bool,
    /// QLoRA from a float base: keep the frozen base's layer matrices quantised in memory, in
    /// this block type (q8_0, q4_k = llama.cpp's Q4_K_M mix, q6_k, q5_0, q4_0, q4_1; each
    /// matrix as `smelt quantize` would store it), so the adapter trains on the base a
    /// quantised deployment runs and the base takes a quarter to an eighth of the memory.
    /// The embedding, head, norms and biases stay f32. A .gguf base is quantised already.
    #[arg(long, value_name = "TYPE", requires = "lora_r")]
    pub quantize: Option<String>,
}

impl LoraArgs {
    /// The adapter these flags ask for (`None` without --lora-r).
    pub fn config(&self) -> Result<Option<LoraConfig>> {
        let Some(r) = self.lora_r else { return Ok(None) };
        let targets = LoraConfig::parse_targets(&self.lora_targets)?;
        if self.lora_dropout >= 1.0 {
            anyhow::bail!("--lora-dropout {}: must be below 1", self.lora_dropout);
        }
        Ok(Some(LoraConfig::new(r as usize, self.lora_alpha, self.lora_dropout, &targets, self.use_rslora)?))
    }
}

/// A model (`super::load_model`: a folder or a .gguf file) with the PEFT adapter folder
/// `adapter` attached, if given. What `generate`, `perplexity`, `bench` and `serve` call.
pub fn load_model_adapted(path: &Path, adapter: Option<&Path>) -> Result<Model> {
    let mut model = super::load_model(path)?;
    if let Some(dir) = adapter {
        model.attach_dir(dir)?;
        let a = model.adapter.as_ref().expect("attached");
        eprintln!("adapter {}: LoRA r {} on {} projections", dir.display(), a.cfg.r, a.slots.len());
    }
    Ok(model)
}
