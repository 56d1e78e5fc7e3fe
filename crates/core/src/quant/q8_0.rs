//! Q8_0: blocks of 32 weights, `{ f16 d; i8 qs[32] }`, x = d·q.

use super::act::BlockQ8;
use super::GgmlType;
use super::{f16_at, f16_bytes};

pub const BYTES: usize = GgmlType::Q8_0.block_bytes();

pub fn dequantize(b: &[u8], out: &mut [f32]) {
    for (blk, o) in b.chunks_exact(BYTES).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(blk);
        for (y, &q) in o.iter_mut().zip(&blk[2..]) {
            *y = q as i8 as f32 * d;
        }
    }
}

/// llama.cpp's `quantize_row_q8_0_ref`: d = max|x|/127, q = round(x/d).
pub fn quantize(x: &[f32], out: &mut Vec<u8>) {
    for b in x.chunks_exact(32) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16_bytes(d));
        out.extend(b.iter().map(|&v| (v * id).round() as i8 as u8));
    }
}

/// Σ w·a over a row: Q8_0 weights against Q8_0 activations.
#[inline(always)]
pub fn dot(w: &[u8], a: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (blk, ab) in w.chunks_exact(BYTES).zip(a) {
        let q: &[u8; 32] = blk[2..].try_into().unwrap();
        let mut isum = 0i32;
        for j in 0..32 {
            isum += (q[j] as i8 as i32) * (ab.qs[j] as i32);
        }
        sum += isum as f32 * (f16_at(blk) * ab.d);
    }
    sum
}
