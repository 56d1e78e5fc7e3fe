//! Embedding lookup (gather rows of a table) and its backward (scatter-add into the table).

use crate::backend::{self, backend, Cpu};
use crate::float::Float;
use crate::{DType, Tensor};
use anyhow::{bail, Result};

#[cfg(feature = "cuda")]
pub mod cuda;

/// out[i, :] = table[ids[i], :]
pub fn embedding_fwd<F: Float>(table: &[F], ids: &[u32], dim: usize) -> Vec<F> {
    let mut out = Vec::with_capacity(ids.len() * dim);
    for &id in ids {
        let r = id as usize * dim;
        out.extend_from_slice(&table[r..r + dim]);
    }
    out
}

/// dtable[ids[i], :] += dout[i, :]   (rows in id order: deterministic)
pub fn embedding_bwd<F: Float>(dout: &[F], ids: &[u32], vocab: usize, dim: usize) -> Vec<F> {
    let mut d = vec![F::ZERO; vocab * dim];
    for (i, &id) in ids.iter().enumerate() {
        let r = id as usize * dim;
        for (a, &g) in d[r..r + dim].iter_mut().zip(&dout[i * dim..(i + 1) * dim]) {
            *a += g;
        }
    }
    d
}

fn check(table: &Tensor, ids: &Tensor) -> Result<(usize, usize)> {
    if table.shape().len() != 2 {
        bail!("embedding table must be 2-D, got {:?}", table.shape());
    }
    let (v, d) = (table.shape()[0], table.shape()[1]);
    if !ids.device().is_cpu() {
        return Ok((v, d)); // device ids: the kernel writes NaN rows for out-of-range ids
    }
    if let Some(&bad) = ids.as_u32()?.iter().find(|&&i| i as usize >= v) {
        bail!("token id {bad} is out of range for a vocabulary of {v}");
    }
    Ok((v, d))
}

/// The embedding kernels a backend provides. `ids` are u32, on the host or on the table's
/// device; `v`, `d` are the table's rows and columns.
pub trait EmbeddingKernels {
    fn embedding(&self, table: &Tensor, ids: &Tensor, v: usize, d: usize) -> Result<Tensor>;
    fn embedding_backward(&self, table: &Tensor, ids: &Tensor, dout: &Tensor, v: usize, d: usize) -> Result<Tensor>;
}

impl EmbeddingKernels for Cpu {
    fn embedding(&self, table: &Tensor, ids: &Tensor, _v: usize, d: usize) -> Result<Tensor> {
        let mut shape = ids.shape().to_vec();
        shape.push(d);
        Tensor::from_f32(embedding_fwd(table.as_f32()?, ids.as_u32()?, d), &shape)
    }
    fn embedding_backward(&self, table: &Tensor, ids: &Tensor, dout: &Tensor, v: usize, d: usize) -> Result<Tensor> {
        Tensor::from_f32(embedding_bwd(dout.as_f32()?, ids.as_u32()?, v, d), table.shape())
    }
}

/// table: (V, C), ids: (…) u32 → (…, C)
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (v, d) = check(table, ids)?;
    if table.dtype() == DType::Quant {
        // A quantised table (GGUF token_embd): only the rows asked for are dequantised.
        return crate::ops::qmatmul::embedding(table, ids);
    }
    backend(table.device()).embedding(table, ids, v, d)
}

pub fn embedding_backward(table: &Tensor, ids: &Tensor, dout: &Tensor) -> Result<Tensor> {
    let (v, d) = check(table, ids)?;
    if table.dtype() == DType::Quant {
        bail!("embedding: no gradient into a quantised table (quantised weights are for inference)");
    }
    backend::on("embedding_backward", [table, dout])?.embedding_backward(table, ids, dout, v, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{gradcheck, rand_vec};

    #[test]
    fn gradcheck_embedding() {
        let ids = [3u32, 1, 3, 0];
        gradcheck(
            &[rand_vec(5 * 4, 1)],
            |v| embedding_fwd(&v[0], &ids, 4),
            |_, dy| vec![embedding_bwd(dy, &ids, 5, 4)],
        );
    }

    #[test]
    fn out_of_range_id_is_an_error() {
        let t = Tensor::zeros(&[4, 2]);
        let ids = Tensor::from_u32(vec![4], &[1]).unwrap();
        assert!(embedding(&t, &ids).unwrap_err().to_string().contains("out of range"));
    }
}
