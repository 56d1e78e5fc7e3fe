//! Elementwise and reduction basics.

use crate::backend::{self, backend, Cpu};
use crate::Tensor;
use anyhow::{bail, Result};

#[cfg(feature = "cuda")]
pub mod cuda;

/// The elementwise kernels a backend provides (inputs checked by the entry points below and on
/// one device).
pub trait ElementwiseKernels {
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    fn add_assign(&self, a: &mut Tensor, b: &Tensor) -> Result<()>;
    fn scale(&self, a: &Tensor, s: f32) -> Result<Tensor>;
    /// a / d elementwise (averaging gradients over micro-batches).
    fn div_scalar(&self, a: &Tensor, d: f32) -> Result<Tensor>;
    /// `a` stored as `dtype`.
    fn cast(&self, a: &Tensor, dtype: crate::DType) -> Result<Tensor>;
    /// The 2-D `parts` (one row count, dtype and device) side by side: (rows, Σ cols).
    fn concat_cols(&self, parts: &[&Tensor]) -> Result<Tensor>;
    /// Columns start .. start + n of the 2-D `x`.
    fn narrow_cols(&self, x: &Tensor, start: usize, n: usize) -> Result<Tensor>;
    /// [w | 0 … b … 0] (`extend_cols`, checked there): w's columns, then `width` more with b's at
    /// `off` and zeros elsewhere, in w's dtype.
    fn extend_cols(&self, w: &Tensor, b: &Tensor, off: usize, width: usize) -> Result<Tensor>;
}

/// Elements per parallel task of the CPU's elementwise kernels (each element on its own, so
/// the split changes nothing but the time; small tensors stay on the calling thread).
const CHUNK: usize = 1 << 15;

/// out[i] = f(x[i], y[i]), in parallel for large inputs.
fn zip_map(x: &[f32], y: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = crate::mem::zeros(x.len().min(y.len()));
    let run = |(o, (a, b)): (&mut [f32], (&[f32], &[f32]))| {
        for (o, (&p, &q)) in o.iter_mut().zip(a.iter().zip(b)) {
            *o = f(p, q);
        }
    };
    if out.len() <= CHUNK {
        run((&mut out, (x, y)));
    } else {
        crate::par::chunks_mut(&mut out, CHUNK, |i, o| {
            let l = o.len();
            run((o, (&x[i * CHUNK..][..l], &y[i * CHUNK..][..l])))
        });
    }
    out
}

impl ElementwiseKernels for Cpu {
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Tensor::from_f32(zip_map(a.as_f32()?, b.as_f32()?, |p, q| p + q), a.shape())
    }
    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Tensor::from_f32(zip_map(a.as_f32()?, b.as_f32()?, |p, q| p * q), a.shape())
    }
    fn add_assign(&self, a: &mut Tensor, b: &Tensor) -> Result<()> {
        let (y, x) = (b.as_f32()?, a.f32_mut()?);
        let run = |(o, q): (&mut [f32], &[f32])| {
            for (p, q) in o.iter_mut().zip(q) {
                *p += q;
            }
        };
        if x.len() <= CHUNK {
            run((x, y));
        } else {
            crate::par::chunks_mut(x, CHUNK, |i, o| {
                let l = o.len();
                run((o, &y[i * CHUNK..][..l]))
            });
        }
        Ok(())
    }
    fn scale(&self, a: &Tensor, s: f32) -> Result<Tensor> {
        Tensor::from_f32(a.as_f32()?.iter().map(|p| p * s).collect(), a.shape())
    }
    fn div_scalar(&self, a: &Tensor, d: f32) -> Result<Tensor> {
        Tensor::from_f32(a.as_f32()?.iter().map(|p| p / d).collect(), a.shape())
    }
    fn cast(&self, a: &Tensor, dtype: crate::DType) -> Result<Tensor> {
        // Compute is f32 on the CPU: a cast is a storage conversion.
        a.to_dtype(dtype)
    }
    fn concat_cols(&self, parts: &[&Tensor]) -> Result<Tensor> {
        let rows = parts[0].rows();
        let total: usize = parts.iter().map(|p| p.cols()).sum();
        let mut out = vec![0f32; rows * total];
        let mut c0 = 0;
        for p in parts {
            let (c, v) = (p.cols(), p.to_dtype(crate::DType::F32)?);
            for (o, src) in out.chunks_exact_mut(total).zip(v.as_f32()?.chunks_exact(c.max(1))) {
                o[c0..c0 + c].copy_from_slice(src);
            }
            c0 += c;
        }
        Tensor::from_f32(out, &[rows, total])?.to_dtype(parts[0].dtype())
    }
    fn extend_cols(&self, w: &Tensor, b: &Tensor, off: usize, width: usize) -> Result<Tensor> {
        let (rows, k, nb) = (w.rows(), w.cols(), b.cols());
        let (wt, bt) = (w.to_dtype(crate::DType::F32)?, b.to_dtype(crate::DType::F32)?);
        let (wv, bv) = (wt.as_f32()?, bt.as_f32()?);
        let cols = k + width;
        let mut out = vec![0f32; rows * cols];
        for (r, o) in out.chunks_exact_mut(cols).enumerate() {
            o[..k].copy_from_slice(&wv[r * k..(r + 1) * k]);
            o[k + off..k + off + nb].copy_from_slice(&bv[r * nb..(r + 1) * nb]);
        }
        Tensor::from_f32(out, &[rows, cols])?.to_dtype(w.dtype())
    }
    fn narrow_cols(&self, x: &Tensor, start: usize, n: usize) -> Result<Tensor> {
        let (rows, c) = (x.rows(), x.cols());
        let v = x.to_dtype(crate::DType::F32)?;
        let out: Vec<f32> =
            v.as_f32()?.chunks_exact(c.max(1)).take(rows).flat_map(|r| r[start..start + n].iter().copied()).collect();
        Tensor::from_f32(out, &[rows, n])?.to_dtype(x.dtype())
    }
}

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        bail!("add: shapes {:?} and {:?} differ", a.shape(), b.shape());
    }
    backend::on("add", [a, b])?.add(a, b)
}

/// a += b in place (gradient accumulation). A host tensor meeting a device one (a host
/// accumulator and a device gradient, or the reverse) is moved to that device first.
pub fn add_assign(a: &mut Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        bail!("add_assign: shapes {:?} and {:?} differ", a.shape(), b.shape());
    }
    if a.device().is_cpu() && !b.device().is_cpu() {
        *a = a.to_device(b.device())?;
    }
    if b.device().is_cpu() && !a.device().is_cpu() {
        return backend(a.device()).add_assign(a, &b.to_device(a.device())?);
    }
    backend::on("add_assign", [&*a, b])?.add_assign(a, b)
}

/// `slot` += t (set to t when empty): a gradient's sum over its tensor's consumers (the
/// autograd's own sum, under its profile label), for the ops that add into sums themselves.
pub(crate) fn add_into(slot: &mut Option<Tensor>, t: Tensor) -> Result<()> {
    match slot {
        None => *slot = Some(t),
        Some(acc) => crate::profile::timed("grad_accumulate", || add_assign(acc, &t))?,
    }
    Ok(())
}

pub fn scale(a: &Tensor, s: f32) -> Result<Tensor> {
    backend(a.device()).scale(a, s)
}

/// a / d elementwise. The CPU divides; CUDA multiplies by the f32 reciprocal (`scale`, exact
/// for powers of two).
pub fn div_scalar(a: &Tensor, d: f32) -> Result<Tensor> {
    backend(a.device()).div_scalar(a, d)
}

pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        bail!("mul: shapes {:?} and {:?} differ", a.shape(), b.shape());
    }
    backend::on("mul", [a, b])?.mul(a, b)
}

/// Sum of squares in f64 (a device tensor, of any float dtype, is read back).
pub fn sum_sq(a: &Tensor) -> Result<f64> {
    if !a.device().is_cpu() {
        return Ok(a.to_vec_f32()?.iter().map(|&v| (v as f64) * (v as f64)).sum());
    }
    Ok(a.as_f32()?.iter().map(|&v| (v as f64) * (v as f64)).sum())
}

pub fn max_abs(a: &Tensor) -> Result<f32> {
    if !a.device().is_cpu() {
        return Ok(a.to_vec_f32()?.iter().fold(0f32, |m, &v| m.max(v.abs())));
    }
    Ok(a.as_f32()?.iter().fold(0f32, |m, &v| m.max(v.abs())))
}

/// The 2-D `parts` side by side, (rows, Σ cols): each row of the result is the parts' rows one
/// after another. One row count, dtype and device for all.
pub fn concat_cols(parts: &[&Tensor]) -> Result<Tensor> {
    let Some(first) = parts.first() else { bail!("concat_cols: no parts") };
    if parts.iter().any(|p| p.shape().len() != 2 || p.rows() != first.rows() || p.dtype() != first.dtype()) {
        let shapes: Vec<_> = parts.iter().map(|p| (p.shape().to_vec(), p.dtype())).collect();
        bail!("concat_cols: 2-D parts of one row count and dtype, got {shapes:?}");
    }
    backend::on("concat_cols", parts.iter().copied())?.concat_cols(parts)
}

/// The parts (each (n_i, C): one width, dtype and device) one under another, (Σ n_i, C): copies
/// of their rows, device to device.
pub fn concat_rows(parts: &[&Tensor]) -> Result<Tensor> {
    let Some(first) = parts.first() else { bail!("concat_rows: no parts") };
    let c = first.cols();
    if parts.iter().any(|p| p.cols() != c || p.dtype() != first.dtype()) {
        let shapes: Vec<_> = parts.iter().map(|p| (p.shape().to_vec(), p.dtype())).collect();
        bail!("concat_rows: parts of one width and dtype, got {shapes:?}");
    }
    let total: usize = parts.iter().map(|p| p.rows()).sum();
    let mut y = Tensor::zeros_typed(&[total, c], first.device(), first.dtype())?;
    let mut r0 = 0;
    for p in parts {
        y.write_at(r0 * c, p)?;
        r0 += p.rows();
    }
    Ok(y)
}

/// Columns start .. start + n of the 2-D `x` (a copy).
pub fn narrow_cols(x: &Tensor, start: usize, n: usize) -> Result<Tensor> {
    if x.shape().len() != 2 || start + n > x.cols() {
        bail!("narrow_cols: columns {start}..{} of a {:?} tensor", start + n, x.shape());
    }
    backend(x.device()).narrow_cols(x, start, n)
}

/// [w | 0 … b … 0], (rows, w's columns + `width`): each row w's, then `width` columns holding
/// b's row at `off` and zeros elsewhere; in w's dtype (b rounded to it). One pass for what
/// `concat_cols` of w, zeros, b and zeros would build (a frozen projection's weight beside its
/// LoRA adapter's B: `Graph::linear_side`). w and b 2-D, one row count, one device.
pub fn extend_cols(w: &Tensor, b: &Tensor, off: usize, width: usize) -> Result<Tensor> {
    if w.shape().len() != 2 || b.shape().len() != 2 || b.rows() != w.rows() || off + b.cols() > width {
        bail!(
            "extend_cols: want 2-D w and b of one row count and b's columns at {off} within {width}; got w {:?}, b {:?}",
            w.shape(),
            b.shape()
        );
    }
    backend::on("extend_cols", [w, b])?.extend_cols(w, b, off, width)
}

/// `a` stored as `dtype` (on its device). On CUDA: f32 ↔ bf16 by a kernel (mixed precision
/// casts a gradient to its tensor's dtype); on the CPU, where compute is f32, `to_dtype`.
pub fn cast(a: &Tensor, dtype: crate::DType) -> Result<Tensor> {
    backend(a.device()).cast(a, dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `extend_cols` is the concatenation of w, zeros, b and zeros it stands for (b at the
    /// start, middle and end of the extra columns), and refuses a b that does not fit.
    #[test]
    fn extend_cols_is_w_then_b_among_zeros() {
        let w = Tensor::from_f32((0..6).map(|v| v as f32).collect(), &[2, 3]).unwrap();
        let b = Tensor::from_f32(vec![10.0, 11.0, 12.0, 13.0], &[2, 2]).unwrap();
        for off in 0..=3 {
            let y = extend_cols(&w, &b, off, 5).unwrap();
            assert_eq!(y.shape(), &[2, 8]);
            let mut want = [0f32; 16];
            for r in 0..2 {
                want[r * 8..r * 8 + 3].copy_from_slice(&w.as_f32().unwrap()[r * 3..r * 3 + 3]);
                want[r * 8 + 3 + off..r * 8 + 5 + off].copy_from_slice(&b.as_f32().unwrap()[r * 2..r * 2 + 2]);
            }
            assert_eq!(y.as_f32().unwrap(), &want[..], "b at {off}");
        }
        let err = extend_cols(&w, &b, 4, 5).unwrap_err().to_string();
        assert!(err.contains("extend_cols"), "{err}");
    }
}
