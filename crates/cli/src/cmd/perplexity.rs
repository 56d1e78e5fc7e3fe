//! `smelt perplexity`: score a text file with a model.

use super::generate::Format;
use anyhow::{Context, Result};
use clap::Args;
use smelt_tokenizer::Tokenizer;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter folder in PEFT's format (adapter_config.json, adapter_model.safetensors)
    /// to apply on top of the model (from `smelt train --lora-r`, `smelt sft` or PEFT).
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// UTF-8 text file; tokenised whole, as the tokenizer does by default.
    #[arg(long)]
    input: PathBuf,
    /// Window length: the text is split into non-overlapping windows of this many tokens.
    #[arg(long, default_value_t = 512, value_parser = super::checks::count)]
    seq_len: usize,
    /// Score at most this many tokens of the input (0 = all).
    #[arg(long, default_value_t = 0)]
    max_tokens: usize,
    /// Score only predictions from this window position on (llama-perplexity scores the second
    /// half: 256 at --seq-len 512, for figures comparable with its).
    #[arg(long, default_value_t = 0)]
    score_from: usize,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    #[arg(long, default_value = "auto")]
    device: String,
}

pub fn run(a: PerplexityArgs) -> Result<()> {
    let device = super::device::resolve(&a.device)?;
    let mut model = super::lora::load_model_adapted(&a.model, a.adapter.as_deref())?;
    model.to_device(device)?;
    let tok = Tokenizer::from_file(&a.model)?;
    let bytes = std::fs::read(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{}: not valid UTF-8 ({e})", a.input.display()))?;
    let mut ids = tok.encode(&text);
    if a.max_tokens > 0 {
        ids.truncate(a.max_tokens);
    }
    let window = a.seq_len.min(ids.len());
    if window > model.cfg.max_pos {
        eprintln!(
            "warning: --seq-len {} puts {window} tokens in a window, past the model's context of {} (max_position_embeddings): \
             the later positions are extrapolated, so the perplexity is not what the model gives within its context",
            a.seq_len, model.cfg.max_pos
        );
    }
    super::limits::forward_fits(&model, window, "a --seq-len window")?;
    let quiet = matches!(a.format, Format::Json);
    let r = smelt_infer::perplexity_from(&model, &ids, a.seq_len, a.score_from, |i, n| {
        if !quiet {
            eprint!("\rwindow {i}/{n}");
        }
    })?;
    match a.format {
        Format::Text => {
            eprintln!();
            println!(
                "tokens {}  predicted {}  mean NLL {:.6}  perplexity {:.4}",
                r.tokens, r.predicted, r.mean_nll, r.ppl
            );
        }
        Format::Json => println!(
            "{}",
            serde_json::json!({"tokens": r.tokens, "predicted": r.predicted, "mean_nll": r.mean_nll, "ppl": r.ppl})
        ),
    }
    Ok(())
}
