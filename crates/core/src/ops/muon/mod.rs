//! Muon (MomentUm Orthogonalized by Newton–Schulz), Keller Jordan's optimizer for 2-D hidden
//! weight matrices, written as his reference `muon_update` computes it (github.com/KellerJordan/
//! Muon, `muon.py`) so that a step can be compared with PyTorch number for number:
//!
//! ```text
//! g  ← g · clip                          (the global clip coefficient, as AdamW gets it)
//! m  ← m + (1 − μ)(g − m)                momentum.lerp_(g, 1 − μ)
//! u  ← g + μ(m − g)                      Nesterov: g.lerp_(m, μ)
//! o  ← NS5(u)                            quintic Newton–Schulz, 5 steps, (a, b, c) below
//! o  ← o · √max(1, rows / cols)          the reference's shape scale
//! p  ← p · (1 − lr·wd) − lr · o          decoupled weight decay, then the update
//! ```
//!
//! NS5 normalises X = u / (‖u‖_F + 1e-7) (transposed first when rows > cols, so X X^T is the
//! smaller Gram matrix), then 5 times: A = X Xᵀ, B = b·A + c·A·A, X = a·X + B·X. Here it runs in
//! f32 (the reference casts to bf16; f32 is what a peer test can hold to 1e-5). Embeddings,
//! the head, norm gains and biases are not Muon's: the trainer gives those to AdamW.
//!
//! Devices: the CPU reference below; CUDA in `cuda.rs` (the same steps on the device, f32
//! Newton–Schulz products through cuBLASLt; `parity_muon` holds it to the CPU).

use crate::backend::{self, Cpu};
use crate::float::Float;
use crate::ops::adamw::GradNorm;
use crate::ops::matmul::cpu::{gemm, Mat};
use crate::Tensor;
use anyhow::{bail, Result};
use rayon::prelude::*;

#[cfg(feature = "cuda")]
pub mod cuda;

/// The quintic Newton–Schulz coefficients of the reference implementation.
pub const NS_COEFFS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);
/// Newton–Schulz iterations per update (the reference's `ns_steps`).
pub const NS_STEPS: usize = 5;

/// One Muon update's settings.
#[derive(Clone, Copy, Debug)]
pub struct Muon {
    pub lr: f64,
    /// μ: the momentum (the reference's `beta`, 0.95); Nesterov is always on.
    pub momentum: f64,
    pub weight_decay: f64,
}

/// The orthogonalised `u` (rows × cols, row-major): `NS_STEPS` quintic Newton–Schulz steps
/// on u / (‖u‖_F + 1e-7), in F throughout (the norm summed in f64).
pub fn newton_schulz5<F: Float>(u: &[F], rows: usize, cols: usize) -> Vec<F> {
    let tall = rows > cols;
    // X: (r, c) with r ≤ c, row-major.
    let (r, c) = if tall { (cols, rows) } else { (rows, cols) };
    let norm = F::from_f64(u.iter().map(|&x| x.to_f64() * x.to_f64()).sum::<f64>().sqrt()) + F::from_f64(1e-7);
    let mut x: Vec<F> = if tall {
        let mut t = vec![F::ZERO; u.len()];
        for i in 0..rows {
            for j in 0..cols {
                t[j * rows + i] = u[i * cols + j];
            }
        }
        t
    } else {
        u.to_vec()
    };
    for v in &mut x {
        *v = *v / norm;
    }
    let (a, b, cc) = (F::from_f64(NS_COEFFS.0), F::from_f64(NS_COEFFS.1), F::from_f64(NS_COEFFS.2));
    let (mut gram, mut gram2, mut bx) = (vec![F::ZERO; r * r], vec![F::ZERO; r * r], vec![F::ZERO; r * c]);
    for _ in 0..NS_STEPS {
        // A = X Xᵀ (r, r)
        gemm(r, c, r, Mat::rm(&x, c), Mat::tr(&x, c), F::ZERO, &mut gram);
        // B = b·A + c·(A·A), as PyTorch rounds it: the product, then the scaled sum.
        gemm(r, r, r, Mat::rm(&gram, r), Mat::rm(&gram, r), F::ZERO, &mut gram2);
        for (g2, &g) in gram2.iter_mut().zip(&gram) {
            *g2 = b * g + cc * *g2;
        }
        // X = a·X + B·X
        gemm(r, r, c, Mat::rm(&gram2, r), Mat::rm(&x, c), F::ZERO, &mut bx);
        for (xi, &bi) in x.iter_mut().zip(&bx) {
            *xi = a * *xi + bi;
        }
    }
    if !tall {
        return x;
    }
    let mut out = vec![F::ZERO; x.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[i * cols + j] = x[j * rows + i];
        }
    }
    out
}

/// The reference's scale of the orthogonalised update: √max(1, rows / cols).
pub fn shape_scale(rows: usize, cols: usize) -> f64 {
    (rows as f64 / cols as f64).max(1.0).sqrt()
}

/// One Muon update of the (rows × cols) matrix `p` with gradient `g` scaled by `coef` (the
/// clip coefficient; 1 leaves it unchanged) and momentum buffer `m` (see the file's doc).
#[allow(clippy::too_many_arguments)]
pub fn muon_update<F: Float>(
    o: &Muon,
    decay: bool,
    rows: usize,
    cols: usize,
    p: &mut [F],
    g: &[F],
    coef: F,
    m: &mut [F],
) {
    let mu = F::from_f64(o.momentum);
    let mut u = vec![F::ZERO; g.len()];
    for i in 0..g.len() {
        let gi = g[i] * coef;
        m[i] += (F::ONE - mu) * (gi - m[i]);
        u[i] = gi + mu * (m[i] - gi);
    }
    let ortho = newton_schulz5(&u, rows, cols);
    let scale = F::from_f64(shape_scale(rows, cols));
    let keep = F::from_f64(if decay { 1.0 - o.lr * o.weight_decay } else { 1.0 });
    let lr = F::from_f64(o.lr);
    p.par_iter_mut().zip(ortho.par_iter()).for_each(|(p, &d)| {
        *p *= keep;
        *p -= lr * (d * scale);
    });
}

/// The Muon kernels a backend provides (arguments checked by `muon_multi`).
pub trait MuonKernels {
    /// One Muon update of every (2-D) parameter. With `norm`, the gradients are scaled by its
    /// clip coefficient and nothing is updated when its skip flag is set.
    fn muon(
        &self,
        o: &Muon,
        decay: &[bool],
        params: &mut [Tensor],
        grads: &[Tensor],
        momentum: &mut [Tensor],
        norm: Option<&GradNorm>,
    ) -> Result<()>;
}

impl MuonKernels for Cpu {
    fn muon(
        &self,
        o: &Muon,
        decay: &[bool],
        params: &mut [Tensor],
        grads: &[Tensor],
        momentum: &mut [Tensor],
        norm: Option<&GradNorm>,
    ) -> Result<()> {
        let (coef, skip) = match norm {
            Some(n) => {
                let st = n.state.as_f32()?;
                (st[1].min(1.0), st[2] != 0.0)
            }
            None => (1.0, false),
        };
        if skip {
            return Ok(());
        }
        for i in 0..params.len() {
            let (rows, cols) = (params[i].shape()[0], params[i].shape()[1]);
            muon_update(
                o,
                decay[i],
                rows,
                cols,
                params[i].f32_mut()?,
                grads[i].as_f32()?,
                coef,
                momentum[i].f32_mut()?,
            );
        }
        Ok(())
    }
}

/// One Muon update of every parameter (each 2-D; `decay[i]`: weight decay applies to
/// parameter i), clipped and skipped as `norm` says.
pub fn muon_multi(
    o: &Muon,
    decay: &[bool],
    params: &mut [Tensor],
    grads: &[Tensor],
    momentum: &mut [Tensor],
    norm: Option<&GradNorm>,
) -> Result<()> {
    let n = params.len();
    if grads.len() != n || momentum.len() != n || decay.len() != n {
        bail!(
            "muon: {n} parameters, {} gradients, {} momentum buffers, {} decay flags",
            grads.len(),
            momentum.len(),
            decay.len()
        );
    }
    for i in 0..n {
        let p = params[i].shape();
        if p.len() != 2 {
            bail!("muon: parameter {i} has shape {p:?}; Muon updates 2-D matrices only (give the rest to AdamW)");
        }
        if p != grads[i].shape() || p != momentum[i].shape() {
            bail!(
                "muon: parameter {p:?}, gradient {:?} and momentum {:?} differ in shape",
                grads[i].shape(),
                momentum[i].shape()
            );
        }
    }
    let all = params.iter().chain(grads).chain(momentum.iter()).chain(norm.map(|n| &n.state));
    backend::on("muon", all)?.muon(o, decay, params, grads, momentum, norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NS5 leaves a matrix's singular values near 1 (the quintic's fixed band is ~[0.7, 1.2]):
    /// XXᵀ ≈ I for a wide random matrix, and a tall one is handled by its transpose.
    #[test]
    fn newton_schulz_orthogonalises() {
        let mut rng = crate::rng::Rng::new(7);
        for (r, c) in [(8, 20), (20, 8)] {
            let u: Vec<f64> = (0..r * c).map(|_| rng.normal()).collect();
            let x = newton_schulz5(&u, r, c);
            let k = r.min(c);
            // The Gram matrix of the short side.
            let mut gram = vec![0f64; k * k];
            for i in 0..k {
                for j in 0..k {
                    gram[i * k + j] = if r <= c {
                        (0..c).map(|t| x[i * c + t] * x[j * c + t]).sum()
                    } else {
                        (0..r).map(|t| x[t * c + i] * x[t * c + j]).sum()
                    };
                }
            }
            for i in 0..k {
                assert!((0.45..1.45).contains(&gram[i * k + i]), "({r}, {c}): diagonal {}", gram[i * k + i]);
                for j in 0..k {
                    if i != j {
                        assert!(gram[i * k + j].abs() < 0.35, "({r}, {c}): off-diagonal {}", gram[i * k + j]);
                    }
                }
            }
        }
    }

    /// A skipped step changes nothing; a clipped one uses the scaled gradient.
    #[test]
    fn skip_and_clip_follow_the_norm_state() {
        let o = Muon { lr: 0.02, momentum: 0.95, weight_decay: 0.1 };
        let g = Tensor::from_f32(vec![1.0, f32::INFINITY, 0.5, 2.0], &[2, 2]).unwrap();
        let gn = crate::ops::adamw::grad_norm(&[&g], 1.0, None).unwrap();
        let mut p = vec![Tensor::from_f32(vec![1.0; 4], &[2, 2]).unwrap()];
        let mut m = vec![Tensor::zeros(&[2, 2])];
        muon_multi(&o, &[true], &mut p, std::slice::from_ref(&g), &mut m, Some(&gn)).unwrap();
        assert_eq!(p[0].as_f32().unwrap(), &[1.0; 4]);
        assert!(muon_multi(
            &o,
            &[true],
            &mut [Tensor::zeros(&[4])],
            &[Tensor::zeros(&[4])],
            &mut [Tensor::zeros(&[4])],
            None
        )
        .is_err());
    }
}
