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
pub(super) unsafe fn f16(p: *const u8) -> f32 {
    let h = (p as *const u16).read_unaligned() as u32;
    let v: __m128;
    std::arch::asm!("vmovd {v}, {h:e}", "vcvtph2ps {v}, {v}", h = in(reg) h, v = out(xmm_reg) v,
                    options(pure, nomem, nostack, preserves_flags));
    _mm_cvtss_f32(v)
}

/// The two f16 at `p` (Q4_1's d and m) in lanes 0 and 1, as `f16` does it.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16x2(p: *const u8) -> __m128 {
    let h = (p as *const u32).read_unaligned();
    let v: __m128;
    std::arch::asm!("vmovd {v}, {h:e}", "vcvtph2ps {v}, {v}", h = in(reg) h, v = out(xmm_reg) v,
                    options(pure, nomem, nostack, preserves_flags));
    v
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Sum of 8 × i32 (exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)))
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
unsafe fn load(p: *const i8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

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

/// llama.cpp's `ggml_vec_dot_q4_0_q8_0` and tinyBLAS order: one accumulator, one FMA per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_0(w: &[u8], a: &[BlockQ8]) -> f32 {
    assert!(w.len() >= a.len() * super::q4_0::BYTES);
    let mut acc = _mm256_setzero_ps();
    for (i, ab) in a.iter().enumerate() {
        let b = w.as_ptr().add(i * super::q4_0::BYTES);
        let x = _mm256_sub_epi8(nibbles(b.add(2)), _mm256_set1_epi8(8));
        let q = _mm256_cvtepi32_ps(dot_i8(x, load(ab.qs.as_ptr())));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(b) * ab.d), q, acc);
    }
    hsum(acc)
}

/// The order of llama.cpp's repacked Q4_0 (`ggml_gemv/gemm_q4_0_8x8_q8_0`, x86): per block the
/// exact integer dot, then one scalar FMA chain `acc = fma(isum, d·d_a, acc)` over the blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_0_repack(w: &[u8], a: &[BlockQ8]) -> f32 {
    assert!(w.len() >= a.len() * super::q4_0::BYTES);
    let mut acc = 0f32;
    for (i, ab) in a.iter().enumerate() {
        let b = w.as_ptr().add(i * super::q4_0::BYTES);
        let x = _mm256_sub_epi8(nibbles(b.add(2)), _mm256_set1_epi8(8));
        let s = hsum_i32(dot_i8(x, load(ab.qs.as_ptr())));
        acc = (s as f32).mul_add(f16(b) * ab.d, acc);
    }
    acc
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
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (i, ab) in a.iter().enumerate() {
        let b = w.as_ptr().add(i * super::q4_k::BYTES);
        let (sums, msum) = q4_k_block_lanes(b, ab);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(b) * ab.d), _mm256_cvtepi32_ps(sums), acc);
        mins += f16(b.add(2)) * ab.d * msum as f32;
    }
    hsum(acc) - mins
}

/// Integer sums of one Q4_K super-block against its Q8_K block: Σ sc·q·a and Σ m·Σa.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k_block(b: *const u8, ab: &BlockQ8K) -> (i32, i32) {
    let (sums, msum) = q4_k_block_lanes(b, ab);
    (hsum_i32(sums), msum)
}

/// `q4_k_block` with Σ sc·q·a left in its eight i32 lanes (what `dot_q4_k` converts and adds
/// lane-wise, as llama.cpp's vec_dot does).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k_block_lanes(b: *const u8, ab: &BlockQ8K) -> (__m256i, i32) {
    let mask = _mm256_set1_epi8(0x0F);
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
        let p1 =
            _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load(ab.qs.as_ptr().add(64 * c))), _mm256_set1_epi16(s1 as i16));
        let p2 = _mm256_madd_epi16(
            _mm256_maddubs_epi16(hi, load(ab.qs.as_ptr().add(64 * c + 32))),
            _mm256_set1_epi16(s2 as i16),
        );
        sums = _mm256_add_epi32(sums, _mm256_add_epi32(p1, p2));
    }
    (sums, msum)
}

/// The order of llama.cpp's repacked Q4_K (`ggml_gemv/gemm_q4_K_8x8_q8_K`, x86): two scalar FMA
/// chains over the super-blocks, `acc = fma(Σ sc·q·a, d·d_a, acc)` and
/// `acc_m = fma(Σ m·Σa, dmin·d_a, acc_m)`, then `acc − acc_m`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_k_repack(w: &[u8], a: &[BlockQ8K]) -> f32 {
    assert!(w.len() >= a.len() * super::q4_k::BYTES);
    let (mut acc, mut acc_m) = (0f32, 0f32);
    for (i, ab) in a.iter().enumerate() {
        let b = w.as_ptr().add(i * super::q4_k::BYTES);
        let (s, m) = q4_k_block(b, ab);
        acc = (s as f32).mul_add(f16(b) * ab.d, acc);
        acc_m = (m as f32).mul_add(f16(b.add(2)) * ab.d, acc_m);
    }
    acc - acc_m
}

/// The order of llama.cpp's repacked Q4_K GEMM (`ggml_gemm_q4_K_8x8_q8_K`, the input rows it
/// takes four at a time): like the GEMV but one FMA per 64 elements (two sub-blocks), i.e.
/// `acc = fma(Σ sc·q·a, d·d_a, acc)` and `acc_m = fma(Σ m·Σa, dmin·d_a, acc_m)` four times per
/// super-block, then `acc − acc_m`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_k_repack_gemm(w: &[u8], a: &[BlockQ8K]) -> f32 {
    assert!(w.len() >= a.len() * super::q4_k::BYTES);
    let mask = _mm256_set1_epi8(0x0F);
    let (mut acc, mut acc_m) = (0f32, 0f32);
    for (i, ab) in a.iter().enumerate() {
        let b = w.as_ptr().add(i * super::q4_k::BYTES);
        let (d, dmin) = (f16(b) * ab.d, f16(b.add(2)) * ab.d);
        let scales = std::slice::from_raw_parts(b.add(4), 12);
        for c in 0..4 {
            let (s1, m1) = scale_min(2 * c, scales);
            let (s2, m2) = scale_min(2 * c + 1, scales);
            let m = m1 as i32 * (ab.bsums[4 * c] as i32 + ab.bsums[4 * c + 1] as i32)
                + m2 as i32 * (ab.bsums[4 * c + 2] as i32 + ab.bsums[4 * c + 3] as i32);
            let q = _mm256_loadu_si256(b.add(16 + 32 * c) as *const __m256i);
            let lo = _mm256_and_si256(q, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);
            let p1 = _mm256_madd_epi16(
                _mm256_maddubs_epi16(lo, load(ab.qs.as_ptr().add(64 * c))),
                _mm256_set1_epi16(s1 as i16),
            );
            let p2 = _mm256_madd_epi16(
                _mm256_maddubs_epi16(hi, load(ab.qs.as_ptr().add(64 * c + 32))),
                _mm256_set1_epi16(s2 as i16),
            );
            acc = (hsum_i32(_mm256_add_epi32(p1, p2)) as f32).mul_add(d, acc);
            acc_m = (m as f32).mul_add(dmin, acc_m);
        }
    }
    acc - acc_m
}

/// The tiled K-quant matmul's order for Q4_K (taken where Q4_K is not repacked, i.e. the
/// output rows are not a multiple of 8, and a matmul has ≥ 8 rows): per super-block
/// `r = fma(−dmin, Σ m·Σa, Σ sc·q·a · d)`, then `acc = fma(r, d_a, acc)`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_k_tiled(w: &[u8], a: &[BlockQ8K]) -> f32 {
    assert!(w.len() >= a.len() * super::q4_k::BYTES);
    let mut acc = 0f32;
    for (i, ab) in a.iter().enumerate() {
        let b = w.as_ptr().add(i * super::q4_k::BYTES);
        let (s, m) = q4_k_block(b, ab);
        let r = (-f16(b.add(2))).mul_add(m as f32, s as f32 * f16(b));
        acc = r.mul_add(ab.d, acc);
    }
    acc
}

/// 8 × i32 lanes of one Q6_K super-block against its Q8_K block: Σ sc·(q+32)·a, lane l holding
/// elements 4l..4l+3 of every 32-element group (llama.cpp's lanes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_lanes(b: *const u8, ab: &BlockQ8K) -> __m256i {
    let m4 = _mm256_set1_epi8(0x0F);
    let m2 = _mm256_set1_epi8(0x03);
    let sc = b.add(192) as *const i8;
    let mut sums = _mm256_setzero_si256();
    for n in 0..2 {
        let ql0 = _mm256_loadu_si256(b.add(64 * n) as *const __m256i);
        let ql1 = _mm256_loadu_si256(b.add(64 * n + 32) as *const __m256i);
        let qh = _mm256_loadu_si256(b.add(128 + 32 * n) as *const __m256i);
        let hb = |s: i32| -> __m256i {
            let h = match s {
                0 => qh,
                2 => _mm256_srli_epi16(qh, 2),
                4 => _mm256_srli_epi16(qh, 4),
                _ => _mm256_srli_epi16(qh, 6),
            };
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
    sums
}

/// llama.cpp's `ggml_vec_dot_q6_K_q8_K` order (AVX2, also its AVX-512 build): per super-block the
/// 8 integer lanes minus 32·(sc·Σa) of sub-blocks 2l, 2l+1 in lane l, one FMA into an 8-lane
/// accumulator, hsum at the end.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q6_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    assert!(w.len() >= a.len() * super::q6_k::BYTES);
    let mut acc = _mm256_setzero_ps();
    for (i, ab) in a.iter().enumerate() {
        let b = w.as_ptr().add(i * super::q6_k::BYTES);
        let d = ab.d * f16(b.add(208));
        let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192) as *const __m128i));
        let corr = _mm256_slli_epi32(_mm256_madd_epi16(_mm256_loadu_si256(ab.bsums.as_ptr() as *const __m256i), sc), 5);
        let sums = _mm256_sub_epi32(q6_k_lanes(b, ab), corr);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sums), acc);
    }
    hsum(acc)
}

/// The order of llama.cpp's tiled K-quant matmul (`ggml-cpu/tiled`, taken for Q6_K when a matmul
/// has ≥ 8 rows; its AVX-512 VNNI microkernel as gcc compiles it): per super-block the exact
/// Σ sc·q·a, times d, then one scalar FMA chain `acc = fma(s·d, d_a, acc)`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q6_k_tiled(w: &[u8], a: &[BlockQ8K]) -> f32 {
    assert!(w.len() >= a.len() * super::q6_k::BYTES);
    let mut acc = 0f32;
    for (i, ab) in a.iter().enumerate() {
        let b = w.as_ptr().add(i * super::q6_k::BYTES);
        let sc = b.add(192) as *const i8;
        let mut c = 0i32;
        for j in 0..16 {
            c += *sc.add(j) as i32 * ab.bsums[j] as i32;
        }
        let s = hsum_i32(q6_k_lanes(b, ab)) - 32 * c;
        acc = (s as f32 * f16(b.add(208))).mul_add(ab.d, acc);
    }
    acc
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
    // One accumulator, one FMA per block: ggml_vec_dot_q5_0_q8_0 and tinyBLAS alike.
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

/// `dot_q5_0` for two rows at once (stride `rb`): two independent FMA chains, each in
/// `dot_q5_0`'s order, so the single-accumulator latency overlaps.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot2_q5_0(w: &[u8], rb: usize, a: &[BlockQ8]) -> [f32; 2] {
    assert!(w.len() >= rb + a.len() * super::q5_0::BYTES);
    let mut acc = [_mm256_setzero_ps(); 2];
    for (i, ab) in a.iter().enumerate() {
        let y = load(ab.qs.as_ptr());
        for (r, acc) in acc.iter_mut().enumerate() {
            let b = w.as_ptr().add(r * rb + i * super::q5_0::BYTES);
            let qh = (b.add(2) as *const u32).read_unaligned();
            let hi = _mm256_andnot_si256(bytes_from_bits(qh), _mm256_set1_epi8(0xF0u8 as i8));
            let x = _mm256_or_si256(nibbles(b.add(6)), hi);
            let q = _mm256_cvtepi32_ps(dot_i8(x, y));
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(b) * ab.d), q, *acc);
        }
    }
    [hsum(acc[0]), hsum(acc[1])]
}

// ---- Eight weight rows at a time: the repacked and tiled orders are one scalar FMA chain per
// output, so one row at a time waits on FMA latency. These run eight independent chains in the
// lanes of one vector (as llama.cpp's 8-column GEMV does), with the same per-lane operations
// as the one-row kernels above; `w` holds the 8 rows at stride `rb`.

/// Lane r = the sum of the 8 lanes of v[r] (exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn reduce8(v: &[__m256i; 8]) -> __m256i {
    let t0 = _mm256_hadd_epi32(v[0], v[1]);
    let t1 = _mm256_hadd_epi32(v[2], v[3]);
    let t2 = _mm256_hadd_epi32(v[4], v[5]);
    let t3 = _mm256_hadd_epi32(v[6], v[7]);
    let u0 = _mm256_hadd_epi32(t0, t1);
    let u1 = _mm256_hadd_epi32(t2, t3);
    _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31))
}

/// The f16 at byte `off` of each of the 8 rows, as f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16x8(w: *const u8, rb: usize, off: usize) -> __m256 {
    let h = |r: usize| (w.add(r * rb + off) as *const i16).read_unaligned();
    _mm256_cvtph_ps(_mm_setr_epi16(h(0), h(1), h(2), h(3), h(4), h(5), h(6), h(7)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn lanes(v: __m256) -> [f32; 8] {
    let mut o = [0f32; 8];
    _mm256_storeu_ps(o.as_mut_ptr(), v);
    o
}

/// `dot_q4_0_repack` for 8 rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot8_q4_0_repack(w: &[u8], rb: usize, a: &[BlockQ8]) -> [f32; 8] {
    assert!(w.len() >= 7 * rb + a.len() * super::q4_0::BYTES);
    let mut acc = _mm256_setzero_ps();
    let mut v = [_mm256_setzero_si256(); 8];
    for (i, ab) in a.iter().enumerate() {
        let base = w.as_ptr().add(i * super::q4_0::BYTES);
        let y = load(ab.qs.as_ptr());
        for (r, vr) in v.iter_mut().enumerate() {
            // Eight row streams at once: prefetch each a few blocks ahead.
            _mm_prefetch::<_MM_HINT_T0>(base.add(r * rb + 128) as *const i8);
            let x = _mm256_sub_epi8(nibbles(base.add(r * rb + 2)), _mm256_set1_epi8(8));
            *vr = dot_i8(x, y);
        }
        let d = _mm256_mul_ps(f16x8(base, rb, 0), _mm256_set1_ps(ab.d));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8(&v)), d, acc);
    }
    lanes(acc)
}

/// Sub-blocks 2c and 2c+1 of a Q4_K super-block: 8 lanes of Σ sc·q·a, and Σ m·Σa.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k_pair(b: *const u8, ab: &BlockQ8K, c: usize) -> (__m256i, i32) {
    let mask = _mm256_set1_epi8(0x0F);
    let scales = std::slice::from_raw_parts(b.add(4), 12);
    let (s1, m1) = scale_min(2 * c, scales);
    let (s2, m2) = scale_min(2 * c + 1, scales);
    let m = m1 as i32 * (ab.bsums[4 * c] as i32 + ab.bsums[4 * c + 1] as i32)
        + m2 as i32 * (ab.bsums[4 * c + 2] as i32 + ab.bsums[4 * c + 3] as i32);
    let q = _mm256_loadu_si256(b.add(16 + 32 * c) as *const __m256i);
    let lo = _mm256_and_si256(q, mask);
    let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);
    let p1 =
        _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load(ab.qs.as_ptr().add(64 * c))), _mm256_set1_epi16(s1 as i16));
    let p2 = _mm256_madd_epi16(
        _mm256_maddubs_epi16(hi, load(ab.qs.as_ptr().add(64 * c + 32))),
        _mm256_set1_epi16(s2 as i16),
    );
    (_mm256_add_epi32(p1, p2), m)
}

/// `dot_q4_k_repack` (`GEMM` false) or `dot_q4_k_repack_gemm` (true) for 8 rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot8_q4_k_repack<const GEMM: bool>(w: &[u8], rb: usize, a: &[BlockQ8K]) -> [f32; 8] {
    assert!(w.len() >= 7 * rb + a.len() * super::q4_k::BYTES);
    let (mut acc, mut acc_m) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut v = [_mm256_setzero_si256(); 8];
    let mut m = [0i32; 8];
    for (i, ab) in a.iter().enumerate() {
        let base = w.as_ptr().add(i * super::q4_k::BYTES);
        let da = _mm256_set1_ps(ab.d);
        let d = _mm256_mul_ps(f16x8(base, rb, 0), da);
        let dmin = _mm256_mul_ps(f16x8(base, rb, 2), da);
        if GEMM {
            for c in 0..4 {
                for r in 0..8 {
                    (v[r], m[r]) = q4_k_pair(base.add(r * rb), ab, c);
                }
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8(&v)), d, acc);
                acc_m =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256(m.as_ptr() as *const __m256i)), dmin, acc_m);
            }
        } else {
            for r in 0..8 {
                let b = base.add(r * rb);
                let (mut sv, mut sm) = q4_k_pair(b, ab, 0);
                for c in 1..4 {
                    let (pv, pm) = q4_k_pair(b, ab, c);
                    sv = _mm256_add_epi32(sv, pv);
                    sm += pm;
                }
                (v[r], m[r]) = (sv, sm);
            }
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8(&v)), d, acc);
            acc_m = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256(m.as_ptr() as *const __m256i)), dmin, acc_m);
        }
    }
    lanes(_mm256_sub_ps(acc, acc_m))
}

/// `dot_q4_k_tiled` for 8 rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot8_q4_k_tiled(w: &[u8], rb: usize, a: &[BlockQ8K]) -> [f32; 8] {
    assert!(w.len() >= 7 * rb + a.len() * super::q4_k::BYTES);
    let mut acc = _mm256_setzero_ps();
    let mut v = [_mm256_setzero_si256(); 8];
    let mut m = [0i32; 8];
    for (i, ab) in a.iter().enumerate() {
        let base = w.as_ptr().add(i * super::q4_k::BYTES);
        for r in 0..8 {
            let b = base.add(r * rb);
            let (mut sv, mut sm) = q4_k_pair(b, ab, 0);
            for c in 1..4 {
                let (pv, pm) = q4_k_pair(b, ab, c);
                sv = _mm256_add_epi32(sv, pv);
                sm += pm;
            }
            (v[r], m[r]) = (sv, sm);
        }
        let s = _mm256_mul_ps(_mm256_cvtepi32_ps(reduce8(&v)), f16x8(base, rb, 0));
        let res = _mm256_fnmadd_ps(
            f16x8(base, rb, 2),
            _mm256_cvtepi32_ps(_mm256_loadu_si256(m.as_ptr() as *const __m256i)),
            s,
        );
        acc = _mm256_fmadd_ps(res, _mm256_set1_ps(ab.d), acc);
    }
    lanes(acc)
}

/// `dot_q6_k_tiled` for 8 rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot8_q6_k_tiled(w: &[u8], rb: usize, a: &[BlockQ8K]) -> [f32; 8] {
    assert!(w.len() >= 7 * rb + a.len() * super::q6_k::BYTES);
    let mut acc = _mm256_setzero_ps();
    let mut v = [_mm256_setzero_si256(); 8];
    let mut c = [0i32; 8];
    for (i, ab) in a.iter().enumerate() {
        let base = w.as_ptr().add(i * super::q6_k::BYTES);
        for r in 0..8 {
            let b = base.add(r * rb);
            v[r] = q6_k_lanes(b, ab);
            let sc = b.add(192) as *const i8;
            let mut cr = 0i32;
            for j in 0..16 {
                cr += *sc.add(j) as i32 * ab.bsums[j] as i32;
            }
            c[r] = cr;
        }
        let s = _mm256_sub_epi32(reduce8(&v), _mm256_slli_epi32(_mm256_loadu_si256(c.as_ptr() as *const __m256i), 5));
        let res = _mm256_mul_ps(_mm256_cvtepi32_ps(s), f16x8(base, rb, 208));
        acc = _mm256_fmadd_ps(res, _mm256_set1_ps(ab.d), acc);
    }
    lanes(acc)
}

/// `dot8_q4_k_repack::<true>` (llama.cpp's `ggml_gemm_q4_K_8x8_q8_K` order) for four activation
/// rows at once: out[j] = the 8 rows · a[j], each bit-identical to the one-row kernel. The
/// weights' nibbles and 6-bit scales are unpacked once for the four rows (they were the larger
/// part of the one-row kernel's integer work); the float operations per output are the same.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot8x4_q4_k_repack_gemm(w: &[u8], rb: usize, a: [&[BlockQ8K]; 4]) -> [[f32; 8]; 4] {
    const B: usize = super::q4_k::BYTES;
    let nb = a[0].len();
    assert!(w.len() >= 7 * rb + nb * B && a.iter().all(|x| x.len() == nb), "q4_k 8x4: {} bytes", w.len());
    let mask = _mm256_set1_epi8(0x0F);
    let (mut acc, mut acc_m) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
    let mut v = [[_mm256_setzero_si256(); 8]; 4];
    let mut m = [[0i32; 8]; 4];
    for i in 0..nb {
        let base = w.as_ptr().add(i * B);
        let (dw, dminw) = (f16x8(base, rb, 0), f16x8(base, rb, 2));
        for c in 0..4 {
            for r in 0..8 {
                let b = base.add(r * rb);
                let scales = std::slice::from_raw_parts(b.add(4), 12);
                let (s1, m1) = scale_min(2 * c, scales);
                let (s2, m2) = scale_min(2 * c + 1, scales);
                let q = _mm256_loadu_si256(b.add(16 + 32 * c) as *const __m256i);
                let lo = _mm256_and_si256(q, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);
                let (s1v, s2v) = (_mm256_set1_epi16(s1 as i16), _mm256_set1_epi16(s2 as i16));
                for j in 0..4 {
                    let ab = a[j].get_unchecked(i);
                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load(ab.qs.as_ptr().add(64 * c))), s1v);
                    let p2 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load(ab.qs.as_ptr().add(64 * c + 32))), s2v);
                    v[j][r] = _mm256_add_epi32(p1, p2);
                    m[j][r] = m1 as i32 * (ab.bsums[4 * c] as i32 + ab.bsums[4 * c + 1] as i32)
                        + m2 as i32 * (ab.bsums[4 * c + 2] as i32 + ab.bsums[4 * c + 3] as i32);
                }
            }
            for j in 0..4 {
                let da = _mm256_set1_ps(a[j].get_unchecked(i).d);
                acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8(&v[j])), _mm256_mul_ps(dw, da), acc[j]);
                let mj = _mm256_cvtepi32_ps(_mm256_loadu_si256(m[j].as_ptr() as *const __m256i));
                acc_m[j] = _mm256_fmadd_ps(mj, _mm256_mul_ps(dminw, da), acc_m[j]);
            }
        }
    }
    let mut out = [[0f32; 8]; 4];
    for j in 0..4 {
        out[j] = lanes(_mm256_sub_ps(acc[j], acc_m[j]));
    }
    out
}

/// `dot8_q6_k_tiled` for four activation rows at once: out[j] = the 8 rows · a[j], each
/// bit-identical to the one-row kernel (the same integer lanes, computed with each weight
/// group's 6-bit values and scales unpacked once for the four rows; the same float operations).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot8x4_q6_k_tiled(w: &[u8], rb: usize, a: [&[BlockQ8K]; 4]) -> [[f32; 8]; 4] {
    const B: usize = super::q6_k::BYTES;
    let nb = a[0].len();
    assert!(w.len() >= 7 * rb + nb * B && a.iter().all(|x| x.len() == nb), "q6_k 8x4: {} bytes", w.len());
    let (m4, m2) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x03));
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut v = [[_mm256_setzero_si256(); 8]; 4];
    let mut corr = [[0i32; 8]; 4];
    for i in 0..nb {
        let base = w.as_ptr().add(i * B);
        for r in 0..8 {
            let b = base.add(r * rb);
            let sc = b.add(192) as *const i8;
            let mut sums = [_mm256_setzero_si256(); 4];
            for n in 0..2 {
                let ql0 = _mm256_loadu_si256(b.add(64 * n) as *const __m256i);
                let ql1 = _mm256_loadu_si256(b.add(64 * n + 32) as *const __m256i);
                let qh = _mm256_loadu_si256(b.add(128 + 32 * n) as *const __m256i);
                let hb0 = _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4);
                let hb2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4);
                let hb4 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4);
                let hb6 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4);
                // Unsigned 6-bit values (q + 32) of the four 32-element groups of this half.
                let q = [
                    _mm256_or_si256(_mm256_and_si256(ql0, m4), hb0),
                    _mm256_or_si256(_mm256_and_si256(ql1, m4), hb2),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), hb4),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), hb6),
                ];
                for (k, qk) in q.iter().enumerate() {
                    let s = 8 * n + 2 * k;
                    let sv = _mm256_set_m128i(_mm_set1_epi16(*sc.add(s + 1) as i16), _mm_set1_epi16(*sc.add(s) as i16));
                    for j in 0..4 {
                        let y = load(a[j].get_unchecked(i).qs.as_ptr().add(128 * n + 32 * k));
                        sums[j] = _mm256_add_epi32(sums[j], _mm256_madd_epi16(_mm256_maddubs_epi16(*qk, y), sv));
                    }
                }
            }
            // Σ sc·bsums over the 16 sub-blocks (exact integers, any order).
            let scv = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc as *const __m128i));
            for j in 0..4 {
                v[j][r] = sums[j];
                let bs = _mm256_loadu_si256(a[j].get_unchecked(i).bsums.as_ptr() as *const __m256i);
                corr[j][r] = hsum_i32(_mm256_madd_epi16(scv, bs));
            }
        }
        let dw = f16x8(base, rb, 208);
        for j in 0..4 {
            let c = _mm256_slli_epi32(_mm256_loadu_si256(corr[j].as_ptr() as *const __m256i), 5);
            let s = _mm256_sub_epi32(reduce8(&v[j]), c);
            let res = _mm256_mul_ps(_mm256_cvtepi32_ps(s), dw);
            acc[j] = _mm256_fmadd_ps(res, _mm256_set1_ps(a[j].get_unchecked(i).d), acc[j]);
        }
    }
    let mut out = [[0f32; 8]; 4];
    for j in 0..4 {
        out[j] = lanes(acc[j]);
    }
    out
}
