//! SwiGLU's gate: y = silu(g) · u, silu(g) = g·σ(g). The f32 forward is llama.cpp's
//! arithmetic (`ggml_vec_swiglu_f32`: g / (1 + expf(−g)) · u with ggml's expf), bit for bit.

use crate::backend::{self, Cpu};
use crate::float::Float;
use crate::ops::elementwise::add_into;
use crate::Tensor;
use anyhow::{bail, Result};
use rayon::prelude::*;

#[cfg(feature = "cuda")]
pub mod cuda;

const CHUNK: usize = 4096;

#[inline]
fn sigmoid<F: Float>(x: F) -> F {
    F::ONE / (F::ONE + (-x).exp_fast())
}

pub fn swiglu_fwd<F: Float>(g: &[F], u: &[F]) -> Vec<F> {
    let mut y = vec![F::ZERO; g.len()];
    crate::par::chunks_mut(&mut y, CHUNK, |i, y| {
        F::swiglu_into(y, &g[i * CHUNK..][..y.len()], &u[i * CHUNK..][..y.len()])
    });
    y
}

/// Returns (dg, du).
pub fn swiglu_bwd<F: Float>(g: &[F], u: &[F], dy: &[F]) -> (Vec<F>, Vec<F>) {
    let mut dg = vec![F::ZERO; g.len()];
    let mut du = vec![F::ZERO; g.len()];
    dg.par_chunks_mut(CHUNK)
        .zip(du.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)).zip(dy.par_chunks(CHUNK)))
        .for_each(|((dg, du), ((g, u), dy))| {
            for i in 0..dg.len() {
                let s = sigmoid(g[i]);
                let silu = g[i] * s;
                du[i] = dy[i] * silu;
                dg[i] = dy[i] * u[i] * s * (F::ONE + g[i] * (F::ONE - s));
            }
        });
    (dg, du)
}

/// The SwiGLU kernels a backend provides (gate and up of one shape).
pub trait SwiGluKernels {
    fn swiglu(&self, g: &Tensor, u: &Tensor) -> Result<Tensor>;
    /// (dg, du).
    fn swiglu_backward(&self, g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)>;
    /// dg and du added into `sg` and `su` (the inputs' gradient sums so far; None: none yet, the
    /// gradient becomes the sum), as `swiglu_backward` then an add each: the same numbers.
    fn swiglu_backward_acc(
        &self,
        g: &Tensor,
        u: &Tensor,
        dy: &Tensor,
        sg: &mut Option<Tensor>,
        su: &mut Option<Tensor>,
    ) -> Result<()> {
        let (dg, du) = self.swiglu_backward(g, u, dy)?;
        add_into(sg, dg)?;
        add_into(su, du)
    }
}

impl SwiGluKernels for Cpu {
    fn swiglu(&self, g: &Tensor, u: &Tensor) -> Result<Tensor> {
        Tensor::from_f32(swiglu_fwd(g.as_f32()?, u.as_f32()?), g.shape())
    }
    fn swiglu_backward(&self, g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        let (dg, du) = swiglu_bwd(g.as_f32()?, u.as_f32()?, dy.as_f32()?);
        Ok((Tensor::from_f32(dg, g.shape())?, Tensor::from_f32(du, u.shape())?))
    }
}

pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if g.shape() != u.shape() {
        bail!("swiglu: gate {:?} and up {:?} differ in shape", g.shape(), u.shape());
    }
    backend::on("swiglu", [g, u])?.swiglu(g, u)
}

pub fn swiglu_backward(g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    backend::on("swiglu_backward", [g, u, dy])?.swiglu_backward(g, u, dy)
}

/// `swiglu_backward` with dg and du added into the gradient sums `sg` and `su` (None: no sum
/// yet; the gradient becomes it). On CUDA one kernel reads each sum and writes it back (no
/// separate add pass), with the roundings of the product then the add.
pub fn swiglu_backward_acc(
    g: &Tensor,
    u: &Tensor,
    dy: &Tensor,
    sg: &mut Option<Tensor>,
    su: &mut Option<Tensor>,
) -> Result<()> {
    for (s, what) in [(&*sg, "gate"), (&*su, "up")] {
        if let Some(s) = s {
            if s.shape() != g.shape() {
                bail!(
                    "swiglu_backward: the {what} gradient sum {:?} is not the input's shape {:?}",
                    s.shape(),
                    g.shape()
                );
            }
        }
    }
    backend::on("swiglu_backward", [g, u, dy])?.swiglu_backward_acc(g, u, dy, sg, su)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{gradcheck, rand_vec};

    #[test]
    fn gradcheck_swiglu() {
        gradcheck(
            &[rand_vec(40, 1), rand_vec(40, 2)],
            |v| swiglu_fwd(&v[0], &v[1]),
            |v, dy| {
                let (a, b) = swiglu_bwd(&v[0], &v[1], dy);
                vec![a, b]
            },
        );
    }
}
