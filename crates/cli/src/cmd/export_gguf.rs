//! `smelt export-gguf`: a smelt / Hugging Face checkpoint (or a GGUF file) to a GGUF file that
//! llama.cpp runs, with weights in the requested type.

use anyhow::{Context, Result};
use clap::Args;
use smelt_convert::export::{export, ExportReport, TokenizerSource, WithImatrix};
use smelt_gguf::GgmlType;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ExportGgufArgs {
    /// Model folder (config.json, safetensors, tokenizer.json) or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub output: PathBuf,
    /// f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q4_k, q6_k.
    #[arg(long, default_value = "f16")]
    pub r#type: String,
    /// llama.cpp's pre-tokeniser name (gpt-2, llama-bpe, qwen2, smollm, …) when it cannot be recognised.
    #[arg(long)]
    pub pre: Option<String>,
    /// general.name (default: the model folder's name).
    #[arg(long)]
    pub name: Option<String>,
    /// A LoRA adapter folder (PEFT's format) to merge into the model before writing (as
    /// `smelt merge` would; a merged folder can also be given as --model).
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
}

pub fn write(
    model: &smelt_model::Model,
    src: &Path,
    ty: GgmlType,
    pre: Option<&str>,
    name: Option<&str>,
    imatrix: Option<&WithImatrix>,
    out: &Path,
) -> Result<ExportReport> {
    let tok = if src.extension().is_some_and(|e| e == "gguf") {
        TokenizerSource::Gguf(src)
    } else {
        TokenizerSource::HfDir { dir: src, pre }
    };
    let default_name = src.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    export(model, ty, tok, name.unwrap_or(&default_name), imatrix, out)
        .with_context(|| format!("exporting {} to {}", src.display(), out.display()))
}

pub fn run(a: ExportGgufArgs) -> Result<()> {
    let ty = GgmlType::parse(&a.r#type)?;
    smelt_files::check_output(&a.output, std::slice::from_ref(&a.model), "--output")?;
    let mut model = super::lora::load_model_adapted(&a.model, a.adapter.as_deref())?;
    if model.adapter.is_some() {
        // Folded into the weights before quantising, as llama.cpp's export of a merged model.
        model = model.dequantized()?.merged()?;
    }
    write(&model, &a.model, ty, a.pre.as_deref(), a.name.as_deref(), None, &a.output)?;
    let bytes = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
    println!("wrote {} ({}, {:.1} MiB)", a.output.display(), ty.name(), bytes as f64 / (1u64 << 20) as f64);
    Ok(())
}
