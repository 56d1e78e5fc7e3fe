//! Elementwise and reduction basics.

use crate::Tensor;
use anyhow::{bail, Result};

#[cfg(feature = "cuda")]
pub mod cuda;

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        bail!("add: shapes {:?} and {:?} differ", a.shape(), b.shape());
    }
    #[cfg(feature = "cuda")]
    if a.is_cuda() {
        return cuda::add(a, b);
    }
    let (x, y) = (a.as_f32()?, b.as_f32()?);
    Tensor::from_f32(x.iter().zip(y).map(|(p, q)| p + q).collect(), a.shape())
}

/// a += b in place (gradient accumulation).
pub fn add_assign(a: &mut Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        bail!("add_assign: shapes {:?} and {:?} differ", a.shape(), b.shape());
    }
    #[cfg(feature = "cuda")]
    if a.is_cuda() {
        return cuda::add_assign(a, b);
    }
    #[cfg(feature = "cuda")]
    if b.is_cuda() {
        // A host accumulator meeting a device gradient (e.g. a host seed): move it over.
        *a = a.to_device(b.device())?;
        return cuda::add_assign(a, b);
    }
    let y = b.as_f32()?;
    for (p, q) in a.f32_mut()?.iter_mut().zip(y) { *p += q; }
    Ok(())
}

pub fn scale(a: &Tensor, s: f32) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if a.is_cuda() {
        return cuda::scale(a, s);
    }
    Tensor::from_f32(a.as_f32()?.iter().map(|p| p * s).collect(), a.shape())
}

pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        bail!("mul: shapes {:?} and {:?} differ", a.shape(), b.shape());
    }
    #[cfg(feature = "cuda")]
    if a.is_cuda() {
        return cuda::mul(a, b);
    }
    let (x, y) = (a.as_f32()?, b.as_f32()?);
    Tensor::from_f32(x.iter().zip(y).map(|(p, q)| p * q).collect(), a.shape())
}

/// Sum of squares in f64 (a device tensor, of any float dtype, is read back).
pub fn sum_sq(a: &Tensor) -> Result<f64> {
    if a.is_cuda() {
        return Ok(a.try_to_vec_f32()?.iter().map(|&v| (v as f64) * (v as f64)).sum());
    }
    Ok(a.as_f32()?.iter().map(|&v| (v as f64) * (v as f64)).sum())
}

pub fn max_abs(a: &Tensor) -> Result<f32> {
    if a.is_cuda() {
        return Ok(a.try_to_vec_f32()?.iter().fold(0f32, |m, &v| m.max(v.abs())));
    }
    Ok(a.as_f32()?.iter().fold(0f32, |m, &v| m.max(v.abs())))
}

/// `a` stored as `dtype` (on its device). On CUDA: f32 ↔ bf16 by a kernel (mixed precision
/// casts a gradient to its tensor's dtype); on the CPU, where compute is f32, `to_dtype`.
pub fn cast(a: &Tensor, dtype: crate::DType) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if a.is_cuda() {
        return cuda::cast(a, dtype);
    }
    Ok(a.to_dtype(dtype))
}
