//! `smelt inspect`: what a model file holds: a GGUF file (architecture, metadata with the
//! tokenizer arrays summarised, file type, tensors) or a safetensors file / Hugging Face folder
//! (config, tensors). Tensor table: name, shape, type, bytes; then the parameter count.

use anyhow::{bail, Context, Result};
use clap::Args;
use smelt_gguf::{ggml_type_name, GgmlType};
use smelt_gguf::{GgufFile, Value};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A .gguf file, a .safetensors file or a Hugging Face model folder.
    path: PathBuf,
    /// Print every tensor (default: the first 40 and a count of the rest).
    #[arg(long)]
    all: bool,
}

pub fn run(a: InspectArgs) -> Result<()> {
    if a.path.extension().is_some_and(|e| e == "gguf") || smelt_files::starts_with(&a.path, b"GGUF") {
        inspect_gguf(&a.path, a.all)
    } else if a.path.is_dir() || a.path.extension().is_some_and(|e| e == "safetensors") {
        inspect_safetensors(&a.path, a.all)
    } else if !a.path.exists() {
        anyhow::bail!("{}: no such file or folder", a.path.display())
    } else {
        anyhow::bail!(
            "{}: not a GGUF file (no GGUF magic), a .safetensors file or a model folder: inspect reads those",
            a.path.display()
        )
    }
}

/// llama.cpp's `general.file_type` (enum llama_ftype).
fn file_type_name(v: u64) -> String {
    let s = match v {
        0 => "ALL_F32",
        1 => "MOSTLY_F16",
        2 => "MOSTLY_Q4_0",
        3 => "MOSTLY_Q4_1",
        7 => "MOSTLY_Q8_0",
        8 => "MOSTLY_Q5_0",
        9 => "MOSTLY_Q5_1",
        10 => "MOSTLY_Q2_K",
        11 => "MOSTLY_Q3_K_S",
        12 => "MOSTLY_Q3_K_M",
        13 => "MOSTLY_Q3_K_L",
        14 => "MOSTLY_Q4_K_S",
        15 => "MOSTLY_Q4_K_M",
        16 => "MOSTLY_Q5_K_S",
        17 => "MOSTLY_Q5_K_M",
        18 => "MOSTLY_Q6_K",
        32 => "MOSTLY_BF16",
        _ => return format!("{v}"),
    };
    format!("{s} ({v})")
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) if s.len() > 120 => {
            format!("{:?}… ({} chars)", &s[..s.char_indices().nth(100).map_or(s.len(), |c| c.0)], s.chars().count())
        }
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) if items.len() > 8 => {
            let kind = match items.first() {
                Some(Value::String(_)) => "strings",
                Some(Value::F32(_)) => "f32",
                Some(Value::I32(_)) => "i32",
                _ => "values",
            };
            let head: Vec<String> = items.iter().take(4).map(show).collect();
            format!("[{}, …] ({} {kind})", head.join(", "), items.len())
        }
        Value::Array(items) => format!("[{}]", items.iter().map(show).collect::<Vec<_>>().join(", ")),
        Value::Bool(b) => b.to_string(),
        Value::F32(x) => x.to_string(),
        Value::F64(x) => x.to_string(),
        other => other.as_i64().map_or_else(|| format!("{other:?}"), |i| i.to_string()),
    }
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

fn inspect_gguf(path: &Path, all: bool) -> Result<()> {
    let f = GgufFile::open(path)?;
    println!(
        "{}: GGUF v{}, {} metadata keys, {} tensors, alignment {}",
        path.display(),
        f.version,
        f.metadata.len(),
        f.tensors.len(),
        f.alignment
    );
    println!("architecture: {}", f.get_str("general.architecture").unwrap_or("?"));
    if let Some(ft) = f.get("general.file_type").and_then(|v| v.as_u64()) {
        println!("file type: {}", file_type_name(ft));
    }
    println!("\nmetadata:");
    for (k, v) in &f.metadata {
        println!("  {k:<44} {}", show(v));
    }
    println!("\n{:<32} {:>18} {:>6} {:>12}", "tensor", "shape", "type", "bytes");
    let (mut params, mut bytes) = (0u64, 0u64);
    let mut by_type = std::collections::BTreeMap::<String, usize>::new();
    for (i, t) in f.tensors.iter().enumerate() {
        let n: u64 = t.dims.iter().product();
        let shape: Vec<u64> = t.dims.iter().rev().copied().collect();
        let nb = match GgmlType::from_id(t.ggml_type) {
            Some(ty) => ty
                .row_bytes(*t.dims.first().unwrap_or(&1) as usize)
                .map(|rb| rb as u64 * (n / t.dims.first().copied().unwrap_or(1).max(1)))
                .unwrap_or(0),
            None => 0,
        };
        params += n;
        bytes += nb;
        *by_type.entry(ggml_type_name(t.ggml_type)).or_default() += 1;
        if all || i < 40 {
            println!("{:<32} {:>18} {:>6} {:>12}", t.name, format!("{shape:?}"), ggml_type_name(t.ggml_type), nb);
        }
    }
    if !all && f.tensors.len() > 40 {
        println!("… {} more (--all shows them)", f.tensors.len() - 40);
    }
    let types: Vec<String> = by_type.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
    println!(
        "\nparameters: {params} ({:.1} M); tensor data {}; types: {}",
        params as f64 / 1e6,
        human(bytes),
        types.join(", ")
    );
    Ok(())
}

fn inspect_safetensors(path: &Path, all: bool) -> Result<()> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let cfg = path.join("config.json");
        if cfg.exists() {
            let c = smelt_model::ModelConfig::from_hf_file(&cfg)?;
            println!(
                "{}: {} ({} layers, dim {}, {} heads / {} KV, head dim {}, ffn {}, vocab {}, rope θ {}, tied {})",
                path.display(),
                c.arch.hf_name(),
                c.n_layers,
                c.dim,
                c.n_heads,
                c.n_kv_heads,
                c.head_dim,
                c.ffn_hidden,
                c.vocab_size,
                c.rope_theta,
                c.tie_embeddings
            );
        }
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    if files.is_empty() {
        bail!("{}: no .safetensors files (and not a .gguf file)", path.display());
    }
    println!("\n{:<52} {:>16} {:>6} {:>12}", "tensor", "shape", "type", "bytes");
    let (mut params, mut bytes, mut shown) = (0u64, 0u64, 0usize);
    for file in files {
        let data = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&data).map_err(|e| anyhow::anyhow!("{}: {e:?}", file.display()))?;
        let mut ts: Vec<_> = meta.tensors().into_iter().collect();
        ts.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, info) in ts {
            let n: u64 = info.shape.iter().map(|&d| d as u64).product();
            let nb = (info.data_offsets.1 - info.data_offsets.0) as u64;
            params += n;
            bytes += nb;
            if all || shown < 40 {
                println!(
                    "{:<52} {:>16} {:>6} {:>12}",
                    name,
                    format!("{:?}", info.shape),
                    format!("{:?}", info.dtype).to_lowercase(),
                    nb
                );
            }
            shown += 1;
        }
    }
    if !all && shown > 40 {
        println!("… {} more (--all shows them)", shown - 40);
    }
    println!("\nparameters: {params} ({:.1} M); tensor data {}", params as f64 / 1e6, human(bytes));
    Ok(())
}
