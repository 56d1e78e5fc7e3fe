//! AdamW (decoupled weight decay), global gradient norm and clipping: the optimizer's math,
//! written as PyTorch's `torch.optim.AdamW` and `clip_grad_norm_` compute it so that runs
//! can be compared step for step, and its state (`AdamWState`) beside the update that reads it.
//! Every backend runs the same step: `grad_norm` leaves the norm, the clip coefficient and a
//! skip flag where the gradients are, and `adamw_multi` reads them there (no host round trip
//! on a GPU; `cuda.rs` + `adamw.cu` fuse the whole parameter list into one launch).

use crate::backend::{self, Cpu};
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
    adamw_update_clipped(o, step, wd, p, g, F::ONE, m, v)
}

/// `adamw_update` with the gradient scaled by the clip coefficient `coef` first (each g·coef
/// rounded to F once, as scaling the gradient tensor would; coef = 1 leaves it unchanged).
#[allow(clippy::too_many_arguments)]
pub fn adamw_update_clipped<F: Float>(
    o: &AdamW,
    step: u64,
    wd: bool,
    p: &mut [F],
    g: &[F],
    coef: F,
    m: &mut [F],
    v: &mut [F],
) {
    let [decay, step_size, bc2_sqrt] = step_scalars_f64(o, step);
    adamw_update_scaled(o, [decay, step_size, bc2_sqrt].map(F::from_f64), wd, p, g, coef, m, v)
}

/// The numbers of update number `step` (from 1) that change from step to step:
/// [1 − lr·weight_decay, lr / (1 − β1^step), √(1 − β2^step)].
fn step_scalars_f64(o: &AdamW, step: u64) -> [f64; 3] {
    let bc1 = 1.0 - o.beta1.powi(step as i32);
    [1.0 - o.lr * o.weight_decay, o.lr / bc1, (1.0 - o.beta2.powi(step as i32)).sqrt()]
}

/// `step_scalars_f64` rounded to f32, as both backends' f32 updates use them: what a caller
/// writes into `AdamWState::scalars` before each step (a captured step's learning rate and bias
/// corrections, read on the device instead of frozen into the graph).
pub fn step_scalars(o: &AdamW, step: u64) -> [f32; 3] {
    step_scalars_f64(o, step).map(|x| x as f32)
}

/// `adamw_update_clipped` with the step's scalars given ([decay factor, step size, √bc2]).
#[allow(clippy::too_many_arguments)]
fn adamw_update_scaled<F: Float>(
    o: &AdamW,
    [decay_factor, step_size, bc2_sqrt]: [F; 3],
    wd: bool,
    p: &mut [F],
    g: &[F],
    coef: F,
    m: &mut [F],
    v: &mut [F],
) {
    let (b1, b2) = (F::from_f64(o.beta1), F::from_f64(o.beta2));
    let decay = if wd { decay_factor } else { F::ONE };
    let eps = F::from_f64(o.eps);
    p.par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)))
        .for_each(|((p, m), (v, g))| {
            for i in 0..p.len() {
                let gi = g[i] * coef;
                p[i] *= decay;
                m[i] += (F::ONE - b1) * (gi - m[i]);
                v[i] = b2 * v[i] + (F::ONE - b2) * gi * gi;
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                p[i] -= step_size * m[i] / denom;
            }
        });
}

/// A step's global gradient norm, clip coefficient and skip flag, left where the gradients
/// are so that the update reads them there (on a GPU: no host round trip before AdamW).
pub struct GradNorm {
    /// [norm, clip coefficient, skip flag (1: skip the update)], f32 on the gradients' device.
    pub state: Tensor,
    /// The norm at full precision when the backend has it on the host (the CPU's f64 sum).
    host_norm: Option<f64>,
    /// `state` as read back by the first `read` (one copy per step: `params_finite` reuses it).
    host_state: std::sync::OnceLock<Vec<f32>>,
}

impl GradNorm {
    fn new(state: Tensor, host_norm: Option<f64>) -> GradNorm {
        GradNorm { state, host_norm, host_state: std::sync::OnceLock::new() }
    }

    /// `state` on the host, copied once (a device waits for its queue). Read it after the
    /// update: AdamW may still write it (the GPU kernel's non-finite flag).
    fn host_state(&self) -> Result<&[f32]> {
        if self.host_state.get().is_none() {
            let _ = self.host_state.set(self.state.to_vec_f32()?);
        }
        Ok(self.host_state.get().map(Vec::as_slice).unwrap_or_default())
    }

    /// Under ZeRO-1 each rank's update wrote only its pieces of the parameters: where the
    /// backend keeps a non-finite flag beside the norm (a GPU), `mean_over_ranks`
    /// (`Collective::all_reduce_mean`) makes it the ranks' mean, non-zero when any rank raised
    /// it, so `params_finite` answers alike everywhere. (The CPU scans the whole parameters,
    /// gathered, instead.) Call it after the update, before `read`.
    pub fn share_nonfinite_flag(&mut self, mean_over_ranks: impl FnOnce(&mut [Tensor]) -> Result<()>) -> Result<()> {
        if self.state.numel() < 4 {
            return Ok(());
        }
        let mut flag = [self.state.reshape(&[4, 1])?.narrow_rows(3, 1)?.reshape(&[1])?];
        mean_over_ranks(&mut flag)?;
        self.state.write_at(3, &flag[0])?;
        self.host_state = std::sync::OnceLock::new();
        Ok(())
    }

    /// (norm, clip coefficient, skip), read back to the host (see `host_state`).
    pub fn read(&self) -> Result<(f64, f32, bool)> {
        let st = self.host_state()?;
        Ok((self.host_norm.unwrap_or(st[0] as f64), st[1], st[2] != 0.0))
    }
}

/// The optimizer kernels a backend provides (arguments checked by the entry points below).
pub trait OptimKernels {
    /// The global L2 norm of `grads`; the clip coefficient max_norm / (norm + 1e-6) clamped to
    /// 1 (1 when `max_norm` ≤ 0); the skip flag, set when the norm or `loss` is not finite.
    fn grad_norm(&self, grads: &[&Tensor], max_norm: f64, loss: Option<&Tensor>) -> Result<GradNorm>;
    /// The sum of squares `grad_norm` takes the root of, as one f64 (`dist::f64_words`), in
    /// `grad_norm`'s order: `norm_from_sumsq` of it is `grad_norm` bit for bit.
    fn grad_sumsq(&self, grads: &[&Tensor]) -> Result<Tensor>;
    /// `grad_norm` from a sum of squares (`grad_sumsq`, summed over ranks under ZeRO-1).
    fn norm_from_sumsq(&self, sumsq: &Tensor, max_norm: f64, loss: Option<&Tensor>) -> Result<GradNorm>;
    /// One AdamW update of every parameter. With `norm`, the gradients are scaled by its clip
    /// coefficient and nothing is updated when its skip flag is set.
    #[allow(clippy::too_many_arguments)]
    fn adamw(
        &self,
        o: &AdamW,
        step: Step<'_>,
        decay: &[bool],
        params: &mut [Tensor],
        grads: &[Tensor],
        m: &mut [Tensor],
        v: &mut [Tensor],
        norm: Option<&GradNorm>,
    ) -> Result<()>;
    /// Whether every parameter is finite after an update that `norm` governed (a non-finite
    /// parameter must never be saved as a good checkpoint).
    fn params_finite(&self, params: &[Tensor], norm: &GradNorm) -> Result<bool>;
}

impl OptimKernels for Cpu {
    /// The norm summed in f64 in a fixed order (chunks, then tensors).
    fn grad_norm(&self, grads: &[&Tensor], max_norm: f64, loss: Option<&Tensor>) -> Result<GradNorm> {
        self.norm_from_sumsq(&self.grad_sumsq(grads)?, max_norm, loss)
    }

    fn grad_sumsq(&self, grads: &[&Tensor]) -> Result<Tensor> {
        let mut s = 0f64;
        for g in grads {
            s += g
                .as_f32()?
                .par_chunks(CHUNK)
                .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
                .collect::<Vec<_>>()
                .iter()
                .sum::<f64>();
        }
        crate::dist::f64_words(&[s], crate::Device::Cpu)
    }

    fn norm_from_sumsq(&self, sumsq: &Tensor, max_norm: f64, loss: Option<&Tensor>) -> Result<GradNorm> {
        let norm = crate::dist::f64_values(sumsq)?.first().copied().unwrap_or(f64::NAN).sqrt();
        let coef = if max_norm > 0.0 { (max_norm / (norm + 1e-6)).min(1.0) as f32 } else { 1.0 };
        let bad_loss = match loss {
            Some(l) => !l.as_f32()?[0].is_finite(),
            None => false,
        };
        let skip = !norm.is_finite() || bad_loss;
        let state = Tensor::from_f32(vec![norm as f32, coef, if skip { 1.0 } else { 0.0 }], &[3])?;
        Ok(GradNorm::new(state, Some(norm)))
    }

    fn adamw(
        &self,
        o: &AdamW,
        step: Step<'_>,
        decay: &[bool],
        params: &mut [Tensor],
        grads: &[Tensor],
        m: &mut [Tensor],
        v: &mut [Tensor],
        norm: Option<&GradNorm>,
    ) -> Result<()> {
        let scalars = match step {
            Step::Count(t) => step_scalars(o, t),
            Step::Scalars(t) => match t.as_f32()? {
                &[a, b, c] => [a, b, c],
                other => bail!("adamw: {} step scalars, expected 3", other.len()),
            },
        };
        let (coef, skip) = match norm {
            Some(n) => {
                let st = n.state.as_f32()?;
                (st[1], st[2] != 0.0)
            }
            None => (1.0, false),
        };
        if skip {
            return Ok(());
        }
        // Clipping only ever scales down (coef ≤ 1); 1 multiplies exactly.
        let coef = coef.min(1.0);
        for i in 0..params.len() {
            adamw_update_scaled(
                o,
                scalars,
                decay[i],
                params[i].f32_mut()?,
                grads[i].as_f32()?,
                coef,
                m[i].f32_mut()?,
                v[i].f32_mut()?,
            );
        }
        Ok(())
    }

    /// A scan of the parameters (one read of the weights per step).
    fn params_finite(&self, params: &[Tensor], _norm: &GradNorm) -> Result<bool> {
        all_finite_host(params)
    }
}

/// The global norm, clip coefficient and skip flag of `grads` (and `loss`, if given) for
/// clipping at `max_norm`, on the gradients' device (see `OptimKernels::grad_norm`).
pub fn grad_norm(grads: &[&Tensor], max_norm: f64, loss: Option<&Tensor>) -> Result<GradNorm> {
    backend::on("grad_norm", grads.iter().copied().chain(loss))?.grad_norm(grads, max_norm, loss)
}

/// `grad_norm` of gradients spread over the ranks of a job (ZeRO-1: each holds a piece of
/// every gradient): this rank's sum of squares (f64, in `grad_norm`'s order), summed over the
/// ranks by `sum_over_ranks` (`Collective::all_reduce_sum_f64`, on the device), then the norm,
/// clip coefficient and skip flag as `grad_norm`. Every rank gets the same state; with one rank
/// it is `grad_norm`'s bit for bit.
pub fn grad_norm_across(
    grads: &[&Tensor],
    max_norm: f64,
    loss: Option<&Tensor>,
    sum_over_ranks: impl FnOnce(&mut Tensor) -> Result<()>,
) -> Result<GradNorm> {
    let k = backend::on("grad_norm", grads.iter().copied().chain(loss))?;
    let mut s = k.grad_sumsq(grads)?;
    sum_over_ranks(&mut s)?;
    k.norm_from_sumsq(&s, max_norm, loss)
}

/// Whether every value of these host f32 tensors is finite (a scan, in parallel).
pub fn all_finite_host(params: &[Tensor]) -> Result<bool> {
    for p in params {
        if !p.as_f32()?.par_chunks(CHUNK).all(|c| c.iter().all(|x| x.is_finite())) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether every parameter is finite after an update governed by `norm` (see
/// `OptimKernels::params_finite`; on a GPU the AdamW kernel raised a flag beside the norm, so
/// this reads it with no extra pass).
pub fn params_finite(params: &[Tensor], norm: &GradNorm) -> Result<bool> {
    backend::on("params_finite", params.iter().chain([&norm.state]))?.params_finite(params, norm)
}

/// sqrt(Σ g²) over all tensors, accumulated in f64 in a fixed order (read back to the host).
pub fn global_norm(grads: &[&Tensor]) -> Result<f64> {
    Ok(grad_norm(grads, 0.0, None)?.read()?.0)
}

/// Scales gradients so their global norm is at most `max_norm` (PyTorch: coef = max/(norm+1e-6),
/// clamped to 1, always applied). Returns the norm before clipping. Generic callers get the
/// host's answer (one wait on a GPU); the trainer leaves the coefficient on the device instead
/// (`grad_norm` + `adamw_multi`).
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let (norm, coef, _) = grad_norm(&grads.iter().collect::<Vec<_>>(), max_norm, None)?.read()?;
    if max_norm > 0.0 && coef < 1.0 {
        for g in grads.iter_mut() {
            *g = crate::ops::elementwise::scale(g, coef)?;
        }
    }
    Ok(norm)
}

/// Which update an AdamW step is: its number (from 1), or its `step_scalars` in a 3-element
/// f32 tensor on the parameters' device, written by the caller before the step (a captured
/// step, whose kernel arguments are frozen).
#[derive(Clone, Copy)]
pub enum Step<'a> {
    Count(u64),
    Scalars(&'a Tensor),
}

/// One AdamW update of every parameter (`decay[i]`: weight decay applies to parameter i),
/// clipped and skipped as `norm` says (see `OptimKernels::adamw`).
#[allow(clippy::too_many_arguments)]
pub fn adamw_multi(
    o: &AdamW,
    step: u64,
    decay: &[bool],
    params: &mut [Tensor],
    grads: &[Tensor],
    m: &mut [Tensor],
    v: &mut [Tensor],
    norm: Option<&GradNorm>,
) -> Result<()> {
    adamw_multi_at(o, Step::Count(step), decay, params, grads, m, v, norm)
}

/// `adamw_multi` at `step` given either way (see `Step`).
#[allow(clippy::too_many_arguments)]
pub fn adamw_multi_at(
    o: &AdamW,
    step: Step<'_>,
    decay: &[bool],
    params: &mut [Tensor],
    grads: &[Tensor],
    m: &mut [Tensor],
    v: &mut [Tensor],
    norm: Option<&GradNorm>,
) -> Result<()> {
    let n = params.len();
    if grads.len() != n || m.len() != n || v.len() != n || decay.len() != n {
        bail!(
            "adamw: {n} parameters, {} gradients, {} / {} moments, {} decay flags",
            grads.len(),
            m.len(),
            v.len(),
            decay.len()
        );
    }
    for i in 0..n {
        let p = params[i].shape();
        if p != grads[i].shape() || p != m[i].shape() || p != v[i].shape() {
            bail!(
                "adamw: parameter {p:?}, gradient {:?} and moments {:?} differ in shape",
                grads[i].shape(),
                m[i].shape()
            );
        }
    }
    let scalars = match step {
        Step::Scalars(t) => Some(t),
        Step::Count(_) => None,
    };
    let all = params.iter().chain(grads).chain(m.iter()).chain(v.iter()).chain(norm.map(|n| &n.state)).chain(scalars);
    backend::on("adamw", all)?.adamw(o, step, decay, params, grads, m, v, norm)
}

/// AdamW's state over a whole parameter list: the moments of each parameter and the count.
pub struct AdamWState {
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Updates taken so far (the next update is number `t + 1`).
    pub t: u64,
    /// When set, `step` reads the update's `step_scalars` from this 3-element f32 tensor on
    /// the parameters' device (the caller writes it before each step) instead of computing
    /// them from `t` on the host: a captured training step (`smelt_train::captured`). The same
    /// numbers either way. Not saved in checkpoints.
    pub scalars: Option<Tensor>,
}

impl AdamWState {
    /// Zero moments on the host (`to_device` moves them beside the parameters).
    pub fn new(params: &[Tensor]) -> Self {
        AdamWState {
            m: params.iter().map(|p| Tensor::zeros(p.shape())).collect(),
            v: params.iter().map(|p| Tensor::zeros(p.shape())).collect(),
            t: 0,
            scalars: None,
        }
    }

    /// Moves the moments to `device` (a CPU checkpoint resumed on a GPU, or the reverse).
    pub fn to_device(&mut self, device: crate::Device) -> Result<()> {
        for t in self.m.iter_mut().chain(self.v.iter_mut()) {
            *t = t.to_device(device)?;
        }
        Ok(())
    }

    /// One update of every parameter (`decay[i]`: weight decay applies to parameter i), as
    /// number `t + 1`. With `norm` the gradients are clipped by its coefficient and, if its
    /// skip flag is set, nothing changes on the device: the caller, which reads the flag
    /// after the step (`GradNorm::read`), then takes the count back (`t -= 1`).
    pub fn step(
        &mut self,
        hp: &AdamW,
        params: &mut [Tensor],
        grads: &[Tensor],
        decay: &[bool],
        norm: Option<&GradNorm>,
    ) -> Result<()> {
        if params.len() != grads.len() || params.len() != self.m.len() {
            bail!("optimizer: {} parameters, {} gradients, {} moment tensors", params.len(), grads.len(), self.m.len());
        }
        self.t += 1;
        let step = match &self.scalars {
            Some(s) => Step::Scalars(s),
            None => Step::Count(self.t),
        };
        adamw_multi_at(hp, step, decay, params, grads, &mut self.m, &mut self.v, norm)
    }
}

/// Tensor-level AdamW step on one parameter.
pub fn adamw_step(
    o: &AdamW,
    step: u64,
    decay: bool,
    p: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
) -> Result<()> {
    adamw_multi(
        o,
        step,
        &[decay],
        std::slice::from_mut(p),
        std::slice::from_ref(g),
        std::slice::from_mut(m),
        std::slice::from_mut(v),
        None,
    )
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

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_f32(v.to_vec(), &[v.len()]).unwrap()
    }

    /// The trainer's path (norm state, then the multi-tensor update reading it) computes bit
    /// for bit what clipping the gradients on the host and stepping each tensor computes.
    #[test]
    fn the_step_reading_the_norm_state_equals_clip_then_step() {
        let o = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
        let grads = vec![t(&[0.3, -1.7, 2.2]), t(&[4.1, 0.05])];
        let start = || {
            (
                vec![t(&[1.0, -0.5, 0.25]), t(&[0.7, -0.1])],
                vec![t(&[0.1, 0.0, -0.2]), t(&[0.0, 0.3])],
                vec![t(&[0.01, 0.0, 0.04]), t(&[0.0, 0.09])],
            )
        };
        let decay = [true, false];
        let (mut p1, mut m1, mut v1) = start();
        let mut clipped = grads.clone();
        let n1 = clip_grad_norm(&mut clipped, 1.0).unwrap();
        for i in 0..2 {
            adamw_step(&o, 3, decay[i], &mut p1[i], &clipped[i], &mut m1[i], &mut v1[i]).unwrap();
        }
        let (mut p2, mut m2, mut v2) = start();
        let gn = grad_norm(&grads.iter().collect::<Vec<_>>(), 1.0, Some(&Tensor::scalar(2.5))).unwrap();
        adamw_multi(&o, 3, &decay, &mut p2, &grads, &mut m2, &mut v2, Some(&gn)).unwrap();
        let (n2, coef, skip) = gn.read().unwrap();
        assert!(n1 == n2 && coef < 1.0 && !skip);
        for (a, b) in p1.iter().chain(&m1).chain(&v1).zip(p2.iter().chain(&m2).chain(&v2)) {
            assert_eq!(a.as_f32().unwrap(), b.as_f32().unwrap());
        }
    }

    /// The step's scalars given as a tensor (`Step::Scalars`: what a captured step's device
    /// buffer holds) update exactly as the step number does.
    #[test]
    fn step_scalars_from_a_tensor_equal_the_step_number() {
        let o = AdamW { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
        let grads = vec![t(&[0.3, -1.7, 2.2]), t(&[4.1, 0.05])];
        let start = || (vec![t(&[1.0, -0.5, 0.25]), t(&[0.7, -0.1])], vec![t(&[0.1, 0.0, -0.2]), t(&[0.0, 0.3])]);
        let decay = [true, false];
        let (mut p1, mut m1) = start();
        let mut v1 = m1.iter().map(elementwise_sq).collect::<Vec<_>>();
        let (mut p2, mut m2) = start();
        let mut v2 = v1.clone();
        for step in 1..=5u64 {
            adamw_multi(&o, step, &decay, &mut p1, &grads, &mut m1, &mut v1, None).unwrap();
            let sc = Tensor::from_f32(step_scalars(&o, step).to_vec(), &[3]).unwrap();
            adamw_multi_at(&o, Step::Scalars(&sc), &decay, &mut p2, &grads, &mut m2, &mut v2, None).unwrap();
        }
        for (a, b) in p1.iter().chain(&m1).chain(&v1).zip(p2.iter().chain(&m2).chain(&v2)) {
            assert_eq!(a.as_f32().unwrap(), b.as_f32().unwrap());
        }
    }

    fn elementwise_sq(x: &Tensor) -> Tensor {
        t(&x.as_f32().unwrap().iter().map(|v| v * v).collect::<Vec<_>>())
    }

    /// A non-finite loss or gradient sets the skip flag, and the update then changes nothing.
    #[test]
    fn a_non_finite_loss_or_norm_skips_the_update() {
        let o = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
        for (g, loss) in [(t(&[1.0, 2.0]), f32::NAN), (t(&[f32::INFINITY, 2.0]), 1.0)] {
            let gn = grad_norm(&[&g], 1.0, Some(&Tensor::scalar(loss))).unwrap();
            assert!(gn.read().unwrap().2);
            let (mut p, mut m, mut v) = (vec![t(&[1.0, 1.0])], vec![t(&[0.0, 0.0])], vec![t(&[0.0, 0.0])]);
            adamw_multi(&o, 1, &[true], &mut p, std::slice::from_ref(&g), &mut m, &mut v, Some(&gn)).unwrap();
            assert_eq!(p[0].as_f32().unwrap(), &[1.0, 1.0]);
        }
    }
}
