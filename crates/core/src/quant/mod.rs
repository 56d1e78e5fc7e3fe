//! ggml's block formats, one place for each format's knowledge: the type table is smelt-gguf's
//! [`GgmlType`] (id, name, block size and bytes), the host kernels are here, the CUDA kernels
//! beside `ops/qmatmul`, and a quantised matrix is a storage kind of `Tensor` ([`QuantMatrix`],
//! [`QTensor`]; `DeviceQuant` on a GPU). Byte layouts identical to llama.cpp's
//! (`ggml-common.h`), a scalar dequantiser (the reference, tested bit-exactly against gguf-py), quantisers that follow
//! llama.cpp's reference quantisers (`quantize_row_*_ref`), and dot products of a quantised
//! weight row against an activation row quantised to 8 bits, as llama.cpp's CPU backend does
//! (`vec_dot_q4_1_q8_1` etc.). The matrix type that puts them to work is [`QTensor`].
//!
//! | type | block | bytes | weights | activation |
//! |---|---|---|---|---|
//! | F32, F16, BF16 | 1 | 4, 2, 2 | plain floats | f32; F16/BF16: rounded to f16/bf16 (`float_formats::matmul`) |
//! | Q8_0 | 32 | 34 | f16 d, 32×i8 | Q8_0 |
//! | Q4_0 | 32 | 18 | f16 d, 32×u4 (−8) | Q8_0 |
//! | Q4_1 | 32 | 20 | f16 d, f16 m, 32×u4 | Q8_1 |
//! | Q5_0 | 32 | 22 | f16 d, 32×u5 (−16) | Q8_0 |
//! | Q4_K | 256 | 144 | f16 d, f16 dmin, 8×(6-bit scale, 6-bit min), 256×u4 | Q8_K |
//! | Q6_K | 256 | 210 | 256×(4+2 bits), 16×i8 scale, f16 d | Q8_K |

pub mod act;
#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod float_formats;
mod matrix;
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
pub mod simd;
#[cfg(target_arch = "x86_64")]
mod tile512;

#[cfg(feature = "cuda")]
pub use matrix::DeviceQuant;
pub use matrix::QuantMatrix;
pub use qtensor::QTensor;
pub(crate) use qtensor::{matmul_few_many, matmul_many_tiles, swiglu_many_tiles};
pub use smelt_gguf::GgmlType;

use anyhow::{bail, Result};

/// Whether this process multiplies Q8_0/Q4_0/Q4_1/Q6_K matrices on Intel AMX tiles (`amx`: the CPU
/// has AMX-INT8, Linux granted the tile state, AVX-512 is on and `SMELT_AMX` is not `0`; or
/// `SMELT_AMX=emulate`), in llama.cpp's AMX build's float order rather than its AVX-512 build's.
pub fn amx_in_use() -> bool {
    #[cfg(target_arch = "x86_64")]
    return amx::engine().is_some();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Dequantises a row: `bytes` must hold exactly `out.len()` elements of type `ty`.
pub fn dequantize_row(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    debug_assert_eq!(ty.row_bytes(out.len()).ok(), Some(bytes.len()));
    match ty {
        GgmlType::F32 => float_formats::dequantize_f32(bytes, out),
        GgmlType::F16 => float_formats::dequantize_f16(bytes, out),
        GgmlType::BF16 => float_formats::dequantize_bf16(bytes, out),
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
    debug_assert!(x.len().is_multiple_of(ty.block_size()));
    match ty {
        GgmlType::F32 => float_formats::quantize_f32(x, out),
        GgmlType::F16 => float_formats::quantize_f16(x, out),
        GgmlType::BF16 => float_formats::quantize_bf16(x, out),
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
    debug_assert!(x.len().is_multiple_of(ty.block_size()) && imatrix.len() == x.len());
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
    if cols == 0 || !x.len().is_multiple_of(cols) {
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
    for row in x.chunks(cols.max(1)) {
        quantize_row(ty, row, &mut out);
    }
    Ok(out)
}

/// f16 stored little-endian at `b[0..2]`.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

#[inline(always)]
pub(crate) fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_bits().to_le_bytes()
}

/// Rounds v to f16 precision (what storing a scale as f16 does to it).
#[inline(always)]
pub(crate) fn round_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// llama.cpp's `nearest_int`, bit for bit: adding 1.5·2²³ leaves round(v) (half to even) in
/// the low mantissa bits for |v| < 2²², and the same garbage as llama.cpp outside that range.
#[inline(always)]
pub(crate) fn nearest_int(v: f32) -> i32 {
    ((v + 12582912.0).to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

#[cfg(test)]
mod tests;
