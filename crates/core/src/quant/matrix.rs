//! Quantised weight matrices as a storage kind: `Storage::Quant` holds a [`QuantMatrix`] (on the
//! host, [`super::QTensor`] with this module's sibling kernels). A quantised tensor is for
//! inference: `linear` multiplies by it, `embedding` gathers its rows (both through
//! `ops::qmatmul`), every other op and every backward refuses it with an error.
//!
//! On a GPU (`cuda` feature) the blocks are uploaded unchanged ([`DeviceQuant`]) and
//! `ops::qmatmul`'s kernels dequantise them in registers; the interface gives them what they
//! need: the ggml type id and the raw blocks.

use super::GgmlType;
use std::fmt::Debug;

/// A 2-D weight `[rows, cols]` (Hugging Face `[out, in]` layout) in some block format.
pub trait QuantMatrix: Send + Sync + Debug {
    /// (rows, cols).
    fn dims(&self) -> (usize, usize);
    /// The format's name as llama.cpp spells it (`q4_1`, `q8_0`, …).
    fn type_name(&self) -> &'static str;
    /// The ggml type of the blocks.
    fn ggml_type(&self) -> GgmlType;
    /// The blocks as stored: `rows` rows of `nbytes() / rows` bytes, llama.cpp's layout.
    fn blocks(&self) -> &[u8];
    /// Bytes the quantised data takes.
    fn nbytes(&self) -> usize;
    /// y (n × rows) = x (n × cols) · selfᵀ.
    fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]);
    /// `matmul` whose row i is exactly `matmul` of row i alone (n = 1), whatever n is: the
    /// batched server's decode rows, so that a sequence's tokens do not depend on what else is
    /// in the batch. By default one call per row; an implementation whose one-row kernel is
    /// row-independent runs all rows in one pass.
    fn matmul_rows_alone(&self, x: &[f32], n: usize, y: &mut [f32]) {
        let (m, k) = self.dims();
        for i in 0..n {
            self.matmul(&x[i * k..(i + 1) * k], 1, &mut y[i * m..(i + 1) * m]);
        }
    }
    /// Whether `matmul` of n rows gives every row exactly what it gives that row alone, for
    /// any n (the kernels this CPU runs sum each output on its own, in one order): then a
    /// server may stack the rows of all its sequences, prompts and decode rows alike, into one
    /// product and still give each sequence what `smelt generate` gives it. False by default.
    fn rows_independent(&self) -> bool {
        false
    }
    /// Dequantises row `r` into `out` (len cols).
    fn dequantize_row(&self, r: usize, out: &mut [f32]);
    /// For the crate that implements it to get its own type back.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// A quantised `[rows, cols]` matrix on a GPU: the host's blocks byte for byte, in one device
/// buffer (U32 words, the last one zero-padded), row r at byte `r * row_bytes`.
#[cfg(feature = "cuda")]
#[derive(Clone, Debug)]
pub struct DeviceQuant {
    pub format: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub row_bytes: usize,
    pub blocks: crate::cuda::DeviceBuf,
}

#[cfg(feature = "cuda")]
impl DeviceQuant {
    /// The block formats the CUDA kernels (`ops/qmatmul/qmatmul.cu`) read, with llama.cpp's byte
    /// layouts (ggml-common.h). Other ggml types (F16, BF16) are dequantised to f32 on upload.
    pub const FORMATS: [GgmlType; 6] =
        [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K];

    /// Uploads `q` to `gpu` unchanged; `None` when the kernels do not know its format.
    pub fn upload(q: &dyn QuantMatrix, gpu: &std::sync::Arc<crate::cuda::Gpu>) -> anyhow::Result<Option<Self>> {
        let format = q.ggml_type();
        if !Self::FORMATS.contains(&format) {
            return Ok(None);
        }
        let (rows, cols) = q.dims();
        let (be, bb) = (format.block_size(), format.block_bytes());
        let bytes = q.blocks();
        if cols % be != 0 || bytes.len() != rows * (cols / be) * bb {
            anyhow::bail!(
                "{} [{rows}, {cols}]: {} bytes of blocks, expected {} ({be}-element blocks of {bb} bytes)",
                format.name(),
                bytes.len(),
                rows * (cols / be) * bb
            );
        }
        let words = bytes.len().div_ceil(4).max(1);
        let mut padded = Vec::with_capacity(words * 4);
        padded.extend_from_slice(bytes);
        padded.resize(words * 4, 0);
        let blocks = crate::cuda::DeviceBuf::from_bytes(gpu, crate::DType::U32, words, &padded)?;
        Ok(Some(DeviceQuant { format, rows, cols, row_bytes: cols / be * bb, blocks }))
    }
}
