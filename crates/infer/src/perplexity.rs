//! Perplexity over a token sequence: non-overlapping windows of `seq_len` tokens (the last kept
//! if it has at least 2), every token after the first of each window scored.

use anyhow::{bail, Result};
use smelt_core::ops::cross_entropy::nll_rows;
use smelt_core::Tensor;
use smelt_model::{Logits, Model};

pub struct Perplexity {
    pub tokens: usize,
    pub predicted: usize,
    pub mean_nll: f64,
    pub ppl: f64,
}

pub fn perplexity(model: &Model, ids: &[u32], seq_len: usize, mut progress: impl FnMut(usize, usize)) -> Result<Perplexity> {
    if seq_len < 2 {
        bail!("--seq-len must be at least 2");
    }
    let windows: Vec<&[u32]> = ids.chunks(seq_len).filter(|w| w.len() >= 2).collect();
    if windows.is_empty() {
        bail!("the input has {} tokens: too few to score", ids.len());
    }
    let (mut sum, mut n) = (0f64, 0usize);
    for (i, w) in windows.iter().enumerate() {
        let t = w.len();
        let logits = model.logits(&Tensor::from_u32(w.to_vec(), &[1, t])?, None, Logits::All)?;
        let logits = logits.reshape(&[t, model.cfg.vocab_size])?;
        let mut targets = w[1..].to_vec();
        targets.push(smelt_core::ops::cross_entropy::IGNORE);
        let nll = nll_rows(&logits, &Tensor::from_u32(targets, &[t])?)?;
        sum += nll[..t - 1].iter().sum::<f64>();
        n += t - 1;
        progress(i + 1, windows.len());
    }
    let mean = sum / n as f64;
    Ok(Perplexity { tokens: ids.len(), predicted: n, mean_nll: mean, ppl: mean.exp() })
}
