//! Q4_1: blocks of 32 weights, `{ f16 d; f16 m; u8 qs[16] }` (nibbles as in Q4_0); x = d·q + m.

use super::act::BlockQ8;
use super::search::{block_weights, make_qkx3_quants, row_sigma2};
use super::GgmlType;
use super::{f16_at, f16_bytes};

pub const BYTES: usize = GgmlType::Q4_1.block_bytes();

pub fn dequantize(b: &[u8], out: &mut [f32]) {
    for (blk, o) in b.chunks_exact(BYTES).zip(out.chunks_exact_mut(32)) {
        let (d, m) = (f16_at(blk), f16_at(&blk[2..]));
        for j in 0..16 {
            o[j] = (blk[4 + j] & 0xF) as f32 * d + m;
            o[j + 16] = (blk[4 + j] >> 4) as f32 * d + m;
        }
    }
}

/// llama.cpp's `quantize_row_q4_1_ref`: d = (max − min)/15, m = min.
pub fn quantize(x: &[f32], out: &mut Vec<u8>) {
    for b in x.chunks_exact(32) {
        let min = b.iter().fold(f32::MAX, |m, &v| m.min(v));
        let max = b.iter().fold(-f32::MAX, |m, &v| m.max(v));
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16_bytes(d));
        out.extend_from_slice(&f16_bytes(min));
        for j in 0..16 {
            let q0 = (((b[j] - min) * id + 0.5) as i8).min(15) as u8;
            let q1 = (((b[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
            out.push(q0 | (q1 << 4));
        }
    }
}

/// llama.cpp's `quantize_row_q4_1_impl` for one row with importance weights `qw` (one per
/// element of the row): each block's scale and min are searched by `make_qkx3_quants` with
/// the error weighted by qw·√(σ² + x²), σ² the row's mean x², instead of (max − min)/15.
pub fn quantize_imatrix(x: &[f32], qw: &[f32], out: &mut Vec<u8>) {
    let sigma2 = row_sigma2(x);
    for (b, q) in x.chunks_exact(32).zip(qw.chunks_exact(32)) {
        let mut l = [0u8; 32];
        let (d, min) = make_qkx3_quants(b, &block_weights(b, q, sigma2), 15, &mut l, -0.9, 0.05, 36);
        out.extend_from_slice(&f16_bytes(d));
        out.extend_from_slice(&f16_bytes(-min));
        for j in 0..16 {
            out.push(l[j] | (l[j + 16] << 4));
        }
    }
}

/// Σ w·a: Q4_1 weights against Q8_1 activations: d·da·Σq·qa + m·(da·Σqa).
#[inline(always)]
pub fn dot(w: &[u8], a: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (blk, ab) in w.chunks_exact(BYTES).zip(a) {
        let q: &[u8; 16] = blk[4..].try_into().unwrap();
        let mut isum = 0i32;
        for j in 0..16 {
            isum += (q[j] & 0xF) as i32 * ab.qs[j] as i32 + (q[j] >> 4) as i32 * ab.qs[j + 16] as i32;
        }
        sum += isum as f32 * (f16_at(blk) * ab.d) + f16_at(&blk[2..]) * ab.s;
    }
    sum
}
