//! Quantised weights at work (inference only): `linear` by a block-quantised matrix and
//! `embedding` from one. `ops::matmul::linear` and `ops::embedding::embedding` come here when
//! the weight's dtype is `Quant`; there is no backward (quantised weights are not trained).
//!
//! CPU: the format's own kernel behind `QuantMatrix` (`crate::quant`: each input row quantised to
//! 8 bits, integer dots, as llama.cpp's CPU backend does), which is the reference.
//! CUDA (`cuda.rs`, `qmatmul.cu`): the blocks stay quantised on the device and are
//! dequantised in registers; f32 activations. Up to `cuda::MATVEC_MAX_N` input rows (decode)
//! a matvec kernel reads each weight row once for all rows; above, the weight is dequantised
//! to a scratch buffer (f32 or bf16, per `cuda::matmul_precision`) and cuBLASLt multiplies.
//! Tests: smelt-core's `tests/gpu_quant.rs` (every format against the CPU dequantisers).

#[cfg(feature = "cuda")]
pub mod cuda;

use crate::backend::{self, backend, Cpu};
use crate::Tensor;
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
        let mut y = vec![0f32; n * m];
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
}

/// x: (…, K) (n rows), w: quantised (M, K), bias: (M) → (…, M). Shapes checked by the caller.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, n: usize, k: usize, m: usize) -> Result<Tensor> {
    backend::on("linear (quantised weight)", [x, w])?.linear_quant(x, w, bias, n, k, m)
}

/// table: quantised (V, C), ids: (…) u32 → (…, C).
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    backend(table.device()).embedding_quant(table, ids)
}
