//! Training batches as a pure function of (seed, step, micro-batch): resuming at step s sees
//! exactly the data a straight run would have seen, with no loader state to save.

use anyhow::{bail, Result};
use smelt_core::rng::{splitmix64, Rng};
use smelt_core::Tensor;
use smelt_data::TokenFile;

/// (inputs, targets), each (B, T) u32, for micro-batch `micro` of update `step`.
pub fn train_batch(data: &TokenFile, seed: u64, step: u64, micro: u64, b: usize, t: usize) -> Result<(Tensor, Tensor)> {
    if data.len() < t + 1 {
        bail!("{}: {} tokens is fewer than seq_len + 1 = {}", data.path().display(), data.len(), t + 1);
    }
    let mut s = seed ^ 0x5EED_0000_0000_0000;
    let mut key = splitmix64(&mut s) ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ micro.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    let mut rng = Rng::new(splitmix64(&mut key));
    let span = (data.len() - t - 1) as u64 + 1;
    let mut win = Vec::with_capacity(t + 1);
    let (mut x, mut y) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t));
    for _ in 0..b {
        let start = rng.below(span) as usize;
        win.clear();
        data.read_into(start, t + 1, &mut win);
        x.extend_from_slice(&win[..t]);
        y.extend_from_slice(&win[1..]);
    }
    Ok((Tensor::from_u32(x, &[b, t])?, Tensor::from_u32(y, &[b, t])?))
}

/// Non-overlapping validation windows from the start of `data`, at most `max_batches` of them.
pub fn eval_batches(data: &TokenFile, b: usize, t: usize, max_batches: usize) -> Result<Vec<(Tensor, Tensor)>> {
    let n_windows = data.len().saturating_sub(1) / t;
    if n_windows == 0 {
        bail!("{}: {} tokens is too short for one validation window of {}", data.path().display(), data.len(), t + 1);
    }
    let mut out = Vec::new();
    let mut w = 0;
    let mut win = Vec::with_capacity(t + 1);
    while w < n_windows && out.len() < max_batches {
        let rows = b.min(n_windows - w);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for r in 0..rows {
            win.clear();
            data.read_into((w + r) * t, t + 1, &mut win);
            x.extend_from_slice(&win[..t]);
            y.extend_from_slice(&win[1..]);
        }
        out.push((Tensor::from_u32(x, &[rows, t])?, Tensor::from_u32(y, &[rows, t])?));
        w += rows;
    }
    Ok(out)
}
