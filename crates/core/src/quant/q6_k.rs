//! Q6_K: super-blocks of 256 weights, `{ u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }`:
//! 6-bit values (4 low bits in ql, 2 high bits in qh) minus 32, sixteen sub-blocks of 16 with
//! an 8-bit scale each; x = d·sc·(q − 32).

use super::act::BlockQ8K;
use super::search::{make_qx_quants, GROUP_MAX_EPS};
use super::GgmlType;
use super::{f16_at, f16_bytes, nearest_int};

pub const BYTES: usize = GgmlType::Q6_K.block_bytes();

/// The 256 signed 6-bit values of a super-block, in element order.
#[inline(always)]
pub(crate) fn unpack(blk: &[u8], q: &mut [i8; 256]) {
    let (ql, qh) = (&blk[..128], &blk[128..192]);
    for n in 0..2 {
        let (ql, qh, q) = (&ql[64 * n..], &qh[32 * n..], &mut q[128 * n..]);
        for l in 0..32 {
            q[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            q[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            q[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            q[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
}

pub fn dequantize(b: &[u8], out: &mut [f32]) {
    let mut q = [0i8; 256];
    for (blk, o) in b.chunks_exact(BYTES).zip(out.chunks_exact_mut(256)) {
        let d = f16_at(&blk[208..]);
        unpack(blk, &mut q);
        for (i, y) in o.iter_mut().enumerate() {
            *y = d * (blk[192 + i / 16] as i8 as f32) * q[i] as f32;
        }
    }
}

/// llama.cpp's `quantize_row_q6_K_ref`.
pub fn quantize(x: &[f32], out: &mut Vec<u8>) {
    quantize_weighted(x, None, out)
}

/// llama.cpp's `quantize_row_q6_K_impl` for one row with importance weights `qw` (one per
/// element of the row): the sub-block scales are searched with the error weighted by `qw`
/// instead of by x². Everything else is the reference quantiser.
pub fn quantize_imatrix(x: &[f32], qw: &[f32], out: &mut Vec<u8>) {
    quantize_weighted(x, Some(qw), out)
}

fn quantize_weighted(x: &[f32], qw: Option<&[f32]>, out: &mut Vec<u8>) {
    for (i, xb) in x.chunks_exact(256).enumerate() {
        let mut l = [0i8; 256];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for ib in 0..16 {
            let w = qw.map(|qw| &qw[256 * i + 16 * ib..256 * i + 16 * ib + 16]);
            let s = make_qx_quants(&xb[16 * ib..16 * ib + 16], 32, &mut l[16 * ib..16 * ib + 16], w);
            scales[ib] = s;
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = s;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            out.extend_from_slice(&[0u8; BYTES]);
            continue;
        }
        let iscale = -128.0 / max_scale;
        let d_b = f16_bytes(1.0 / iscale);
        let d16 = f16_at(&d_b);
        let mut sc = [0i8; 16];
        for ib in 0..16 {
            sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
        }
        for j in 0..16 {
            let d = d16 * sc[j] as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                l[16 * j + ii] = (nearest_int(xb[16 * j + ii] / d).clamp(-32, 31) + 32) as i8;
            }
        }
        let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
        for n in 0..2 {
            let (j, ql, qh) = (128 * n, &mut ql[64 * n..], &mut qh[32 * n..]);
            for i in 0..32 {
                let lq = |o: usize| l[j + i + o] as u8;
                ql[i] = (lq(0) & 0xF) | ((lq(64) & 0xF) << 4);
                ql[i + 32] = (lq(32) & 0xF) | ((lq(96) & 0xF) << 4);
                qh[i] = (lq(0) >> 4) | ((lq(32) >> 4) << 2) | ((lq(64) >> 4) << 4) | ((lq(96) >> 4) << 6);
            }
        }
        out.extend_from_slice(&ql);
        out.extend_from_slice(&qh);
        out.extend(sc.iter().map(|&s| s as u8));
        out.extend_from_slice(&d_b);
    }
}

/// Σ w·a: Q6_K weights against Q8_K activations.
#[inline(always)]
pub fn dot(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut q = [0i8; 256];
    let mut sum = 0f32;
    for (blk, ab) in w.chunks_exact(BYTES).zip(a) {
        unpack(blk, &mut q);
        let mut acc = 0i32;
        for j in 0..16 {
            let mut s = 0i32;
            for l in 0..16 {
                s += q[16 * j + l] as i32 * ab.qs[16 * j + l] as i32;
            }
            acc += (blk[192 + j] as i8 as i32) * s;
        }
        sum += f16_at(&blk[208..]) * ab.d * acc as f32;
    }
    sum
}
