//! Cross-entropy fused with log-softmax: mean over rows of (logsumexp(z) − z[target]).
//! Forward keeps only the per-row logsumexp; backward recomputes softmax from the logits, so no
//! full-vocabulary probability tensor is ever kept. Target `IGNORE` rows contribute nothing.
//!
//! The vocabulary-chunked form (`Graph::linear_cross_entropy`) sees one slice of the
//! vocabulary at a time: `lse_chunk` updates a running [max, Σexp(z − max), target logit] per
//! row (an online logsumexp), `lse_finish` turns it into (nll, lse), and
//! `cross_entropy_backward_chunk` gives one slice's dlogits from the saved lse. With a single
//! slice they compute exactly what `cross_entropy` and its backward compute.

use crate::backend::{self, backend, Cpu};
use crate::float::{max_of, sum_exp, wide, Float};
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
            let (m, s) = wide(|| {
                let m = max_of(z);
                (m, sum_exp(z, m))
            });
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
    ce_bwd_chunk(logits, targets, lse, 0, dloss, count, v)
}

/// One vocabulary slice of the online logsumexp: `z` (m, vc) are the logits of vocabulary ids
/// v0..v0+vc for m rows, `state` (m, 3) their running [max, Σexp(z − max), target logit]
/// (start: −∞, 0, 0; see `lse_state`). The target's logit is picked from the slice holding it.
pub fn lse_chunk_fwd<F: Float>(z: &[F], targets: &[u32], state: &mut [F], vc: usize, v0: usize) {
    state.par_chunks_mut(3).zip(z.par_chunks(vc)).zip(targets.par_iter()).for_each(|((st, z), &t)| {
        let (nm, s) = wide(|| {
            let nm = st[0].max(max_of(z));
            (nm, sum_exp(z, nm))
        });
        st[1] = if st[0] == F::NEG_INFINITY { F::ZERO } else { st[1] * (st[0] - nm).exp_fast() } + s;
        st[0] = nm;
        if t != IGNORE && (v0..v0 + vc).contains(&(t as usize)) {
            st[2] = z[t as usize - v0];
        }
    });
}

/// (nll (0 for ignored rows), lse) from finished states.
pub fn lse_chunk_finish<F: Float>(state: &[F], targets: &[u32]) -> (Vec<F>, Vec<F>) {
    state
        .chunks(3)
        .zip(targets)
        .map(|(st, &t)| {
            let lse = st[0] + st[1].ln();
            (if t == IGNORE { F::ZERO } else { lse - st[2] }, lse)
        })
        .unzip()
}

/// dlogits of the vocabulary slice v0..v0+vc: (softmax(z) − onehot(t)) · dloss / count, the
/// softmax recomputed from the full rows' `lse`.
pub fn ce_bwd_chunk<F: Float>(
    z: &[F],
    targets: &[u32],
    lse: &[F],
    v0: usize,
    dloss: F,
    count: usize,
    vc: usize,
) -> Vec<F> {
    let mut d = vec![F::ZERO; z.len()];
    let scale = dloss / F::from_f64(count.max(1) as f64);
    d.par_chunks_mut(vc).zip(z.par_chunks(vc)).zip(targets.par_iter().zip(lse.par_iter())).for_each(
        |((d, z), (&t, &l))| {
            if t == IGNORE {
                return;
            }
            wide(|| {
                for (di, &zi) in d.iter_mut().zip(z) {
                    *di = (zi - l).exp_fast() * scale;
                }
            });
            if (v0..v0 + vc).contains(&(t as usize)) {
                d[t as usize - v0] -= scale;
            }
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

/// The cross-entropy kernels a backend provides. Logits are (rows, V); `targets` are u32,
/// on the host (checked against V by the entry points) or, where said, on the logits' device.
pub trait CrossEntropyKernels {
    /// (loss (1), lse (N)) over host `targets` of which `count` are scored.
    fn cross_entropy(&self, logits: &Tensor, targets: &Tensor, count: usize) -> Result<(Tensor, Tensor)>;
    fn cross_entropy_backward(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        lse: &Tensor,
        dloss: f32,
        count: usize,
    ) -> Result<Tensor>;
    /// Rows r0.. of `state` updated with the vocabulary slice v0..; targets on the host or here.
    fn lse_chunk(&self, z: &Tensor, targets: &Tensor, state: &mut Tensor, r0: usize, v0: usize) -> Result<()>;
    fn lse_finish(&self, state: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)>;
    /// `dloss` (one element) on the host or here.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_backward_chunk(
        &self,
        z: &Tensor,
        targets: &Tensor,
        lse: &Tensor,
        r0: usize,
        v0: usize,
        dloss: &Tensor,
        count: usize,
    ) -> Result<Tensor>;
    fn mean_nll(&self, nll: &Tensor, count: usize) -> Result<Tensor>;
    fn nll_rows(&self, logits: &Tensor, targets: &Tensor) -> Result<Vec<f64>>;
}

impl CrossEntropyKernels for Cpu {
    fn cross_entropy(&self, logits: &Tensor, targets: &Tensor, _count: usize) -> Result<(Tensor, Tensor)> {
        let (nll, lse, count) = ce_fwd(logits.as_f32()?, targets.as_u32()?, logits.cols());
        let loss = nll.iter().map(|&x| x as f64).sum::<f64>() / count.max(1) as f64;
        Ok((Tensor::scalar(loss as f32), Tensor::from_f32(lse, &[logits.rows()])?))
    }

    fn cross_entropy_backward(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        lse: &Tensor,
        dloss: f32,
        count: usize,
    ) -> Result<Tensor> {
        let d = ce_bwd(logits.as_f32()?, targets.as_u32()?, lse.as_f32()?, dloss, count, logits.cols());
        Tensor::from_f32(d, logits.shape())
    }

    fn lse_chunk(&self, z: &Tensor, targets: &Tensor, state: &mut Tensor, r0: usize, v0: usize) -> Result<()> {
        let (m, vc) = (z.rows(), z.cols());
        let t = &targets.as_u32()?[r0..r0 + m];
        lse_chunk_fwd(z.as_f32()?, t, &mut state.f32_mut()?[r0 * 3..(r0 + m) * 3], vc, v0);
        Ok(())
    }

    fn lse_finish(&self, state: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = state.rows();
        let (nll, lse) = lse_chunk_finish(state.as_f32()?, targets.as_u32()?);
        Ok((Tensor::from_f32(nll, &[n])?, Tensor::from_f32(lse, &[n])?))
    }

    fn cross_entropy_backward_chunk(
        &self,
        z: &Tensor,
        targets: &Tensor,
        lse: &Tensor,
        r0: usize,
        v0: usize,
        dloss: &Tensor,
        count: usize,
    ) -> Result<Tensor> {
        let (m, vc) = (z.rows(), z.cols());
        let dloss = dloss.to_vec_f32()?[0];
        let d =
            ce_bwd_chunk(z.as_f32()?, &targets.as_u32()?[r0..r0 + m], &lse.as_f32()?[r0..r0 + m], v0, dloss, count, vc);
        Tensor::from_f32(d, z.shape())
    }

    fn mean_nll(&self, nll: &Tensor, count: usize) -> Result<Tensor> {
        let loss = nll.as_f32()?.iter().map(|&x| x as f64).sum::<f64>() / count.max(1) as f64;
        Ok(Tensor::scalar(loss as f32))
    }

    fn nll_rows(&self, logits: &Tensor, targets: &Tensor) -> Result<Vec<f64>> {
        let z = logits.as_f32()?;
        Ok(z.par_chunks(logits.cols())
            .zip(targets.as_u32()?.par_iter())
            .map(|(z, &t)| {
                let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
                let s: f64 = z.iter().map(|&x| (x as f64 - m).exp()).sum();
                if t == IGNORE {
                    0.0
                } else {
                    m + s.ln() - z[t as usize] as f64
                }
            })
            .collect())
    }
}

/// logits: (N, V), targets: (N) u32 → (loss (1), lse (N), count of scored rows)
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor, usize)> {
    check(logits, targets)?;
    let count = count_scored(targets)?;
    let (loss, lse) = backend(logits.device()).cross_entropy(logits, targets, count)?;
    Ok((loss, lse, count))
}

/// A fresh online-logsumexp state (n, 3) on `device`: max −∞, Σexp 0, target logit 0.
pub fn lse_state(n: usize, device: crate::Device) -> Result<Tensor> {
    let st: Vec<f32> = (0..n).flat_map(|_| [f32::NEG_INFINITY, 0.0, 0.0]).collect();
    match device {
        crate::Device::Cpu => Tensor::from_f32(st, &[n, 3]),
        // The same bytes for every step of n rows: a constant, which a captured step may hold.
        #[cfg(feature = "cuda")]
        crate::Device::Cuda(o) => {
            let bytes: Vec<u8> = st.iter().flat_map(|x| x.to_le_bytes()).collect();
            let buf = crate::cuda::DeviceBuf::constant(&crate::cuda::gpu(o)?, crate::DType::F32, 3 * n, &bytes)?;
            Tensor::from_device_buf(buf, &[n, 3])
        }
    }
}

/// Updates rows r0..r0+m of `state` (n, 3) with `z` (m, vc), the logits of vocabulary ids
/// v0..v0+vc; `targets` (n) u32 on the state's device (or the host).
pub fn lse_chunk(z: &Tensor, targets: &Tensor, state: &mut Tensor, r0: usize, v0: usize) -> Result<()> {
    let m = z.rows();
    if state.cols() != 3 || r0 + m > state.rows() || targets.numel() != state.rows() {
        bail!("lse_chunk: rows {r0}..{} of a {:?} state with {} targets", r0 + m, state.shape(), targets.numel());
    }
    backend::on("lse_chunk", [z, &*state])?.lse_chunk(z, targets, state, r0, v0)
}

/// (nll (n), lse (n)) of a finished state, on its device.
pub fn lse_finish(state: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let n = state.rows();
    if state.cols() != 3 || targets.numel() != n {
        bail!("lse_finish: a {:?} state with {} targets", state.shape(), targets.numel());
    }
    backend(state.device()).lse_finish(state, targets)
}

/// dlogits (m, vc) of the vocabulary slice v0..v0+vc for rows r0..r0+m, whose targets and
/// saved logsumexp are rows r0.. of `targets` and `lse` (n).
/// `dloss` is the one-element loss gradient, on the device of `z` or the host (a device one is
/// read by the kernel: no host sync in the backward).
pub fn cross_entropy_backward_chunk(
    z: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    r0: usize,
    v0: usize,
    dloss: &Tensor,
    count: usize,
) -> Result<Tensor> {
    let m = z.rows();
    if r0 + m > lse.numel() || targets.numel() != lse.numel() {
        bail!(
            "cross_entropy_backward_chunk: rows {r0}..{} of {} targets and {} lse",
            r0 + m,
            targets.numel(),
            lse.numel()
        );
    }
    backend::on("cross_entropy_backward_chunk", [z, lse])?
        .cross_entropy_backward_chunk(z, targets, lse, r0, v0, dloss, count)
}

/// Σ nll / count as a one-element tensor, summed as `cross_entropy` sums (f64 in row order on
/// the CPU; a fixed-order block reduction on CUDA).
pub fn mean_nll(nll: &Tensor, count: usize) -> Result<Tensor> {
    backend(nll.device()).mean_nll(nll, count)
}

/// Number of rows that are scored (targets other than `IGNORE`).
pub fn count_scored(targets: &Tensor) -> Result<usize> {
    Ok(targets.as_u32()?.iter().filter(|&&t| t != IGNORE).count())
}

/// Per-row negative log-likelihoods (perplexity scoring), in f64.
/// On a GPU the rows are scored there (f64 sums) and only the (N) values come back.
pub fn nll_rows(logits: &Tensor, targets: &Tensor) -> Result<Vec<f64>> {
    check(logits, targets)?;
    backend(logits.device()).nll_rows(logits, targets)
}

pub fn cross_entropy_backward(
    logits: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    dloss: f32,
    count: usize,
) -> Result<Tensor> {
    check(logits, targets)?;
    backend::on("cross_entropy_backward", [logits, lse])?.cross_entropy_backward(logits, targets, lse, dloss, count)
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

    /// The online logsumexp over vocabulary slices: `(nll, lse)` of (n, v) logits taken `vc`
    /// columns at a time, as `Graph::linear_cross_entropy` feeds it.
    fn chunked_fwd(z: &[f64], t: &[u32], v: usize, vc: usize) -> (Vec<f64>, Vec<f64>) {
        let n = t.len();
        let mut st: Vec<f64> = (0..n).flat_map(|_| [f64::NEG_INFINITY, 0.0, 0.0]).collect();
        for v0 in (0..v).step_by(vc) {
            let vn = vc.min(v - v0);
            let slice: Vec<f64> = (0..n).flat_map(|r| z[r * v + v0..r * v + v0 + vn].to_vec()).collect();
            lse_chunk_fwd(&slice, t, &mut st, vn, v0);
        }
        lse_chunk_finish(&st, t)
    }

    #[test]
    fn vocabulary_chunks_match_the_whole_row() {
        let (v, t) = (7, [2u32, IGNORE, 6, 0, 3]);
        let z = rand_vec(t.len() * v, 2).iter().map(|x| 3.0 * x).collect::<Vec<f64>>();
        let (nll, lse, _) = ce_fwd(&z, &t, v);
        assert_eq!(chunked_fwd(&z, &t, v, v), (nll.clone(), lse.clone()), "one slice is the unchunked computation");
        for vc in [1, 2, 3, 6] {
            let (cn, cl) = chunked_fwd(&z, &t, v, vc);
            for (a, b) in cn.iter().zip(&nll).chain(cl.iter().zip(&lse)) {
                assert!((a - b).abs() < 1e-12, "slices of {vc}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn gradcheck_vocabulary_chunks() {
        let (v, vc, t) = (7, 3, [2u32, IGNORE, 6, 0, 3]);
        let n = t.len();
        gradcheck(
            &[rand_vec(n * v, 1)],
            |x| {
                let (nll, _) = chunked_fwd(&x[0], &t, v, vc);
                vec![nll.iter().sum::<f64>() / 4.0]
            },
            |x, dy| {
                let (_, lse) = chunked_fwd(&x[0], &t, v, vc);
                let mut d = vec![0.0; n * v];
                for v0 in (0..v).step_by(vc) {
                    let vn = vc.min(v - v0);
                    let slice: Vec<f64> = (0..n).flat_map(|r| x[0][r * v + v0..r * v + v0 + vn].to_vec()).collect();
                    let ds = ce_bwd_chunk(&slice, &t, &lse, v0, dy[0], 4, vn);
                    for r in 0..n {
                        d[r * v + v0..r * v + v0 + vn].copy_from_slice(&ds[r * vn..(r + 1) * vn]);
                    }
                }
                vec![d]
            },
        );
    }
}
