//! `smelt trace`: the inference path stage by stage: tokenise, embed, per layer attn_norm,
//! q/k/v, rope, attention, o-proj, ffn_norm, gate/up/down, logits, sample; each with shape,
//! dtype, time and statistics. `--dump DIR` writes every named tensor as `<name>.npy` (and
//! `tokens.npy`) so any layer can be diffed against another implementation.

use anyhow::{Context, Result};
use clap::Args;
use smelt_infer::{trace, trace_decode, Stats};
use smelt_tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// Model folder or .gguf file.
    model: PathBuf,
    prompt: String,
    /// Write every named tensor as DIR/<name>.npy.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Run the generation path instead: the prompt through a KV cache, then N greedy decode
    /// steps; --dump writes each step into DIR/step<s>/ (step0 = the prompt).
    #[arg(long)]
    decode: Option<usize>,
    /// Show only these layers (e.g. 0,29); default all.
    #[arg(long, value_delimiter = ',')]
    layers: Vec<usize>,
}

/// A little-endian .npy (format 1.0).
pub fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) -> Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

fn row(name: &str, shape: &[usize], dtype: &str, ms: f64, s: &Stats) {
    let bad = if s.non_finite > 0 { format!("  {} non-finite!", s.non_finite) } else { String::new() };
    println!(
        "{name:<18} {:>16} {dtype:>5} {ms:>9.3} {:>11.4} {:>10.4} {:>10.4} {:>10.4}{bad}",
        format!("{shape:?}"),
        s.mean,
        s.std,
        s.min,
        s.max
    );
}

pub fn run(a: TraceArgs) -> Result<()> {
    let t0 = Instant::now();
    let model = super::load_model(&a.model)?;
    let tok = Tokenizer::from_file(&a.model)?;
    eprintln!("loaded {} in {:.2}s", a.model.display(), t0.elapsed().as_secs_f64());
    let t = Instant::now();
    let ids = tok.encode(&a.prompt);
    let tok_ms = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(!ids.is_empty(), "the prompt is empty after tokenisation");
    println!("tokens: {ids:?}");
    println!("pieces: {:?}", ids.iter().map(|&i| tok.id_to_token(i).unwrap_or("?")).collect::<Vec<_>>());
    println!(
        "\n{:<18} {:>16} {:>5} {:>9} {:>11} {:>10} {:>10} {:>10}",
        "stage", "shape", "dtype", "ms", "mean", "std", "min", "max"
    );
    let idf: Vec<f32> = ids.iter().map(|&i| i as f32).collect();
    row("tokenise", &[ids.len()], "u32", tok_ms, &Stats::of(&idf));
    if let Some(n) = a.decode {
        let n = super::limits::new_tokens(&model, ids.len(), n, "--decode")?;
        let (steps, next) = trace_decode(&model, &ids, n)?;
        for (si, stages) in steps.iter().enumerate() {
            println!("\nstep {si}: {} stages, greedy token {}", stages.len(), next[si]);
            if let Some(dir) = &a.dump {
                let d = dir.join(format!("step{si}"));
                std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
                for s in stages {
                    let b: Vec<u8> = s.tensor.to_vec_f32()?.iter().flat_map(|x| x.to_le_bytes()).collect();
                    write_npy(&d.join(format!("{}.npy", s.name)), "<f4", s.tensor.shape(), &b)?;
                }
            }
        }
        println!("greedy tokens: {next:?}");
        return Ok(());
    }
    super::limits::forward_fits(&model, ids.len(), "tracing the prompt")?;
    let stages = trace(&model, &ids)?;
    if let Some(dir) = &a.dump {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let b: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
        write_npy(&dir.join("tokens.npy"), "<u4", &[ids.len()], &b)?;
    }
    let wanted = |name: &str| {
        a.layers.is_empty()
            || name.rsplit_once('-').and_then(|(_, l)| l.parse::<usize>().ok()).is_none_or(|l| a.layers.contains(&l))
    };
    let mut total = 0.0;
    for s in &stages {
        total += s.seconds;
        if wanted(&s.name) {
            row(&s.name, s.tensor.shape(), "f32", s.seconds * 1e3, &s.stats);
        }
        if let Some(dir) = &a.dump {
            let b: Vec<u8> = s.tensor.to_vec_f32()?.iter().flat_map(|x| x.to_le_bytes()).collect();
            write_npy(&dir.join(format!("{}.npy", s.name)), "<f4", s.tensor.shape(), &b)?;
        }
    }
    let logits = stages.last().context("no stages traced")?;
    let v = logits.tensor.cols();
    let all = logits.tensor.to_vec_f32()?;
    let last = &all[all.len() - v..];
    let t = Instant::now();
    let next = last.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b });
    let mut sorted: Vec<(usize, f32)> = last.iter().copied().enumerate().collect();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
    row("sample (greedy)", &[1], "u32", t.elapsed().as_secs_f64() * 1e3, &Stats::of(&[next.0 as f32]));
    println!(
        "\nforward {:.1} ms; next token {} {:?} (logit {:.4}); top 5: {}",
        total * 1e3,
        next.0,
        tok.decode(&[next.0 as u32]),
        next.1,
        sorted[..5.min(sorted.len())]
            .iter()
            .map(|(i, l)| format!("{i} {:?} {l:.3}", tok.decode(&[*i as u32])))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(dir) = &a.dump {
        println!("wrote {} tensors to {}", stages.len() + 1, dir.display());
    }
    Ok(())
}
