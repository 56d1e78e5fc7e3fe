//! Elementwise and reduction basics.

use crate::Tensor;
use anyhow::{bail, Result};

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        bail!("add: shapes {:?} and {:?} differ", a.shape(), b.shape());
    }
    let (x, y) = (a.as_f32()?, b.as_f32()?);
    Tensor::from_f32(x.iter().zip(y).map(|(p, q)| p + q).collect(), a.shape())
}

/// a += b in place (gradient accumulation).
pub fn add_assign(a: &mut Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        bail!("add_assign: shapes {:?} and {:?} differ", a.shape(), b.shape());
    }
    let y = b.as_f32()?;
    for (p, q) in a.f32_mut()?.iter_mut().zip(y) { *p += q; }
    Ok(())
}

pub fn scale(a: &Tensor, s: f32) -> Result<Tensor> {
    Tensor::from_f32(a.as_f32()?.iter().map(|p| p * s).collect(), a.shape())
}

pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        bail!("mul: shapes {:?} and {:?} differ", a.shape(), b.shape());
    }
    let (x, y) = (a.as_f32()?, b.as_f32()?);
    Tensor::from_f32(x.iter().zip(y).map(|(p, q)| p * q).collect(), a.shape())
}

/// Sum of squares in f64.
pub fn sum_sq(a: &Tensor) -> Result<f64> {
    Ok(a.as_f32()?.iter().map(|&v| (v as f64) * (v as f64)).sum())
}

pub fn max_abs(a: &Tensor) -> Result<f32> {
    Ok(a.as_f32()?.iter().fold(0f32, |m, &v| m.max(v.abs())))
}
