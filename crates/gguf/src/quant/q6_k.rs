//! Q6_K: super-blocks of 256 weights, `{ u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }`:
//! 6-bit values (4 low bits in ql, 2 high bits in qh) minus 32, sixteen sub-blocks of 16 with
//! an 8-bit scale each; x = d·sc·(q − 32).

use super::act::BlockQ8K;
use super::{f16_at, f16_bytes, nearest_int};

pub const BYTES: usize = 210;

/// The 256 signed 6-bit values of a super-block, in element order.
#[inline(always)]
fn unpack(blk: &[u8], q: &mut [i8; 256]) {
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

/// llama.cpp's `make_qx_quants` with rmse_type 1 (weights x²) and no importance matrix.
fn make_qx_quants(x: &[f32], nmax: i32, l_out: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x { if v.abs() > amax { amax = v.abs(); max = v; } }
    if amax < 1e-15 {
        l_out.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let q = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (i, &v) in x.iter().enumerate() {
        let l = q(iscale, v);
        l_out[i] = (l + nmax) as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 { continue; }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = q(iscale, v);
            let w = v * v;
            sumlx += w * v * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &v) in x.iter().enumerate() { l_out[i] = (q(iscale, v) + nmax) as i8; }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// llama.cpp's `quantize_row_q6_K_ref`.
pub fn quantize(x: &[f32], out: &mut Vec<u8>) {
    for xb in x.chunks_exact(256) {
        let mut l = [0i8; 256];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for ib in 0..16 {
            let s = make_qx_quants(&xb[16 * ib..16 * ib + 16], 32, &mut l[16 * ib..16 * ib + 16]);
            scales[ib] = s;
            if s.abs() > max_abs_scale { max_abs_scale = s.abs(); max_scale = s; }
        }
        if max_abs_scale < 1e-15 {
            out.extend_from_slice(&[0u8; BYTES]);
            continue;
        }
        let iscale = -128.0 / max_scale;
        let d_b = f16_bytes(1.0 / iscale);
        let d16 = f16_at(&d_b);
        let mut sc = [0i8; 16];
        for ib in 0..16 { sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8; }
        for j in 0..16 {
            let d = d16 * sc[j] as f32;
            if d == 0.0 { continue; }
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
            for l in 0..16 { s += q[16 * j + l] as i32 * ab.qs[16 * j + l] as i32; }
            acc += (blk[192 + j] as i8 as i32) * s;
        }
        sum += f16_at(&blk[208..]) * ab.d * acc as f32;
    }
    sum
}
