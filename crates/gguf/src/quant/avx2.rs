//! AVX2 dot products of quantised weight rows against 8-bit activation rows, the same integer
//! arithmetic as the scalar kernels (llama.cpp's x86 approach: `maddubs` of unsigned weight
//! values with signed activations, `madd` with the block scales), summed in llama.cpp's float
//! order (one 8-lane accumulator per row, one FMA per block, then `hsum_float_8`). Chosen at run time by `Level::detect`; the scalar kernels remain the reference.

use super::act::{BlockQ8, BlockQ8K};
use super::q4_k::scale_min;
use std::arch::x86_64::*;

/// The f16 at `p`. `vmovd` from a general register, in assembly: from `_mm_cvtsi32_si128`
/// LLVM emits `vpinsrw` into whatever register is free, often the loop's accumulator, which
/// puts the scale on the FMA chain (a false dependency that made every 32-block loop about
/// 3× slower than llama.cpp's, which loads its scales through a table).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16(p: *const u8) -> f32 {
    let h = (p as *const u16).read_unaligned() as u32;
    let v: __m128;
    std::arch::asm!("vmovd {v}, {h:e}", "vcvtph2ps {v}, {v}", h = in(reg) h, v = out(xmm_reg) v,
                    options(pure, nomem, nostack, preserves_flags));
    _mm_cvtss_f32(v)
}

/// The two f16 at `p` (Q4_1's d and m) in lanes 0 and 1, as `f16` does it.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16x2(p: *const u8) -> __m128 {
    let h = (p as *const u32).read_unaligned();
    let v: __m128;
    std::arch::asm!("vmovd {v}, {h:e}", "vcvtph2ps {v}, {v}", h = in(reg) h, v = out(xmm_reg) v,
                    options(pure, nomem, nostack, preserves_flags));
    v
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// 8 × i32: sums of adjacent products of unsigned bytes `u` and signed bytes `s`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// 8 × i32: the same for two signed byte vectors (the sign moves onto `y`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_i8(x: __m256i, y: __m256i) -> __m256i {
    dot_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

/// 16 packed bytes → 32 values: low nibbles (elements 0..16), then high nibbles (16..32).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let t = _mm_loadu_si128(p as *const __m128i);
    _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0F))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load(p: *const i8) -> __m256i { _mm256_loadu_si256(p as *const __m256i) }

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0(w: &[u8], a: &[BlockQ8]) -> f32 {
    assert!(w.len() >= a.len() * super::q8_0::BYTES);
    // One accumulator, one FMA per block, then hsum: llama.cpp's order (ggml_vec_dot_q8_0_q8_0).
    let mut acc = _mm256_setzero_ps();
    for (i, ab) in a.iter().enumerate() {
        let b = w.as_ptr().add(i * super::q8_0::BYTES);
        let q = _mm256_cvtepi32_ps(dot_i8(load(b.add(2) as *const i8), load(ab.qs.as_ptr())));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(b) * ab.d), q, acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_0(w: &[u8], a: &[BlockQ8]) -> f32 {
    assert!(w.len() >= a.len() * super::q4_0::BYTES);
    // llama.cpp's order (ggml_vec_dot_q4_0_q8_0): one accumulator, one FMA per block.
    let mut acc = _mm256_setzero_ps();
    for (i, ab) in a.iter().enumerate() {
        let b = w.as_ptr().add(i * super::q4_0::BYTES);
        let x = _mm256_sub_epi8(nibbles(b.add(2)), _mm256_set1_epi8(8));
        let q = _mm256_cvtepi32_ps(dot_i8(x, load(ab.qs.as_ptr())));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(b) * ab.d), q, acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_1(w: &[u8], a: &[BlockQ8]) -> f32 {
    assert!(w.len() >= a.len() * super::q4_1::BYTES);
    // llama.cpp's order (ggml_vec_dot_q4_1_q8_1): one accumulator, the mins summed apart.
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (i, ab) in a.iter().enumerate() {
        let b = w.as_ptr().add(i * super::q4_1::BYTES);
        // d and m in one conversion.
        let dm = f16x2(b);
        let (d, m) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
        mins += m * ab.s;
        let q = _mm256_cvtepi32_ps(dot_u8_i8(nibbles(b.add(4)), load(ab.qs.as_ptr())));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * ab.d), q, acc);
    }
    hsum(acc) + mins
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    assert!(w.len() >= a.len() * super::q4_k::BYTES);
    let mask = _mm256_set1_epi8(0x0F);
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (i, ab) in a.iter().enumerate() {
        let b = w.as_ptr().add(i * super::q4_k::BYTES);
        let scales = std::slice::from_raw_parts(b.add(4), 12);
        let mut sums = _mm256_setzero_si256();
        let mut msum = 0i32;
        for c in 0..4 {
            let (s1, m1) = scale_min(2 * c, scales);
            let (s2, m2) = scale_min(2 * c + 1, scales);
            msum += m1 as i32 * (ab.bsums[4 * c] as i32 + ab.bsums[4 * c + 1] as i32)
                + m2 as i32 * (ab.bsums[4 * c + 2] as i32 + ab.bsums[4 * c + 3] as i32);
            let q = _mm256_loadu_si256(b.add(16 + 32 * c) as *const __m256i);
            let lo = _mm256_and_si256(q, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);
            let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load(ab.qs.as_ptr().add(64 * c))), _mm256_set1_epi16(s1 as i16));
            let p2 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load(ab.qs.as_ptr().add(64 * c + 32))), _mm256_set1_epi16(s2 as i16));
            sums = _mm256_add_epi32(sums, _mm256_add_epi32(p1, p2));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(b) * ab.d), _mm256_cvtepi32_ps(sums), acc);
        mins += f16(b.add(2)) * ab.d * msum as f32;
    }
    hsum(acc) - mins
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q6_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    assert!(w.len() >= a.len() * super::q6_k::BYTES);
    let m4 = _mm256_set1_epi8(0x0F);
    let m2 = _mm256_set1_epi8(0x03);
    let mut acc = _mm256_setzero_ps();
    let mut corr = 0f32;
    for (i, ab) in a.iter().enumerate() {
        let b = w.as_ptr().add(i * super::q6_k::BYTES);
        let sc = b.add(192) as *const i8;
        let d = f16(b.add(208)) * ab.d;
        let mut sums = _mm256_setzero_si256();
        for n in 0..2 {
            let ql0 = _mm256_loadu_si256(b.add(64 * n) as *const __m256i);
            let ql1 = _mm256_loadu_si256(b.add(64 * n + 32) as *const __m256i);
            let qh = _mm256_loadu_si256(b.add(128 + 32 * n) as *const __m256i);
            let hb = |s: i32| -> __m256i {
                let h = match s { 0 => qh, 2 => _mm256_srli_epi16(qh, 2), 4 => _mm256_srli_epi16(qh, 4), _ => _mm256_srli_epi16(qh, 6) };
                _mm256_slli_epi16(_mm256_and_si256(h, m2), 4)
            };
            // Unsigned 6-bit values (q + 32) of the four 32-element groups of this half.
            let q = [
                _mm256_or_si256(_mm256_and_si256(ql0, m4), hb(0)),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), hb(2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), hb(4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), hb(6)),
            ];
            for (k, qk) in q.iter().enumerate() {
                let j = 8 * n + 2 * k; // first 16-element sub-block of this group
                let s = _mm256_set_m128i(_mm_set1_epi16(*sc.add(j + 1) as i16), _mm_set1_epi16(*sc.add(j) as i16));
                let p = _mm256_maddubs_epi16(*qk, load(ab.qs.as_ptr().add(128 * n + 32 * k)));
                sums = _mm256_add_epi32(sums, _mm256_madd_epi16(p, s));
            }
        }
        // Σ sc·(q+32)·a − 32·Σ sc·Σa, with Σa per sub-block from the Q8_K block sums.
        let mut c = 0i32;
        for j in 0..16 { c += *sc.add(j) as i32 * ab.bsums[j] as i32; }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sums), acc);
        corr += d * (32 * c) as f32;
    }
    hsum(acc) - corr
}

/// 32 bits → 32 bytes, 0xFF where the bit is set (llama.cpp's `bytes_from_bits_32`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bytes_from_bits(x: u32) -> __m256i {
    let shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x as i32), shuf);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_0(w: &[u8], a: &[BlockQ8]) -> f32 {
    assert!(w.len() >= a.len() * super::q5_0::BYTES);
    // llama.cpp's order (ggml_vec_dot_q5_0_q8_0): one accumulator, one FMA per block.
    let mut acc = _mm256_setzero_ps();
    for (i, ab) in a.iter().enumerate() {
        let b = w.as_ptr().add(i * super::q5_0::BYTES);
        let qh = (b.add(2) as *const u32).read_unaligned();
        // Nibble | 0xF0 where the fifth bit is clear: q − 16 as a signed byte.
        let hi = _mm256_andnot_si256(bytes_from_bits(qh), _mm256_set1_epi8(0xF0u8 as i8));
        let x = _mm256_or_si256(nibbles(b.add(6)), hi);
        let q = _mm256_cvtepi32_ps(dot_i8(x, load(ab.qs.as_ptr())));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(b) * ab.d), q, acc);
    }
    hsum(acc)
}
