//! NEON (aarch64) dot products of quantised weight rows against 8-bit activation rows, and the
//! activation quantiser for Q8_0/Q8_1. The scheme is llama.cpp's ARM one
//! (`ggml-cpu/arch/arm/quants.c`, the one-row NEON path): nibbles widened to signed bytes,
//! byte dots summed into four i32 lanes (`ggml_vdotq_s32`), two blocks per step with two float
//! accumulators, then an odd last block on its own (llama.cpp's scalar tail: the same integer
//! sum, and its float operations). The integer sums are the scalar
//! kernels' exactly; the float operations are llama.cpp's, in its order, as its gcc build
//! compiles them: `vmlaq_n_f32` is a multiply then an add (gcc does not fuse it), scalar
//! `s += a * b` is fused (gcc's default `-ffp-contract=fast`), so it is `mul_add` here. The
//! tests check every kernel bit for bit against llama.cpp's own ARM kernels.
//!
//! `DOT` picks how the byte dots are summed, which decides how the four i32 lanes are split and
//! so the float rounding (as in llama.cpp's builds with and without `__ARM_FEATURE_DOTPROD`):
//! `true` uses the dotprod extension's `sdot` (lane i = Σ of bytes 4i..4i+4; only behind
//! run-time detection), `false` plain NEON `smull` + `saddlp` (lane i = bytes 2i, 2i+1, 8+2i,
//! 9+2i). Rust 1.95 has no stable `vdotq_s32`, so `sdot` is one line of inline assembly.

use super::act::{BlockQ8, BlockQ8K};
use super::round_f16;
use std::arch::aarch64::*;
use std::arch::asm;

/// `sdot`: acc + per-lane sums of four adjacent byte products.
#[inline]
#[target_feature(enable = "dotprod")]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    asm!("sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b", acc = inout(vreg) acc, a = in(vreg) a, b = in(vreg) b,
         options(pure, nomem, nostack, preserves_flags));
    acc
}

/// llama.cpp's `ggml_vdotq_s32`: acc + four i32 lanes of byte products of `a` and `b`.
#[inline(always)]
unsafe fn vdot<const DOT: bool>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    if DOT {
        sdot(acc, a, b)
    } else {
        let p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        let p1 = vmull_high_s8(a, b);
        vaddq_s32(acc, vaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1)))
    }
}

/// The f16 stored at `p`, exactly (`fcvt` is base ARMv8 floating point).
#[inline(always)]
unsafe fn f16(p: *const u8) -> f32 {
    let h = (p as *const u16).read_unaligned();
    let f: f32;
    asm!("fcvt {f:s}, {h:h}", f = lateout(vreg) f, h = in(vreg) h, options(pure, nomem, nostack, preserves_flags));
    f
}

#[inline(always)]
unsafe fn ld(p: *const u8) -> int8x16_t {
    vld1q_s8(p as *const i8)
}

/// acc + v·s per lane, rounded twice (llama.cpp's `vmlaq_n_f32` as gcc compiles it).
#[inline(always)]
unsafe fn mla(acc: float32x4_t, v: int32x4_t, s: f32) -> float32x4_t {
    vaddq_f32(acc, vmulq_n_f32(vcvtq_f32_s32(v), s))
}

/// 16 packed bytes → (low nibbles, high nibbles) as signed bytes 0..15.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> (int8x16_t, int8x16_t) {
    let v = vld1q_u8(p);
    (vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F))), vreinterpretq_s8_u8(vshrq_n_u8(v, 4)))
}

// The 32-blocks: each `*_lanes` gives one block's integer dot as four i32 lanes, split as
// llama.cpp splits them; the dot loops take two blocks per step into two float accumulators,
// then an odd last block (llama.cpp's scalar tail: only the lanes' total matters there).

#[inline(always)]
unsafe fn q8_0_lanes<const DOT: bool>(x: *const u8, y: &BlockQ8) -> int32x4_t {
    let (z, y) = (vdupq_n_s32(0), y.qs.as_ptr() as *const u8);
    vaddq_s32(vdot::<DOT>(z, ld(x.add(2)), ld(y)), vdot::<DOT>(z, ld(x.add(18)), ld(y.add(16))))
}

/// Mirrors `q8_0::dot` (llama.cpp's `ggml_vec_dot_q8_0_q8_0`).
#[inline(always)]
pub unsafe fn dot_q8_0<const DOT: bool>(w: &[u8], a: &[BlockQ8]) -> f32 {
    const B: usize = super::q8_0::BYTES;
    assert!(w.len() >= a.len() * B);
    let x = |i: usize| w.as_ptr().add(i * B);
    let (mut sum0, mut sum1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut i = 0;
    while i + 1 < a.len() {
        sum0 = mla(sum0, q8_0_lanes::<DOT>(x(i), &a[i]), f16(x(i)) * a[i].d);
        sum1 = mla(sum1, q8_0_lanes::<DOT>(x(i + 1), &a[i + 1]), f16(x(i + 1)) * a[i + 1].d);
        i += 2;
    }
    let mut sum = vaddvq_f32(sum0) + vaddvq_f32(sum1);
    if i < a.len() {
        let s = vaddvq_s32(q8_0_lanes::<DOT>(x(i), &a[i]));
        sum = (s as f32).mul_add(f16(x(i)) * a[i].d, sum);
    }
    sum
}

#[inline(always)]
unsafe fn q4_0_lanes<const DOT: bool>(x: *const u8, y: &BlockQ8) -> int32x4_t {
    let (z, y, s8) = (vdupq_n_s32(0), y.qs.as_ptr() as *const u8, vdupq_n_s8(8));
    let (l, h) = nibbles(x.add(2));
    vdot::<DOT>(vdot::<DOT>(z, vsubq_s8(l, s8), ld(y)), vsubq_s8(h, s8), ld(y.add(16)))
}

/// Mirrors `q4_0::dot` (llama.cpp's `ggml_vec_dot_q4_0_q8_0`).
#[inline(always)]
pub unsafe fn dot_q4_0<const DOT: bool>(w: &[u8], a: &[BlockQ8]) -> f32 {
    const B: usize = super::q4_0::BYTES;
    assert!(w.len() >= a.len() * B);
    let x = |i: usize| w.as_ptr().add(i * B);
    let (mut sum0, mut sum1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut i = 0;
    while i + 1 < a.len() {
        sum0 = mla(sum0, q4_0_lanes::<DOT>(x(i), &a[i]), f16(x(i)) * a[i].d);
        sum1 = mla(sum1, q4_0_lanes::<DOT>(x(i + 1), &a[i + 1]), f16(x(i + 1)) * a[i + 1].d);
        i += 2;
    }
    let mut sum = vaddvq_f32(sum0) + vaddvq_f32(sum1);
    if i < a.len() {
        let s = vaddvq_s32(q4_0_lanes::<DOT>(x(i), &a[i]));
        // llama.cpp: sumi * dx * dy, left to right.
        sum = (s as f32 * f16(x(i))).mul_add(a[i].d, sum);
    }
    sum
}

#[inline(always)]
unsafe fn q4_1_lanes<const DOT: bool>(x: *const u8, y: &BlockQ8) -> int32x4_t {
    let (z, y) = (vdupq_n_s32(0), y.qs.as_ptr() as *const u8);
    let (l, h) = nibbles(x.add(4));
    vdot::<DOT>(vdot::<DOT>(z, l, ld(y)), h, ld(y.add(16)))
}

/// Mirrors `q4_1::dot` (llama.cpp's `ggml_vec_dot_q4_1_q8_1`).
#[inline(always)]
pub unsafe fn dot_q4_1<const DOT: bool>(w: &[u8], a: &[BlockQ8]) -> f32 {
    const B: usize = super::q4_1::BYTES;
    assert!(w.len() >= a.len() * B);
    let x = |i: usize| w.as_ptr().add(i * B);
    let (mut sum0, mut sum1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut mins = 0f32;
    let mut i = 0;
    while i + 1 < a.len() {
        // m0·s0 + m1·s1 as gcc contracts it (the products of two f16 values are exact anyway).
        mins += f16(x(i).add(2)).mul_add(a[i].s, f16(x(i + 1).add(2)) * a[i + 1].s);
        sum0 = mla(sum0, q4_1_lanes::<DOT>(x(i), &a[i]), f16(x(i)) * a[i].d);
        sum1 = mla(sum1, q4_1_lanes::<DOT>(x(i + 1), &a[i + 1]), f16(x(i + 1)) * a[i + 1].d);
        i += 2;
    }
    let mut sum = vaddvq_f32(sum0) + vaddvq_f32(sum1) + mins;
    if i < a.len() {
        let s = vaddvq_s32(q4_1_lanes::<DOT>(x(i), &a[i]));
        sum += (f16(x(i)) * a[i].d).mul_add(s as f32, f16(x(i).add(2)) * a[i].s);
    }
    sum
}

/// 0x10 in each byte whose bit of `bits` (16 bits, little end first) is clear.
#[inline(always)]
unsafe fn clear_bits_x10(bits: u32) -> int8x16_t {
    const BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let b = vcombine_u8(vdup_n_u8(bits as u8), vdup_n_u8((bits >> 8) as u8));
    vreinterpretq_s8_u8(vbicq_u8(vdupq_n_u8(0x10), vtstq_u8(b, vld1q_u8(BIT.as_ptr()))))
}

#[inline(always)]
unsafe fn q5_0_lanes<const DOT: bool>(x: *const u8, y: &BlockQ8) -> int32x4_t {
    let (z, y) = (vdupq_n_s32(0), y.qs.as_ptr() as *const u8);
    // (nibble | fifth bit << 4) − 16 = nibble − (0x10 where the fifth bit is clear).
    let qh = (x.add(2) as *const u32).read_unaligned();
    let (l, h) = nibbles(x.add(6));
    let (l, h) = (vsubq_s8(l, clear_bits_x10(qh & 0xFFFF)), vsubq_s8(h, clear_bits_x10(qh >> 16)));
    vaddq_s32(vdot::<DOT>(z, l, ld(y)), vdot::<DOT>(z, h, ld(y.add(16))))
}

/// Mirrors `q5_0::dot` (llama.cpp's `ggml_vec_dot_q5_0_q8_0`).
#[inline(always)]
pub unsafe fn dot_q5_0<const DOT: bool>(w: &[u8], a: &[BlockQ8]) -> f32 {
    const B: usize = super::q5_0::BYTES;
    assert!(w.len() >= a.len() * B);
    let x = |i: usize| w.as_ptr().add(i * B);
    let (mut sum0, mut sum1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut i = 0;
    while i + 1 < a.len() {
        sum0 = mla(sum0, q5_0_lanes::<DOT>(x(i), &a[i]), f16(x(i)) * a[i].d);
        sum1 = mla(sum1, q5_0_lanes::<DOT>(x(i + 1), &a[i + 1]), f16(x(i + 1)) * a[i + 1].d);
        i += 2;
    }
    let mut sum = vaddvq_f32(sum0) + vaddvq_f32(sum1);
    if i < a.len() {
        let s = vaddvq_s32(q5_0_lanes::<DOT>(x(i), &a[i]));
        sum = (f16(x(i)) * a[i].d).mul_add(s as f32, sum);
    }
    sum
}

/// Mirrors `q4_k::dot` (llama.cpp's `ggml_vec_dot_q4_K_q8_K`).
#[inline(always)]
pub unsafe fn dot_q4_k<const DOT: bool>(w: &[u8], a: &[BlockQ8K]) -> f32 {
    const B: usize = super::q4_k::BYTES;
    assert!(w.len() >= a.len() * B);
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;
    let z = vdupq_n_s32(0);
    let mut sum = 0f32;
    for (i, ab) in a.iter().enumerate() {
        let x = w.as_ptr().add(i * B);
        let d = ab.d * f16(x);
        let dmin = ab.d * f16(x.add(2));
        // The eight 6-bit scales and mins (`scale_min`), unpacked four bytes at a time.
        let u = |k: usize| (x.add(4 + 4 * k) as *const u32).read_unaligned();
        let (u0, u1, u2) = (u(0), u(1), u(2));
        let mins = [u1 & KMASK1, ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4)];
        let scales = [u0 & KMASK1, (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4)];
        let mins = vreinterpretq_s16_u16(vmovl_u8(vcreate_u8(mins[0] as u64 | (mins[1] as u64) << 32)));
        let sc: [u8; 8] = std::mem::transmute(scales);
        // Σ min·(Σa over its 32 elements), from the 16-element block sums.
        let bsums = vpaddq_s16(vld1q_s16(ab.bsums.as_ptr()), vld1q_s16(ab.bsums.as_ptr().add(8)));
        let prod = vaddq_s32(vmull_s16(vget_low_s16(bsums), vget_low_s16(mins)), vmull_high_s16(bsums, mins));
        sum = (-dmin).mul_add(vaddvq_s32(prod) as f32, sum);
        let q8 = ab.qs.as_ptr() as *const u8;
        let mut acc = z;
        for j in 0..4 {
            let q4 = x.add(16 + 32 * j);
            let (l0, h0) = nibbles(q4);
            let (l1, h1) = nibbles(q4.add(16));
            let p1 = vdot::<DOT>(vdot::<DOT>(z, l0, ld(q8.add(64 * j))), l1, ld(q8.add(64 * j + 16)));
            let p2 = vdot::<DOT>(vdot::<DOT>(z, h0, ld(q8.add(64 * j + 32))), h1, ld(q8.add(64 * j + 48)));
            acc = vmlaq_n_s32(acc, p1, sc[2 * j] as i32);
            acc = vmlaq_n_s32(acc, p2, sc[2 * j + 1] as i32);
        }
        sum = (vaddvq_s32(acc) as f32).mul_add(d, sum);
    }
    sum
}

/// Mirrors `q6_k::dot` (llama.cpp's `ggml_vec_dot_q6_K_q8_K`): unsigned 6-bit values q + 32
/// against the activations, minus 32·Σ scale·(Σa) from the block sums.
#[inline(always)]
pub unsafe fn dot_q6_k<const DOT: bool>(w: &[u8], a: &[BlockQ8K]) -> f32 {
    const B: usize = super::q6_k::BYTES;
    assert!(w.len() >= a.len() * B);
    let z = vdupq_n_s32(0);
    let m4 = vdupq_n_u8(0x0F);
    let m3 = vdupq_n_u8(3);
    let mut sum = 0f32;
    for (i, ab) in a.iter().enumerate() {
        let x = w.as_ptr().add(i * B);
        let sc = x.add(192) as *const i8;
        let scales = vld1q_s8(sc);
        let (s0, s1) = (vmovl_s8(vget_low_s8(scales)), vmovl_high_s8(scales));
        let (b0, b1) = (vld1q_s16(ab.bsums.as_ptr()), vld1q_s16(ab.bsums.as_ptr().add(8)));
        let prod = vaddq_s32(
            vaddq_s32(vmull_s16(vget_low_s16(b0), vget_low_s16(s0)), vmull_high_s16(b0, s0)),
            vaddq_s32(vmull_s16(vget_low_s16(b1), vget_low_s16(s1)), vmull_high_s16(b1, s1)),
        );
        let isum_mins = vaddvq_s32(prod);
        let mut acc = z;
        for n in 0..2 {
            let (ql, qh, q8) = (x.add(64 * n), x.add(128 + 32 * n), ab.qs.as_ptr().add(128 * n) as *const u8);
            let (h0, h1) = (vld1q_u8(qh), vld1q_u8(qh.add(16)));
            let l = [vld1q_u8(ql), vld1q_u8(ql.add(16)), vld1q_u8(ql.add(32)), vld1q_u8(ql.add(48))];
            // High bits: groups 0,1 from bits 0-1 of qh, 2,3 from bits 2-3, then (second four
            // groups, high nibbles of ql) bits 4-5 and 6-7.
            let hb = |h: uint8x16_t, s: i32| -> uint8x16_t {
                let h = match s {
                    0 => h,
                    2 => vshrq_n_u8(h, 2),
                    4 => vshrq_n_u8(h, 4),
                    _ => vshrq_n_u8(h, 6),
                };
                vshlq_n_u8(vandq_u8(h, m3), 4)
            };
            let q = [
                vorrq_u8(vandq_u8(l[0], m4), hb(h0, 0)),
                vorrq_u8(vandq_u8(l[1], m4), hb(h1, 0)),
                vorrq_u8(vandq_u8(l[2], m4), hb(h0, 2)),
                vorrq_u8(vandq_u8(l[3], m4), hb(h1, 2)),
                vorrq_u8(vshrq_n_u8(l[0], 4), hb(h0, 4)),
                vorrq_u8(vshrq_n_u8(l[1], 4), hb(h1, 4)),
                vorrq_u8(vshrq_n_u8(l[2], 4), hb(h0, 6)),
                vorrq_u8(vshrq_n_u8(l[3], 4), hb(h1, 6)),
            ];
            for (k, qk) in q.iter().enumerate() {
                let p = vdot::<DOT>(z, vreinterpretq_s8_u8(*qk), ld(q8.add(16 * k)));
                acc = vmlaq_n_s32(acc, p, *sc.add(8 * n + k) as i32);
            }
        }
        let isum = vaddvq_s32(acc);
        sum = (f16(x.add(208)) * ab.d).mul_add((isum - 32 * isum_mins) as f32, sum);
    }
    sum
}

/// Mirrors `act::quantize_q8` as llama.cpp's ARM `quantize_row_q8_0` / `quantize_row_q8_1` do
/// it: d = max|x| / 127, q = round-half-even(x · (1/d)) (`vcvtnq`), s = d·Σq. (The x86 rounding
/// the generic code follows multiplies by 127/max instead, which can differ in the last bit.)
pub fn quantize_q8(x: &[f32]) -> Vec<BlockQ8> {
    let mut out = Vec::with_capacity(x.len() / 32);
    for b in x.chunks_exact(32) {
        // SAFETY: NEON is part of the aarch64 baseline; every load reads within the 32-element chunk.
        unsafe {
            let p = b.as_ptr();
            let v: [float32x4_t; 8] = std::array::from_fn(|j| vld1q_f32(p.add(4 * j)));
            let mut m = [vdupq_n_f32(0.0); 4];
            for j in 0..4 {
                m[j] = vmaxq_f32(vabsq_f32(v[2 * j]), vabsq_f32(v[2 * j + 1]));
            }
            let amax = vmaxvq_f32(vmaxq_f32(vmaxq_f32(m[0], m[2]), vmaxq_f32(m[1], m[3])));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut qs = [0i8; 32];
            let mut acc = vdupq_n_s32(0);
            for j in 0..4 {
                let a = vcvtnq_s32_f32(vmulq_n_f32(v[2 * j], id));
                let c = vcvtnq_s32_f32(vmulq_n_f32(v[2 * j + 1], id));
                acc = vaddq_s32(acc, vaddq_s32(a, c));
                let q16 = vcombine_s16(vmovn_s32(a), vmovn_s32(c));
                vst1_s8(qs.as_mut_ptr().add(8 * j), vmovn_s16(q16));
            }
            out.push(BlockQ8 { d: round_f16(d), s: round_f16(d * vaddvq_s32(acc) as f32), qs });
        }
    }
    out
}
