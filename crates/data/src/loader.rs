//! The batch loader: (inputs, targets) windows from a token file for training and evaluation.
//!
//! Training batches are stateless in the step: the offset of row `b` at step `s` is a pure
//! function of (seed, s, b), so resuming at step `s` reproduces the exact batches an uninterrupted
//! run would have seen, with no loader state in the checkpoint. Rows are uniform random windows of
//! the whole file (they may cross document boundaries; EOS marks them, as in GPT-2 training).
//! What a window means to the model (loss masks, packing) is train's business, not this file's.
//!
//! Several ranks (data-parallel training) split each batch by rows, not by steps: rank r of N
//! reads rows r·B/N .. (r+1)·B/N of the global batch (`batch_share`). The batch sequence is
//! the same for every N, so a run resumes exactly on any number of GPUs.

use crate::hash::{below, hash_u64s};
use crate::tokens::TokenFile;
use anyhow::{bail, Result};
use std::ops::Range;

/// Which part of every batch this process reads: rank `rank` of `world` ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub rank: usize,
    pub world: usize,
}

impl Share {
    /// The whole batch (one process).
    pub const ALL: Share = Share { rank: 0, world: 1 };

    /// This rank's rows of a `batch`-row batch: a contiguous block of `batch / world`. Errors
    /// when the rows do not divide evenly (every rank must do the same work).
    pub fn rows(&self, batch: usize) -> Result<Range<usize>> {
        if self.world == 0 || self.rank >= self.world {
            bail!("rank {} of {}: not a rank of the job", self.rank, self.world);
        }
        if !batch.is_multiple_of(self.world) {
            bail!(
                "--batch-size {batch} is the global batch (rows per micro-step over all GPUs): it must divide evenly among {} ranks",
                self.world
            );
        }
        let n = batch / self.world;
        Ok(self.rank * n..(self.rank + 1) * n)
    }

    /// This rank's block of `n` items split as evenly as the count allows (blocks differ by one
    /// item at most; with fewer items than ranks some blocks are empty). The blocks of the ranks
    /// in order make up `0..n`.
    pub fn part(&self, n: usize) -> Range<usize> {
        let world = self.world.max(1);
        self.rank * n / world..(self.rank + 1) * n / world
    }
}

pub struct Batcher {
    file: TokenFile,
    batch: usize,
    seq: usize,
    seed: u64,
}

impl Batcher {
    /// `batch` rows of `seq` tokens. Errors if the file cannot hold one window of `seq + 1` tokens
    /// (inputs plus the one-token shift for targets).
    pub fn new(file: TokenFile, batch: usize, seq: usize, seed: u64) -> Result<Self> {
        if batch == 0 || seq == 0 {
            bail!("batch size ({batch}) and sequence length ({seq}) must be positive");
        }
        if file.len() < seq + 1 {
            bail!(
                "{}: {} tokens, too short for sequence length {seq} (needs at least {})",
                file.path().display(),
                file.len(),
                seq + 1
            );
        }
        Ok(Batcher { file, batch, seq, seed })
    }

    pub fn file(&self) -> &TokenFile {
        &self.file
    }
    pub fn batch_size(&self) -> usize {
        self.batch
    }
    pub fn seq_len(&self) -> usize {
        self.seq
    }

    /// Start of row `b`'s window at `step`; any start in `0..=len-(seq+1)` is equally likely.
    pub fn offset(&self, step: u64, b: usize) -> usize {
        let starts = (self.file.len() - self.seq) as u64;
        below(hash_u64s(&[self.seed, step, b as u64]), starts) as usize
    }

    /// Fill `inputs` and `targets` (cleared first) with the B×T ids of `step`, row-major:
    /// `targets[i] = inputs[i + 1]` within a row.
    pub fn batch(&self, step: u64, inputs: &mut Vec<u32>, targets: &mut Vec<u32>) -> Result<()> {
        self.rows(step, 0..self.batch, inputs, targets)
    }

    /// `batch` restricted to `share`'s rows ((B/N)×T ids): the ranks' shares, in rank order,
    /// are the whole batch.
    pub fn batch_share(&self, step: u64, share: Share, inputs: &mut Vec<u32>, targets: &mut Vec<u32>) -> Result<()> {
        self.rows(step, share.rows(self.batch)?, inputs, targets)
    }

    fn rows(&self, step: u64, rows: Range<usize>, inputs: &mut Vec<u32>, targets: &mut Vec<u32>) -> Result<()> {
        inputs.clear();
        targets.clear();
        for b in rows {
            let o = self.offset(step, b);
            self.file.read_into(o, self.seq, inputs)?;
            self.file.read_into(o + 1, self.seq, targets)?;
        }
        Ok(())
    }

    /// Number of non-overlapping evaluation windows: window `k` covers ids `k*T ..= k*T + T`.
    pub fn eval_windows(&self) -> usize {
        (self.file.len() - 1) / self.seq
    }

    /// Evaluation batches over consecutive, non-overlapping windows from the start of the file,
    /// at most `max_batches` of them (`None`: the whole file). Every batch has B rows except
    /// possibly the last, which holds the remaining windows: rows = `inputs.len() / T`.
    /// The same file always gives the same batches, so validation losses are comparable across
    /// runs and resumptions.
    pub fn eval_batches(&self, max_batches: Option<usize>) -> EvalBatches<'_> {
        let windows = self.eval_windows();
        let all = windows.div_ceil(self.batch);
        EvalBatches { loader: self, next_window: 0, windows, batches_left: max_batches.map_or(all, |m| m.min(all)) }
    }
}

pub struct EvalBatches<'a> {
    loader: &'a Batcher,
    next_window: usize,
    windows: usize,
    batches_left: usize,
}

impl Iterator for EvalBatches<'_> {
    type Item = Result<(Vec<u32>, Vec<u32>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.batches_left == 0 || self.next_window >= self.windows {
            return None;
        }
        self.batches_left -= 1;
        let t = self.loader.seq;
        let rows = (self.windows - self.next_window).min(self.loader.batch);
        let (mut x, mut y) = (Vec::with_capacity(rows * t), Vec::with_capacity(rows * t));
        let file = &self.loader.file;
        let first = self.next_window;
        self.next_window += rows;
        let read = (first..first + rows).try_for_each(|w| {
            file.read_into(w * t, t, &mut x)?;
            file.read_into(w * t + 1, t, &mut y)
        });
        Some(read.map(|_| (x, y)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::TokenWriter;

    fn file_of(n: u32, name: &str) -> TokenFile {
        let dir = std::env::temp_dir().join(format!("smelt-loader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        let mut w = TokenWriter::create(&p, n.max(2), Some(0)).unwrap();
        w.push(&(0..n).collect::<Vec<_>>()).unwrap();
        w.finish().unwrap();
        TokenFile::open(&p).unwrap()
    }

    #[test]
    fn targets_shift_and_offsets_cover_the_file() {
        let l = Batcher::new(file_of(50, "a.bin"), 4, 8, 1).unwrap();
        let (mut x, mut y) = (vec![], vec![]);
        let mut seen = vec![false; 50 - 8];
        for s in 0..200 {
            l.batch(s, &mut x, &mut y).unwrap();
            assert_eq!((x.len(), y.len()), (32, 32));
            for r in 0..4 {
                // ids equal positions in this file, so a row is a run of consecutive ids
                assert!(x[r * 8..r * 8 + 8].windows(2).all(|w| w[1] == w[0] + 1));
                assert_eq!(&x[r * 8 + 1..r * 8 + 8], &y[r * 8..r * 8 + 7]);
                seen[x[r * 8] as usize] = true;
            }
        }
        // the first and the last start positions are both reachable
        assert!(seen.iter().all(|&s| s), "unreached starts: {seen:?}");
    }

    #[test]
    fn ranks_shares_make_up_the_one_process_batches() {
        let l = Batcher::new(file_of(500, "c.bin"), 8, 8, 7).unwrap();
        let (mut x, mut y, mut sx, mut sy) = (vec![], vec![], vec![], vec![]);
        for world in [1, 2, 4, 8] {
            for s in 0..50 {
                l.batch(s, &mut x, &mut y).unwrap();
                let (mut ux, mut uy) = (vec![], vec![]);
                for rank in 0..world {
                    l.batch_share(s, Share { rank, world }, &mut sx, &mut sy).unwrap();
                    assert_eq!(sx.len(), 8 * 8 / world);
                    ux.extend_from_slice(&sx);
                    uy.extend_from_slice(&sy);
                }
                assert_eq!((&ux, &uy), (&x, &y), "world {world}, step {s}");
            }
        }
        let e = l.batch_share(0, Share { rank: 0, world: 3 }, &mut sx, &mut sy).unwrap_err().to_string();
        assert!(e.contains("--batch-size 8") && e.contains("3 ranks"), "{e}");
    }

    #[test]
    fn eval_windows_are_disjoint_and_partial_last() {
        let l = Batcher::new(file_of(42, "b.bin"), 2, 8, 0).unwrap();
        let bs: Vec<_> = l.eval_batches(None).collect::<Result<_>>().unwrap();
        // (42-1)/8 = 5 windows → batches of 2, 2, 1
        assert_eq!(bs.iter().map(|(x, _)| x.len() / 8).collect::<Vec<_>>(), vec![2, 2, 1]);
        let starts: Vec<u32> = bs.iter().flat_map(|(x, _)| x.chunks(8).map(|c| c[0])).collect();
        assert_eq!(starts, vec![0, 8, 16, 24, 32]);
        assert_eq!(bs[2].1.last(), Some(&40));
        assert_eq!(l.eval_batches(Some(1)).count(), 1);
    }
}
