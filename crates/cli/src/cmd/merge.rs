//! `smelt merge`: fold a LoRA adapter (PEFT's format) into its base, giving an ordinary
//! checkpoint folder (W + s·B·A in every adapted projection; PEFT's `merge_and_unload`).

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The base: a model folder (config.json, safetensors, tokenizer files) or a .gguf file
    /// (dequantised).
    #[arg(long)]
    model: PathBuf,
    /// The adapter folder (adapter_config.json, adapter_model.safetensors), from `smelt train
    /// --lora-r` / `smelt sft` or PEFT's save_pretrained.
    #[arg(long)]
    adapter: PathBuf,
    /// Output folder (created; refused if it exists and is not empty).
    #[arg(long)]
    output: PathBuf,
    /// Storage dtype of the written weights.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: super::import_hf::Dtype,
}

pub fn run(a: MergeArgs) -> Result<()> {
    let model = super::import_hf::write_checkpoint(&a.model, Some(&a.adapter), &a.output, a.dtype)?;
    eprintln!(
        "merged {} into {} ({}, {} parameters): wrote {} as {:?}",
        a.adapter.display(),
        a.model.display(),
        model.cfg.arch.hf_name(),
        model.cfg.n_params(),
        a.output.display(),
        a.dtype
    );
    Ok(())
}
