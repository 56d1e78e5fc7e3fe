//! Quantised weight matrices as a storage kind: `Storage::Quant` holds a [`QuantMatrix`] (on the
//! host, [`super::QTensor`] with this module's sibling kernels). A quantised tensor is for
//! inference: `linear` multiplies by it, `embedding` gathers its rows (both through
//! `ops::qmatmul`), every other op and every backward refuses it with an error.
//!
//! On a GPU (`cuda` feature) the blocks are uploaded rearranged within each row ([`DeviceQuant`]:
//! the same bytes, field by field, so the kernels load them 16 bytes at a time) and
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

/// A quantised `[rows, cols]` matrix on a GPU, in one device buffer: row r at byte
/// `r * row_bytes` (the host row's bytes rounded up to 16, so every row starts 16-byte
/// aligned), holding the host row's blocks rearranged field by field ([`DeviceQuant::fields`];
/// qmatmul.cu's header shows each format's device row).
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

    /// Uploads `q` to `gpu` in the device layout (`fields`); `None` when the kernels do not know
    /// its format.
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
        let Some(fields) = Self::fields(format) else { return Ok(None) };
        let dev = Self::device_rows(&fields, bb, bytes, rows, cols / be);
        let words = (dev.len() / 4).max(1);
        let mut padded = dev;
        padded.resize(words * 4, 0);
        let blocks = crate::cuda::DeviceBuf::from_bytes(gpu, crate::DType::U32, words, &padded)?;
        Ok(Some(DeviceQuant { format, rows, cols, row_bytes: Self::stride(cols / be * bb), blocks }))
    }

    /// A device row's bytes: the host row's, rounded up to 16.
    fn stride(host_row_bytes: usize) -> usize {
        host_row_bytes.next_multiple_of(16)
    }

    /// A block's fields as (offset, length) in ggml's block, in the order the device row stores
    /// them: the row holds every block's first field, then every block's second, … (the
    /// quantised values first, 16-byte aligned; the small scalars after them).
    /// `None` for a format the kernels do not read (each one's layout is written out here and in
    /// qmatmul.cu, never implied).
    pub fn fields(format: GgmlType) -> Option<Vec<(usize, usize)>> {
        Some(match format {
            GgmlType::Q8_0 => vec![(2, 32), (0, 2)],
            GgmlType::Q4_0 => vec![(2, 16), (0, 2)],
            GgmlType::Q4_1 => vec![(4, 16), (0, 4)],
            GgmlType::Q5_0 => vec![(6, 16), (2, 4), (0, 2)],
            GgmlType::Q6_K => vec![(0, 208), (208, 2)],
            // 144 = 9 × 16 bytes: the blocks are aligned as they are.
            GgmlType::Q4_K => vec![(0, 144)],
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => return None,
        })
    }

    /// The host blocks (`rows` rows of `nb` blocks) in the device layout: each row's fields
    /// gathered, the row padded to `stride`.
    fn device_rows(fields: &[(usize, usize)], bb: usize, bytes: &[u8], rows: usize, nb: usize) -> Vec<u8> {
        let stride = Self::stride(nb * bb);
        let mut out = vec![0u8; rows * stride];
        for (src, dst) in bytes.chunks_exact(nb * bb).zip(out.chunks_exact_mut(stride)) {
            let mut at = 0;
            for &(off, len) in fields {
                for block in src.chunks_exact(bb) {
                    dst[at..at + len].copy_from_slice(&block[off..off + len]);
                    at += len;
                }
            }
        }
        out
    }
}

#[cfg(all(test, feature = "cuda"))]
mod tests {
    use super::*;

    /// Every format's fields cover its block exactly once, and the device rows hold the host
    /// bytes (a permutation per row, zero padding after).
    #[test]
    fn device_rows_are_a_permutation_of_each_host_row() {
        for f in DeviceQuant::FORMATS {
            let bb = f.block_bytes();
            let fields = DeviceQuant::fields(f).expect("a format the kernels read");
            let mut seen = vec![0u8; bb];
            for &(off, len) in &fields {
                seen[off..off + len].iter_mut().for_each(|s| *s += 1);
            }
            assert!(seen.iter().all(|&s| s == 1), "{}: fields {fields:?}", f.name());
            // The values (the first field) load 16 bytes at a time from every block.
            assert_eq!(fields[0].1 % 16, 0, "{}: first field {:?}", f.name(), fields[0]);
            let (rows, nb) = (3, 5);
            let host: Vec<u8> = (0..rows * nb * bb).map(|i| (i * 7 % 251) as u8).collect();
            let dev = DeviceQuant::device_rows(&fields, bb, &host, rows, nb);
            let stride = DeviceQuant::stride(nb * bb);
            assert_eq!(stride % 16, 0);
            assert_eq!(dev.len(), rows * stride);
            for r in 0..rows {
                let mut a = host[r * nb * bb..(r + 1) * nb * bb].to_vec();
                let mut b = dev[r * stride..r * stride + nb * bb].to_vec();
                a.sort_unstable();
                b.sort_unstable();
                assert_eq!(a, b, "{} row {r}", f.name());
                assert!(dev[r * stride + nb * bb..(r + 1) * stride].iter().all(|&x| x == 0));
            }
            // The first field of block 1 follows the first field of block 0.
            let (off, len) = fields[0];
            assert_eq!(dev[len..2 * len], host[bb + off..bb + off + len]);
        }
    }
}
