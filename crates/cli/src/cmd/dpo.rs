//! `smelt dpo`: Direct Preference Optimization of a model on preference pairs (docs/FINETUNE.md).
//! The training loop, its flags and checkpoints are `smelt train`'s (`RunFlags`); the loss and
//! the reference are `smelt_train::dpo`'s.

use super::train::RunFlags;
use anyhow::{bail, Context, Result};
use clap::Args;
use smelt_train::{DpoConfig, TrainConfig};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DpoArgs {
    /// The model to align: a smelt or Hugging Face model folder, or a .gguf file (dequantised
    /// to f32 for a full fine-tune; kept quantised under --lora-r).
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    model: Option<PathBuf>,
    /// A PEFT LoRA adapter folder (e.g. an `sft --lora-r` run's final/) merged into --model
    /// first: the policy starts from base + adapter, and it is the default reference.
    #[arg(long, conflicts_with = "resume")]
    adapter: Option<PathBuf>,
    /// Preference pairs, JSONL, one per line: {"prompt", "chosen", "rejected"}, three strings or
    /// three message lists (rendered through the chat template). See docs/FINETUNE.md.
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    data: Option<PathBuf>,
    /// Validation pairs (same shape); their loss and rewards are logged at every checkpoint and
    /// at the end, over up to --val-batches batches.
    #[arg(long, conflicts_with = "resume")]
    val_data: Option<PathBuf>,
    /// β of the DPO loss −log σ(β·((π_c − ρ_c) − (π_r − ρ_r))): larger keeps the policy closer
    /// to the reference. TRL's default.
    #[arg(long, default_value_t = 0.1, conflicts_with = "resume")]
    beta: f64,
    /// The reference model (a model folder or a .gguf file, kept quantised; the same tokenizer). Default: the model the
    /// policy starts from (--model, with --adapter merged in; under --lora-r the
    /// adapter-disabled model, the same thing). Its log-probabilities are computed once, before
    /// the first step.
    #[arg(long, conflicts_with = "resume")]
    ref_model: Option<PathBuf>,
    /// Where checkpoints (step-NNNNNN/, final/ = the aligned model or adapter) and
    /// metrics.jsonl go. Held by one run at a time; a fresh run needs it empty (see --overwrite).
    #[arg(long)]
    output: PathBuf,
    /// Whole passes over the pairs; sets the number of steps (instead of --steps).
    #[arg(long, conflicts_with = "steps", value_parser = clap::value_parser!(u64).range(1..))]
    epochs: Option<u64>,
    #[command(flatten)]
    run: RunFlags,
    #[command(flatten)]
    lora: super::lora::LoraArgs,
}

pub fn run(a: DpoArgs) -> Result<()> {
    if a.run.spawn_ranks()? {
        return Ok(());
    }
    let mut cfg = TrainConfig {
        checkpoint_dir: a.output,
        lora: a.lora.config()?,
        quantize_base: a.lora.quantize.clone(),
        ..TrainConfig::default()
    };
    let resume = a.run.apply(&mut cfg)?;
    let dpo = DpoConfig {
        data: a.data.unwrap_or_default(),
        val_data: a.val_data,
        beta: a.beta,
        epochs: a.epochs,
        chat_template: None,
        ref_model: a.ref_model,
        adapter: a.adapter,
    };
    if !(dpo.beta.is_finite() && dpo.beta > 0.0) {
        bail!("--beta {}: must be a finite number > 0", dpo.beta);
    }
    let mut base = None;
    cfg.dpo = Some(if resume.is_some() {
        dpo
    } else {
        let model = a.model.context("--model is required")?;
        let tok = smelt_tokenizer::Tokenizer::from_file(&model)?;
        let chat_template = super::sft::chat_template(&model, &tok)?;
        let gguf = model.extension().is_some_and(|e| e == "gguf");
        if !gguf && !model.is_dir() {
            bail!("--model {}: expected a model folder or a .gguf file", model.display());
        }
        if gguf || dpo.adapter.is_some() {
            // A GGUF base stays quantised under LoRA (QLoRA) and is dequantised for a full
            // fine-tune; an SFT adapter is folded into the base (PEFT's merge_and_unload).
            let mut m = super::load_model(&model)?;
            if let Some(dir) = &dpo.adapter {
                m = m.dequantized()?;
                m.attach_dir(dir).with_context(|| format!("--adapter {}", dir.display()))?;
                m = m.merged()?;
                eprintln!("adapter {} merged into {}: the policy starts there", dir.display(), model.display());
            } else if cfg.lora.is_none() {
                m = m.dequantized()?;
            }
            base = Some((m, tok));
        }
        // The LoRA adapter's base_model_name_or_path; the reference reloaded on resume (a GGUF
        // dequantised again for a full fine-tune, as its policy started).
        cfg.init = Some(model);
        DpoConfig { chat_template, ..dpo }
    });
    let s = smelt_train::run_with(cfg, resume.as_deref(), base)?;
    eprintln!("done: {} steps, final loss {:.4}; saved to {}", s.steps, s.final_loss, s.final_dir.display());
    Ok(())
}
