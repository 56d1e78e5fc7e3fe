//! ggml's block formats: byte layouts identical to llama.cpp's (`ggml-common.h`), a scalar
//! dequantiser (the reference, tested bit-exactly against gguf-py), quantisers that follow
//! llama.cpp's reference quantisers (`quantize_row_*_ref`), and dot products of a quantised
//! weight row against an activation row quantised to 8 bits, as llama.cpp's CPU backend does
//! (`vec_dot_q4_1_q8_1` etc.). The matrix type that puts them to work is [`QTensor`].
//!
//! | type | block | bytes | weights | activation |
//! |---|---|---|---|---|
//! | F32, F16, BF16 | 1 | 4, 2, 2 | plain floats | f32; F16/BF16: rounded to f16/bf16 (`float::matmul`) |
//! | Q8_0 | 32 | 34 | f16 d, 32×i8 | Q8_0 |
//! | Q4_0 | 32 | 18 | f16 d, 32×u4 (−8) | Q8_0 |
//! | Q4_1 | 32 | 20 | f16 d, f16 m, 32×u4 | Q8_1 |
//! | Q5_0 | 32 | 22 | f16 d, 32×u5 (−16) | Q8_0 |
//! | Q4_K | 256 | 144 | f16 d, f16 dmin, 8×(6-bit scale, 6-bit min), 256×u4 | Q8_K |
//! | Q6_K | 256 | 210 | 256×(4+2 bits), 16×i8 scale, f16 d | Q8_K |

pub mod act;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod float;
#[cfg(target_arch = "aarch64")]
mod neon;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q6_k;
pub mod q8_0;
mod qtensor;
mod search;

pub use qtensor::QTensor;

use anyhow::{bail, Result};

/// The ggml tensor types smelt can hold and compute with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType { F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K }

impl GgmlType {
    pub const ALL: [GgmlType; 9] = [Self::F32, Self::F16, Self::BF16, Self::Q4_0, Self::Q4_1, Self::Q5_0, Self::Q8_0, Self::Q4_K, Self::Q6_K];

    pub fn from_id(id: u32) -> Option<Self> { Self::ALL.into_iter().find(|t| t.id() == id) }

    /// The id stored in GGUF tensor infos (`enum ggml_type`).
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0, Self::F16 => 1, Self::Q4_0 => 2, Self::Q4_1 => 3, Self::Q5_0 => 6, Self::Q8_0 => 8,
            Self::Q4_K => 12, Self::Q6_K => 14, Self::BF16 => 30,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32", Self::F16 => "f16", Self::BF16 => "bf16", Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1", Self::Q5_0 => "q5_0", Self::Q8_0 => "q8_0", Self::Q4_K => "q4_k", Self::Q6_K => "q6_k",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        let l = s.to_ascii_lowercase();
        match Self::ALL.into_iter().find(|t| t.name() == l) {
            Some(t) => Ok(t),
            None => bail!("unknown tensor type {s:?} (known: f32, f16, bf16, q4_0, q4_1, q5_0, q8_0, q4_k, q6_k)"),
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q8_0 => 32,
            Self::Q4_K | Self::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4, Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => q4_0::BYTES, Self::Q4_1 => q4_1::BYTES, Self::Q5_0 => q5_0::BYTES, Self::Q8_0 => q8_0::BYTES,
            Self::Q4_K => q4_k::BYTES, Self::Q6_K => q6_k::BYTES,
        }
    }

    /// Bytes of a row of `n` elements; an error unless `n` is a whole number of blocks.
    pub fn row_bytes(self, n: usize) -> Result<usize> {
        let b = self.block_size();
        if n % b != 0 {
            bail!("{}: a row of {n} elements is not a whole number of {b}-element blocks", self.name());
        }
        Ok(n / b * self.block_bytes())
    }
}

/// The name of any ggml type id, for display (including types smelt cannot compute with).
pub fn ggml_type_name(id: u32) -> String {
    const NAMES: [&str; 42] = [
        "f32", "f16", "q4_0", "q4_1", "q4_2", "q4_3", "q5_0", "q5_1", "q8_0", "q8_1", "q2_k", "q3_k",
        "q4_k", "q5_k", "q6_k", "q8_k", "iq2_xxs", "iq2_xs", "iq3_xxs", "iq1_s", "iq4_nl", "iq3_s",
        "iq2_s", "iq4_xs", "i8", "i16", "i32", "i64", "f64", "iq1_m", "bf16", "q4_0_4_4", "q4_0_4_8",
        "q4_0_8_8", "tq1_0", "tq2_0", "iq4_nl_4_4", "iq4_nl_4_8", "iq4_nl_8_8", "mxfp4", "nvfp4", "?",
    ];
    NAMES.get(id as usize).map_or_else(|| format!("type{id}"), |s| s.to_string())
}

/// Dequantises a row: `bytes` must hold exactly `out.len()` elements of type `ty`.
pub fn dequantize_row(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    debug_assert_eq!(ty.row_bytes(out.len()).ok(), Some(bytes.len()));
    match ty {
        GgmlType::F32 => float::dequantize_f32(bytes, out),
        GgmlType::F16 => float::dequantize_f16(bytes, out),
        GgmlType::BF16 => float::dequantize_bf16(bytes, out),
        GgmlType::Q8_0 => q8_0::dequantize(bytes, out),
        GgmlType::Q4_0 => q4_0::dequantize(bytes, out),
        GgmlType::Q4_1 => q4_1::dequantize(bytes, out),
        GgmlType::Q5_0 => q5_0::dequantize(bytes, out),
        GgmlType::Q4_K => q4_k::dequantize(bytes, out),
        GgmlType::Q6_K => q6_k::dequantize(bytes, out),
    }
}

/// Quantises a row (a whole number of blocks), appending the blocks to `out`.
pub fn quantize_row(ty: GgmlType, x: &[f32], out: &mut Vec<u8>) {
    debug_assert!(x.len() % ty.block_size() == 0);
    match ty {
        GgmlType::F32 => float::quantize_f32(x, out),
        GgmlType::F16 => float::quantize_f16(x, out),
        GgmlType::BF16 => float::quantize_bf16(x, out),
        GgmlType::Q8_0 => q8_0::quantize(x, out),
        GgmlType::Q4_0 => q4_0::quantize(x, out),
        GgmlType::Q4_1 => q4_1::quantize(x, out),
        GgmlType::Q5_0 => q5_0::quantize(x, out),
        GgmlType::Q4_K => q4_k::quantize(x, out),
        GgmlType::Q6_K => q6_k::quantize(x, out),
    }
}

/// Quantises one row with llama.cpp's importance-weighted quantiser (`quantize_<type>` given
/// `quant_weights`): `imatrix` holds one weight per element of the row (the mean squared
/// activation of that input column). Q4_0, Q4_1, Q5_0, Q4_K and Q6_K search their scales with
/// the error weighted by it; F32, F16, BF16 and Q8_0 have no weighted path and ignore it, as in
/// llama.cpp. `x` must be exactly one row: the 32-block types weight by the row's mean x².
pub fn quantize_row_imatrix(ty: GgmlType, x: &[f32], imatrix: &[f32], out: &mut Vec<u8>) {
    debug_assert!(x.len() % ty.block_size() == 0 && imatrix.len() == x.len());
    match ty {
        GgmlType::Q4_0 => q4_0::quantize_imatrix(x, imatrix, out),
        GgmlType::Q4_1 => q4_1::quantize_imatrix(x, imatrix, out),
        GgmlType::Q5_0 => q5_0::quantize_imatrix(x, imatrix, out),
        GgmlType::Q4_K => q4_k::quantize_imatrix(x, imatrix, out),
        GgmlType::Q6_K => q6_k::quantize_imatrix(x, imatrix, out),
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 => quantize_row(ty, x, out),
    }
}

/// Quantises a tensor of rows of `cols` elements, with per-column importance weights when
/// `imatrix` is given (see `quantize_row_imatrix`). Rows are quantised in parallel; each row's
/// bytes do not depend on the others.
pub fn quantize_with(ty: GgmlType, x: &[f32], cols: usize, imatrix: Option<&[f32]>) -> Result<Vec<u8>> {
    use rayon::prelude::*;
    let rb = ty.row_bytes(cols)?;
    if let Some(w) = imatrix {
        if w.len() != cols {
            bail!("{}: importance weights for {} columns, the rows have {cols}", ty.name(), w.len());
        }
    }
    if cols == 0 || x.len() % cols != 0 {
        bail!("{}: {} values are not whole rows of {cols}", ty.name(), x.len());
    }
    let mut out = vec![0u8; x.len() / cols * rb];
    out.par_chunks_mut(rb).zip(x.par_chunks(cols)).for_each(|(o, row)| {
        let mut b = Vec::with_capacity(rb);
        match imatrix {
            Some(w) => quantize_row_imatrix(ty, row, w, &mut b),
            None => quantize_row(ty, row, &mut b),
        }
        o.copy_from_slice(&b);
    });
    Ok(out)
}

/// Dequantises a whole tensor of `n` elements.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let need = ty.row_bytes(n)?;
    if bytes.len() != need {
        bail!("{}: {n} elements need {need} bytes, got {}", ty.name(), bytes.len());
    }
    let mut out = vec![0f32; n];
    dequantize_row(ty, bytes, &mut out);
    Ok(out)
}

/// Quantises a tensor of rows of `cols` elements.
pub fn quantize(ty: GgmlType, x: &[f32], cols: usize) -> Result<Vec<u8>> {
    let rb = ty.row_bytes(cols)?;
    let mut out = Vec::with_capacity(x.len() / cols.max(1) * rb);
    for row in x.chunks(cols.max(1)) { quantize_row(ty, row, &mut out); }
    Ok(out)
}

/// f16 stored little-endian at `b[0..2]`.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8]) -> f32 { half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32() }

#[inline(always)]
pub(crate) fn f16_bytes(v: f32) -> [u8; 2] { half::f16::from_f32(v).to_bits().to_le_bytes() }

/// Rounds v to f16 precision (what storing a scale as f16 does to it).
#[inline(always)]
pub(crate) fn round_f16(v: f32) -> f32 { half::f16::from_f32(v).to_f32() }

/// llama.cpp's `nearest_int`, bit for bit: adding 1.5·2²³ leaves round(v) (half to even) in
/// the low mantissa bits for |v| < 2²², and the same garbage as llama.cpp outside that range.
#[inline(always)]
pub(crate) fn nearest_int(v: f32) -> i32 { ((v + 12582912.0).to_bits() as i32 & 0x007f_ffff) - 0x0040_0000 }

#[cfg(test)]
mod tests;
