//! `smelt quantize`: a checkpoint to a quantised GGUF (llama.cpp's block formats and
//! quantisers, optionally weighted by an importance matrix), and with `--eval` the perplexity
//! change it costs on held-out text: the source model in f32 against the written file as
//! smelt runs it.

use anyhow::{bail, Context, Result};
use clap::Args;
use smelt_convert::export::WithImatrix;
use smelt_convert::imatrix::Imatrix;
use smelt_gguf::GgmlType;
use smelt_tokenizer::Tokenizer;
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  smelt quantize --model model-f32.gguf --type q4_k --output m-q4_k.gguf --eval heldout.txt
  smelt quantize --model model-f32.gguf --type q4_k --imatrix imatrix.gguf --output m-q4_k.gguf
  smelt quantize --model model-f32.gguf --type q4_k --imatrix-text calib.txt --output m-q4_k.gguf --eval heldout.txt

q4_k is llama.cpp's Q4_K_M mix. With an importance matrix (--imatrix, a file from `smelt imatrix` or
llama-imatrix; or --imatrix-text, computed here first) Q4_0/Q4_1/Q5_0/Q4_K/Q6_K tensors are quantised
by llama.cpp's imatrix-weighted quantisers, byte for byte as llama-quantize --imatrix does.

--smooth (needs an importance matrix) first moves the activation outliers after each layer's two
RMSNorms into the weights they feed (SmoothQuant, folded into the norm weights: the same model in
exact arithmetic, and a plain GGUF llama.cpp runs unchanged). llama.cpp rounds the input of every
quantised matmul to 8 bits too; flatter inputs lose less there (block types only). On SmolLM2-135M it takes q8_0 from +0.45..+0.66% to
+0.08..+0.18% (docs/GGUF.md). The file then differs from llama-quantize's by design.

  smelt quantize --model model-f32.gguf --type q8_0 --imatrix-text calib.txt --smooth --output m-q8_0.gguf --eval heldout.txt")]
pub struct QuantizeArgs {
    /// Model folder (config.json, safetensors, tokenizer.json) or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// q8_0, q4_0, q4_k (and q4_1, q5_0, q6_k, f16, bf16).
    #[arg(long)]
    r#type: String,
    /// GGUF file to write.
    #[arg(long)]
    output: PathBuf,
    /// Importance matrix file (llama.cpp's GGUF or legacy .dat format).
    #[arg(long, conflicts_with = "imatrix_text")]
    imatrix: Option<PathBuf>,
    /// Compute the importance matrix from this calibration text first (keep it disjoint from --eval).
    #[arg(long)]
    imatrix_text: Option<PathBuf>,
    /// With --imatrix-text: use at most this many chunks of 512 tokens.
    // `conflicts_with` too: clap does not enforce `requires` when an argument that conflicts
    // with the required one (--imatrix) is given, and the flag would be ignored without a word.
    #[arg(long, requires = "imatrix_text", conflicts_with = "imatrix", value_parser = super::checks::count)]
    imatrix_chunks: Option<usize>,
    /// Smooth the activations into the weights first, with this α (0 < α < 1; 0.5 when given
    /// without a value); needs --imatrix or --imatrix-text, whose statistics set the scales.
    #[arg(long, num_args = 0..=1, default_missing_value = "0.5", value_name = "ALPHA")]
    smooth: Option<f32>,
    /// UTF-8 text to score before and after (held-out text, not training data).
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Window length of the --eval scoring.
    #[arg(long, default_value_t = 512, value_parser = super::checks::count)]
    seq_len: usize,
    /// Score at most this many tokens of the eval text.
    #[arg(long, default_value_t = 16384, value_parser = super::checks::count)]
    eval_tokens: usize,
    /// llama.cpp's pre-tokeniser name (gpt-2, llama-bpe, qwen2, smollm, …) when it cannot be recognised.
    #[arg(long)]
    pre: Option<String>,
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    let ty = GgmlType::parse(&a.r#type)?;
    smelt_files::check_output(&a.output, std::slice::from_ref(&a.model), "--output")?;
    if let (Some(eval), Some(text)) = (&a.eval, &a.imatrix_text) {
        if eval == text {
            bail!(
                "--imatrix-text and --eval are the same file ({}): calibrate on other text than you evaluate on",
                eval.display()
            );
        }
    }
    if a.smooth.is_some() && a.imatrix.is_none() && a.imatrix_text.is_none() {
        bail!("--smooth needs an importance matrix (--imatrix FILE or --imatrix-text FILE)");
    }
    if let Some(alpha) = a.smooth.filter(|&x| !(x > 0.0 && x < 1.0)) {
        bail!("--smooth {alpha}: alpha must lie strictly between 0 and 1");
    }
    if a.smooth.is_some() && matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        bail!("--smooth is for block types (q8_0, q4_k, …): {} matmuls do not round their inputs to 8 bits", ty.name());
    }
    // The eval text is read (and checked) before the work, not after it.
    let eval_text = match &a.eval {
        Some(eval) => Some(
            std::fs::read(eval).with_context(|| format!("--eval {}: reading it", eval.display())).and_then(|b| {
                String::from_utf8(b).map_err(|e| anyhow::anyhow!("--eval {}: not valid UTF-8 ({e})", eval.display()))
            })?,
        ),
        None => None,
    };
    let model = super::load_model(&a.model)?;
    let imatrix = match (&a.imatrix, &a.imatrix_text) {
        (Some(f), _) => Some(Imatrix::load(f)?),
        (None, Some(text)) => Some(super::imatrix::compute(&model, &a.model, text, 512, a.imatrix_chunks, false)?),
        (None, None) => None,
    };
    if let (Some(eval), Some(m)) = (&a.eval, &imatrix) {
        if m.datasets.iter().any(|d| std::path::Path::new(d) == eval.as_path()) {
            bail!(
                "the importance matrix was computed on {}, the --eval text: use held-out text for one of them",
                eval.display()
            );
        }
    }
    // Smoothing changes the weights the file is made of, and the importance matrix with them;
    // the eval still scores the source model as it was.
    // (--smooth without an importance matrix was refused above.)
    let smoothed = match (a.smooth, &imatrix) {
        (Some(alpha), Some(im)) => {
            let (m, im, r) = smelt_convert::smooth::smooth(&model, im, alpha)?;
            let skipped = if r.skipped > 0 {
                format!("; {} left as they were, without usable statistics", r.skipped)
            } else {
                String::new()
            };
            println!(
                "smoothed {} norms (alpha {alpha}; scales {:.3} to {:.3}{skipped})",
                r.groups, r.min_scale, r.max_scale
            );
            Some((m, im))
        }
        _ => None,
    };
    let (to_write, imatrix_used) = match &smoothed {
        Some((m, im)) => (m, Some(im)),
        None => (&model, imatrix.as_ref()),
    };
    let file = a.imatrix.as_ref().map(|p| p.display().to_string());
    let with = imatrix_used.map(|m| WithImatrix { imatrix: m, file: file.as_deref(), smooth_alpha: a.smooth });
    let report = super::export_gguf::write(to_write, &a.model, ty, a.pre.as_deref(), None, with.as_ref(), &a.output)?;
    drop(smoothed);
    let bytes = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
    println!("wrote {} ({}, {:.1} MiB)", a.output.display(), ty.name(), bytes as f64 / (1u64 << 20) as f64);
    // Not every matrix is of the requested type: the output matrix and, for q4_k, llama.cpp's
    // Q4_K_M mix take more bits, and rows that are not whole blocks take a fallback type
    // (`smelt_convert::export::{tensor_type, type_for}`). Say which, with the counts.
    let mut counts: Vec<(&str, usize)> = report.types.iter().map(|(t, n)| (t.name(), *n)).collect();
    if counts.iter().any(|(n, _)| *n != ty.name() && *n != "f32") {
        counts.sort_by_key(|c| std::cmp::Reverse(c.1));
        let list: Vec<String> = counts.iter().map(|(n, c)| format!("{c} {n}")).collect();
        println!(
            "tensor types: {} (the output matrix{} take more bits; rows that are not whole {}-value blocks take a fallback type; norms stay f32)",
            list.join(", "),
            if ty == GgmlType::Q4_K { " and llama.cpp's Q4_K_M choice of attn_v/ffn_down layers" } else { "" },
            ty.block_size()
        );
    }
    if imatrix.is_some() {
        println!(
            "importance weights used for {} matrices{}",
            report.weighted,
            if report.unweighted.is_empty() {
                String::new()
            } else {
                format!("; none in the imatrix for {} ({})", report.unweighted.len(), report.unweighted.join(", "))
            }
        );
    }
    if let (Some(eval), Some(text)) = (&a.eval, &eval_text) {
        let tok = Tokenizer::from_file(&a.model)?;
        let mut ids = tok.encode(text);
        ids.truncate(a.eval_tokens);
        let before = smelt_infer::perplexity(&model, &ids, a.seq_len, |_, _| {})?;
        drop(model);
        let q = smelt_convert::load_model(&a.output)?;
        let after = smelt_infer::perplexity(&q, &ids, a.seq_len, |_, _| {})?;
        println!(
            "perplexity on {} ({} tokens scored): source {:.4} → {} {:.4} ({:+.2}%)",
            eval.display(),
            before.predicted,
            before.ppl,
            ty.name(),
            after.ppl,
            100.0 * (after.ppl / before.ppl - 1.0)
        );
    }
    Ok(())
}
