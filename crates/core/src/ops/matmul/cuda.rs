//! `linear` and its backward on CUDA: cuBLASLt products (f32, or bf16 operands with f32
//! accumulation and output, per `cuda::matmul_precision`), plus the bias kernels (matmul.cu).
//!
//! cuBLAS is column-major; a row-major (r × c) buffer read column-major is its (c × r)
//! transpose, so each row-major product below is written as the transposed column-major one.

use crate::cuda::blas::{Gemm, Operand};
use crate::cuda::{self, DeviceBuf, MatmulPrecision};
use crate::{DType, Tensor};
use anyhow::Result;
use cudarc::driver::PushKernelArg;

pub(crate) const SRC: &str = include_str!("matmul.cu");

/// The operands in the precision the product runs in (cast to bf16 when mixed precision is on).
/// The first `cached` operands (the weight and the input) keep their bf16 copy on their buffer:
/// a weight is read by the forward and both backward products of a step and by every decode
/// step, and one normalised input feeds q, k and v (or gate and up) and is read again by the
/// backward. The cost: an input's bf16 copy lives as long as the input (+50% for those
/// activations) until activations themselves are bf16.
fn operands(ts: &[&Tensor], cached: usize) -> Result<(Operand, Vec<Tensor>)> {
    match cuda::matmul_precision() {
        MatmulPrecision::F32 => Ok((Operand::F32, ts.iter().map(|t| (*t).clone()).collect())),
        MatmulPrecision::Bf16 => {
            let mut out = Vec::with_capacity(ts.len());
            for (i, t) in ts.iter().enumerate() {
                out.push(if i < cached { cached_bf16(t)? } else { crate::ops::elementwise::cuda::cast(t, DType::BF16)? });
            }
            Ok((Operand::Bf16, out))
        }
    }
}

pub(crate) fn cached_bf16(w: &Tensor) -> Result<Tensor> {
    let b = w.cuda_buf()?;
    if let Some(t) = b.bf16_shadow.get() {
        return t.reshape(w.shape()); // the buffer may be shared by views of other shapes
    }
    let t = crate::ops::elementwise::cuda::cast(w, DType::BF16)?;
    let _ = b.bf16_shadow.set(t.clone());
    Ok(t)
}

fn gemm(a: &Tensor, b: &Tensor, c: &DeviceBuf, g: Gemm, op: Operand) -> Result<()> {
    let lt = c.gpu.blas()?;
    unsafe { lt.gemm(g, op, a.cuda_buf()?.ptr(), b.cuda_buf()?.ptr(), c.ptr()) }
}

/// y (n×m) = x (n×k) · wᵀ (w: m×k) + bias.  Column-major: yᵀ (m×n) = w (m×k) · xᵀ (k×n), where
/// w is the row-major buffer read transposed.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, n: usize, k: usize, m: usize) -> Result<Tensor> {
    let [xb, _] = cuda::f32_bufs([x, w], "linear")?;
    let gpu = xb.gpu.clone();
    let y = DeviceBuf::alloc(&gpu, DType::F32, n * m)?;
    if n > 0 && m > 0 {
        let (op, ab) = operands(&[w, x], 2)?;
        xwt(&ab[1], &ab[0], &y, op, n, k, m)?;
    }
    if let Some(bias) = bias {
        add_bias(&y, bias, n, m)?;
    }
    let mut shape = x.shape().to_vec();
    if let Some(last) = shape.last_mut() { *last = m; }
    Tensor::from_device_buf(y, &shape)
}

/// y (n×m) = x (n×k) · wᵀ (w: m×k) with both operands already of type `op` (also the
/// quantised path's product, on its dequantised scratch weight).
pub(crate) fn xwt(x: &Tensor, w: &Tensor, y: &DeviceBuf, op: Operand, n: usize, k: usize, m: usize) -> Result<()> {
    let g = Gemm { ta: true, tb: false, m: m as u64, n: n as u64, k: k as u64, lda: k as i64, ldb: k as i64, ldc: m as i64, alpha: 1.0, beta: 0.0 };
    gemm(w, x, y, g, op)
}

/// y (n×m) += bias (m) per row.
pub(crate) fn add_bias(y: &DeviceBuf, bias: &Tensor, n: usize, m: usize) -> Result<()> {
    let [bb] = cuda::f32_bufs([bias], "linear bias")?;
    let gpu = &y.gpu;
    let f = gpu.function("matmul", SRC, "add_bias_f32")?;
    let (n64, m32) = (n as i64, m as i32);
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(&y.data).arg(&bb.data).arg(&n64).arg(&m32);
    cuda::launched(unsafe { l.launch(cuda::grid_for(n * m, 256)) }, "add_bias_f32")
}

/// Returns (dx, dw, db).
///   dx (n×k) = dy (n×m) · w (m×k):   column-major dxᵀ (k×n) = wᵀ (k×m) · dyᵀ (m×n)
///   dw (m×k) = dyᵀ (m×n) · x (n×k):  column-major dwᵀ (k×m) = xᵀ (k×n) · dy (n×m)
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(x: &Tensor, w: &Tensor, dy: &Tensor, n: usize, k: usize, m: usize, want_dx: bool, has_bias: bool) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
    let [xb, _, dyb] = cuda::f32_bufs([x, w, dy], "linear_backward")?;
    let gpu = xb.gpu.clone();
    let (op, ops) = operands(&[x, w, dy], 2)?;
    let (xo, wo, dyo) = (&ops[0], &ops[1], &ops[2]);
    let dx = if want_dx {
        let dx = DeviceBuf::alloc(&gpu, DType::F32, n * k)?;
        if n > 0 && k > 0 {
            let g = Gemm { ta: false, tb: false, m: k as u64, n: n as u64, k: m as u64, lda: k as i64, ldb: m as i64, ldc: k as i64, alpha: 1.0, beta: 0.0 };
            gemm(wo, dyo, &dx, g, op)?;
        }
        Some(Tensor::from_device_buf(dx, x.shape())?)
    } else {
        None
    };
    let dw = DeviceBuf::alloc(&gpu, DType::F32, m * k)?;
    if m > 0 && k > 0 {
        let g = Gemm { ta: false, tb: true, m: k as u64, n: m as u64, k: n as u64, lda: k as i64, ldb: m as i64, ldc: k as i64, alpha: 1.0, beta: 0.0 };
        gemm(xo, dyo, &dw, g, op)?;
    }
    let db = if has_bias {
        let (n64, m32) = (n as i64, m as i32);
        let out = crate::ops::rmsnorm::cuda::column_reduce(&gpu, n, m, |part, cfg, rpc| {
            let f = gpu.function("matmul", SRC, "col_sum_part_f32")?;
            let mut l = gpu.stream.launch_builder(&f);
            l.arg(&dyb.data).arg(&part.data).arg(&n64).arg(&m32).arg(&rpc);
            cuda::launched(unsafe { l.launch(cfg) }, "col_sum_part_f32")
        })?;
        Some(Tensor::from_device_buf(out, &[m])?)
    } else {
        None
    };
    Ok((dx, Tensor::from_device_buf(dw, w.shape())?, db))
}
