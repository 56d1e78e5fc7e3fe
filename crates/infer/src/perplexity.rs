//! Perplexity over a token sequence: non-overlapping windows of `seq_len` tokens (the last kept
//! if it has at least 2), every token after the first of each window scored (or, with
//! `perplexity_from`, those predicted from position `from` on, as llama-perplexity does).

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

pub fn perplexity(
    model: &Model,
    ids: &[u32],
    seq_len: usize,
    progress: impl FnMut(usize, usize),
) -> Result<Perplexity> {
    perplexity_from(model, ids, seq_len, 0, progress)
}

/// As `perplexity`, scoring only the predictions made at window positions ≥ `from`:
/// llama.cpp's llama-perplexity scores the second half of each window (`from` = seq_len / 2),
/// so its figures compare with `from` = 256 at windows of 512.
pub fn perplexity_from(
    model: &Model,
    ids: &[u32],
    seq_len: usize,
    from: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Perplexity> {
    if seq_len < 2 {
        bail!("--seq-len must be at least 2");
    }
    if from + 1 >= seq_len {
        bail!("scoring from window position {from} leaves nothing to score in windows of {seq_len}");
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
        if t - 1 > from {
            sum += nll[from..t - 1].iter().sum::<f64>();
            n += t - 1 - from;
        }
        progress(i + 1, windows.len());
    }
    if n == 0 {
        bail!("no window is longer than position {from}: nothing scored");
    }
    let mean = sum / n as f64;
    Ok(Perplexity { tokens: ids.len(), predicted: n, mean_nll: mean, ppl: mean.exp() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoring_from_a_position_keeps_only_the_later_predictions() {
        let m = Model::init(smelt_model::ModelConfig::llama(64, 32, 1, 2, 2, 64), 1).unwrap();
        let ids: Vec<u32> = (0..40).map(|i| (i * 7 % 64) as u32).collect();
        let all = perplexity(&m, &ids, 16, |_, _| {}).unwrap();
        assert_eq!(all.predicted, 15 + 15 + 7);
        let half = perplexity_from(&m, &ids, 16, 8, |_, _| {}).unwrap();
        assert_eq!(half.predicted, 7 + 7); // the last window (8 tokens) predicts nothing from 8 on
        assert_eq!(perplexity_from(&m, &ids, 16, 0, |_, _| {}).unwrap().mean_nll, all.mean_nll);
        assert!(perplexity_from(&m, &ids, 16, 15, |_, _| {}).is_err());
    }
}
