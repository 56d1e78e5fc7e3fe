//! `smelt import-hf`: normalise a Hugging Face model folder (sharded or not, any supported
//! dtype) into a single-file smelt checkpoint folder, or write one from a GGUF file: its
//! weights dequantised (llama.cpp's Q/K row order undone) and its vocabulary as tokenizer.json
//! plus tokenizer_config.json (BOS, EOS, chat template). Either way the result is a Hugging
//! Face folder that smelt and `transformers` load.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use smelt_core::DType;
use smelt_model::Model;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Dtype {
    F32,
    Bf16,
    F16,
}

#[derive(Args, Debug)]
pub struct ImportHfArgs {
    /// Hugging Face model folder (config.json, model.safetensors or model.safetensors.index.json
    /// with its shards, tokenizer.json), or a .gguf file.
    #[arg(value_name = "HF_DIR|GGUF")]
    hf_dir: PathBuf,
    /// Output folder (created; refused if it exists and is not empty).
    #[arg(long)]
    output: PathBuf,
    /// Storage dtype of the written weights.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
}

/// Tokenizer and generation files copied as they are.
const SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
];

pub fn run(a: ImportHfArgs) -> Result<()> {
    let model = write_checkpoint(&a.hf_dir, None, &a.output, a.dtype)?;
    eprintln!(
        "imported {} ({}, {} parameters) to {} as {:?}",
        a.hf_dir.display(),
        model.cfg.arch.hf_name(),
        model.cfg.n_params(),
        a.output.display(),
        a.dtype
    );
    Ok(())
}

/// Writes the model at `src` (a Hugging Face folder or a GGUF file), with the PEFT adapter
/// `adapter` merged into it if given, as a checkpoint folder `output` (staged, then renamed
/// into place; refused if it exists and is not empty), with `src`'s tokenizer files. Returns
/// the model written.
pub fn write_checkpoint(src: &Path, adapter: Option<&Path>, output: &Path, dtype: Dtype) -> Result<Model> {
    if output.exists() && output.read_dir().map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{}: exists and is not empty; choose a new --output", output.display());
    }
    let gguf = src.is_file() && src.extension().is_some_and(|e| e == "gguf");
    let hf_dir = src;
    let (mut model, tokenizer) = if gguf {
        let model = smelt_convert::load_model(hf_dir)?.dequantized()?;
        let tok = smelt_tokenizer::Tokenizer::from_file(hf_dir)?;
        if tok.to_json().is_none() {
            eprintln!("warning: {}: a SentencePiece vocabulary has no tokenizer.json form here; the imported model will need --tokenizer {}", hf_dir.display(), hf_dir.display());
        }
        (model, Some(tok).filter(|t| t.to_json().is_some()))
    } else {
        if !hf_dir.join("tokenizer.json").exists() {
            eprintln!(
                "warning: {} has no tokenizer.json; the imported model will need --tokenizer elsewhere",
                hf_dir.display()
            );
        }
        (Model::load(hf_dir)?, None)
    };
    if let Some(dir) = adapter {
        model.attach_dir(dir)?;
        model = model.merged()?;
    }
    let parent = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    // Staged beside the output under a name of its own; removed on an error or Ctrl-C.
    let staged = smelt_files::Temp::new(output);
    let tmp = staged.path().to_path_buf();
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let dtype = match dtype {
        Dtype::F32 => DType::F32,
        Dtype::Bf16 => DType::BF16,
        Dtype::F16 => DType::F16,
    };
    model.save_as(&tmp, dtype)?;
    if let Some(tok) = &tokenizer {
        tok.save_hf(&tmp)?;
    }
    for f in SIDE_FILES.iter().filter(|_| !gguf) {
        let src = hf_dir.join(f);
        if src.exists() {
            std::fs::copy(&src, tmp.join(f)).with_context(|| format!("copying {}", src.display()))?;
        }
    }
    if output.exists() {
        std::fs::remove_dir(output).with_context(|| format!("replacing the empty {}", output.display()))?;
    }
    staged.commit(output)?;
    Ok(model)
}
