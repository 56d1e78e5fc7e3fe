//! The knowledge-distillation loss: the student's logits against a teacher's, at a
//! temperature τ, plus α times the cross-entropy on the data's next tokens.
//!
//! ```text
//! loss = τ² · mean_r KL(p_t,r ‖ p_s,r) + α · mean_r (lse(z_r) − z_r[y_r])
//! p_s,r = softmax(z_r / τ)                  the student, over the whole vocabulary
//! p_t,r = softmax(t_r / τ)                  the teacher, over its K given logits
//! KL    = Σ_i p_t(i) · (log p_t(i) − log p_s(id_i))
//! ```
//!
//! The τ² factor is Hinton et al.'s (2015): it keeps the soft term's gradient, which scales as
//! 1/τ, comparable across temperatures (TRL's GKD trainer and most distillation code do the
//! same). The teacher's row is either every logit (K = V, ids implicit: the teacher run on the
//! fly) or its top K with their ids (precomputed teacher logits): then p_t is the softmax over
//! those K renormalised, and the ids outside them carry no teacher mass. Rows whose target is
//! `IGNORE` (a prompt under SFT masking, padding) are left out of both terms and of the means.
//!
//! Gradient: dz_r = [τ · (p_s,r − p̂_t,r) + α · (softmax(z_r) − onehot(y_r))] / count, with
//! p̂_t the teacher's mass scattered onto its ids. The CPU reference below is generic over
//! `Float` so the f64 finite-difference check runs this very code; CUDA's kernels are in
//! distill.cu (`cuda.rs`), each element's operations in this order.

use crate::backend::{self, Cpu};
use crate::float::{max_of, sum_exp, Float};
use crate::ops::cross_entropy::IGNORE;
use crate::{Device, Tensor};
use anyhow::{bail, Result};
use rayon::prelude::*;

#[cfg(feature = "cuda")]
pub mod cuda;

/// The teacher's logits for N rows: K per row, with their vocabulary ids (`ids`: (N, K) u32) or,
/// without ids, the whole vocabulary in id order (K = V).
#[derive(Clone, Debug)]
pub struct TeacherLogits {
    pub ids: Option<Tensor>,
    /// (N, K) f32.
    pub logits: Tensor,
}

/// The settings of the loss.
#[derive(Clone, Copy, Debug)]
pub struct DistillLoss {
    /// τ > 0.
    pub temperature: f64,
    /// α ≥ 0: the weight of the cross-entropy on the data.
    pub alpha: f64,
}

/// What the forward keeps for the backward, per row: the student's logsumexp at τ and at 1.
#[derive(Debug)]
pub struct Saved<F> {
    lse_tau: Vec<F>,
    lse_one: Vec<F>,
    count: usize,
}

/// The teacher's probabilities softmax(t / τ) over its K entries of one row.
fn teacher_probs<F: Float>(t: &[F], inv_tau: F) -> Vec<F> {
    let s: Vec<F> = t.iter().map(|&x| x * inv_tau).collect();
    let m = max_of(&s);
    let e: Vec<F> = s.iter().map(|&x| (x - m).exp()).collect();
    let sum: F = e.iter().copied().sum();
    e.into_iter().map(|x| x / sum).collect()
}

/// Forward over N rows of `v` student logits `z`: (loss, KL mean, CE mean, saved).
/// `tid`: the teacher's ids (N·K) or `None` (K = V); `tz`: its logits (N·K).
pub fn distill_fwd<F: Float>(
    z: &[F],
    v: usize,
    tid: Option<&[u32]>,
    tz: &[F],
    k: usize,
    targets: &[u32],
    o: &DistillLoss,
) -> (f64, f64, f64, Saved<F>) {
    let inv_tau = F::from_f64(1.0 / o.temperature);
    let rows: Vec<(F, F, f64, f64)> = z
        .par_chunks(v)
        .zip(tz.par_chunks(k))
        .enumerate()
        .map(|(r, (z, t))| {
            let y = targets[r];
            // The student at τ: lse of z/τ.
            let s: Vec<F> = z.iter().map(|&x| x * inv_tau).collect();
            let ms = max_of(&s);
            let lse_tau = ms + sum_exp(&s, ms).ln();
            let m1 = max_of(z);
            let lse_one = m1 + sum_exp(z, m1).ln();
            if y == IGNORE {
                return (lse_tau, lse_one, 0.0, 0.0);
            }
            let pt = teacher_probs(t, inv_tau);
            let tm = max_of(&t.iter().map(|&x| x * inv_tau).collect::<Vec<F>>());
            let tlse = tm + t.iter().map(|&x| (x * inv_tau - tm).exp()).sum::<F>().ln();
            let mut kl = 0f64;
            for i in 0..k {
                if pt[i] == F::ZERO {
                    continue;
                }
                let id = tid.map_or(i, |ids| ids[r * k + i] as usize);
                let log_pt = t[i] * inv_tau - tlse;
                let log_ps = s[id] - lse_tau;
                kl += (pt[i] * (log_pt - log_ps)).to_f64();
            }
            let ce = (lse_one - z[y as usize]).to_f64();
            (lse_tau, lse_one, kl, ce)
        })
        .collect();
    let count = targets.iter().filter(|&&t| t != IGNORE).count();
    let n = count.max(1) as f64;
    let (kl, ce) = rows.iter().fold((0f64, 0f64), |(a, b), r| (a + r.2, b + r.3));
    let (kl, ce) = (kl / n, ce / n);
    let loss = o.temperature * o.temperature * kl + o.alpha * ce;
    let saved =
        Saved { lse_tau: rows.iter().map(|r| r.0).collect(), lse_one: rows.iter().map(|r| r.1).collect(), count };
    (loss, kl, ce, saved)
}

/// dz (N·V) for an upstream gradient `dloss` of the loss.
#[allow(clippy::too_many_arguments)]
pub fn distill_bwd<F: Float>(
    z: &[F],
    v: usize,
    tid: Option<&[u32]>,
    tz: &[F],
    k: usize,
    targets: &[u32],
    o: &DistillLoss,
    saved: &Saved<F>,
    dloss: F,
) -> Vec<F> {
    let inv_tau = F::from_f64(1.0 / o.temperature);
    let n = F::from_f64(saved.count.max(1) as f64);
    let soft = F::from_f64(o.temperature) * dloss / n; // τ² · (1/τ)
    let hard = F::from_f64(o.alpha) * dloss / n;
    let mut dz = vec![F::ZERO; z.len()];
    dz.par_chunks_mut(v).zip(z.par_chunks(v)).zip(tz.par_chunks(k)).enumerate().for_each(|(r, ((d, z), t))| {
        let y = targets[r];
        if y == IGNORE {
            return;
        }
        let (lt, l1) = (saved.lse_tau[r], saved.lse_one[r]);
        for j in 0..v {
            d[j] = soft * (z[j] * inv_tau - lt).exp() + hard * (z[j] - l1).exp();
        }
        let pt = teacher_probs(t, inv_tau);
        for i in 0..k {
            let id = tid.map_or(i, |ids| ids[r * k + i] as usize);
            d[id] -= soft * pt[i];
        }
        d[y as usize] -= hard;
    });
    dz
}

/// Checks shapes, ids and settings; returns (K, the rows in the loss). The ids and targets are
/// read where they are: `distill` checks the caller's tensors before moving them beside the
/// logits (a trainer's teacher file and targets are on the host: no copy back from the device).
fn check(z: &Tensor, t: &TeacherLogits, targets: &Tensor, o: &DistillLoss) -> Result<(usize, usize)> {
    if !(o.temperature.is_finite() && o.temperature > 0.0) {
        bail!("distillation temperature {}: must be a finite number > 0", o.temperature);
    }
    if !(o.alpha.is_finite() && o.alpha >= 0.0) {
        bail!("distillation alpha {}: must be a finite number >= 0", o.alpha);
    }
    let k = check_shapes(z, t, targets)?;
    let v = z.cols();
    if let Some(ids) = &t.ids {
        if let Some(&bad) = ids.to_device(Device::Cpu)?.as_u32()?.iter().find(|&&i| i as usize >= v) {
            bail!("distill: teacher id {bad} is outside the student's vocabulary of {v}");
        }
    }
    let targets = targets.to_device(Device::Cpu)?;
    let targets = targets.as_u32()?;
    if let Some(&bad) = targets.iter().find(|&&y| y != IGNORE && y as usize >= v) {
        bail!("distill: target {bad} is outside the vocabulary of {v}");
    }
    Ok((k, targets.iter().filter(|&&y| y != IGNORE).count()))
}

/// The shapes alone (what the backward re-checks: the forward read the values); returns K.
fn check_shapes(z: &Tensor, t: &TeacherLogits, targets: &Tensor) -> Result<usize> {
    let (n, v) = (z.rows(), z.cols());
    if z.shape().len() != 2 || t.logits.shape().len() != 2 || t.logits.rows() != n || targets.numel() != n {
        bail!(
            "distill: student logits {:?}, teacher logits {:?} and {} targets do not describe the same rows",
            z.shape(),
            t.logits.shape(),
            targets.numel()
        );
    }
    let k = t.logits.cols();
    match &t.ids {
        None if k != v => {
            bail!("distill: the teacher has {k} logits a row and the student {v} (the vocabularies must match)")
        }
        Some(ids) if ids.shape() != t.logits.shape() => {
            bail!("distill: teacher ids {:?} for logits {:?}", ids.shape(), t.logits.shape())
        }
        _ => Ok(k),
    }
}

/// What `distill` keeps for its backward, per device.
#[derive(Debug)]
pub enum DistillSaved {
    Cpu(Saved<f32>),
    /// (N, 4) f32 on the device: the student's lse at τ and at 1, the teacher's lse at τ; and
    /// the number of rows in the loss.
    Device {
        rows: Tensor,
        count: usize,
    },
}

/// The distillation kernels a backend provides (arguments checked by `distill`).
pub trait DistillKernels {
    /// (loss (1) on z's device, [KL mean, CE mean], saved) of logits z (N, V); `count` is the
    /// number of targets in the loss (counted by the caller's check).
    #[allow(clippy::too_many_arguments)]
    fn distill(
        &self,
        z: &Tensor,
        teacher: &TeacherLogits,
        targets: &Tensor,
        o: &DistillLoss,
        k: usize,
        count: usize,
    ) -> Result<(Tensor, [f64; 2], DistillSaved)>;
    /// dz (N, V), of z's dtype, for the upstream gradient `dloss`.
    #[allow(clippy::too_many_arguments)]
    fn distill_backward(
        &self,
        z: &Tensor,
        teacher: &TeacherLogits,
        targets: &Tensor,
        o: &DistillLoss,
        k: usize,
        saved: &DistillSaved,
        dloss: f32,
    ) -> Result<Tensor>;
}

impl DistillKernels for Cpu {
    fn distill(
        &self,
        z: &Tensor,
        teacher: &TeacherLogits,
        targets: &Tensor,
        o: &DistillLoss,
        k: usize,
        _count: usize,
    ) -> Result<(Tensor, [f64; 2], DistillSaved)> {
        let ids = teacher.ids.as_ref().map(Tensor::as_u32).transpose()?;
        let (loss, kl, ce, saved) =
            distill_fwd(z.as_f32()?, z.cols(), ids, teacher.logits.as_f32()?, k, targets.as_u32()?, o);
        Ok((Tensor::scalar(loss as f32), [kl, ce], DistillSaved::Cpu(saved)))
    }

    fn distill_backward(
        &self,
        z: &Tensor,
        teacher: &TeacherLogits,
        targets: &Tensor,
        o: &DistillLoss,
        k: usize,
        saved: &DistillSaved,
        dloss: f32,
    ) -> Result<Tensor> {
        let DistillSaved::Cpu(saved) = saved else { bail!("distill backward: the forward ran on another device") };
        let ids = teacher.ids.as_ref().map(Tensor::as_u32).transpose()?;
        let v = z.cols();
        let dz = distill_bwd(z.as_f32()?, v, ids, teacher.logits.as_f32()?, k, targets.as_u32()?, o, saved, dloss);
        Tensor::from_f32(dz, z.shape())
    }
}

/// The teacher and targets on the student's device (the trainer's teacher logits file and
/// targets are on the host; the kernels read them where z is).
fn beside(z: &Tensor, teacher: &TeacherLogits, targets: &Tensor) -> Result<(TeacherLogits, Tensor)> {
    let d = z.device();
    let t = TeacherLogits {
        ids: teacher.ids.as_ref().map(|i| i.to_device(d)).transpose()?,
        logits: teacher.logits.to_device(d)?,
    };
    Ok((t, targets.to_device(d)?))
}

/// The loss of student logits `z` (N, V) against `teacher` and `targets` (N): (loss (1),
/// [KL mean, CE mean], what the backward needs).
pub fn distill(
    z: &Tensor,
    teacher: &TeacherLogits,
    targets: &Tensor,
    o: &DistillLoss,
) -> Result<(Tensor, [f64; 2], DistillSaved)> {
    let (k, count) = check(z, teacher, targets, o)?;
    let (teacher, targets) = beside(z, teacher, targets)?;
    backend::on("distill", [z, &teacher.logits, &targets])?.distill(z, &teacher, &targets, o, k, count)
}

/// dz (N, V) of `distill` for the upstream gradient `dloss`.
pub fn distill_backward(
    z: &Tensor,
    teacher: &TeacherLogits,
    targets: &Tensor,
    o: &DistillLoss,
    saved: &DistillSaved,
    dloss: f32,
) -> Result<Tensor> {
    let k = check_shapes(z, teacher, targets)?;
    let (teacher, targets) = beside(z, teacher, targets)?;
    backend::on("distill", [z, &teacher.logits, &targets])?.distill_backward(z, &teacher, &targets, o, k, saved, dloss)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backward against central differences of the forward, in f64, for the full teacher
    /// and a top-k one, with an ignored row.
    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = crate::rng::Rng::new(11);
        let (n, v) = (4, 7);
        let z: Vec<f64> = (0..n * v).map(|_| 2.0 * rng.normal()).collect();
        let targets = [3u32, IGNORE, 0, 6];
        let o = DistillLoss { temperature: 2.0, alpha: 0.5 };
        let full: Vec<f64> = (0..n * v).map(|_| 2.0 * rng.normal()).collect();
        let top_ids: Vec<u32> = (0..n).flat_map(|r| [(r as u32) % 7, 5, 2]).collect();
        let top: Vec<f64> = (0..n * 3).map(|_| rng.normal()).collect();
        for (tid, tz, k) in [(None, &full, v), (Some(&top_ids[..]), &top, 3)] {
            let loss = |z: &[f64]| distill_fwd(z, v, tid, tz, k, &targets, &o).0;
            let saved = distill_fwd(&z, v, tid, tz, k, &targets, &o).3;
            let dz = distill_bwd(&z, v, tid, tz, k, &targets, &o, &saved, 1.0);
            for i in 0..z.len() {
                let (mut a, mut b) = (z.clone(), z.clone());
                a[i] += 1e-6;
                b[i] -= 1e-6;
                let fd = (loss(&a) - loss(&b)) / 2e-6;
                assert!((fd - dz[i]).abs() < 1e-7, "k {k}, element {i}: finite difference {fd}, backward {}", dz[i]);
            }
        }
    }

    /// A student equal to its (full) teacher has zero KL; mismatched vocabularies are refused.
    #[test]
    fn equal_logits_have_zero_kl_and_vocabularies_must_match() {
        let z = Tensor::from_f32(vec![0.5, -1.0, 2.0, 0.0, 1.0, 3.0], &[2, 3]).unwrap();
        let y = Tensor::from_u32(vec![1, 2], &[2]).unwrap();
        let o = DistillLoss { temperature: 1.5, alpha: 0.0 };
        let (loss, parts, _) = distill(&z, &TeacherLogits { ids: None, logits: z.clone() }, &y, &o).unwrap();
        assert!(loss.as_f32().unwrap()[0].abs() < 1e-6 && parts[0].abs() < 1e-7);
        let wide = Tensor::zeros(&[2, 4]);
        let e = distill(&z, &TeacherLogits { ids: None, logits: wide }, &y, &o).unwrap_err().to_string();
        assert!(e.contains("4 logits") && e.contains("student 3"), "{e}");
    }
}
