//! Q4_K: super-blocks of 256 weights, `{ f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }`: eight
//! sub-blocks of 32, each with a 6-bit scale and a 6-bit min packed into `scales`;
//! x = d·sc·q − dmin·m. Nibbles: 64-element chunks, low nibbles first, then high.

use super::act::BlockQ8K;
use super::search::{make_qkx2_quants, make_qkx3_quants, make_qp_quants};
use super::GgmlType;
use super::{f16_at, f16_bytes, nearest_int};

pub const BYTES: usize = GgmlType::Q4_K.block_bytes();

/// Scale and min of sub-block j (llama.cpp's `get_scale_min_k4`).
#[inline(always)]
pub(crate) fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

pub fn dequantize(b: &[u8], out: &mut [f32]) {
    for (blk, o) in b.chunks_exact(BYTES).zip(out.chunks_exact_mut(256)) {
        let (d, dmin) = (f16_at(blk), f16_at(&blk[2..]));
        let (scales, qs) = (&blk[4..16], &blk[16..]);
        for c in 0..4 {
            let (sc1, m1) = scale_min(2 * c, scales);
            let (sc2, m2) = scale_min(2 * c + 1, scales);
            let (d1, m1, d2, m2) = (d * sc1 as f32, dmin * m1 as f32, d * sc2 as f32, dmin * m2 as f32);
            let q = &qs[32 * c..32 * c + 32];
            for l in 0..32 {
                o[64 * c + l] = d1 * (q[l] & 0xF) as f32 - m1;
                o[64 * c + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// llama.cpp's `quantize_row_q4_K_ref` (no importance matrix).
pub fn quantize(x: &[f32], out: &mut Vec<u8>) {
    for xb in x.chunks_exact(256) {
        let mut l = [0u8; 256];
        let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for j in 0..8 {
            let xs = &xb[32 * j..32 * j + 32];
            let sum_x2: f32 = xs.iter().map(|v| v * v).sum();
            let av_x = (sum_x2 / 32.0).sqrt();
            let mut w = [0f32; 32];
            for (wi, &v) in w.iter_mut().zip(xs) {
                *wi = av_x + v.abs();
            }
            let (s, m) = make_qkx2_quants(xs, &w, 15, &mut l[32 * j..32 * j + 32], -1.0, 0.1, 20);
            scales[j] = s;
            mins[j] = m;
            if s > max_scale {
                max_scale = s;
            }
            if m > max_min {
                max_min = m;
            }
        }
        let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let mut sc = [0u8; 12];
        for j in 0..8 {
            let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
            if j < 4 {
                sc[j] = ls;
                sc[j + 4] = lm;
            } else {
                sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
                sc[j - 4] |= (ls >> 4) << 6;
                sc[j] |= (lm >> 4) << 6;
            }
        }
        finish_block(xb, &mut l, sc, f16_bytes(max_scale / 63.0), f16_bytes(max_min / 63.0), out);
    }
}

/// llama.cpp's `quantize_row_q4_K_impl` for one row with importance weights `qw` (one per
/// element of the row): each sub-block's element weights are qw·√(σ² + x²) (σ² = twice the
/// super-block's mean x²), its scale and min come from `make_qkx3_quants`, and the eight
/// scales and eight mins are quantised to 6 bits by `make_qp_quants` weighted by the
/// sub-blocks' total weight, instead of by rounding against the largest.
pub fn quantize_imatrix(x: &[f32], qw: &[f32], out: &mut Vec<u8>) {
    for (i, xb) in x.chunks_exact(256).enumerate() {
        let mut l = [0u8; 256];
        let (mut scales, mut mins, mut sw) = ([0f32; 8], [0f32; 8], [0f32; 8]);
        let mut sum_x2 = 0f32;
        for &v in xb {
            sum_x2 += v * v;
        }
        let sigma2 = 2.0 * sum_x2 / 256.0;
        for j in 0..8 {
            let xs = &xb[32 * j..32 * j + 32];
            let q = &qw[256 * i + 32 * j..256 * i + 32 * j + 32];
            let mut w = [0f32; 32];
            for l in 0..32 {
                w[l] = q[l] * (sigma2 + xs[l] * xs[l]).sqrt();
            }
            let mut sumw = 0f32;
            for &v in &w {
                sumw += v;
            }
            sw[j] = sumw;
            (scales[j], mins[j]) = make_qkx3_quants(xs, &w, 15, &mut l[32 * j..32 * j + 32], -0.9, 0.05, 36);
        }
        let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
        let d_block = make_qp_quants(&scales, 63, &mut ls, &sw);
        let m_block = make_qp_quants(&mins, 63, &mut lm, &sw);
        let mut sc = [0u8; 12];
        for j in 0..8 {
            if j < 4 {
                sc[j] = ls[j];
                sc[j + 4] = lm[j];
            } else {
                sc[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
                sc[j - 4] |= (ls[j] >> 4) << 6;
                sc[j] |= (lm[j] >> 4) << 6;
            }
        }
        finish_block(xb, &mut l, sc, f16_bytes(d_block), f16_bytes(m_block), out);
    }
}

/// The common tail of both quantisers: the values re-rounded against the stored (f16, 6-bit)
/// scales and mins, then the block written.
fn finish_block(xb: &[f32], l: &mut [u8; 256], sc: [u8; 12], d_b: [u8; 2], dmin_b: [u8; 2], out: &mut Vec<u8>) {
    let (d16, dmin16) = (f16_at(&d_b), f16_at(&dmin_b));
    for j in 0..8 {
        let (s, m) = scale_min(j, &sc);
        let d = d16 * s as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin16 * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((xb[32 * j + ii] + dm) / d).clamp(0, 15) as u8;
        }
    }
    out.extend_from_slice(&d_b);
    out.extend_from_slice(&dmin_b);
    out.extend_from_slice(&sc);
    for c in 0..4 {
        for i in 0..32 {
            out.push(l[64 * c + i] | (l[64 * c + 32 + i] << 4));
        }
    }
}

/// Σ w·a: Q4_K weights against Q8_K activations.
#[inline(always)]
pub fn dot(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (blk, ab) in w.chunks_exact(BYTES).zip(a) {
        let (scales, qs) = (&blk[4..16], &blk[16..144]);
        let mut acc = 0i32;
        let mut acc_min = 0i32;
        for c in 0..4 {
            let (sc1, m1) = scale_min(2 * c, scales);
            let (sc2, m2) = scale_min(2 * c + 1, scales);
            let q: &[u8; 32] = qs[32 * c..32 * c + 32].try_into().unwrap();
            let a1: &[i8; 32] = ab.qs[64 * c..64 * c + 32].try_into().unwrap();
            let a2: &[i8; 32] = ab.qs[64 * c + 32..64 * c + 64].try_into().unwrap();
            let (mut s1, mut s2) = (0i32, 0i32);
            for l in 0..32 {
                s1 += (q[l] & 0xF) as i32 * a1[l] as i32;
                s2 += (q[l] >> 4) as i32 * a2[l] as i32;
            }
            acc += sc1 as i32 * s1 + sc2 as i32 * s2;
            acc_min += m1 as i32 * (ab.bsums[4 * c] as i32 + ab.bsums[4 * c + 1] as i32)
                + m2 as i32 * (ab.bsums[4 * c + 2] as i32 + ab.bsums[4 * c + 3] as i32);
        }
        sum += f16_at(blk) * ab.d * acc as f32 - f16_at(&blk[2..]) * ab.d * acc_min as f32;
    }
    sum
}
