//! SFT batches: examples → rows of (inputs, targets) with the loss mask applied as `IGNORE`
//! targets, padded or packed, shuffled per epoch.
//!
//! Batch `k` of a run is a pure function of (examples, settings, seed, k), so a resumed run
//! sees exactly the batches an uninterrupted one would (no loader state in checkpoints).
//! - Padded: each epoch is a permutation of the examples (seeded by (seed, epoch)); a batch is
//!   `batch` consecutive examples of it, each a row, padded at the end to the batch's longest.
//! - Packed (`packing`): the examples, in one seeded order, are laid end to end into rows of
//!   at most `seq_len` positions (a new row when the next example does not fit: no example is
//!   split); each epoch permutes the rows. Every position knows where its example starts
//!   (`starts`), so attention stays inside the example and positions restart at 0.
//!
//! An example longer than `seq_len + 1` tokens is cut to that (inputs are tokens 0..n−1,
//! targets 1..n); examples left with no target in the loss are dropped (`SftPlan::dropped`).

use super::{Example, IGNORE};
use crate::hash::{below, hash_u64s};
use anyhow::{bail, Result};

/// One batch, row-major (rows × t).
#[derive(Clone, Debug, PartialEq)]
pub struct SftBatch {
    pub rows: usize,
    pub t: usize,
    pub inputs: Vec<u32>,
    /// Next-token targets, `IGNORE` where the token is not in the loss (prompt, padding).
    pub targets: Vec<u32>,
    /// Packed rows: for each position, the row index where its example starts.
    pub starts: Option<Vec<u32>>,
    /// Targets that are not `IGNORE`.
    pub loss_tokens: usize,
    /// Positions holding example tokens (not padding).
    pub tokens: usize,
}

/// (inputs, targets) of one example, each n − 1 long.
pub(crate) type Seq = (Vec<u32>, Vec<u32>);

pub struct SftPlan {
    /// Padded: one unit per example. Packed: one unit per row, a list of examples.
    units: Vec<Vec<Seq>>,
    batch: usize,
    seed: u64,
    shuffle: bool,
    packing: bool,
    pad_id: u32,
    /// Examples dropped for having no loss target within `seq_len`.
    pub dropped: usize,
    /// Examples cut to `seq_len + 1` tokens.
    pub truncated: usize,
}

impl SftPlan {
    /// `shuffle` false keeps the file's order (validation). `pad_id` fills the inputs of padding
    /// (its targets are `IGNORE`, and causal attention keeps real positions from seeing it).
    pub fn new(
        examples: &[Example],
        batch: usize,
        seq_len: usize,
        packing: bool,
        shuffle: bool,
        seed: u64,
        pad_id: u32,
    ) -> Result<Self> {
        if batch == 0 || seq_len == 0 {
            bail!("batch size ({batch}) and sequence length ({seq_len}) must be positive");
        }
        let (mut dropped, mut truncated) = (0, 0);
        let mut seqs: Vec<Seq> = Vec::with_capacity(examples.len());
        for e in examples {
            let (s, cut) = to_seq(e, seq_len);
            truncated += usize::from(cut);
            match s {
                Some(s) => seqs.push(s),
                None => dropped += 1,
            }
        }
        if seqs.is_empty() {
            bail!("no example has a token in the loss within --seq-len {seq_len}");
        }
        let units = if packing {
            let order = permutation(seqs.len(), hash_u64s(&[seed, u64::MAX]), shuffle);
            let mut rows: Vec<Vec<Seq>> = Vec::new();
            let mut used = seq_len;
            for i in order {
                let s = std::mem::take(&mut seqs[i]);
                if used + s.0.len() > seq_len {
                    rows.push(Vec::new());
                    used = 0;
                }
                used += s.0.len();
                rows.last_mut().expect("a row was started").push(s);
            }
            rows
        } else {
            seqs.into_iter().map(|s| vec![s]).collect()
        };
        Ok(SftPlan { units, batch, seed, shuffle, packing, pad_id, dropped, truncated })
    }

    /// Examples (padded) or packed rows per epoch.
    pub fn units(&self) -> usize {
        self.units.len()
    }

    /// Batches per epoch (the last may be short).
    pub fn batches_per_epoch(&self) -> u64 {
        self.units.len().div_ceil(self.batch) as u64
    }

    /// Targets in the loss over one epoch.
    pub fn loss_tokens(&self) -> usize {
        self.units.iter().flatten().map(|(_, y)| y.iter().filter(|&&t| t != IGNORE).count()).sum()
    }

    /// Batch `k` of the run (epoch k / batches_per_epoch).
    pub fn batch(&self, k: u64) -> SftBatch {
        let per = self.batches_per_epoch();
        let (epoch, i) = (k / per, (k % per) as usize);
        let order = permutation(self.units.len(), hash_u64s(&[self.seed, epoch]), self.shuffle);
        let chosen = &order[i * self.batch..((i + 1) * self.batch).min(order.len())];
        let rows: Vec<&Vec<Seq>> = chosen.iter().map(|&u| &self.units[u]).collect();
        let t = rows.iter().map(|r| r.iter().map(|s| s.0.len()).sum::<usize>()).max().unwrap_or(1);
        let n = rows.len() * t;
        let (mut inputs, mut targets) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut starts = self.packing.then(|| Vec::with_capacity(n));
        let mut tokens = 0;
        for row in rows {
            let mut at = 0;
            for (x, y) in row {
                inputs.extend_from_slice(x);
                targets.extend_from_slice(y);
                if let Some(s) = &mut starts {
                    s.extend(std::iter::repeat_n(at as u32, x.len()));
                }
                at += x.len();
            }
            tokens += at;
            // Padding: its own segment when packed, so it attends only to itself.
            inputs.extend(std::iter::repeat_n(self.pad_id, t - at));
            targets.extend(std::iter::repeat_n(IGNORE, t - at));
            if let Some(s) = &mut starts {
                s.extend(std::iter::repeat_n(at as u32, t - at));
            }
        }
        let loss_tokens = targets.iter().filter(|&&t| t != IGNORE).count();
        SftBatch { rows: chosen.len(), t, inputs, targets, starts, loss_tokens, tokens }
    }
}

/// An example as (inputs, targets), cut to `seq_len + 1` tokens (and whether it was cut);
/// `None` when no target in the loss is left.
pub(crate) fn to_seq(e: &Example, seq_len: usize) -> (Option<Seq>, bool) {
    let n = e.ids.len().min(seq_len + 1);
    let x = e.ids[..n - 1].to_vec();
    let y: Vec<u32> = (1..n).map(|i| if e.loss[i] { e.ids[i] } else { IGNORE }).collect();
    let keep = y.iter().any(|&t| t != IGNORE);
    (keep.then_some((x, y)), n < e.ids.len())
}

/// 0..n, shuffled by a seeded Fisher–Yates (or in order).
pub(crate) fn permutation(n: usize, seed: u64, shuffle: bool) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    if shuffle {
        for i in (1..n).rev() {
            let j = below(hash_u64s(&[seed, i as u64]), i as u64 + 1) as usize;
            p.swap(i, j);
        }
    }
    p
}
