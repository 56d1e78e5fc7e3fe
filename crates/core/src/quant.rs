//! Quantised weight matrices as a storage kind: core knows only this interface, the block
//! formats' host kernels live in `smelt-gguf` (which implements it). A quantised tensor is
//! for inference: `linear` multiplies by it, `embedding` gathers its rows (both through
//! `ops::qmatmul`), every other op and every backward refuses it with an error.
//!
//! On a GPU (`cuda` feature) the blocks are uploaded unchanged ([`DeviceQuant`]) and
//! `ops::qmatmul`'s kernels dequantise them in registers; the interface gives them what they
//! need: the ggml type id and the raw blocks.

use std::fmt::Debug;

/// A 2-D weight `[rows, cols]` (Hugging Face `[out, in]` layout) in some block format.
pub trait QuantMatrix: Send + Sync + Debug {
    /// (rows, cols).
    fn dims(&self) -> (usize, usize);
    /// The format's name as llama.cpp spells it (`q4_1`, `q8_0`, …).
    fn type_name(&self) -> &'static str;
    /// The ggml type id of the blocks (`enum ggml_type` in ggml.h: 2 = q4_0, 8 = q8_0, …).
    fn ggml_type(&self) -> u32;
    /// The blocks as stored: `rows` rows of `nbytes() / rows` bytes, llama.cpp's layout.
    fn blocks(&self) -> &[u8];
    /// Bytes the quantised data takes.
    fn nbytes(&self) -> usize;
    /// y (n × rows) = x (n × cols) · selfᵀ.
    fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]);
    /// Dequantises row `r` into `out` (len cols).
    fn dequantize_row(&self, r: usize, out: &mut [f32]);
    /// For the crate that implements it to get its own type back.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// The block formats the CUDA kernels (`ops/qmatmul/qmatmul.cu`) read, with llama.cpp's byte
/// layouts (ggml-common.h). Other ggml types (F16, BF16) are dequantised to f32 on upload.
#[cfg(feature = "cuda")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum QuantFormat { Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K }

#[cfg(feature = "cuda")]
impl QuantFormat {
    pub const ALL: [QuantFormat; 6] = [Self::Q4_0, Self::Q4_1, Self::Q5_0, Self::Q8_0, Self::Q4_K, Self::Q6_K];

    /// The format of ggml type `id`, if the kernels know it.
    pub fn from_ggml(id: u32) -> Option<Self> {
        Some(match id {
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            8 => Self::Q8_0,
            12 => Self::Q4_K,
            14 => Self::Q6_K,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "q4_0", Self::Q4_1 => "q4_1", Self::Q5_0 => "q5_0",
            Self::Q8_0 => "q8_0", Self::Q4_K => "q4_k", Self::Q6_K => "q6_k",
        }
    }

    /// (elements, bytes) per block.
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::Q4_0 => (32, 18), Self::Q4_1 => (32, 20), Self::Q5_0 => (32, 22),
            Self::Q8_0 => (32, 34), Self::Q4_K => (256, 144), Self::Q6_K => (256, 210),
        }
    }
}

/// A quantised `[rows, cols]` matrix on a GPU: the host's blocks byte for byte, in one device
/// buffer (U32 words, the last one zero-padded), row r at byte `r * row_bytes`.
#[cfg(feature = "cuda")]
#[derive(Clone, Debug)]
pub struct DeviceQuant {
    pub format: QuantFormat,
    pub rows: usize,
    pub cols: usize,
    pub row_bytes: usize,
    pub blocks: crate::cuda::DeviceBuf,
}

#[cfg(feature = "cuda")]
impl DeviceQuant {
    /// Uploads `q` to `gpu` unchanged; `None` when the kernels do not know its format.
    pub fn upload(q: &dyn QuantMatrix, gpu: &std::sync::Arc<crate::cuda::Gpu>) -> anyhow::Result<Option<Self>> {
        let Some(format) = QuantFormat::from_ggml(q.ggml_type()) else { return Ok(None) };
        let (rows, cols) = q.dims();
        let (be, bb) = format.block();
        let bytes = q.blocks();
        if cols % be != 0 || bytes.len() != rows * (cols / be) * bb {
            anyhow::bail!("{} [{rows}, {cols}]: {} bytes of blocks, expected {} ({be}-element blocks of {bb} bytes)", format.name(), bytes.len(), rows * (cols / be) * bb);
        }
        let words = bytes.len().div_ceil(4).max(1);
        let mut padded = Vec::with_capacity(words * 4);
        padded.extend_from_slice(bytes);
        padded.resize(words * 4, 0);
        let blocks = crate::cuda::DeviceBuf::from_bytes(gpu, crate::DType::U32, words, &padded)?;
        Ok(Some(DeviceQuant { format, rows, cols, row_bytes: cols / be * bb, blocks }))
    }
}
