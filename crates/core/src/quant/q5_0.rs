//! Q5_0: blocks of 32 weights, `{ f16 d; u8 qh[4]; u8 qs[16] }`: low 4 bits as in Q4_0, the
//! fifth bit of element j in bit j of the little-endian u32 qh; x = d·(q − 16). Used where
//! llama.cpp uses it: the fallback for Q4_K on rows that are not whole 256-blocks.

use super::act::BlockQ8;
use super::search::{block_weights, make_qx_quants, row_sigma2};
use super::GgmlType;
use super::{f16_at, f16_bytes};

pub const BYTES: usize = GgmlType::Q5_0.block_bytes();

#[inline(always)]
fn values(blk: &[u8]) -> [i32; 32] {
    let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
    let mut v = [0i32; 32];
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        v[j] = ((blk[6 + j] as u32 & 0xF) | h0) as i32 - 16;
        v[j + 16] = ((blk[6 + j] as u32 >> 4) | h1) as i32 - 16;
    }
    v
}

pub fn dequantize(b: &[u8], out: &mut [f32]) {
    for (blk, o) in b.chunks_exact(BYTES).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(blk);
        for (y, q) in o.iter_mut().zip(values(blk)) {
            *y = q as f32 * d;
        }
    }
}

/// llama.cpp's `quantize_row_q5_0_ref`: d = (value of max |x|) / −16.
pub fn quantize(x: &[f32], out: &mut Vec<u8>) {
    for b in x.chunks_exact(32) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in b {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut l = [0u8; 32];
        for j in 0..32 {
            l[j] = ((b[j] * id + 16.5) as i8).min(31) as u8;
        }
        write_block(d, &l, out);
    }
}

/// llama.cpp's `quantize_row_q5_0_impl` for one row with importance weights `qw` (one per
/// element of the row): each block's scale is searched by `make_qx_quants` with the error
/// weighted by qw·√(σ² + x²), σ² the row's mean x², instead of d = max/−16.
pub fn quantize_imatrix(x: &[f32], qw: &[f32], out: &mut Vec<u8>) {
    let sigma2 = row_sigma2(x);
    for (b, q) in x.chunks_exact(32).zip(qw.chunks_exact(32)) {
        let mut l = [0i8; 32];
        let d = make_qx_quants(b, 16, &mut l, Some(&block_weights(b, q, sigma2)));
        write_block(d, &l.map(|v| v as u8), out);
    }
}

/// A block of scale `d` and 5-bit values `l` (0..=31): low nibbles in qs, fifth bits in qh.
fn write_block(d: f32, l: &[u8; 32], out: &mut Vec<u8>) {
    let mut qh = 0u32;
    let mut qs = [0u8; 16];
    for j in 0..16 {
        let (x0, x1) = (l[j], l[j + 16]);
        qs[j] = (x0 & 0xF) | ((x1 & 0xF) << 4);
        qh |= (((x0 & 0x10) >> 4) as u32) << j;
        qh |= (((x1 & 0x10) >> 4) as u32) << (j + 16);
    }
    out.extend_from_slice(&f16_bytes(d));
    out.extend_from_slice(&qh.to_le_bytes());
    out.extend_from_slice(&qs);
}

/// Σ w·a: Q5_0 weights against Q8_0 activations.
#[inline(always)]
pub fn dot(w: &[u8], a: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (blk, ab) in w.chunks_exact(BYTES).zip(a) {
        let v = values(blk);
        let mut isum = 0i32;
        for j in 0..32 {
            isum += v[j] * ab.qs[j] as i32;
        }
        sum += isum as f32 * (f16_at(blk) * ab.d);
    }
    sum
}
