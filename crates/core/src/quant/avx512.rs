//! AVX-512 (F/BW/VL + VNNI) dot products of quantised weight rows against 8-bit activation
//! rows. The float operations are `avx2.rs`'s, which are llama.cpp's (one 8-lane accumulator per
//! row, one FMA per block, `hsum_float_8`), so every result is bit-identical to the AVX2 kernel
//! and to llama.cpp's AVX-512 build, whose `quants.c` runs the same AVX2 code with
//! `_mm256_dpbusd_epi32` in `mul_sum_us8_pairs_float`. What is faster here:
//!
//! - `R` weight rows per pass (`dot_*::<R>` returns R dots): each row keeps its own accumulator
//!   and its own FMA chain in llama.cpp's order, but the R chains are independent, so the
//!   4-cycle FMA latency that bounds a one-row loop is hidden, and each activation block is
//!   loaded once for R rows.
//! - VNNI `vpdpbusd` (u8 × i8, four products per i32 lane) in place of `maddubs` + `madd`, and
//!   signed weights made unsigned by an offset whose correction (offset · Σ of the four
//!   activation bytes of the lane) is computed once per activation block and used as the
//!   accumulator's start value. Every i32 lane holds exactly the sum it holds in the AVX2 kernel
//!   (integer sums are exact and the lanes cover the same four bytes), so nothing in the float
//!   part changes.
//! - Q5_0's fifth bits by an AVX-512BW mask (`kmov` + masked add) instead of a byte shuffle.
//! - Q4_K/Q6_K: the integer work of two 32-element groups in one 512-bit register; the two
//!   halves are added at the end into the lanes the AVX2 kernel sums (again exact). Q6_K's
//!   −32 offset leaves the integer lanes before the FMA, as in llama.cpp's vec_dot.
//! - The repacked Q4_K GEMV (`dot8_q4_k_repack`, eight rows in the eight lanes, llama.cpp's
//!   `ggml_gemv_q4_K_8x8_q8_K` order) on the same 512-bit unpacking, read in memory order.

use super::act::{BlockQ8, BlockQ8K};
use std::arch::x86_64::*;

// The f16 scale loads (off the FMA chain: see `avx2::f16`) and llama.cpp's `hsum_float_8`
// are the AVX2 kernels' own: the same operations, inlined here under the wider features.
use super::avx2::{f16, f16x2, f16x8, hsum, lanes, reduce8};

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn load(p: *const i8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// −c · (sum of the four activation bytes of each i32 lane): the start value that turns
/// `dpbusd(start, x + c, y)` into Σ x·y per lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn offset_start(c: u8, y: __m256i) -> __m256i {
    let z = _mm256_setzero_si256();
    _mm256_sub_epi32(z, _mm256_dpbusd_epi32(z, _mm256_set1_epi8(c as i8), y))
}

/// 16 packed bytes → 32 values: low nibbles (elements 0..16), then high nibbles (16..32).
/// The bytes broadcast to both halves by the load, the high half shifted by `vpsrlvq`: one
/// operation fewer than shift + insert.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let t = _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i));
    _mm256_and_si256(_mm256_srlv_epi64(t, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0F))
}

/// `_mm256_set1_ps(f16(p) * da)` with `da` = set1(d_a): the same product in every lane, as
/// `vpbroadcastw` from memory + `vcvtph2ps` + `vmulps` (the scalar route is a load, `vmovd`,
/// convert, `vmulss` and `vbroadcastss`: two vector operations more per block and row).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn scale8(p: *const u8, da: __m256) -> __m256 {
    _mm256_mul_ps(_mm256_cvtph_ps(_mm_set1_epi16((p as *const i16).read_unaligned())), da)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn finish<const R: usize>(acc: &[__m256; R]) -> [f32; R] {
    let mut out = [0f32; R];
    for r in 0..R {
        out[r] = hsum(acc[r]);
    }
    out
}

/// Checks that `w` holds R rows of `rb` bytes, each at least `need` bytes of blocks.
#[inline(always)]
fn check<const R: usize>(w: &[u8], rb: usize, need: usize) {
    assert!(
        R >= 1 && rb >= need && w.len() >= (R - 1) * rb + need,
        "{R} rows of {rb} bytes: {} bytes given, {need} per row needed",
        w.len()
    );
}

/// R rows of `avx2::dot_q8_0` (llama.cpp's `ggml_vec_dot_q8_0_q8_0`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_q8_0<const R: usize>(w: &[u8], rb: usize, a: &[BlockQ8]) -> [f32; R] {
    const B: usize = super::q8_0::BYTES;
    check::<R>(w, rb, a.len() * B);
    let flip = _mm256_set1_epi8(0x80u8 as i8);
    let mut acc = [_mm256_setzero_ps(); R];
    for (i, ab) in a.iter().enumerate() {
        let y = load(ab.qs.as_ptr());
        let start = offset_start(0x80, y);
        let da = _mm256_set1_ps(ab.d);
        for r in 0..R {
            let b = w.as_ptr().add(r * rb + i * B);
            // x + 128 as unsigned bytes.
            let x = _mm256_xor_si256(load(b.add(2) as *const i8), flip);
            let q = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(start, x, y));
            acc[r] = _mm256_fmadd_ps(scale8(b, da), q, acc[r]);
        }
    }
    finish(&acc)
}

/// R rows of `avx2::dot_q4_0` (llama.cpp's `ggml_vec_dot_q4_0_q8_0`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_q4_0<const R: usize>(w: &[u8], rb: usize, a: &[BlockQ8]) -> [f32; R] {
    const B: usize = super::q4_0::BYTES;
    check::<R>(w, rb, a.len() * B);
    let mut acc = [_mm256_setzero_ps(); R];
    for (i, ab) in a.iter().enumerate() {
        let y = load(ab.qs.as_ptr());
        // The nibbles are q + 8.
        let start = offset_start(8, y);
        let da = _mm256_set1_ps(ab.d);
        for r in 0..R {
            let b = w.as_ptr().add(r * rb + i * B);
            let q = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(start, nibbles(b.add(2)), y));
            acc[r] = _mm256_fmadd_ps(scale8(b, da), q, acc[r]);
        }
    }
    finish(&acc)
}

/// R rows of `avx2::dot_q4_1` (llama.cpp's `ggml_vec_dot_q4_1_q8_1`: the mins summed apart).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_q4_1<const R: usize>(w: &[u8], rb: usize, a: &[BlockQ8]) -> [f32; R] {
    const B: usize = super::q4_1::BYTES;
    check::<R>(w, rb, a.len() * B);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut mins = [0f32; R];
    for (i, ab) in a.iter().enumerate() {
        let y = load(ab.qs.as_ptr());
        for r in 0..R {
            let b = w.as_ptr().add(r * rb + i * B);
            let dm = f16x2(b);
            let (d, m) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
            mins[r] += m * ab.s;
            let q = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), nibbles(b.add(4)), y));
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * ab.d), q, acc[r]);
        }
    }
    let mut out = finish(&acc);
    for r in 0..R {
        out[r] += mins[r];
    }
    out
}

/// R rows of `avx2::dot_q5_0` (llama.cpp's `ggml_vec_dot_q5_0_q8_0`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_q5_0<const R: usize>(w: &[u8], rb: usize, a: &[BlockQ8]) -> [f32; R] {
    const B: usize = super::q5_0::BYTES;
    check::<R>(w, rb, a.len() * B);
    let sixteen = _mm256_set1_epi8(16);
    let mut acc = [_mm256_setzero_ps(); R];
    for (i, ab) in a.iter().enumerate() {
        let y = load(ab.qs.as_ptr());
        // The 5-bit values are q + 16.
        let start = offset_start(16, y);
        let da = _mm256_set1_ps(ab.d);
        for r in 0..R {
            let b = w.as_ptr().add(r * rb + i * B);
            let qh = (b.add(2) as *const u32).read_unaligned();
            let nib = nibbles(b.add(6));
            // nib + 16 where the bit is set: one merge-masked `vpaddb` (LLVM makes the
            // intrinsic an or and a masked move, two operations).
            let mut u = nib;
            std::arch::asm!("vpaddb {u}{{{k}}}, {u}, {s}", u = inout(ymm_reg) u, k = in(kreg) qh, s = in(ymm_reg) sixteen,
                            options(pure, nomem, nostack, preserves_flags));
            let q = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(start, u, y));
            acc[r] = _mm256_fmadd_ps(scale8(b, da), q, acc[r]);
        }
    }
    finish(&acc)
}

/// Σ of the four i32 lanes (integers: any order).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn hsum_i32x4(v: __m128i) -> i32 {
    let v = _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
    _mm_cvtsi128_si32(_mm_add_epi32(v, _mm_shuffle_epi32::<1>(v)))
}

/// 256 activation bytes as four 512-bit vectors. (Plain code: the closure of
/// `std::array::from_fn` would be a call without this function's target features.)
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn load4(p: *const i8) -> [__m512i; 4] {
    let l = |o: usize| _mm512_loadu_si512(p.add(64 * o) as *const _);
    [l(0), l(1), l(2), l(3)]
}

/// `permutexvar_epi16` indices for four vectors: vector v, element e picks scale
/// `per_vec · v + e / run` (each scale repeated over `run` i16 lanes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn spread_idx(run: usize, per_vec: usize) -> [__m512i; 4] {
    let mut out = [_mm512_setzero_si512(); 4];
    for (v, o) in out.iter_mut().enumerate() {
        let mut e = [0i16; 32];
        for (k, x) in e.iter_mut().enumerate() {
            *x = (per_vec * v + k / run) as i16;
        }
        *o = _mm512_loadu_si512(e.as_ptr() as *const _);
    }
    out
}

/// The four i32 lanes of eight added pairwise (lane l + lane l+4).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn fold256(v: __m256i) -> __m128i {
    _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1))
}

/// The eight i32 lanes of 16 lanes added pairwise (lane l + lane l+8).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn fold(v: __m512i) -> __m256i {
    _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1))
}

/// R rows of `avx2::dot_q4_k`, one row after another (one FMA per 256 elements: no latency
/// to hide, and a loop over R would keep the accumulators on the stack). Scales and mins
/// unpacked as llama.cpp's AVX2 kernel does (the `utmp` shuffle: eight 6-bit scales, then eight
/// 6-bit mins, as bytes), the mins' dot with the Q8_K block sums by `madd` (exact integers, the
/// same msum as `scale_min` gives).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_q4_k<const R: usize>(w: &[u8], rb: usize, a: &[BlockQ8K]) -> [f32; R] {
    check::<R>(w, rb, a.len() * super::q4_k::BYTES);
    // Chunk c's scale vector: scale 2c in the low 256 bits, 2c+1 in the high (as i16).
    let idx = spread_idx(16, 2);
    let mut out = [0f32; R];
    for (r, o) in out.iter_mut().enumerate() {
        *o = row_q4_k(w.as_ptr().add(r * rb), a, &idx);
    }
    out
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn row_q4_k(w: *const u8, a: &[BlockQ8K], idx: &[__m512i; 4]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (i, ab) in a.iter().enumerate() {
        let b = w.add(i * super::q4_k::BYTES);
        let (sums, mm) = q4_k_super_block(b, &load4(ab.qs.as_ptr()), q8k_sub_sums(ab), idx);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(b) * ab.d), _mm256_cvtepi32_ps(fold(sums)), acc);
        mins += f16(b.add(2)) * ab.d * hsum_i32x4(mm) as f32;
    }
    hsum(acc) - mins
}

/// Block sums of the eight 32-element sub-blocks of a Q8_K block (pairs of its 16-element
/// sums; at most 2·16·128, so exact in i16).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8k_sub_sums(ab: &BlockQ8K) -> __m128i {
    _mm_hadd_epi16(
        _mm_loadu_si128(ab.bsums.as_ptr() as *const __m128i),
        _mm_loadu_si128(ab.bsums.as_ptr().add(8) as *const __m128i),
    )
}

/// The integer sums of one Q4_K super-block `b` against its Q8_K block (`y` = `load4` of its
/// values, `bs` = `q8k_sub_sums`): Σ sc·q·a in 16 i32 lanes, whose `fold` is exactly
/// `avx2::q4_k_block_lanes`'s eight lanes, and Σ m·Σa per 64-element chunk c in lane c.
/// Scales and mins unpacked as llama.cpp's AVX2 kernel does (the `utmp` shuffle: eight 6-bit
/// scales, then eight 6-bit mins, as bytes); the mins' dot with the block sums by `madd`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4_k_super_block(b: *const u8, y: &[__m512i; 4], bs: __m128i, idx: &[__m512i; 4]) -> (__m512i, __m128i) {
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;
    let mask = _mm256_set1_epi8(0x0F);
    // In registers: through a stack array, the 16-byte reload of smaller stores is a
    // failed store-to-load forward.
    let rd = |o: usize| (b.add(4 + o) as *const u32).read_unaligned();
    let (u0, u1, u2) = (rd(0), rd(4), rd(8));
    let su = _mm_set_epi32(
        (((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4)) as i32,
        (u1 & KMASK1) as i32,
        ((u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4)) as i32,
        (u0 & KMASK1) as i32,
    );
    let sc16 = _mm512_castsi128_si512(_mm_cvtepu8_epi16(su));
    let mm = _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_unpackhi_epi64(su, su)), bs);
    let mut sums = _mm512_setzero_si512();
    // Chunk c: elements 64c..64c+64, low nibbles (sub-block 2c) then high (2c+1).
    for c in 0..4 {
        let q = _mm256_loadu_si256(b.add(16 + 32 * c) as *const __m256i);
        let lo = _mm256_and_si256(q, mask);
        let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);
        let u = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        let s = _mm512_permutexvar_epi16(idx[c], sc16);
        sums = _mm512_add_epi32(sums, _mm512_madd_epi16(_mm512_maddubs_epi16(u, y[c]), s));
    }
    (sums, mm)
}

/// `avx2::dot8_q4_k_repack::<false>` (llama.cpp's repacked Q4_K GEMV, `ggml_gemv_q4_K_8x8_q8_K`)
/// for the 8 rows of `w` at stride `rb`: the same float operations lane for lane (d and dmin
/// times d_a, one FMA each per super-block into the 8-lane accumulators, acc − acc_m), on the
/// same exact integers Σ sc·q·a and Σ m·Σa per row and super-block, which the 512-bit unpacking
/// (`q4_k_super_block`) computes with fewer instructions than the AVX2 kernel's scalar scales.
///
/// The integer sums are taken row by row over up to `CHUNK` super-blocks, so the weights are
/// read in memory order: a super-block across the eight rows would be eight streams of a few
/// cache lines each (864 bytes for 1536 columns), too short for the hardware prefetcher, 8 GB/s
/// from memory against 22 in one stream.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot8_q4_k_repack(w: &[u8], rb: usize, a: &[BlockQ8K]) -> [f32; 8] {
    const B: usize = super::q4_k::BYTES;
    const CHUNK: usize = 8;
    check::<8>(w, rb, a.len() * B);
    let idx = spread_idx(16, 2);
    let (mut acc, mut acc_m) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    // v[k][r]: super-block c0 + k of row r, its four partial Σ sc·q·a (low half) and four
    // chunk Σ m·Σa (high half).
    let mut v = [[_mm256_setzero_si256(); 8]; CHUNK];
    for c0 in (0..a.len()).step_by(CHUNK) {
        let blocks = &a[c0..(c0 + CHUNK).min(a.len())];
        for r in 0..8 {
            let row = w.as_ptr().add(r * rb + c0 * B);
            for (k, ab) in blocks.iter().enumerate() {
                let (sums, mm) = q4_k_super_block(row.add(k * B), &load4(ab.qs.as_ptr()), q8k_sub_sums(ab), &idx);
                v[k][r] = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(fold256(fold(sums))), mm);
            }
        }
        for (k, ab) in blocks.iter().enumerate() {
            let v = &v[k];
            // hadd within 128-bit halves: u0 = [Σ of rows 0..4 | Σm of rows 0..4], u1 for rows 4..8.
            let u0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
            let u1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
            let isum = _mm256_permute2x128_si256::<0x20>(u0, u1);
            let msum = _mm256_permute2x128_si256::<0x31>(u0, u1);
            let base = w.as_ptr().add((c0 + k) * B);
            let da = _mm256_set1_ps(ab.d);
            let d = _mm256_mul_ps(f16x8(base, rb, 0), da);
            let dmin = _mm256_mul_ps(f16x8(base, rb, 2), da);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), d, acc);
            acc_m = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), dmin, acc_m);
        }
    }
    lanes(_mm256_sub_ps(acc, acc_m))
}

/// R rows of `avx2::dot_q6_k`, one row after another (as `dot_q4_k`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_q6_k<const R: usize>(w: &[u8], rb: usize, a: &[BlockQ8K]) -> [f32; R] {
    check::<R>(w, rb, a.len() * super::q6_k::BYTES);
    // Each 128-bit lane L of a pair's scale vector holds scale 4p+L (as eight i16).
    let idx = spread_idx(8, 4);
    let mut out = [0f32; R];
    for (r, o) in out.iter_mut().enumerate() {
        *o = row_q6_k(w.as_ptr().add(r * rb), a, &idx);
    }
    out
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn row_q6_k(w: *const u8, a: &[BlockQ8K], idx: &[__m512i; 4]) -> f32 {
    const B: usize = super::q6_k::BYTES;
    let m4 = _mm512_set1_epi8(0x0F);
    let m2 = _mm512_set1_epi8(0x03);
    let mut acc = _mm256_setzero_ps();
    for (i, ab) in a.iter().enumerate() {
        let b = w.add(i * B);
        // Pair p: groups 2p, 2p+1 (64 elements at 64p).
        let y = load4(ab.qs.as_ptr());
        let bsums = _mm256_loadu_si256(ab.bsums.as_ptr() as *const __m256i);
        let sc = b.add(192) as *const i8;
        let d = f16(b.add(208)) * ab.d;
        let sc16 = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128(sc as *const __m128i)));
        let mut sums = _mm512_setzero_si512();
        for n in 0..2 {
            // ql of groups 4n, 4n+1 (low nibbles) and 4n+2, 4n+3 (high nibbles): 64 bytes.
            let ql = _mm512_loadu_si512(b.add(64 * n) as *const _);
            let qh = _mm256_loadu_si256(b.add(128 + 32 * n) as *const __m256i);
            // Bits of groups (k, k+1) at shifts (2k, 2k+2).
            let qh01 = _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1);
            let qh23 = _mm512_srli_epi16(qh01, 4);
            let u01 = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_slli_epi16(_mm512_and_si512(qh01, m2), 4));
            let u23 = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                _mm512_slli_epi16(_mm512_and_si512(qh23, m2), 4),
            );
            for (p, u) in [(2 * n, u01), (2 * n + 1, u23)] {
                let s = _mm512_permutexvar_epi16(idx[p], sc16);
                sums = _mm512_add_epi32(sums, _mm512_madd_epi16(_mm512_maddubs_epi16(u, y[p]), s));
            }
        }
        // Σ sc·(q+32)·a − 32·Σ sc·Σa in the integer lanes, as llama.cpp's AVX2 kernel does:
        // lane l less 32·(sc·Σa) of sub-blocks 2l, 2l+1 (Σa from the Q8_K block sums). The
        // lanes are `avx2::q6_k_lanes`'s exactly, so the conversion and FMA see the same values.
        let corr = _mm256_slli_epi32(_mm256_madd_epi16(bsums, _mm512_castsi512_si256(sc16)), 5);
        let lanes = _mm256_sub_epi32(fold(sums), corr);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes), acc);
    }
    hsum(acc)
}

// ---- Prefill: eight weight rows × four activation rows. The repacked Q4_K GEMM and the tiled
// Q6_K sum in llama.cpp's orders (`avx2::dot8x4_q4_k_repack_gemm`, `avx2::dot8x4_q6_k_tiled`):
// their float operations per output are kept lane for lane; only the exact integer sums under
// them are computed on 512-bit vectors (a row's 64-element chunk, or two 32-element groups, per
// register, scales spread by `vpermw`, the Σ m·Σa and −32 corrections as vectors over the rows).

/// The eight 6-bit scales (i16 lanes 0..8 of the result) and the eight 6-bit mins (as u8 in
/// the high 64 bits of the second value) of Q4_K super-block `b`: llama.cpp's `utmp` shuffle.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4_k_scales_mins(b: *const u8) -> (__m512i, __m128i) {
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;
    let rd = |o: usize| (b.add(4 + o) as *const u32).read_unaligned();
    let (u0, u1, u2) = (rd(0), rd(4), rd(8));
    let su = _mm_set_epi32(
        (((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4)) as i32,
        (u1 & KMASK1) as i32,
        ((u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4)) as i32,
        (u0 & KMASK1) as i32,
    );
    (_mm512_castsi128_si512(_mm_cvtepu8_epi16(su)), su)
}

/// `avx2::dot8x4_q4_k_repack_gemm` (llama.cpp's `ggml_gemm_q4_K_8x8_q8_K` order: per 64-element
/// chunk c, `acc = fma(Σ sc·q·a, d·d_a, acc)` and `acc_m = fma(Σ m·Σa, dmin·d_a, acc_m)`, then
/// acc − acc_m) with the integer sums on 512-bit vectors: bit-identical (tested).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot8x4_q4_k_repack_gemm(w: &[u8], rb: usize, a: [&[BlockQ8K]; 4]) -> [[f32; 8]; 4] {
    const B: usize = super::q4_k::BYTES;
    let nb = a[0].len();
    assert!(w.len() >= 7 * rb + nb * B && a.iter().all(|x| x.len() == nb), "q4_k 8x4: {} bytes", w.len());
    let mask = _mm256_set1_epi8(0x0F);
    let idx = spread_idx(16, 2);
    // Σ m·Σa of rows 0..8 for chunks (0, 1) and (2, 3): lanes 4r + c of [rows 0..4 | rows 4..8]
    // regathered as [chunk c: rows 0..8 | chunk c+1: rows 0..8].
    let g01 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
    let g23 = _mm512_add_epi32(g01, _mm512_set1_epi32(2));
    let (mut acc, mut acc_m) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
    let mut sc = [_mm512_setzero_si512(); 8];
    let mut v = [[_mm256_setzero_si256(); 8]; 4];
    for i in 0..nb {
        let base = w.as_ptr().add(i * B);
        let (dw, dminw) = (f16x8(base, rb, 0), f16x8(base, rb, 2));
        let ab = [a[0].get_unchecked(i), a[1].get_unchecked(i), a[2].get_unchecked(i), a[3].get_unchecked(i)];
        let bs = [q8k_sub_sums(ab[0]), q8k_sub_sums(ab[1]), q8k_sub_sums(ab[2]), q8k_sub_sums(ab[3])];
        // mm[j]: Σ m·Σa per (row, chunk), lanes 4r + c over two vectors (rows 0..4, 4..8).
        let mut mm = [[_mm512_setzero_si512(); 2]; 4];
        for r in 0..8 {
            let (s16, su) = q4_k_scales_mins(base.add(r * rb));
            sc[r] = s16;
            let mins = _mm_cvtepu8_epi16(_mm_unpackhi_epi64(su, su));
            for j in 0..4 {
                // Into lanes 4(r mod 4).. of vector r / 4.
                let placed = _mm512_maskz_broadcast_i32x4(0xFu16 << (4 * (r % 4)), _mm_madd_epi16(mins, bs[j]));
                mm[j][r / 4] = _mm512_or_si512(mm[j][r / 4], placed);
            }
        }
        let mut msum = [[_mm512_setzero_si512(); 2]; 4];
        for j in 0..4 {
            msum[j] = [
                _mm512_permutex2var_epi32(mm[j][0], g01, mm[j][1]),
                _mm512_permutex2var_epi32(mm[j][0], g23, mm[j][1]),
            ];
        }
        for c in 0..4 {
            let mut y = [_mm512_setzero_si512(); 4];
            for j in 0..4 {
                y[j] = _mm512_loadu_si512(ab[j].qs.as_ptr().add(64 * c) as *const _);
            }
            for r in 0..8 {
                let q = _mm256_loadu_si256(base.add(r * rb + 16 + 32 * c) as *const __m256i);
                let lo = _mm256_and_si256(q, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);
                let u = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                let s = _mm512_permutexvar_epi16(idx[c], sc[r]);
                for j in 0..4 {
                    v[j][r] = fold(_mm512_madd_epi16(_mm512_maddubs_epi16(u, y[j]), s));
                }
            }
            for j in 0..4 {
                let da = _mm256_set1_ps(ab[j].d);
                acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8(&v[j])), _mm256_mul_ps(dw, da), acc[j]);
                let m = msum[j][c / 2];
                let mc = if c % 2 == 0 { _mm512_castsi512_si256(m) } else { _mm512_extracti64x4_epi64(m, 1) };
                acc_m[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mc), _mm256_mul_ps(dminw, da), acc_m[j]);
            }
        }
    }
    let mut out = [[0f32; 8]; 4];
    for j in 0..4 {
        out[j] = lanes(_mm256_sub_ps(acc[j], acc_m[j]));
    }
    out
}

/// `avx2::dot8x4_q6_k_tiled` (llama.cpp's tiled K-quant order: per super-block the exact
/// Σ sc·q·a, times d, then `acc = fma(s·d, d_a, acc)`) with the integer sums on 512-bit vectors
/// (`row_q6_k`'s unpacking, once for the four inputs): bit-identical (tested).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot8x4_q6_k_tiled(w: &[u8], rb: usize, a: [&[BlockQ8K]; 4]) -> [[f32; 8]; 4] {
    const B: usize = super::q6_k::BYTES;
    let nb = a[0].len();
    assert!(w.len() >= 7 * rb + nb * B && a.iter().all(|x| x.len() == nb), "q6_k 8x4: {} bytes", w.len());
    let m4 = _mm512_set1_epi8(0x0F);
    let m2 = _mm512_set1_epi8(0x03);
    let idx = spread_idx(8, 4);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut v = [[_mm256_setzero_si256(); 8]; 4];
    for i in 0..nb {
        let base = w.as_ptr().add(i * B);
        let ab = [a[0].get_unchecked(i), a[1].get_unchecked(i), a[2].get_unchecked(i), a[3].get_unchecked(i)];
        let y =
            [load4(ab[0].qs.as_ptr()), load4(ab[1].qs.as_ptr()), load4(ab[2].qs.as_ptr()), load4(ab[3].qs.as_ptr())];
        let mut bsums = [_mm256_setzero_si256(); 4];
        for j in 0..4 {
            bsums[j] = _mm256_loadu_si256(ab[j].bsums.as_ptr() as *const __m256i);
        }
        for r in 0..8 {
            let b = base.add(r * rb);
            let sc16 = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192) as *const __m128i)));
            let mut sums = [_mm512_setzero_si512(); 4];
            for n in 0..2 {
                let ql = _mm512_loadu_si512(b.add(64 * n) as *const _);
                let qh = _mm256_loadu_si256(b.add(128 + 32 * n) as *const __m256i);
                let qh01 = _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1);
                let qh23 = _mm512_srli_epi16(qh01, 4);
                let u01 = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_slli_epi16(_mm512_and_si512(qh01, m2), 4));
                let u23 = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                    _mm512_slli_epi16(_mm512_and_si512(qh23, m2), 4),
                );
                for (p, u) in [(2 * n, u01), (2 * n + 1, u23)] {
                    let s = _mm512_permutexvar_epi16(idx[p], sc16);
                    for j in 0..4 {
                        sums[j] = _mm512_add_epi32(sums[j], _mm512_madd_epi16(_mm512_maddubs_epi16(u, y[j][p]), s));
                    }
                }
            }
            // Less 32·Σ sc·Σa (exact integers: where it is subtracted does not matter).
            for j in 0..4 {
                let corr = _mm256_slli_epi32(_mm256_madd_epi16(bsums[j], _mm512_castsi512_si256(sc16)), 5);
                v[j][r] = _mm256_sub_epi32(fold(sums[j]), corr);
            }
        }
        let dw = f16x8(base, rb, 208);
        for j in 0..4 {
            let res = _mm256_mul_ps(_mm256_cvtepi32_ps(reduce8(&v[j])), dw);
            acc[j] = _mm256_fmadd_ps(res, _mm256_set1_ps(ab[j].d), acc[j]);
        }
    }
    let mut out = [[0f32; 8]; 4];
    for j in 0..4 {
        out[j] = lanes(acc[j]);
    }
    out
}
