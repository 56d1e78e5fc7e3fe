//! AdamW (decoupled weight decay), global gradient norm and clipping: the optimizer's math,
//! written as PyTorch's `torch.optim.AdamW` and `clip_grad_norm_` compute it so that runs
//! can be compared step for step.

use crate::float::Float;
use crate::Tensor;
use anyhow::{bail, Result};
use rayon::prelude::*;

#[cfg(feature = "cuda")]
pub mod cuda;

#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

const CHUNK: usize = 8192;

/// One update of `p` with gradient `g` and moments `m`, `v`; `step` counts from 1.
pub fn adamw_update<F: Float>(o: &AdamW, step: u64, wd: bool, p: &mut [F], g: &[F], m: &mut [F], v: &mut [F]) {
    let (b1, b2) = (F::from_f64(o.beta1), F::from_f64(o.beta2));
    let bc1 = 1.0 - o.beta1.powi(step as i32);
    let bc2_sqrt = F::from_f64((1.0 - o.beta2.powi(step as i32)).sqrt());
    let step_size = F::from_f64(o.lr / bc1);
    let decay = F::from_f64(if wd { 1.0 - o.lr * o.weight_decay } else { 1.0 });
    let eps = F::from_f64(o.eps);
    p.par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)))
        .for_each(|((p, m), (v, g))| {
            for i in 0..p.len() {
                p[i] *= decay;
                m[i] += (F::ONE - b1) * (g[i] - m[i]);
                v[i] = b2 * v[i] + (F::ONE - b2) * g[i] * g[i];
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                p[i] -= step_size * m[i] / denom;
            }
        });
}

/// sqrt(Σ g²) over all tensors, accumulated in f64 in a fixed order.
pub fn global_norm(grads: &[&Tensor]) -> Result<f64> {
    #[cfg(feature = "cuda")]
    if grads.first().is_some_and(|g| g.is_cuda()) {
        let st = cuda::grad_norm_state(grads, 0.0, None)?.try_to_vec_f32()?;
        return Ok(st[0] as f64);
    }
    let mut s = 0f64;
    for g in grads {
        s += g.as_f32()?.par_chunks(CHUNK).map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>()).collect::<Vec<_>>().iter().sum::<f64>();
    }
    Ok(s.sqrt())
}

/// Scales gradients so their global norm is at most `max_norm` (PyTorch: coef = max/(norm+1e-6),
/// clamped to 1, always applied). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    #[cfg(feature = "cuda")]
    if grads.first().is_some_and(|g| g.is_cuda()) {
        // Generic callers get the host's answer (one sync); the trainer's GPU step keeps the
        // coefficient on the device instead (`cuda::grad_norm_state` + `cuda::adamw_multi`).
        let st = cuda::grad_norm_state(&grads.iter().collect::<Vec<_>>(), max_norm, None)?.try_to_vec_f32()?;
        if max_norm > 0.0 && st[1] < 1.0 {
            for g in grads.iter_mut() {
                *g = crate::ops::elementwise::scale(g, st[1])?;
            }
        }
        return Ok(st[0] as f64);
    }
    let norm = global_norm(&grads.iter().collect::<Vec<_>>())?;
    if max_norm > 0.0 {
        let coef = (max_norm / (norm + 1e-6)).min(1.0) as f32;
        if coef < 1.0 {
            for g in grads.iter_mut() {
                g.f32_mut()?.iter_mut().for_each(|x| *x *= coef);
            }
        }
    }
    Ok(norm)
}

/// Tensor-level AdamW step on one parameter.
pub fn adamw_step(o: &AdamW, step: u64, decay: bool, p: &mut Tensor, g: &Tensor, m: &mut Tensor, v: &mut Tensor) -> Result<()> {
    if p.shape() != g.shape() || p.shape() != m.shape() || p.shape() != v.shape() {
        bail!("adamw: parameter {:?}, gradient {:?} and moments {:?} differ in shape", p.shape(), g.shape(), m.shape());
    }
    #[cfg(feature = "cuda")]
    if p.is_cuda() {
        return cuda::adamw_multi(o, step, &[decay], std::slice::from_mut(p), std::slice::from_ref(g), std::slice::from_mut(m), std::slice::from_mut(v), None);
    }
    adamw_update(o, step, decay, p.f32_mut()?, g.as_f32()?, m.f32_mut()?, v.f32_mut()?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_first_step_moves_by_lr_times_sign() {
        // With zero moments, bias correction makes the first step lr·g/(|g|+eps) ≈ lr·sign(g).
        let o = AdamW { lr: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-12, weight_decay: 0.5 };
        let mut p = vec![1.0f64, -2.0];
        let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        adamw_update(&o, 1, true, &mut p, &[3.0, -0.5], &mut m, &mut v);
        assert!((p[0] - (1.0 * 0.95 - 0.1)).abs() < 1e-9);
        assert!((p[1] - (-2.0 * 0.95 + 0.1)).abs() < 1e-9);
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut g = vec![Tensor::from_f32(vec![3.0, 4.0], &[2]).unwrap()];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-9);
        let v = g[0].as_f32().unwrap();
        assert!((v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5);
    }
}
