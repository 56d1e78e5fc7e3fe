//! `smelt quantize`: a checkpoint to a quantised GGUF (llama.cpp's block formats and reference
//! quantisers), and with `--eval` the perplexity change it costs on held-out text: the source
//! model in f32 against the written file as smelt runs it.

use anyhow::{Context, Result};
use clap::Args;
use smelt_gguf::quant::GgmlType;
use smelt_tokenizer::Tokenizer;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Model folder (config.json, safetensors, tokenizer.json) or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// q8_0, q4_0, q4_k (and q4_1, q5_0, q6_k, f16, bf16).
    #[arg(long)]
    r#type: String,
    #[arg(long)]
    output: PathBuf,
    /// UTF-8 text to score before and after (held-out text, not training data).
    #[arg(long)]
    eval: Option<PathBuf>,
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Score at most this many tokens of the eval text.
    #[arg(long, default_value_t = 16384)]
    eval_tokens: usize,
    #[arg(long)]
    pre: Option<String>,
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    let ty = GgmlType::parse(&a.r#type)?;
    let model = super::load_model(&a.model)?;
    super::export_gguf::write(&model, &a.model, ty, a.pre.as_deref(), None, &a.output)?;
    let bytes = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
    println!("wrote {} ({}, {:.1} MiB)", a.output.display(), ty.name(), bytes as f64 / (1u64 << 20) as f64);
    if let Some(eval) = &a.eval {
        let tok = Tokenizer::from_file(&a.model)?;
        let text = std::fs::read_to_string(eval).with_context(|| format!("reading {}", eval.display()))?;
        let mut ids = tok.encode(&text);
        ids.truncate(a.eval_tokens);
        let before = smelt_infer::perplexity(&model, &ids, a.seq_len, |_, _| {})?;
        drop(model);
        let q = smelt_gguf::load_model(&a.output)?;
        let after = smelt_infer::perplexity(&q, &ids, a.seq_len, |_, _| {})?;
        println!("perplexity on {} ({} tokens scored): source {:.4} → {} {:.4} ({:+.2}%)", eval.display(), before.predicted,
            before.ppl, ty.name(), after.ppl, 100.0 * (after.ppl / before.ppl - 1.0));
    }
    Ok(())
}
