//! Activation rows quantised to 8 bits for the integer dot products: Q8_0 (scale), Q8_1
//! (scale and scale·Σq, for formats with a min) over 32 elements, and Q8_K (f32 scale and
//! 16-element sums) over 256. These never reach a file, so they are plain structs; their
//! rounding follows what llama.cpp's x86 build runs (`quantize_row_q8_0/q8_1`: id = 127/max,
//! round half to even; `quantize_row_q8_K_ref`), with scales rounded to f16 where llama.cpp
//! stores them as f16. On aarch64 with NEON, Q8_0/Q8_1 follow llama.cpp's ARM build instead
//! (`neon::quantize_q8`: id = 1/d); Q8_K is `quantize_row_q8_K_ref` on every CPU, as in llama.cpp.

use super::{nearest_int, round_f16};

#[derive(Clone, Copy, Debug)]
pub struct BlockQ8 {
    pub d: f32,
    /// d · Σ qs (Q8_1 only; llama.cpp stores it as f16).
    pub s: f32,
    pub qs: [i8; 32],
}

#[derive(Clone, Copy, Debug)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

/// Q8_0 / Q8_1 blocks of a row (len a multiple of 32).
pub fn quantize_q8(x: &[f32]) -> Vec<BlockQ8> {
    #[cfg(target_arch = "x86_64")]
    if matches!(super::simd::Level::detect(), super::simd::Level::Avx2 | super::simd::Level::Avx512) {
        // SAFETY: checked by run-time detection. Same code, rounding done by `vroundps`.
        return unsafe { quantize_q8_avx2(x) };
    }
    #[cfg(target_arch = "aarch64")]
    if super::simd::Level::detect() != super::simd::Level::Scalar {
        // llama.cpp's ARM quantiser: multiplies by 1/d rather than 127/max.
        return super::neon::quantize_q8(x);
    }
    quantize_q8_generic(x)
}

/// `quantize_q8_generic` in AVX2 (llama.cpp's x86 `quantize_row_q8_0/q8_1`): the same max
/// (exact in any order), the same product by id, rounded half to even by `vroundps`, and the
/// exact integer sum; 8 lanes at once instead of the compiler's scalar loop (which cost ten
/// times llama.cpp's quantiser in decode).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,sse4.1")]
pub(super) unsafe fn quantize_q8_avx2(x: &[f32]) -> Vec<BlockQ8> {
    use std::arch::x86_64::*;
    let mut out = Vec::with_capacity(x.len() / 32);
    let sign = _mm256_set1_ps(-0.0);
    // packs within 128-bit lanes leaves the dwords of the four vectors as a0 b0 c0 d0 a1 b1 c1 d1.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for b in x.chunks_exact(32) {
        let p = b.as_ptr();
        let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))];
        let m = _mm256_max_ps(
            _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
            _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
        );
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let (q0, q1, q2, q3) = (round_q(v[0], id), round_q(v[1], id), round_q(v[2], id), round_q(v[3], id));
        let s8 = _mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3));
        let s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
        let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b01_00_11_10>(s4));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(s4, _mm_shuffle_epi32::<0b10_11_00_01>(s4)));
        let packed = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
        let mut qs = [0i8; 32];
        _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, _mm256_permutevar8x32_epi32(packed, order));
        out.push(BlockQ8 { d: round_f16(d), s: round_f16(sum as f32 * d), qs });
    }
    out
}

/// v·id rounded half to even, as i32 (a function, not a closure, so that it has the features).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c,sse4.1")]
unsafe fn round_q(v: std::arch::x86_64::__m256, id: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(v, id)))
}

#[inline(always)]
pub(super) fn quantize_q8_generic(x: &[f32]) -> Vec<BlockQ8> {
    // Plain loops, no closures: a closure would not inherit the caller's target features.
    let mut out = Vec::with_capacity(x.len() / 32);
    for b in x.chunks_exact(32) {
        let mut amax = 0f32;
        for &v in b {
            amax = amax.max(v.abs());
        }
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut qs = [0i8; 32];
        let mut sum = 0i32;
        for j in 0..32 {
            qs[j] = (b[j] * id).round_ties_even() as i8;
            sum += qs[j] as i32;
        }
        out.push(BlockQ8 { d: round_f16(d), s: round_f16(sum as f32 * d), qs });
    }
    out
}

/// Q8_K blocks of a row (len a multiple of 256): `quantize_row_q8_K_ref`, iscale = −127/max
/// where max is the first element of largest |x|.
pub fn quantize_q8k(x: &[f32]) -> Vec<BlockQ8K> {
    quantize_q8k_with(x, false)
}

/// Q8_K as llama.cpp's x86 `ggml_quantize_mat_q8_K_4x8` makes it for the rows that its
/// repacked Q4_K GEMM takes four at a time: the same values as `quantize_q8k` except where +amax
/// and −amax both occur and −amax comes first: the ref takes the sign of the first, the 4x8
/// quantiser makes iscale negative whenever some element equals +amax.
pub fn quantize_q8k_4x8(x: &[f32]) -> Vec<BlockQ8K> {
    quantize_q8k_with(x, true)
}

fn quantize_q8k_with(x: &[f32], positive_wins: bool) -> Vec<BlockQ8K> {
    #[cfg(target_arch = "x86_64")]
    if super::simd::Level::detect() != super::simd::Level::Scalar {
        // SAFETY: checked by run-time detection. Same code, rounding by `vroundss` instead of
        // a libm `rintf` call.
        return unsafe { quantize_q8k_sse41(x, positive_wins) };
    }
    quantize_q8k_generic(x, positive_wins)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,sse4.1")]
unsafe fn quantize_q8k_sse41(x: &[f32], positive_wins: bool) -> Vec<BlockQ8K> {
    quantize_q8k_generic(x, positive_wins)
}

#[inline(always)]
fn quantize_q8k_generic(x: &[f32], positive_wins: bool) -> Vec<BlockQ8K> {
    // Plain loops (a closure would not inherit the caller's target features).
    let mut out = Vec::with_capacity(x.len() / 256);
    for b in x.chunks_exact(256) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in b {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let mut blk = BlockQ8K { d: 0.0, qs: [0; 256], bsums: [0; 16] };
        if amax == 0.0 {
            out.push(blk);
            continue;
        }
        if positive_wins && b.contains(&amax) {
            max = amax;
        }
        let iscale = -127.0 / max;
        for j in 0..256 {
            blk.qs[j] = nearest_int(iscale * b[j]).min(127) as i8;
        }
        for s in 0..16 {
            let mut t = 0i16;
            for j in 0..16 {
                t += blk.qs[16 * s + j] as i16;
            }
            blk.bsums[s] = t;
        }
        blk.d = 1.0 / iscale;
        out.push(blk);
    }
    out
}
