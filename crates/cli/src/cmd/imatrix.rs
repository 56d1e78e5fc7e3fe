//! `smelt imatrix`: an importance matrix (llama.cpp's `llama-imatrix`) from calibration text:
//! per weight matrix, Σx² of its input activations per column and the token count, over whole
//! chunks of the text run through the model. The file is llama.cpp's format (GGUF, or the
//! legacy .dat with `--format dat`), for `smelt quantize --imatrix` or `llama-quantize --imatrix`.

use anyhow::{bail, Result};
use clap::Args;
use smelt_convert::imatrix::{collect_text, Imatrix};
use smelt_tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  smelt imatrix --model model-f32.gguf --input calibration.txt --output imatrix.gguf
  smelt quantize --model model-f32.gguf --type q4_k --imatrix imatrix.gguf --output model-q4_k.gguf
  llama-quantize --imatrix imatrix.gguf model-f32.gguf model-q4_k_m.gguf Q4_K_M")]
pub struct ImatrixArgs {
    /// Model folder (config.json, safetensors, tokenizer.json) or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// UTF-8 calibration text (not the text you evaluate on); tokenised whole.
    #[arg(long)]
    input: PathBuf,
    /// imatrix file to write.
    #[arg(long)]
    output: PathBuf,
    /// Tokens per chunk (llama-imatrix's --ctx-size); each chunk is one forward.
    #[arg(long, default_value_t = 512, value_parser = super::checks::count)]
    chunk_size: usize,
    /// Use at most this many chunks (default: every whole chunk of the text).
    #[arg(long, value_parser = super::checks::count)]
    chunks: Option<usize>,
    /// Also collect the output matrix (an untied output.weight; llama-imatrix --process-output).
    #[arg(long)]
    process_output: bool,
    /// gguf (llama.cpp's current format) or dat (its legacy format).
    #[arg(long, default_value = "gguf", value_parser = ["gguf", "dat"])]
    format: String,
}

/// `imatrix::collect_text` with the model's tokenizer, reporting progress on stderr.
pub fn compute(
    model: &smelt_model::Model,
    model_path: &Path,
    input: &Path,
    chunk_size: usize,
    chunks: Option<usize>,
    process_output: bool,
) -> Result<Imatrix> {
    let tok = Tokenizer::from_file(model_path)?;
    if chunk_size > model.cfg.max_pos {
        eprintln!(
            "warning: --chunk-size {chunk_size} is past the model's context of {} (max_position_embeddings): \
             the later positions are extrapolated, so the activations are not those the model sees in use",
            model.cfg.max_pos
        );
    }
    let t0 = std::time::Instant::now();
    let m = collect_text(model, &tok, input, chunk_size, chunks, process_output, |i, n| {
        eprint!("\rimatrix: chunk {i}/{n}")
    })?;
    eprintln!();
    eprintln!(
        "imatrix: {} tokens of {} ({} chunks of {chunk_size}), {} matrices, {:.1} s",
        m.chunk_count as usize * chunk_size,
        input.display(),
        m.chunk_count,
        m.entries.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(m)
}

pub fn run(a: ImatrixArgs) -> Result<()> {
    smelt_files::check_output(&a.output, &[a.model.clone(), a.input.clone()], "--output")?;
    let model = super::load_model(&a.model)?;
    let m = compute(&model, &a.model, &a.input, a.chunk_size, a.chunks, a.process_output)?;
    match a.format.as_str() {
        "gguf" => m.save(&a.output)?,
        "dat" => m.save_legacy(&a.output)?,
        f => bail!("--format {f}: expected gguf or dat"),
    }
    println!("wrote {} ({} entries, {} chunks)", a.output.display(), m.entries.len(), m.chunk_count);
    Ok(())
}
