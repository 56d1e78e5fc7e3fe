//! `smelt prepare`: tokenise text into a token file for training.

use super::progress::bytes_bar;
use anyhow::Result;
use smelt_data::prepare::{prepare, PrepareConfig};
use smelt_tokenizer::Tokenizer;
use std::path::PathBuf;

/// Tokenise documents into a token file (and optionally a validation file).
///
/// Each plain text file is one document; each line of a .jsonl/.ndjson file is one document
/// (its --field). Inputs may be gzip-compressed (.gz). Every document is followed by the
/// tokenizer's EOS. Tokenisation runs on all cores; the output is identical whatever their number.
#[derive(clap::Args)]
pub struct PrepareArgs {
    /// Input: a file, a directory (read recursively, hidden entries skipped) or a glob
    /// pattern (quote it). Repeat for more.
    #[arg(long, short, required = true)]
    pub input: Vec<String>,
    /// Tokenizer: a tokenizer.json or a directory holding one.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Output token file, e.g. train.bin.
    #[arg(long, short)]
    pub output: PathBuf,
    /// Fraction of documents written to a validation file next to the output, named
    /// `<output stem>.val.<ext>` (train.bin → train.val.bin). Documents are chosen by a hash of
    /// their index and --seed: whole documents, the same ones every run. 0 writes no validation file.
    #[arg(long, default_value_t = 0.0)]
    pub val_fraction: f64,
    /// JSON field holding the text in .jsonl inputs.
    #[arg(long, default_value = "text")]
    pub field: String,
    /// Seed for the validation split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(a: PrepareArgs) -> Result<()> {
    let tok = Tokenizer::from_file(&a.tokenizer)?;
    let mut cfg = PrepareConfig::new(a.input, a.output);
    cfg.val_fraction = a.val_fraction;
    cfg.field = a.field;
    cfg.seed = a.seed;
    let bar = bytes_bar();
    let s = prepare(&cfg, &tok, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();

    let mb = s.text_bytes as f64 / 1e6;
    let all = s.tokens + s.val_tokens;
    println!("prepared {} files in {:.1}s", s.input_files, s.seconds);
    println!("  documents  {:>12} train + {} val", s.documents, s.val_documents);
    println!(
        "  tokens     {:>12} train + {} val ({:.2} bytes/token)",
        s.tokens,
        s.val_tokens,
        s.text_bytes as f64 / all.max(1) as f64
    );
    println!("  text       {:>12.1} MB ({:.1} MB read from disk)", mb, s.input_bytes as f64 / 1e6);
    println!("  throughput {:>12.1} MB/s, {:.0} tokens/s", mb / s.seconds, all as f64 / s.seconds);
    if s.empty_documents > 0 {
        println!("  skipped {} empty documents", s.empty_documents);
    }
    if s.lossy_documents > 0 {
        let files: Vec<String> = s.lossy_files.iter().map(|p| p.display().to_string()).collect();
        println!(
            "  warning: {} documents had invalid UTF-8, replaced by U+FFFD (first in: {})",
            s.lossy_documents,
            files.join(", ")
        );
    }
    println!("  wrote {}", s.train_path.display());
    if let Some(v) = &s.val_path {
        println!("  wrote {}", v.display());
        if s.val_documents == 0 {
            println!(
                "  warning: no document fell in the validation split (too few documents for --val-fraction {})",
                cfg.val_fraction
            );
        }
    }
    Ok(())
}
