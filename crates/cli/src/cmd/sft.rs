//! `smelt sft`: supervised fine-tuning of a model on JSONL examples (docs/FINETUNE.md). The
//! training loop, its flags and checkpoints are `smelt train`'s (`RunFlags`).

use super::train::RunFlags;
use anyhow::{bail, Context, Result};
use clap::Args;
use smelt_train::{SftConfig, TrainConfig};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct SftArgs {
    /// The model to fine-tune: a smelt or Hugging Face model folder, or a .gguf file (dequantised
    /// to f32: a full fine-tune trains every weight; with --lora-r it stays quantised: QLoRA).
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    model: Option<PathBuf>,
    /// Training examples, JSONL, one per line: {"text"}, {"messages": [{"role", "content"}, …]},
    /// {"prompt", "completion"} (strings, or message lists). See docs/FINETUNE.md.
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    data: Option<PathBuf>,
    /// Validation examples (same shapes); their loss (over loss tokens) is logged at every
    /// checkpoint and at the end, up to --val-batches batches.
    #[arg(long, conflicts_with = "resume")]
    val_data: Option<PathBuf>,
    /// Where checkpoints (step-NNNNNN/, final/ = the fine-tuned model) and metrics.jsonl go.
    /// Held by one run at a time; a fresh run needs it empty (see --overwrite).
    #[arg(long)]
    output: PathBuf,
    /// Put the prompt (user and system turns, the prompt of prompt/completion) in the loss too.
    /// By default only completions and assistant turns (through their end-of-turn token) are.
    #[arg(long, conflicts_with = "resume")]
    train_on_prompt: bool,
    /// Pack examples end to end into rows of --seq-len (no padding): each example attends only
    /// to itself and its positions start at 0. On CUDA: bf16 (the default), head dim 64 or 128.
    #[arg(long, conflicts_with = "resume")]
    packing: bool,
    /// Whole passes over the training examples; sets the number of steps (instead of --steps).
    #[arg(long, conflicts_with = "steps", value_parser = clap::value_parser!(u64).range(1..))]
    epochs: Option<u64>,
    #[command(flatten)]
    run: RunFlags,
    #[command(flatten)]
    lora: super::lora::LoraArgs,
}

/// The chat template beside a model: its tokenizer's (tokenizer_config.json, the GGUF's), or a
/// folder's chat_template.jinja.
pub(crate) fn chat_template(model: &Path, tok: &smelt_tokenizer::Tokenizer) -> Result<Option<String>> {
    if let Some(t) = tok.chat_template() {
        return Ok(Some(t.to_string()));
    }
    let j = model.join("chat_template.jinja");
    if model.is_dir() && j.exists() {
        return Ok(Some(std::fs::read_to_string(&j).with_context(|| format!("reading {}", j.display()))?));
    }
    Ok(None)
}

pub fn run(a: SftArgs) -> Result<()> {
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
    let mut base = None;
    let sft = SftConfig {
        data: a.data.unwrap_or_default(),
        val_data: a.val_data,
        train_on_prompt: a.train_on_prompt,
        packing: a.packing,
        epochs: a.epochs,
        chat_template: None,
    };
    cfg.sft = Some(if resume.is_some() {
        sft
    } else {
        let model = a.model.context("--model is required")?;
        let tok = smelt_tokenizer::Tokenizer::from_file(&model)?;
        let chat_template = chat_template(&model, &tok)?;
        if model.extension().is_some_and(|e| e == "gguf") {
            // Under LoRA the frozen base stays quantised (QLoRA, on the CPU or a GPU); a full fine-tune
            // trains every weight, so it is dequantised.
            let m = smelt_convert::load_model(&model)?;
            let m = if cfg.lora.is_some() { m } else { m.dequantized()? };
            base = Some((m, tok));
            if cfg.lora.is_some() {
                cfg.init = Some(model); // the adapter's base_model_name_or_path
            }
        } else if model.is_dir() {
            cfg.init = Some(model);
        } else {
            bail!("--model {}: expected a model folder or a .gguf file", model.display());
        }
        SftConfig { chat_template, ..sft }
    });
    let s = smelt_train::run_with(cfg, resume.as_deref(), base)?;
    eprintln!("done: {} steps, final loss {:.4}; model saved to {}", s.steps, s.final_loss, s.final_dir.display());
    Ok(())
}
