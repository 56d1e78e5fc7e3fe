//! Cross-entropy fused with log-softmax: mean over rows of (logsumexp(z) − z[target]).
//! Forward keeps only the per-row logsumexp; backward recomputes softmax from the logits, so no
//! full-vocabulary probability tensor is ever kept. Target `IGNORE` rows contribute nothing.

use crate::float::{max_of, sum_exp, Float};
use crate::Tensor;
use anyhow::{bail, Result};
use rayon::prelude::*;

#[cfg(feature = "cuda")]
pub mod cuda;

pub const IGNORE: u32 = u32::MAX;

/// Returns (per-row nll (0 for ignored rows), lse, count of scored rows).
pub fn ce_fwd<F: Float>(logits: &[F], targets: &[u32], v: usize) -> (Vec<F>, Vec<F>, usize) {
    let rows: Vec<(F, F)> = logits
        .par_chunks(v)
        .zip(targets.par_iter())
        .map(|(z, &t)| {
            let m = max_of(z);
            let s = sum_exp(z, m);
            let lse = m + s.ln();
            let nll = if t == IGNORE { F::ZERO } else { lse - z[t as usize] };
            (nll, lse)
        })
        .collect();
    let count = targets.iter().filter(|&&t| t != IGNORE).count();
    let (nll, lse) = rows.into_iter().unzip();
    (nll, lse, count)
}

/// dlogits = (softmax(z) − onehot(t)) · dloss / count
pub fn ce_bwd<F: Float>(logits: &[F], targets: &[u32], lse: &[F], dloss: F, count: usize, v: usize) -> Vec<F> {
    let mut d = vec![F::ZERO; logits.len()];
    let scale = dloss / F::from_f64(count.max(1) as f64);
    d.par_chunks_mut(v).zip(logits.par_chunks(v)).zip(targets.par_iter().zip(lse.par_iter())).for_each(
        |((d, z), (&t, &l))| {
            if t == IGNORE {
                return;
            }
            for (di, &zi) in d.iter_mut().zip(z) {
                *di = (zi - l).exp_fast() * scale;
            }
            d[t as usize] -= scale;
        },
    );
    d
}

fn check(logits: &Tensor, targets: &Tensor) -> Result<usize> {
    let v = logits.cols();
    if targets.numel() != logits.rows() {
        bail!("cross_entropy: {} targets for {} rows of logits", targets.numel(), logits.rows());
    }
    if let Some(&t) = targets.as_u32()?.iter().find(|&&t| t != IGNORE && t as usize >= v) {
        bail!("cross_entropy: target {t} out of range for vocabulary {v}");
    }
    Ok(v)
}

/// logits: (N, V), targets: (N) u32 → (loss (1), lse (N), count of scored rows)
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor, usize)> {
    let v = check(logits, targets)?;
    #[cfg(feature = "cuda")]
    if logits.is_cuda() {
        let count = targets.as_u32()?.iter().filter(|&&t| t != IGNORE).count();
        let (loss, lse) = cuda::cross_entropy(logits, targets, count)?;
        return Ok((loss, lse, count));
    }
    let (nll, lse, count) = ce_fwd(logits.as_f32()?, targets.as_u32()?, v);
    let loss = nll.iter().map(|&x| x as f64).sum::<f64>() / count.max(1) as f64;
    Ok((Tensor::scalar(loss as f32), Tensor::from_f32(lse, &[logits.rows()])?, count))
}

/// Per-row (nll, lse) without the mean: one chunk of a chunked loss. logits (N, V), targets
/// (N) u32 on the host → two (N) tensors on the logits' device.
pub fn nll_lse_rows(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let v = check(logits, targets)?;
    #[cfg(feature = "cuda")]
    if logits.is_cuda() {
        return cuda::nll_lse(logits, targets);
    }
    let (nll, lse, _) = ce_fwd(logits.as_f32()?, targets.as_u32()?, v);
    Ok((Tensor::from_f32(nll, &[logits.rows()])?, Tensor::from_f32(lse, &[logits.rows()])?))
}

/// Σ nll / count as a one-element tensor, summed as `cross_entropy` sums (f64 in row order on
/// the CPU; a fixed-order block reduction on CUDA).
pub fn mean_nll(nll: &Tensor, count: usize) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if nll.is_cuda() {
        return cuda::mean(nll, count);
    }
    let loss = nll.as_f32()?.iter().map(|&x| x as f64).sum::<f64>() / count.max(1) as f64;
    Ok(Tensor::scalar(loss as f32))
}

/// Number of rows that are scored (targets other than `IGNORE`).
pub fn count_scored(targets: &Tensor) -> Result<usize> {
    Ok(targets.as_u32()?.iter().filter(|&&t| t != IGNORE).count())
}

/// Per-row negative log-likelihoods (perplexity scoring), in f64.
pub fn nll_rows(logits: &Tensor, targets: &Tensor) -> Result<Vec<f64>> {
    if logits.is_cuda() {
        // Perplexity scoring in f64 stays on the host for now: one copy of the logits back.
        return nll_rows(&logits.to_device(crate::Device::Cpu)?.to_dtype(crate::DType::F32), targets);
    }
    let v = check(logits, targets)?;
    let z = logits.as_f32()?;
    Ok(z.par_chunks(v)
        .zip(targets.as_u32()?.par_iter())
        .map(|(z, &t)| {
            let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let s: f64 = z.iter().map(|&x| (x as f64 - m).exp()).sum();
            if t == IGNORE { 0.0 } else { m + s.ln() - z[t as usize] as f64 }
        })
        .collect())
}

pub fn cross_entropy_backward(logits: &Tensor, targets: &Tensor, lse: &Tensor, dloss: f32, count: usize) -> Result<Tensor> {
    let v = check(logits, targets)?;
    #[cfg(feature = "cuda")]
    if logits.is_cuda() {
        return cuda::cross_entropy_backward(logits, targets, lse, &Tensor::scalar(dloss), count);
    }
    let d = ce_bwd(logits.as_f32()?, targets.as_u32()?, lse.as_f32()?, dloss, count, v);
    Tensor::from_f32(d, logits.shape())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{gradcheck, rand_vec};

    #[test]
    fn gradcheck_cross_entropy() {
        let v = 7;
        let t = [2u32, IGNORE, 6, 0];
        gradcheck(
            &[rand_vec(4 * v, 1)],
            |x| {
                let (nll, _, c) = ce_fwd(&x[0], &t, v);
                vec![nll.iter().sum::<f64>() / c as f64]
            },
            |x, dy| {
                let (_, lse, c) = ce_fwd(&x[0], &t, v);
                vec![ce_bwd(&x[0], &t, &lse, dy[0], c, v)]
            },
        );
    }
}
