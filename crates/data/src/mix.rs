//! `mix`: blend token files by ratio into one, sampling whole documents (EOS-delimited spans).
//!
//! Each source's documents are drawn in a seeded shuffled order; when a source runs out it starts
//! a new shuffled pass (a repeat, reported). Sources are interleaved by always drawing from the
//! one furthest behind its token target, so the realised ratios track the requested ones
//! throughout the file, not only at its end. Everything is a function of the inputs and the seed.

use crate::hash::{hash_u64s, SplitMix64};
use crate::tokens::{TokenFile, TokenWriter};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub struct MixSource {
    pub path: PathBuf,
    pub weight: f64,
}

/// Parse `path:ratio`; the ratio follows the last `:` so paths with colons still work.
pub fn parse_source(spec: &str) -> Result<MixSource> {
    let (path, w) =
        spec.rsplit_once(':').with_context(|| format!("--input {spec:?}: expected PATH:RATIO, e.g. web.bin:0.7"))?;
    let weight: f64 = w.parse().with_context(|| format!("--input {spec:?}: ratio {w:?} is not a number"))?;
    if !(weight > 0.0 && weight.is_finite()) {
        bail!("--input {spec:?}: ratio must be a positive number");
    }
    Ok(MixSource { path: PathBuf::from(path), weight })
}

pub struct MixConfig {
    pub sources: Vec<MixSource>,
    pub output: PathBuf,
    /// Tokens to write (whole documents, so slightly more). `None`: as many as the sources
    /// allow without any source repeating a document, i.e. min over sources of tokens / ratio.
    pub tokens: Option<u64>,
    pub seed: u64,
}

#[derive(Debug)]
pub struct SourceReport {
    pub path: PathBuf,
    /// Requested share (ratios normalised to sum to 1).
    pub ratio: f64,
    pub available_tokens: u64,
    pub available_documents: u64,
    pub tokens: u64,
    pub documents: u64,
    /// Share of the output actually taken from this source.
    pub realised: f64,
    /// Passes over the source's documents (> 1.0 means documents were repeated).
    pub passes: f64,
}

#[derive(Debug)]
pub struct MixSummary {
    pub sources: Vec<SourceReport>,
    pub tokens: u64,
    pub output: PathBuf,
}

struct Source {
    file: TokenFile,
    /// `ends[i]`: one past the last id of document i (its EOS, when present).
    ends: Vec<u64>,
    order: Vec<u32>,
    cursor: usize,
    pass: u64,
    target: f64,
    taken: u64,
    docs: u64,
}

impl Source {
    fn doc(&self, i: usize) -> (usize, usize) {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        (start, self.ends[i] as usize - start)
    }
}

fn index_docs(f: &TokenFile, eos: u32) -> Vec<u64> {
    let mut ends: Vec<u64> = (0..f.len()).filter(|&i| f.get(i) == eos).map(|i| i as u64 + 1).collect();
    if ends.last().copied() != Some(f.len() as u64) {
        ends.push(f.len() as u64); // a last document without its EOS
    }
    ends
}

fn shuffled(n: usize, seed: u64, source: usize, pass: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n as u32).collect();
    SplitMix64::new(hash_u64s(&[seed, source as u64, pass])).shuffle(&mut v);
    v
}

/// On an error the writer's temporary is removed as it drops.
pub fn mix(cfg: &MixConfig) -> Result<MixSummary> {
    run(cfg)
}

fn open_source(path: &Path) -> Result<(TokenFile, u32)> {
    let f = TokenFile::open(path)?;
    let eos = f.eos_id().with_context(|| {
        format!("{}: the token file has no EOS id, so it cannot be split into documents", path.display())
    })?;
    if f.is_empty() {
        bail!("{}: the token file is empty", path.display());
    }
    Ok((f, eos))
}

fn run(cfg: &MixConfig) -> Result<MixSummary> {
    if cfg.sources.is_empty() {
        bail!("no --input sources to mix");
    }
    let inputs: Vec<PathBuf> = cfg.sources.iter().map(|s| s.path.clone()).collect();
    smelt_files::check_output(&cfg.output, &inputs, "--output")?;
    let total_w: f64 = cfg.sources.iter().map(|s| s.weight).sum();
    let mut srcs = Vec::new();
    let (mut vocab, mut eos0) = (0, 0);
    for (k, s) in cfg.sources.iter().enumerate() {
        let (file, eos) = open_source(&s.path)?;
        if k == 0 {
            (vocab, eos0) = (file.vocab_size(), eos);
        } else if file.vocab_size() != vocab || eos != eos0 {
            bail!(
                "{}: vocabulary {} / EOS {} differs from {} (vocabulary {vocab} / EOS {eos0}); mix only files made with the same tokenizer",
                s.path.display(), file.vocab_size(), eos, cfg.sources[0].path.display()
            );
        }
        let ends = index_docs(&file, eos);
        if ends.len() > u32::MAX as usize {
            bail!("{}: more than 2^32 documents", s.path.display());
        }
        let order = shuffled(ends.len(), cfg.seed, k, 0);
        srcs.push(Source { file, ends, order, cursor: 0, pass: 0, target: 0.0, taken: 0, docs: 0 });
    }
    let ratios: Vec<f64> = cfg.sources.iter().map(|s| s.weight / total_w).collect();
    let n = match cfg.tokens {
        Some(0) => bail!("--tokens must be positive"),
        Some(n) => n as f64,
        None => srcs.iter().zip(&ratios).map(|(s, r)| s.file.len() as f64 / r).fold(f64::INFINITY, f64::min),
    };
    for (s, r) in srcs.iter_mut().zip(&ratios) {
        s.target = n * r;
    }
    // A request bounded by the disk, not by patience: refuse what cannot be written.
    let width = if vocab <= 1 << 16 { 2.0 } else { 4.0 };
    let dir = cfg.output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Some(free) = smelt_files::staging::disk_free(dir) {
        if n * width > free as f64 {
            bail!(
                "--tokens {n}: {} would take about {:.1} GiB, but its disk has {:.1} GiB free",
                cfg.output.display(),
                n * width / (1u64 << 30) as f64,
                free as f64 / (1u64 << 30) as f64
            );
        }
    }

    let mut w = TokenWriter::create(&cfg.output, vocab, Some(eos0))?;
    let mut buf = Vec::new();
    loop {
        // The source furthest behind its target (smallest fraction done); ties go to the first.
        let mut pick = None;
        let mut best = f64::INFINITY;
        for (k, s) in srcs.iter().enumerate() {
            let done = s.taken as f64 / s.target;
            // Targets are fractional; a source is done within half a token of its target, so
            // float rounding never pulls one extra (repeated) document from the scarcest source.
            if (s.taken as f64) < s.target - 0.5 && done < best {
                best = done;
                pick = Some(k);
            }
        }
        let Some(k) = pick else { break };
        let s = &mut srcs[k];
        if s.cursor == s.order.len() {
            s.pass += 1;
            s.order = shuffled(s.ends.len(), cfg.seed, k, s.pass);
            s.cursor = 0;
        }
        let (start, len) = s.doc(s.order[s.cursor] as usize);
        s.cursor += 1;
        buf.clear();
        s.file.read_into(start, len, &mut buf)?;
        if buf.last() != Some(&eos0) {
            buf.push(eos0);
        }
        w.push(&buf)?;
        s.taken += buf.len() as u64;
        s.docs += 1;
    }
    let tokens = w.finish()?;
    let sources = srcs
        .iter()
        .zip(&ratios)
        .zip(&cfg.sources)
        .map(|((s, &ratio), src)| SourceReport {
            path: src.path.clone(),
            ratio,
            available_tokens: s.file.len() as u64,
            available_documents: s.ends.len() as u64,
            tokens: s.taken,
            documents: s.docs,
            realised: s.taken as f64 / tokens as f64,
            passes: s.taken as f64 / s.file.len() as f64,
        })
        .collect();
    Ok(MixSummary { sources, tokens, output: cfg.output.clone() })
}
