//! Quantised weights at work: `linear` by a block-quantised matrix and `embedding` from one.
//! `ops::matmul::linear` and `ops::embedding::embedding` come here when the weight's dtype is
//! `Quant`. Quantised weights are not trained; the one backward is the input gradient through a
//! frozen one (`linear_dx`, QLoRA: the matrix dequantised, on its device, for the product).
//!
//! CPU: the format's own kernel behind `QuantMatrix` (`crate::quant`: each input row quantised to
//! 8 bits, integer dots, as llama.cpp's CPU backend does), which is the reference.
//! CUDA (`cuda.rs`, `qmatmul.cu`): the blocks stay quantised on the device. Up to
//! `cuda::MATVEC_MAX_N` input rows (decode) a matvec kernel reads each weight row once for all
//! rows: under mixed precision in integer arithmetic (x quantised to 8 bits once, dp4a — the
//! CPU kernel's kind of numbers; `SMELT_CUDA_MMVQ=0` turns it off), else dequantised in
//! registers with f32 activations (f32 precision: exact against the CPU dequantiser); above, the weight is dequantised
//! to a scratch buffer (f32 or bf16, per `cuda::matmul_precision`) and cuBLASLt multiplies.
//! Tests: smelt-core's `tests/gpu_quant.rs` (every format against the CPU dequantisers).

#[cfg(feature = "cuda")]
pub mod cuda;

use crate::backend::{self, backend, Cpu};
use crate::{DType, Tensor};
use anyhow::{bail, Result};

fn out_shape(x: &Tensor, m: usize) -> Vec<usize> {
    let mut shape = x.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = m;
    }
    shape
}

/// The quantised-weight kernels a backend provides (inference only): `linear` by a quantised
/// (M, K) matrix `w` held in this backend's quantised storage, and rows of a quantised table.
pub trait QuantKernels {
    fn linear_quant(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        n: usize,
        k: usize,
        m: usize,
    ) -> Result<Tensor>;
    /// `ids` on the host or the table's device.
    fn embedding_quant(&self, table: &Tensor, ids: &Tensor) -> Result<Tensor>;
    /// The whole matrix dequantised on its device, stored as `dtype` (f32; on a GPU f32 or bf16).
    fn dequantize_quant(&self, w: &Tensor, dtype: DType) -> Result<Tensor>;
}

impl QuantKernels for Cpu {
    fn linear_quant(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        n: usize,
        k: usize,
        m: usize,
    ) -> Result<Tensor> {
        let Some(q) = w.as_quant() else {
            bail!("linear: expected a quantised weight, got {:?} {:?}", w.dtype(), w.shape())
        };
        if q.dims() != (m, k) {
            bail!("linear: quantised weight {:?} holds a {:?} matrix", w.shape(), q.dims());
        }
        let b = match bias {
            Some(b) => Some(b.as_f32()?),
            None => None,
        };
        let mut y = crate::mem::zeros(n * m);
        q.matmul(x.as_f32()?, n, &mut y);
        if let Some(b) = b {
            for row in y.chunks_mut(m) {
                for (v, &bb) in row.iter_mut().zip(b) {
                    *v += bb;
                }
            }
        }
        Tensor::from_f32(y, &out_shape(x, m))
    }

    fn embedding_quant(&self, table: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let Some(q) = table.as_quant() else {
            bail!("embedding: expected a quantised table, got {:?} {:?}", table.dtype(), table.shape())
        };
        let d = q.dims().1;
        let mut shape = ids.shape().to_vec();
        shape.push(d);
        // Dequantise just the rows asked for.
        let ids = ids.to_device(crate::Device::Cpu)?;
        let ids = ids.as_u32()?;
        let v = q.dims().0;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= v) {
            bail!("token id {bad} is out of range for a vocabulary of {v}");
        }
        let mut out = vec![0f32; ids.len() * d];
        for (row, &id) in out.chunks_mut(d.max(1)).zip(ids) {
            q.dequantize_row(id as usize, row);
        }
        Tensor::from_f32(out, &shape)
    }

    fn dequantize_quant(&self, w: &Tensor, dtype: DType) -> Result<Tensor> {
        if dtype != DType::F32 {
            bail!("dequantize on the CPU: {dtype:?} asked (the CPU computes in f32)");
        }
        Tensor::from_f32(w.to_vec_f32()?, w.shape())
    }
}

/// x: (…, K) (n rows), w: quantised (M, K), bias: (M) → (…, M). Shapes checked by the caller.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, n: usize, k: usize, m: usize) -> Result<Tensor> {
    backend::on("linear (quantised weight)", [x, w])?.linear_quant(x, w, bias, n, k, m)
}

/// A quantised matrix dequantised on its device, stored as `dtype` (f32 on the CPU; f32 or
/// bf16 on a GPU, where a kernel reads the blocks in place).
pub fn dequantize(w: &Tensor, dtype: DType) -> Result<Tensor> {
    if w.dtype() != DType::Quant {
        bail!("dequantize: a {:?} tensor {:?} is not quantised", w.dtype(), w.shape());
    }
    backend::on("dequantize", [w])?.dequantize_quant(w, dtype)
}

/// The input gradient of `linear` by a frozen quantised weight: dx = dy·W, dy: (…, M), w:
/// quantised (M, K) → `x_shape` (…, K), in dy's dtype. What QLoRA needs (the base frozen, only
/// the adapter trained): no dW. The weight is dequantised (in the product's operand type: f32,
/// or bf16 on a GPU under mixed precision) one matrix at a time, so the model stays quantised
/// in memory, and multiplied as a dense weight (`matmul::linear_dx`).
pub fn linear_dx(dy: &Tensor, w: &Tensor, x_shape: &[usize]) -> Result<Tensor> {
    let (m, _) = match w.shape() {
        [m, k] => (*m, *k),
        s => bail!("linear_dx: weight shape {s:?} is not a matrix"),
    };
    if dy.shape().last() != Some(&m) {
        bail!("linear_dx: output gradient {:?} for a weight of {m} rows", dy.shape());
    }
    let wd = dequantize(w, dy.device().activation_dtype())?;
    crate::ops::matmul::linear_dx(dy, &wd, x_shape)
}

/// `[linear(x, w_j, b_j)]` for quantised weights sharing x, in fewer launches where the backend
/// has a fused path (CUDA's integer matvecs quantise x once); None: run each `linear`.
pub fn linear_many(x: &Tensor, ws: &[(&Tensor, Option<&Tensor>)], n: usize, k: usize) -> Result<Option<Vec<Tensor>>> {
    #[cfg(feature = "cuda")]
    if !x.device().is_cpu() {
        let qs: Option<Vec<_>> = ws.iter().map(|(w, b)| w.as_device_quant().map(|q| (q, *b))).collect();
        if let Some(qs) = qs {
            return cuda::linear_many(x, &qs, n, k);
        }
    }
    if let Some(ys) = products_on_the_cpu(x, &ws.iter().map(|(w, b)| (*w, b.is_none())).collect::<Vec<_>>(), n, k)? {
        return Ok(Some(ys));
    }
    Ok(None)
}

/// On the CPU, the products of the input rows by several unbiased quantised matrices in one
/// parallel call: a few rows (decode) by `matmul_few_many`, many (a prompt, a server step) by
/// `matmul_many_tiles`; None where that path does not apply.
fn products_on_the_cpu(x: &Tensor, ws: &[(&Tensor, bool)], n: usize, k: usize) -> Result<Option<Vec<Tensor>>> {
    use crate::quant::{QTensor, QuantMatrix};
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        return Ok(None);
    }
    let qs: Option<Vec<&QTensor>> = ws
        .iter()
        .map(|&(w, unbiased)| {
            let q = w.as_quant()?.as_any().downcast_ref::<QTensor>()?;
            (unbiased && q.dims().1 == k).then_some(q)
        })
        .collect();
    let Some(qs) = qs else { return Ok(None) };
    let ys = if n <= 4 {
        crate::quant::matmul_few_many(&qs, x.as_f32()?, n)
    } else {
        crate::quant::matmul_many_tiles(&qs, x.as_f32()?, n)
    };
    let Some(ys) = ys else { return Ok(None) };
    let ys =
        ys.into_iter().zip(&qs).map(|(y, q)| Tensor::from_f32(y, &out_shape(x, q.dims().0))).collect::<Result<_>>()?;
    Ok(Some(ys))
}

/// On the CPU, a prompt's (n > 4) gate and up products gated tile by tile
/// (`quant::swiglu_many_tiles`: neither product written whole), the same bits as the products
/// then `swiglu`; None where that path does not apply.
fn gated_on_the_cpu(x: &Tensor, wg: &Tensor, wu: &Tensor, n: usize, k: usize) -> Result<Option<Tensor>> {
    use crate::quant::{QTensor, QuantMatrix};
    if !x.device().is_cpu() || x.dtype() != DType::F32 || n <= 4 {
        return Ok(None);
    }
    fn q(w: &Tensor, k: usize) -> Option<&QTensor> {
        w.as_quant()?.as_any().downcast_ref::<QTensor>().filter(|q| q.dims().1 == k)
    }
    let (Some(g), Some(u)) = (q(wg, k), q(wu, k)) else { return Ok(None) };
    let Some(y) = crate::quant::swiglu_many_tiles(g, u, x.as_f32()?, n) else { return Ok(None) };
    Ok(Some(Tensor::from_f32(y, &out_shape(x, g.dims().0))?))
}

/// `swiglu(linear(x, wg), linear(x, wu))` for quantised gate and up weights in fewer launches
/// where the backend has a fused path; None: run the three ops.
pub fn linear_swiglu(x: &Tensor, wg: &Tensor, wu: &Tensor, n: usize, k: usize) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if let (false, Some(g), Some(u)) = (x.device().is_cpu(), wg.as_device_quant(), wu.as_device_quant()) {
        return cuda::linear_swiglu(x, g, u, n, k);
    }
    if let Some(y) = gated_on_the_cpu(x, wg, wu, n, k)? {
        return Ok(Some(y));
    }
    if let Some(gu) = products_on_the_cpu(x, &[(wg, true), (wu, true)], n, k)? {
        return Ok(Some(crate::ops::swiglu::swiglu(&gu[0], &gu[1])?));
    }
    Ok(None)
}

/// `add_rmsnorm(x, r, w)` then `linear_swiglu` of its normalised output, as (h, act), in one
/// launch where the backend has it (CUDA, one row of a decode step, quantised gate and up under
/// mixed precision: the same bits as the two calls); None elsewhere (the caller makes both).
pub fn add_rmsnorm_swiglu(
    x: &Tensor,
    r: &Tensor,
    w: &Tensor,
    eps: f64,
    wg: &Tensor,
    wu: &Tensor,
) -> Result<Option<(Tensor, Tensor)>> {
    #[cfg(feature = "cuda")]
    if let (false, Some(g), Some(u)) = (x.device().is_cpu(), wg.as_device_quant(), wu.as_device_quant()) {
        return cuda::add_rmsnorm_swiglu(x, r, w, eps, g, u);
    }
    let _ = (x, r, w, eps, wg, wu);
    Ok(None)
}

/// `add_rmsnorm(x, r, w)` then `linear_many` of its normalised output, as (h, products), in one
/// launch where the backend has it (CUDA, one row of a decode step, quantised q/k/v under mixed
/// precision: the same bits as the two calls); None elsewhere (the caller makes both).
pub fn add_rmsnorm_linear_many(
    x: &Tensor,
    r: &Tensor,
    w: &Tensor,
    eps: f64,
    ws: &[(&Tensor, Option<&Tensor>)],
) -> Result<Option<(Tensor, Vec<Tensor>)>> {
    #[cfg(feature = "cuda")]
    if !x.device().is_cpu() {
        let qs: Option<Vec<_>> = ws.iter().map(|(q, b)| q.as_device_quant().map(|q| (q, *b))).collect();
        if let Some(qs) = qs {
            return cuda::add_rmsnorm_linear_many(x, r, w, eps, &qs);
        }
    }
    let _ = (x, r, w, eps, ws);
    Ok(None)
}

/// table: quantised (V, C), ids: (…) u32 → (…, C).
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    backend(table.device()).embedding_quant(table, ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::QTensor;
    use crate::Graph;
    use smelt_gguf::GgmlType;

    /// Through a frozen quantised weight the input gradient is dy·W with W dequantised: the
    /// input gradient of the same linear by the dequantised f32 matrix; training W is refused.
    #[test]
    fn gradient_flows_to_the_input_of_a_frozen_quantised_weight() {
        let (n, k, m) = (3, 64, 5);
        let wv: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let q = QTensor::quantize(GgmlType::Q8_0, &wv, m, k).unwrap().into_tensor();
        let deq = Tensor::from_f32(q.to_vec_f32().unwrap(), &[m, k]).unwrap();
        let x = Tensor::from_f32((0..n * k).map(|i| (i as f32 * 0.13).sin()).collect(), &[n, k]).unwrap();
        let dy = Tensor::from_f32((0..n * m).map(|i| (i as f32 * 0.7).cos()).collect(), &[n, m]).unwrap();
        let grad_x = |w: &Tensor| {
            let mut g = Graph::training();
            let (xv, wv) = (g.leaf(x.clone(), true), g.leaf(w.clone(), false));
            let y = g.linear(&xv, &wv, None).unwrap();
            g.backward_from(&[y], &[Some(dy.clone())]).unwrap().get(&xv).unwrap().to_vec_f32().unwrap()
        };
        let (got, want) = (grad_x(&q), grad_x(&deq));
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
        }
        let mut g = Graph::training();
        let (xv, wv) = (g.leaf(x.clone(), true), g.leaf(q.clone(), true));
        let e = g.linear(&xv, &wv, None).unwrap_err().to_string();
        assert!(e.contains("cannot be trained"), "{e}");
    }
}
