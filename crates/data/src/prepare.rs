//! `prepare`: text documents → token files (`train.bin`, and optionally `train.val.bin`).
//!
//! A reader thread streams documents in batches; each batch is tokenised in parallel (rayon) and
//! written in input order, so the output is byte-identical whatever the core count. Each document
//! is followed by the tokenizer's EOS. Memory holds a few batches, never the corpus.
//! The validation split is a pure function of (document index, seed): see [`is_val_doc`].

use crate::documents::{Doc, DocStream};
use crate::hash::{hash_u64s, unit_f64};
use crate::tokens::TokenWriter;
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use smelt_tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

pub struct PrepareConfig {
    /// Files, directories (recursive) or glob patterns.
    pub inputs: Vec<String>,
    /// JSONL field holding the text.
    pub field: String,
    pub output: PathBuf,
    /// Fraction of documents sent to the validation file, in `[0, 1)`.
    pub val_fraction: f64,
    pub seed: u64,
    /// Batch limits: documents and text bytes per parallel tokenisation batch.
    pub batch_docs: usize,
    pub batch_bytes: usize,
}

impl PrepareConfig {
    pub fn new(inputs: Vec<String>, output: PathBuf) -> Self {
        PrepareConfig {
            inputs,
            field: "text".into(),
            output,
            val_fraction: 0.0,
            seed: 0,
            batch_docs: 4096,
            batch_bytes: 32 << 20,
        }
    }
}

#[derive(Debug, Default)]
pub struct PrepareSummary {
    pub documents: u64,
    pub tokens: u64,
    pub val_documents: u64,
    pub val_tokens: u64,
    /// Empty documents (no text), skipped rather than written as a lone EOS.
    pub empty_documents: u64,
    /// UTF-8 bytes of text tokenised.
    pub text_bytes: u64,
    /// Bytes read from disk (compressed size for `.gz`).
    pub input_bytes: u64,
    pub input_files: usize,
    /// Documents with invalid UTF-8 (replaced by U+FFFD) and the first files where it happened.
    pub lossy_documents: u64,
    pub lossy_files: Vec<PathBuf>,
    pub seconds: f64,
    pub train_path: PathBuf,
    pub val_path: Option<PathBuf>,
}

/// `out/train.bin` → `out/train.val.bin`.
pub fn val_path_for(output: &Path) -> PathBuf {
    let stem = output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = output.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    output.with_file_name(format!("{stem}.val{ext}"))
}

/// Whether document `index` (0-based over all inputs, in order) goes to validation. A hash of
/// (seed, index) rather than a running RNG, so the split does not depend on batching or threads.
pub fn is_val_doc(index: u64, seed: u64, fraction: f64) -> bool {
    fraction > 0.0 && unit_f64(hash_u64s(&[seed, index, 0x0076_616c])) < fraction
}

/// Run `prepare`. `progress(bytes_read, total_bytes)` is called after each batch.
pub fn prepare(cfg: &PrepareConfig, tok: &Tokenizer, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<PrepareSummary> {
    if !(0.0..1.0).contains(&cfg.val_fraction) {
        bail!("--val-fraction {} must be in [0, 1)", cfg.val_fraction);
    }
    let eos = tok.eos_id().context("the tokenizer has no EOS token; prepare separates documents with EOS")?;
    let vocab = u32::try_from(tok.vocab_size()).context("vocabulary larger than u32")?;
    let files = smelt_files::expand_inputs(&cfg.inputs)?;
    let val_path = (cfg.val_fraction > 0.0).then(|| val_path_for(&cfg.output));
    if val_path.as_deref() == Some(cfg.output.as_path()) {
        bail!("output {} and its validation file would be the same path", cfg.output.display());
    }
    smelt_files::check_output(&cfg.output, &files, "--output")?;
    if let Some(v) = &val_path {
        smelt_files::check_output(v, &files, "the validation output")?;
    }
    // On an error the writers' temporaries are removed as they drop; the final names were
    // never created.
    run(cfg, tok, eos, vocab, files, val_path.clone(), progress)
}

fn run(
    cfg: &PrepareConfig,
    tok: &Tokenizer,
    eos: u32,
    vocab: u32,
    files: Vec<PathBuf>,
    val_path: Option<PathBuf>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<PrepareSummary> {
    let t0 = std::time::Instant::now();
    let mut s = PrepareSummary {
        input_files: files.len(),
        train_path: cfg.output.clone(),
        val_path: val_path.clone(),
        ..Default::default()
    };
    let mut stream = DocStream::new(files, &cfg.field);
    let counter = stream.bytes_counter();
    let total = stream.total_bytes();
    let mut train = TokenWriter::create(&cfg.output, vocab, Some(eos))?;
    let mut val = match &val_path {
        Some(p) => Some(TokenWriter::create(p, vocab, Some(eos))?),
        None => None,
    };

    // Reading (and gunzip / JSON parsing) overlaps tokenisation: a bounded channel of 2 batches
    // keeps memory at a few batches.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Doc>>>(2);
    let (batch_docs, batch_bytes) = (cfg.batch_docs.max(1), cfg.batch_bytes.max(1));
    std::thread::scope(|scope| -> Result<()> {
        let reader = scope.spawn(move || {
            loop {
                let b = stream.next_batch(batch_docs, batch_bytes);
                let done = matches!(&b, Ok(v) if v.is_empty()) || b.is_err();
                if tx.send(b).is_err() || done {
                    break;
                }
            }
            stream
        });
        // Owned here so that an early error drops it, which unblocks the reader before the scope
        // joins it.
        let rx = rx;
        let mut index = 0u64;
        for batch in rx.iter() {
            let batch = batch?;
            if batch.is_empty() {
                break;
            }
            let ids: Vec<Vec<u32>> = batch.par_iter().map(|d| tok.encode_with(&d.text, false)).collect();
            for (doc, mut ids) in batch.iter().zip(ids) {
                if doc.text.is_empty() {
                    s.empty_documents += 1;
                    continue;
                }
                ids.push(eos);
                s.text_bytes += doc.text.len() as u64;
                let to_val = is_val_doc(index, cfg.seed, cfg.val_fraction);
                index += 1;
                match (&mut val, to_val) {
                    (Some(v), true) => {
                        v.push(&ids)?;
                        s.val_documents += 1;
                        s.val_tokens += ids.len() as u64
                    }
                    _ => {
                        train.push(&ids)?;
                        s.documents += 1;
                        s.tokens += ids.len() as u64
                    }
                }
            }
            progress(counter.load(Ordering::Relaxed), total);
        }
        // The reader stops at its first error, which the loop above has already returned.
        let stream = reader.join().map_err(|_| anyhow::anyhow!("input reader thread panicked"))?;
        s.lossy_documents = stream.lossy_docs;
        s.lossy_files = stream.lossy_files;
        Ok(())
    })?;
    if s.documents + s.val_documents == 0 {
        bail!("no documents in the inputs ({} files, all empty)", s.input_files);
    }
    train.finish()?;
    if let Some(v) = val {
        v.finish()?;
    }
    s.input_bytes = counter.load(Ordering::Relaxed);
    s.seconds = t0.elapsed().as_secs_f64();
    Ok(s)
}
