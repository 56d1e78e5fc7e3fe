//! `process`: quality filtering and deduplication of text documents, JSONL out.
//!
//! Per batch of documents, in parallel: the quality rules (`filters.rs`), the exact-dedup hash of
//! the normalised text, and the MinHash signature (`minhash.rs`). Then, sequentially and in input
//! order: the dedup decisions (the first occurrence is kept) and the write. So the output depends
//! only on the inputs and the settings, never on the thread count. Memory holds one batch of text
//! plus, per kept document, a 16-byte hash and a signature (4 bytes × num_perm).

pub mod filters;
pub mod minhash;
pub mod report;

use crate::documents::DocStream;
use crate::hash::hash_bytes;
use anyhow::{bail, Context, Result};
use filters::{FilterConfig, Rule};
use minhash::{LshIndex, MinHasher};
use rayon::prelude::*;
use report::{DedupSettings, Report};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dedup {
    None,
    Exact,
    Near,
    Both,
}

impl Dedup {
    pub fn name(self) -> &'static str {
        match self {
            Dedup::None => "none",
            Dedup::Exact => "exact",
            Dedup::Near => "near",
            Dedup::Both => "both",
        }
    }
    fn exact(self) -> bool {
        matches!(self, Dedup::Exact | Dedup::Both)
    }
    fn near(self) -> bool {
        matches!(self, Dedup::Near | Dedup::Both)
    }
}

pub struct ProcessConfig {
    pub inputs: Vec<String>,
    pub field: String,
    pub output: PathBuf,
    pub filters: FilterConfig,
    pub dedup: Dedup,
    /// Estimated Jaccard similarity at or above which a document is a near duplicate.
    pub threshold: f64,
    pub num_perm: usize,
    /// LSH bands; `None`: chosen from threshold and num_perm ([`minhash::optimal_bands`]).
    pub bands: Option<usize>,
    pub batch_docs: usize,
}

impl ProcessConfig {
    pub fn new(inputs: Vec<String>, output: PathBuf) -> Self {
        ProcessConfig {
            inputs,
            field: "text".into(),
            output,
            filters: FilterConfig::default(),
            dedup: Dedup::Both,
            threshold: 0.8,
            num_perm: 128,
            bands: None,
            batch_docs: 2048,
        }
    }
}

/// Lower-case, whitespace runs collapsed, trimmed: what "the same text" means for exact dedup.
pub fn normalise(text: &str) -> String {
    text.split_whitespace().map(str::to_lowercase).collect::<Vec<_>>().join(" ")
}

fn exact_key(text: &str) -> u128 {
    let n = normalise(text);
    // 128 bits: a 64-bit hash would expect a false "duplicate" around 4 billion documents.
    ((hash_bytes(n.as_bytes(), 1) as u128) << 64) | hash_bytes(n.as_bytes(), 2) as u128
}

struct Verdict {
    rule: Option<Rule>,
    key: u128,
    sig: Vec<u32>,
}

/// Run `process`; `progress(bytes_read, total_bytes)` is called after each batch.
pub fn process(cfg: &ProcessConfig, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<Report> {
    if !(0.0..=1.0).contains(&cfg.threshold) {
        bail!("--minhash-threshold {} must be in [0, 1]", cfg.threshold);
    }
    if cfg.num_perm == 0 {
        bail!("--num-perm must be positive");
    }
    let (bands, rows) = match cfg.bands {
        None => minhash::optimal_bands(cfg.threshold, cfg.num_perm),
        Some(b) if b == 0 || b > cfg.num_perm => bail!("--bands {b} must be in 1..={}", cfg.num_perm),
        Some(b) => (b, cfg.num_perm / b),
    };
    let files = smelt_files::expand_inputs(&cfg.inputs)?;
    smelt_files::check_output(&cfg.output, &files, "--output")?;
    let settings =
        DedupSettings { mode: cfg.dedup.name(), threshold: cfg.threshold, num_perm: cfg.num_perm, bands, rows };
    let mut report = Report::new(cfg.filters.clone(), settings);
    // On an error the output's temporary is removed as it drops.
    run(cfg, files, bands, rows, &mut report, progress).map(|_| report)
}

fn run(
    cfg: &ProcessConfig,
    files: Vec<PathBuf>,
    bands: usize,
    rows: usize,
    report: &mut Report,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<()> {
    let t0 = std::time::Instant::now();
    let mut stream = DocStream::new(files, &cfg.field);
    let (counter, total) = (stream.bytes_counter(), stream.total_bytes());
    let hasher = MinHasher::new(cfg.num_perm);
    let mut seen = HashSet::new();
    let mut lsh = LshIndex::new(cfg.num_perm, bands, rows, cfg.threshold);
    let tmp = smelt_files::Temp::new(&cfg.output);
    let f = std::fs::File::create(tmp.path()).with_context(|| format!("creating {}", tmp.path().display()))?;
    let out_name = cfg.output.display();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
    loop {
        let batch = stream.next_batch(cfg.batch_docs.max(1), 64 << 20)?;
        if batch.is_empty() {
            break;
        }
        let verdicts: Vec<Verdict> = batch
            .par_iter()
            .map(|d| {
                let rule = filters::check(&cfg.filters, &d.text);
                let pass = rule.is_none();
                Verdict {
                    rule,
                    key: if pass && cfg.dedup.exact() { exact_key(&d.text) } else { 0 },
                    sig: if pass && cfg.dedup.near() { hasher.signature(&d.text) } else { Vec::new() },
                }
            })
            .collect();
        for (d, v) in batch.iter().zip(verdicts) {
            report.input_documents += 1;
            let chars = d.text.chars().count() as u64;
            report.input_chars += chars;
            if let Some(r) = v.rule {
                report.count(r);
                continue;
            }
            if cfg.dedup.exact() && !seen.insert(v.key) {
                report.exact_duplicates += 1;
                continue;
            }
            if cfg.dedup.near() && lsh.check_insert(&v.sig).is_some() {
                report.near_duplicates += 1;
                continue;
            }
            report.kept_documents += 1;
            report.kept_chars += chars;
            serde_json::to_writer(&mut out, &serde_json::json!({ "text": d.text }))
                .with_context(|| format!("writing {out_name}"))?;
            out.write_all(b"\n").with_context(|| format!("writing {out_name}"))?;
        }
        progress(counter.load(Ordering::Relaxed), total);
    }
    if report.input_documents == 0 {
        bail!("no documents in the inputs");
    }
    report.lossy_utf8_documents = stream.lossy_docs;
    let f = out.into_inner().map_err(|e| e.into_error()).with_context(|| format!("writing {out_name}"))?;
    f.sync_all().with_context(|| format!("writing {out_name}"))?;
    drop(f);
    tmp.commit(&cfg.output)?;
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(())
}

/// Write the report as pretty JSON, through a temporary file.
pub fn write_report(report: &Report, path: &Path) -> Result<()> {
    smelt_files::write_atomic(path, serde_json::to_string_pretty(report)?)
}
