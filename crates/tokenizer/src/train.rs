//! Byte-level BPE training, the GPT-2 way: split every sequence with the GPT-2 regex, count the
//! distinct pre-tokens (a hash map, so memory grows with the vocabulary of words, not the
//! corpus; counted in parallel with rayon), then merge the most frequent adjacent pair until
//! the vocabulary is full. Merging is incremental like HF's `BpeTrainer`: pair counts, an index
//! from pair to the words containing it, and a lazily updated priority queue.
//!
//! Ties between equally frequent pairs go to the smaller (left id, right id), as in HF, and the
//! byte alphabet is ordered by code point after the special tokens, as HF orders it, so the
//! output is deterministic. Output: an HF tokenizer.json (ByteLevel BPE).

use crate::{bytelevel, corpus, hf_json, pretokenize, Tokenizer};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use std::collections::BinaryHeap;
use std::path::PathBuf;

/// Settings for [`Tokenizer::train`].
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Final vocabulary size, special tokens and the 256 bytes included.
    pub vocab_size: usize,
    /// Stop merging when the best pair occurs fewer times than this.
    pub min_frequency: u64,
    /// Special tokens, given ids 0.. in order; the first is the EOS unless it looks like a BOS.
    pub special_tokens: Vec<String>,
    /// JSONL field holding the text (for `.jsonl` inputs).
    pub field: Option<String>,
    /// Show progress bars on stderr.
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            vocab_size: 8192,
            min_frequency: 2,
            special_tokens: vec!["<|endoftext|>".into()],
            field: None,
            progress: false,
        }
    }
}

type Counts = FxHashMap<Vec<u8>, u64>;
type Pair = (u32, u32);
/// A pair count change: (pair, delta per occurrence, word index).
type Change = (Pair, i32, u32);

/// Count the pre-tokens of one sequence (raw bytes; invalid UTF-8 runs count as one piece).
fn count_sequence(re: &pretokenize::SplitRegex, seq: &[u8], counts: &mut Counts, ranges: &mut Vec<(usize, usize)>) {
    let mut add = |piece: &[u8]| {
        if piece.is_empty() {
            return;
        }
        match counts.get_mut(piece) {
            Some(c) => *c += 1,
            None => {
                counts.insert(piece.to_vec(), 1);
            }
        }
    };
    for chunk in seq.utf8_chunks() {
        let s = chunk.valid();
        ranges.clear();
        re.find_ranges(s, ranges);
        let mut pos = 0;
        for &(a, b) in ranges.iter() {
            if a > pos {
                add(&s.as_bytes()[pos..a]);
            }
            add(&s.as_bytes()[a..b]);
            pos = b;
        }
        if pos < s.len() {
            add(&s.as_bytes()[pos..]);
        }
        add(chunk.invalid());
    }
}

fn bar(show: bool, len: u64, msg: &'static str, bytes: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let style = if bytes {
        "{msg:>10} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec})"
    } else {
        "{msg:>10} [{elapsed_precise}] {wide_bar} {pos}/{len}"
    };
    let pb = ProgressBar::new(len);
    pb.set_style(ProgressStyle::with_template(style).unwrap_or_else(|_| ProgressStyle::default_bar()));
    pb.set_message(msg);
    pb
}

/// Pre-token counts of the inputs, read in a streaming pass.
pub fn count_files(files: &[PathBuf], cfg: &TrainConfig) -> Result<Counts> {
    let total: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    let pb = bar(cfg.progress, total, "counting", true);
    let re = pretokenize::SplitRegex::new(pretokenize::GPT2_PATTERN)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<corpus::Chunk>(rayon::current_num_threads() * 2);
    let field = cfg.field.clone();
    let files2 = files.to_vec();
    let pb2 = pb.clone();
    // One reader thread (decompression is sequential); rayon workers count chunks as they come.
    let reader = std::thread::spawn(move || -> Result<()> {
        for f in &files2 {
            let len = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
            corpus::read_chunks(f, field.as_deref(), 1 << 20, |c| tx.send(c).context("counting workers stopped"))?;
            pb2.inc(len);
        }
        Ok(())
    });
    let counts = rx
        .into_iter()
        .par_bridge()
        .fold(
            || (Counts::default(), Vec::new()),
            |(mut m, mut ranges), chunk| {
                for seq in chunk.iter() {
                    count_sequence(&re, seq, &mut m, &mut ranges);
                }
                (m, ranges)
            },
        )
        .map(|(m, _)| m)
        .reduce(Counts::default, |mut a, b| {
            let (mut a, b) = if a.len() < b.len() { (b, a) } else { (std::mem::take(&mut a), b) };
            for (k, v) in b {
                *a.entry(k).or_insert(0) += v;
            }
            a
        });
    match reader.join() {
        Ok(r) => r?,
        Err(_) => bail!("the input reader thread panicked"),
    }
    pb.finish_and_clear();
    Ok(counts)
}

#[derive(PartialEq, Eq)]
struct Top {
    count: i64,
    pair: (u32, u32),
}
impl PartialOrd for Top {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Top {
    // Most frequent first; ties to the smaller pair (HF's order).
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.count.cmp(&o.count).then_with(|| o.pair.cmp(&self.pair))
    }
}

/// Replace every (a, b) in `w` by `new`, recording pair count changes (per occurrence).
fn merge_word(w: &mut Vec<u32>, a: u32, b: u32, new: u32, changes: &mut Vec<((u32, u32), i32)>) {
    let mut out = Vec::with_capacity(w.len());
    let mut i = 0;
    while i < w.len() {
        if i + 1 < w.len() && w[i] == a && w[i + 1] == b {
            if let Some(&p) = out.last() {
                changes.push(((p, a), -1));
                changes.push(((p, new), 1));
            }
            if i + 2 < w.len() {
                changes.push(((b, w[i + 2]), -1));
                changes.push(((new, w[i + 2]), 1));
            }
            out.push(new);
            i += 2;
        } else {
            out.push(w[i]);
            i += 1;
        }
    }
    *w = out;
}

/// Learn merges from pre-token counts; returns (vocab in id order, merges).
pub fn learn(counts: Counts, cfg: &TrainConfig) -> Result<(Vec<String>, Vec<Pair>)> {
    let mut vocab: Vec<String> = cfg.special_tokens.clone();
    let mut alphabet = bytelevel::alphabet();
    alphabet.sort_unstable();
    let mut byte_id = [0u32; 256];
    for c in alphabet {
        let b = bytelevel::char_byte(c).expect("alphabet char");
        byte_id[b as usize] = vocab.len() as u32;
        vocab.push(c.to_string());
    }
    if cfg.vocab_size < vocab.len() {
        bail!("vocab size {} is smaller than the {} special and byte tokens", cfg.vocab_size, vocab.len());
    }
    if cfg.vocab_size > u32::MAX as usize {
        bail!("vocab size {} does not fit token ids (u32)", cfg.vocab_size);
    }
    let mut index: FxHashMap<String, u32> = vocab.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let (mut words, wcounts): (Vec<Vec<u32>>, Vec<i64>) =
        counts.into_iter().map(|(k, c)| (k.iter().map(|&b| byte_id[b as usize]).collect(), c as i64)).unzip();

    // Initial pair counts and the pair → words index.
    let mut pair_counts: FxHashMap<(u32, u32), i64> = FxHashMap::default();
    let mut where_: FxHashMap<(u32, u32), Vec<u32>> = FxHashMap::default();
    for (i, w) in words.iter().enumerate() {
        for p in w.windows(2) {
            let pair = (p[0], p[1]);
            *pair_counts.entry(pair).or_insert(0) += wcounts[i];
            let v = where_.entry(pair).or_default();
            if v.last() != Some(&(i as u32)) {
                v.push(i as u32);
            }
        }
    }
    let mut heap: BinaryHeap<Top> = pair_counts.iter().map(|(&pair, &count)| Top { count, pair }).collect();
    let target = cfg.vocab_size - vocab.len();
    let pb = bar(cfg.progress, target as u64, "merging", false);
    // Merges stop when the pairs run out, long before an absurd --vocab-size: grow as they come.
    let mut merges = Vec::with_capacity(target.min(1 << 16));
    let mut changes = Vec::new();
    while vocab.len() < cfg.vocab_size {
        let Some(top) = heap.pop() else { break };
        let current = pair_counts.get(&top.pair).copied().unwrap_or(0);
        if current != top.count {
            if current > 0 {
                heap.push(Top { count: current, pair: top.pair });
            }
            continue;
        }
        if top.count < 1 || (top.count as u64) < cfg.min_frequency {
            break;
        }
        let (a, b) = top.pair;
        let tok = format!("{}{}", vocab[a as usize], vocab[b as usize]);
        let new = match index.get(&tok) {
            Some(&id) => id,
            None => {
                let id = vocab.len() as u32;
                vocab.push(tok.clone());
                index.insert(tok, id);
                id
            }
        };
        merges.push((a, b));
        pair_counts.insert(top.pair, 0);
        let mut pos = where_.remove(&top.pair).unwrap_or_default();
        pos.sort_unstable();
        pos.dedup();
        changes.clear();
        if pos.len() > 2048 {
            // Disjoint words (positions are deduplicated) merged in parallel.
            struct Ptr(*mut Vec<u32>);
            unsafe impl Sync for Ptr {}
            let base = Ptr(words.as_mut_ptr());
            let base = &base;
            let per: Vec<Vec<Change>> = pos
                .par_chunks(512)
                .map(|ix| {
                    let mut local = Vec::new();
                    let mut ch = Vec::new();
                    for &i in ix {
                        // SAFETY: `pos` holds distinct indices below words.len(), so each word is
                        // borrowed mutably by exactly one task.
                        let w = unsafe { &mut *base.0.add(i as usize) };
                        ch.clear();
                        merge_word(w, a, b, new, &mut ch);
                        local.extend(ch.iter().map(|&(p, d)| (p, d, i)));
                    }
                    local
                })
                .collect();
            for v in per {
                changes.extend(v);
            }
        } else {
            let mut ch = Vec::new();
            for &i in &pos {
                ch.clear();
                merge_word(&mut words[i as usize], a, b, new, &mut ch);
                changes.extend(ch.iter().map(|&(p, d)| (p, d, i)));
            }
        }
        let mut touched: Vec<(u32, u32)> = Vec::new();
        for &(pair, d, i) in &changes {
            *pair_counts.entry(pair).or_insert(0) += d as i64 * wcounts[i as usize];
            if d > 0 {
                let v = where_.entry(pair).or_default();
                if v.last() != Some(&i) {
                    v.push(i);
                }
                touched.push(pair);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for pair in touched {
            let count = pair_counts[&pair];
            if count > 0 {
                heap.push(Top { count, pair });
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok((vocab, merges))
}

/// Assemble the tokenizer.json and load it (so the result runs exactly what `save` writes).
pub fn build(vocab: Vec<String>, merges: Vec<(u32, u32)>, cfg: &TrainConfig) -> Result<Tokenizer> {
    let specials: Vec<(String, u32)> =
        cfg.special_tokens.iter().enumerate().map(|(i, s)| (s.clone(), i as u32)).collect();
    let merges: Vec<(String, String)> =
        merges.iter().map(|&(a, b)| (vocab[a as usize].clone(), vocab[b as usize].clone())).collect();
    let map: serde_json::Map<String, serde_json::Value> =
        vocab.into_iter().enumerate().map(|(i, t)| (t, serde_json::json!(i))).collect();
    let v = hf_json::bpe_json(map, merges, &specials, hf_json::byte_level_pre(true));
    let mut inner = hf_json::from_json(v, std::path::Path::new("<trained>"), None)?;
    let looks_bos = |s: &str| s.contains("begin") || s.contains("start") || s == "<s>" || s.contains("bos");
    inner.bos = specials.iter().find(|(s, _)| looks_bos(s)).map(|x| x.1);
    inner.eos = specials.iter().find(|(s, _)| !looks_bos(s) && !s.contains("pad")).map(|x| x.1);
    Ok(Tokenizer::from_inner(inner))
}

impl Tokenizer {
    /// Train a byte-level BPE on files, directories or globs (`.gz` and JSONL included).
    pub fn train(inputs: &[String], cfg: &TrainConfig) -> Result<Tokenizer> {
        let files = smelt_files::expand_inputs(inputs)?;
        if files.is_empty() {
            bail!("no input files");
        }
        let counts = count_files(&files, cfg)?;
        if counts.is_empty() {
            // Would write a bytes-only tokenizer, smaller than --vocab-size, as if trained.
            bail!("no text in the inputs ({} files, all empty): nothing to learn merges from", files.len());
        }
        let (vocab, merges) = learn(counts, cfg)?;
        build(vocab, merges, cfg)
    }

    /// Train on in-memory texts (each text is one sequence).
    pub fn train_from_texts<'a>(texts: impl IntoIterator<Item = &'a str>, cfg: &TrainConfig) -> Result<Tokenizer> {
        let re = pretokenize::SplitRegex::new(pretokenize::GPT2_PATTERN)?;
        let mut counts = Counts::default();
        let mut ranges = Vec::new();
        for t in texts {
            count_sequence(&re, t.as_bytes(), &mut counts, &mut ranges);
        }
        let (vocab, merges) = learn(counts, cfg)?;
        build(vocab, merges, cfg)
    }
}
