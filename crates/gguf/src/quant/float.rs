//! The plain float types as "block formats" of one element: F32, F16, BF16 (little-endian).

pub fn dequantize_f32(b: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) { *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]); }
}
pub fn dequantize_f16(b: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) { *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32(); }
}
pub fn dequantize_bf16(b: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) { *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16); }
}
pub fn quantize_f32(x: &[f32], out: &mut Vec<u8>) { for v in x { out.extend_from_slice(&v.to_le_bytes()); } }
pub fn quantize_f16(x: &[f32], out: &mut Vec<u8>) { for &v in x { out.extend_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes()); } }
/// Round to nearest even, as ggml's `GGML_FP32_TO_BF16` (NaNs kept quiet).
pub fn quantize_bf16(x: &[f32], out: &mut Vec<u8>) { for &v in x { out.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes()); } }
