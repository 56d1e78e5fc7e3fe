//! Q4_0: blocks of 32 weights, `{ f16 d; u8 qs[16] }`; element j is the low nibble of qs[j],
//! element j+16 the high nibble; x = d·(q − 8).

use super::act::BlockQ8;
use super::search::{block_weights, make_qx_quants, row_sigma2};
use super::GgmlType;
use super::{f16_at, f16_bytes};

pub const BYTES: usize = GgmlType::Q4_0.block_bytes();

pub fn dequantize(b: &[u8], out: &mut [f32]) {
    for (blk, o) in b.chunks_exact(BYTES).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(blk);
        for j in 0..16 {
            o[j] = ((blk[2 + j] & 0xF) as i32 - 8) as f32 * d;
            o[j + 16] = ((blk[2 + j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// llama.cpp's `quantize_row_q4_0_ref`: d = (value of max |x|) / −8.
pub fn quantize(x: &[f32], out: &mut Vec<u8>) {
    for b in x.chunks_exact(32) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in b {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16_bytes(d));
        for j in 0..16 {
            let q0 = ((b[j] * id + 8.5) as i8).min(15) as u8;
            let q1 = ((b[j + 16] * id + 8.5) as i8).min(15) as u8;
            out.push(q0 | (q1 << 4));
        }
    }
}

/// llama.cpp's `quantize_row_q4_0_impl` for one row with importance weights `qw` (one per
/// element of the row): each block's scale is searched by `make_qx_quants` with the error
/// weighted by qw·√(σ² + x²), σ² the row's mean x², instead of d = max/−8.
pub fn quantize_imatrix(x: &[f32], qw: &[f32], out: &mut Vec<u8>) {
    let sigma2 = row_sigma2(x);
    for (b, q) in x.chunks_exact(32).zip(qw.chunks_exact(32)) {
        let mut l = [0i8; 32];
        let d = make_qx_quants(b, 8, &mut l, Some(&block_weights(b, q, sigma2)));
        out.extend_from_slice(&f16_bytes(d));
        for j in 0..16 {
            out.push(l[j] as u8 | ((l[j + 16] as u8) << 4));
        }
    }
}

/// Σ w·a: Q4_0 weights against Q8_0 activations.
#[inline(always)]
pub fn dot(w: &[u8], a: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (blk, ab) in w.chunks_exact(BYTES).zip(a) {
        let q: &[u8; 16] = blk[2..].try_into().unwrap();
        let mut isum = 0i32;
        for j in 0..16 {
            isum += ((q[j] & 0xF) as i32 - 8) * ab.qs[j] as i32 + ((q[j] >> 4) as i32 - 8) * ab.qs[j + 16] as i32;
        }
        sum += isum as f32 * (f16_at(blk) * ab.d);
    }
    sum
}
