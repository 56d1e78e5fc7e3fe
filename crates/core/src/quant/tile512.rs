//! Register tiles for many input rows (prefill, perplexity, batched decode): R weight rows × C
//! activation rows of a 32-element block format (Q8_0, Q4_0, Q4_1, Q5_0) at once, on AVX-512
//! VL + VNNI. Each of the R·C outputs keeps its own 8-lane accumulator, summed block by block in
//! `ggml_vec_dot_*`'s order (one FMA of d_w·d_a with the block's integer lanes, then
//! `hsum_float_8`; tinyBLAS's `gemm4xN` sums each output in that order too), so every output is
//! bit-identical to `avx512::dot_*` and `avx2::dot_*`, i.e. to llama.cpp. What the tile saves
//! is the work shared along each axis: a weight block is unpacked (nibbles, fifth bits, scale)
//! once for C activation rows, and an activation block with its offset correction is loaded
//! once for R weight rows. Per block and output that leaves `vpdpbusd`, a convert and the FMA,
//! whose scale d_w·d_a is a broadcast load: the block's R·C scale products are one 4-lane
//! multiply per weight row (the same f32 products), stored once. 4 × 4 outputs keep 16
//! accumulators in the 32 vector registers.
//!
//! `tile_pairs` is the same arithmetic in 512-bit registers, two activation rows a zmm (each
//! output's 8 lanes in one half), 4 × 8 or 4 × 4 outputs: where the CPU's 512-bit units are
//! full width (Zen 5 here, the Xeons) it does twice the work per instruction. `tile` remains
//! for the one-input edges. On the 2-core Zen 5 VM, qbench 1536 × 576 · 512 at one thread:
//! Q8_0 103 → 140-179 GFLOP/s, Q4_1 92 → 147-164.
//!
//! `tile_eight` is `tile_pairs`' 4 × 8 tile on activation rows prepared once per product
//! (`eight`): pairs interleaved by 4-byte group, the offset correction stored, so that per
//! block the multiply pipes do only the `vpdpbusd` and the FMA of each pair of outputs, and
//! the scale products come by broadcast loads (docs/PERF.md, 2026-12-03 20:18 UTC: Q8_0
//! 1536 × 576 · 32 at one thread 151-178 → 189-234 GFLOP/s).

use super::act::BlockQ8;
use std::arch::x86_64::*;

use super::avx2::hsum;

/// Which block format a tile reads (a const parameter, so each format compiles to its own loop).
pub const Q8_0: u8 = 0;
pub const Q4_0: u8 = 1;
pub const Q4_1: u8 = 2;
pub const Q5_0: u8 = 3;

/// Bytes of one block of format `K`.
pub const fn block_bytes(k: u8) -> usize {
    match k {
        Q8_0 => super::q8_0::BYTES,
        Q4_0 => super::q4_0::BYTES,
        Q4_1 => super::q4_1::BYTES,
        _ => super::q5_0::BYTES,
    }
}

/// out[r][c] = row r of `w` (rows `rb` bytes apart) · activation row `a[c]`, for the format `K`.
/// Every `a[c]` has the same number of blocks, which the rows must hold.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn tile<const K: u8, const R: usize, const C: usize>(
    w: &[u8],
    rb: usize,
    a: [&[BlockQ8]; C],
) -> [[f32; C]; R] {
    let (bytes, nb) = check::<K>("tile", R, C <= 4, w, rb, &a);
    let mask = _mm256_set1_epi8(0x0F);
    let flip = _mm256_set1_epi8(0x80u8 as i8);
    let sixteen = _mm256_set1_epi8(16);
    let shifts = _mm256_setr_epi64x(0, 0, 4, 4);
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    // Q4_1's min terms, Σ m·s per output in block order: lane c of mins[r] for activation c.
    let mut mins = [_mm_setzero_ps(); R];
    for i in 0..nb {
        // The weight side: unsigned bytes (value + offset) and the f16 scale as f32 lanes.
        let mut u = [_mm256_setzero_si256(); R];
        let mut dw = [_mm256_setzero_ps(); R];
        let mut mw = [0f32; R];
        for r in 0..R {
            let b = w.as_ptr().add(r * rb + i * bytes);
            let d16 = _mm_set1_epi16((b as *const i16).read_unaligned());
            dw[r] = _mm256_cvtph_ps(d16);
            if K == Q4_1 {
                mw[r] = super::avx2::f16(b.add(2));
            }
            u[r] = unsigned_quants::<K>(b, flip, shifts, mask, sixteen);
        }
        // The R·C scale products d_w·d_a of this block, one 4-lane multiply per weight row
        // (the same f32 products as one per output), read back by broadcast loads.
        let mut da = [0f32; 4];
        for c in 0..C {
            da[c] = a[c].get_unchecked(i).d;
        }
        let da = _mm_loadu_ps(da.as_ptr());
        let mut prod = [0f32; 16];
        for r in 0..R {
            _mm_storeu_ps(prod.as_mut_ptr().add(4 * r), _mm_mul_ps(_mm256_castps256_ps128(dw[r]), da));
        }
        let mut s = [0f32; 4];
        for c in 0..C {
            let ab = a[c].get_unchecked(i);
            let y = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
            // −offset · Σ of each lane's four activation bytes: dpbusd(start, x + offset, y) = Σ x·y.
            let start = match K {
                Q4_1 => _mm256_setzero_si256(),
                _ => {
                    let off = match K {
                        Q8_0 => 0x80u8,
                        Q4_0 => 8,
                        _ => 16,
                    };
                    let z = _mm256_setzero_si256();
                    _mm256_sub_epi32(z, _mm256_dpbusd_epi32(z, _mm256_set1_epi8(off as i8), y))
                }
            };
            s[c] = ab.s;
            for r in 0..R {
                let q = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(start, u[r], y));
                // d_w·d_a from `prod`, one broadcast load (a load port, not a multiply).
                let d = _mm256_set1_ps(std::ptr::read_volatile(prod.as_ptr().add(r * 4 + c)));
                acc[r][c] = _mm256_fmadd_ps(d, q, acc[r][c]);
            }
        }
        if K == Q4_1 {
            // mins += m · s, a product then a sum per output (the kernels' scalar order).
            let sv = _mm_loadu_ps(s.as_ptr());
            for r in 0..R {
                mins[r] = _mm_add_ps(mins[r], _mm_mul_ps(_mm_set1_ps(mw[r]), sv));
            }
        }
    }
    let mut out = [[0f32; C]; R];
    for r in 0..R {
        let mut m = [0f32; 4];
        _mm_storeu_ps(m.as_mut_ptr(), mins[r]);
        for c in 0..C {
            out[r][c] = hsum(acc[r][c]);
            if K == Q4_1 {
                out[r][c] += m[c];
            }
        }
    }
    out
}

/// 16 packed bytes → 32 values: low nibbles (elements 0..16), then high nibbles (16..32), as
/// `avx512::nibbles` (a function, not a closure, so that it has the target features).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn nibbles(p: *const u8, shifts: __m256i, mask: __m256i) -> __m256i {
    let t = _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i));
    _mm256_and_si256(_mm256_srlv_epi64(t, shifts), mask)
}

/// Block `b`'s 32 quants (format K, after its f16 scale) as unsigned bytes: Q8_0's x + 128,
/// Q4_0's nibbles (q + 8), Q4_1's nibbles (its min, before them, is the caller's), Q5_0's 5-bit
/// values (q + 16: the nibbles + 16 where the fifth bit is set).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn unsigned_quants<const K: u8>(
    b: *const u8,
    flip: __m256i,
    shifts: __m256i,
    mask: __m256i,
    sixteen: __m256i,
) -> __m256i {
    match K {
        Q8_0 => _mm256_xor_si256(_mm256_loadu_si256(b.add(2) as *const __m256i), flip),
        Q4_0 => nibbles(b.add(2), shifts, mask),
        Q4_1 => nibbles(b.add(4), shifts, mask),
        _ => {
            let qh = (b.add(2) as *const u32).read_unaligned();
            let mut v = nibbles(b.add(6), shifts, mask);
            std::arch::asm!("vpaddb {u}{{{k}}}, {u}, {s}", u = inout(ymm_reg) v, k = in(kreg) qh, s = in(ymm_reg) sixteen,
                            options(pure, nomem, nostack, preserves_flags));
            v
        }
    }
}

/// `tile::<K, R, C>` (C = 4 or 8) with 512-bit registers: the activation rows go in pairs, each
/// pair's two 8-lane accumulators in one zmm (lanes 0..8 the first row's, 8..16 the second's),
/// so a block costs a pair of outputs one `vpdpbusd`, one convert, one multiply (d_w·d_a: the
/// same f32 product as `tile`'s, lane by lane) and one FMA where `tile` spends two of each on
/// ymm halves. Every lane sees the same operations in the same order as in `tile`, so each output
/// is bit-identical to it (and to `ggml_vec_dot_*`); CPUs with full-width 512-bit units (Zen 5,
/// the Xeons) run it at up to twice the work per instruction.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn tile_pairs<const K: u8, const R: usize, const C: usize>(
    w: &[u8],
    rb: usize,
    a: [&[BlockQ8]; C],
) -> [[f32; C]; R] {
    let (bytes, nb) = check::<K>("tile_pairs", R, C == 4 || C == 8, w, rb, &a);
    // The weight side is unpacked straight into both halves of a zmm.
    let mask = _mm512_set1_epi8(0x0F);
    let flip = _mm512_set1_epi8(0x80u8 as i8);
    let sixteen = _mm512_set1_epi8(16);
    let shifts = _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4);
    // Lanes 0..8 from lane 2p of an 8-lane vector, lanes 8..16 from lane 2p + 1.
    let pick = |p: i32| {
        let (x, y) = (2 * p, 2 * p + 1);
        _mm512_setr_epi32(x, x, x, x, x, x, x, x, y, y, y, y, y, y, y, y)
    };
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    // Q4_1's min terms Σ m·s of the outputs of activation rows 4h..4h + 4 in mins[h]: lane
    // 4r + c % 4.
    let mut mins = [_mm512_setzero_ps(); 2];
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    for i in 0..nb {
        let mut u = [_mm512_setzero_si512(); R];
        let mut dw = [_mm512_setzero_ps(); R];
        let mut mw = [0u16; 4];
        for r in 0..R {
            let b = w.as_ptr().add(r * rb + i * bytes);
            dw[r] = _mm512_cvtph_ps(_mm256_set1_epi16((b as *const i16).read_unaligned()));
            u[r] = match K {
                Q8_0 => _mm512_xor_si512(_mm512_broadcast_i64x4(_mm256_loadu_si256(b.add(2) as *const __m256i)), flip),
                Q4_0 => nibbles2(b.add(2), shifts, mask),
                Q4_1 => {
                    mw[r] = (b.add(2) as *const u16).read_unaligned();
                    nibbles2(b.add(4), shifts, mask)
                }
                _ => {
                    // The fifth bits, once for each half.
                    let qh = (b.add(2) as *const u32).read_unaligned() as u64;
                    let mut v = nibbles2(b.add(6), shifts, mask);
                    std::arch::asm!("vpaddb {u}{{{k}}}, {u}, {s}", u = inout(zmm_reg) v, k = in(kreg) qh | qh << 32, s = in(zmm_reg) sixteen,
                                    options(pure, nomem, nostack, preserves_flags));
                    v
                }
            };
        }
        let mut da = [0f32; 8];
        let mut s = [0f32; 8];
        for c in 0..C {
            let ab = a[c].get_unchecked(i);
            da[c] = ab.d;
            s[c] = ab.s;
        }
        let da = _mm512_castps256_ps512(_mm256_loadu_ps(da.as_ptr()));
        for p in 0..C / 2 {
            let (a0, a1) = (a[2 * p].get_unchecked(i), a[2 * p + 1].get_unchecked(i));
            let y = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256(a0.qs.as_ptr() as *const __m256i)),
                _mm256_loadu_si256(a1.qs.as_ptr() as *const __m256i),
                1,
            );
            let start = match K {
                Q4_1 => _mm512_setzero_si512(),
                _ => {
                    let off = match K {
                        Q8_0 => 0x80u8,
                        Q4_0 => 8,
                        _ => 16,
                    };
                    let z = _mm512_setzero_si512();
                    _mm512_sub_epi32(z, _mm512_dpbusd_epi32(z, _mm512_set1_epi8(off as i8), y))
                }
            };
            let dap = _mm512_permutexvar_ps(pick(p as i32), da);
            for r in 0..R {
                let q = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, u[r], y));
                acc[r][p] = _mm512_fmadd_ps(_mm512_mul_ps(dw[r], dap), q, acc[r][p]);
            }
        }
        if K == Q4_1 {
            // m_r (f16 → f32, exact) in lanes 4r..4r+4, s_c in lanes 4r + c: one product and
            // one sum per output, as `tile`'s four-lane ones.
            let m4 = _mm_cvtph_ps(_mm_loadl_epi64(mw.as_ptr() as *const __m128i));
            let mv = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(m4));
            for h in 0..C / 4 {
                let sv = _mm512_broadcast_f32x4(_mm_loadu_ps(s.as_ptr().add(4 * h)));
                mins[h] = _mm512_add_ps(mins[h], _mm512_mul_ps(mv, sv));
            }
        }
    }
    let mut out = [[0f32; C]; R];
    let mut m32 = [0f32; 32];
    _mm512_storeu_ps(m32.as_mut_ptr(), mins[0]);
    _mm512_storeu_ps(m32.as_mut_ptr().add(16), mins[1]);
    let m = |r: usize, c: usize| m32[16 * (c / 4) + 4 * r + c % 4];
    for r in 0..R {
        for p in 0..C / 2 {
            let v = acc[r][p];
            let lo = _mm512_castps512_ps256(v);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
            out[r][2 * p] = hsum(lo);
            out[r][2 * p + 1] = hsum(hi);
            if K == Q4_1 {
                out[r][2 * p] += m(r, 2 * p);
                out[r][2 * p + 1] += m(r, 2 * p + 1);
            }
        }
    }
    out
}

/// The bounds a tile reads within (asserted: the reads are unchecked): 1 to 4 rows of `rb`
/// bytes in `w`, each holding the blocks of the activation rows `a`, all of one length, and a
/// column count the tile takes (`columns_ok`). Returns (block bytes, blocks).
fn check<const K: u8>(
    what: &str,
    rows: usize,
    columns_ok: bool,
    w: &[u8],
    rb: usize,
    a: &[&[BlockQ8]],
) -> (usize, usize) {
    let (bytes, nb) = (block_bytes(K), a.first().map_or(0, |a| a.len()));
    assert!(
        (1..=4).contains(&rows)
            && columns_ok
            && !a.is_empty()
            && rb >= nb * bytes
            && w.len() >= (rows - 1) * rb + nb * bytes,
        "{what}: {rows} rows of {rb} bytes in {} bytes, {} activation rows of {nb} blocks of {bytes}",
        w.len(),
        a.len()
    );
    assert!(a.iter().all(|ac| ac.len() == nb), "{what}: activation rows of different lengths");
    (bytes, nb)
}

/// `nibbles` into both 256-bit halves of a zmm.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn nibbles2(p: *const u8, shifts: __m512i, mask: __m512i) -> __m512i {
    let t = _mm512_broadcast_i32x4(_mm_loadu_si128(p as *const __m128i));
    _mm512_and_si512(_mm512_srlv_epi64(t, shifts), mask)
}

/// Eight activation rows' block i laid out for `tile_eight`: the quants of each pair of rows
/// (2p, 2p + 1) interleaved by 4-byte group (dword lane 2l holds row 2p's bytes 4l..4l + 4, lane
/// 2l + 1 row 2p + 1's), so that one `vpdpbusd` gives each row its 8 lanes (`tile_pairs`' lanes,
/// even and odd instead of low and high); −128·Σ of each lane's four bytes in the same lanes
/// (the Q8_0 offset's correction, the same integers `tile_pairs` computes in every call; Q4_0's
/// and Q5_0's are exact shifts of it); the rows' scales and Q8_1 sums.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct Eight {
    y: [[i8; 64]; 4],
    start: [[i32; 16]; 4],
    d: [f32; 8],
    s: [f32; 8],
}

/// The blocks of eight activation rows (all of one length) as `Eight`s, one per block.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn eight(a: [&[BlockQ8]; 8]) -> Vec<Eight> {
    let nb = a[0].len();
    assert!(a.iter().all(|r| r.len() == nb), "tile512::eight: activation rows of different lengths");
    let mix = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let z = _mm512_setzero_si512();
    let off = _mm512_set1_epi8(0x80u8 as i8);
    (0..nb)
        .map(|i| {
            let mut e = Eight { y: [[0; 64]; 4], start: [[0; 16]; 4], d: [0.0; 8], s: [0.0; 8] };
            for p in 0..4 {
                let (a0, a1) = (&a[2 * p][i], &a[2 * p + 1][i]);
                let y = _mm512_permutex2var_epi32(
                    _mm512_castsi256_si512(_mm256_loadu_si256(a0.qs.as_ptr() as *const __m256i)),
                    mix,
                    _mm512_castsi256_si512(_mm256_loadu_si256(a1.qs.as_ptr() as *const __m256i)),
                );
                _mm512_store_si512(e.y[p].as_mut_ptr() as *mut _, y);
                let start = _mm512_sub_epi32(z, _mm512_dpbusd_epi32(z, off, y));
                _mm512_store_si512(e.start[p].as_mut_ptr() as *mut _, start);
            }
            for c in 0..8 {
                e.d[c] = a[c][i].d;
                e.s[c] = a[c][i].s;
            }
            e
        })
        .collect()
}

/// `tile_pairs::<K, R, 8>` on eight activation rows prepared by `eight`: the same operations
/// on every lane in the same order, so bit-identical to it (and to `ggml_vec_dot_*`), with less
/// work per block on the multiply pipes: the offset correction comes prepared, and the R·8 scale
/// products d_w·d_a are R 8-lane multiplies, each (row, pair) taking its two by one broadcast
/// load (the interleaved lanes want them alternating) where `tile_pairs` spends a 16-lane
/// multiply per (row, pair).
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI present; R (1 to 4) rows of `rb` bytes from `w`'s start, each holding
/// `a.len()` blocks of format K (`check_eight`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn tile_eight<const K: u8, const R: usize>(w: &[u8], rb: usize, a: &[Eight]) -> [[f32; 8]; R] {
    let bytes = block_bytes(K);
    let mask = _mm256_set1_epi8(0x0F);
    let flip = _mm256_set1_epi8(0x80u8 as i8);
    let sixteen = _mm256_set1_epi8(16);
    let shifts = _mm256_setr_epi64x(0, 0, 4, 4);
    // Dword l of the weight block into lanes 2l and 2l + 1 (both rows of a pair).
    let dup = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    let mut mins = [_mm512_setzero_ps(); 2];
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    // prod[8r + c] = d_w(r)·d_a(c) of the current block.
    #[repr(align(64))]
    struct Prod([f32; 32]);
    let mut prod = Prod([0.0; 32]);
    for (i, e) in a.iter().enumerate() {
        let mut u = [_mm512_setzero_si512(); R];
        let mut mw = [0u16; 4];
        let da = _mm256_load_ps(e.d.as_ptr());
        for r in 0..R {
            let b = w.as_ptr().add(r * rb + i * bytes);
            let dw = _mm256_cvtph_ps(_mm_set1_epi16((b as *const i16).read_unaligned()));
            _mm256_store_ps(prod.0.as_mut_ptr().add(8 * r), _mm256_mul_ps(dw, da));
            if K == Q4_1 {
                mw[r] = (b.add(2) as *const u16).read_unaligned();
            }
            let v = unsigned_quants::<K>(b, flip, shifts, mask, sixteen);
            u[r] = _mm512_permutexvar_epi32(dup, _mm512_castsi256_si512(v));
        }
        for p in 0..4 {
            let y = _mm512_load_si512(e.y[p].as_ptr() as *const _);
            let start = match K {
                Q8_0 => _mm512_load_si512(e.start[p].as_ptr() as *const _),
                // −8·Σ and −16·Σ: −128·Σ shifted right (exact, Σ·128 is a multiple of 16).
                Q4_0 => _mm512_srai_epi32::<4>(_mm512_load_si512(e.start[p].as_ptr() as *const _)),
                Q4_1 => _mm512_setzero_si512(),
                _ => _mm512_srai_epi32::<3>(_mm512_load_si512(e.start[p].as_ptr() as *const _)),
            };
            for r in 0..R {
                let q = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, u[r], y));
                // [d_w·d_a(2p), d_w·d_a(2p + 1)] in every lane pair: one broadcast load (a
                // load port, not a shuffle: the asm keeps the compiler from forwarding `prod`
                // through registers).
                let d: __m512;
                std::arch::asm!("vbroadcastsd {d}, qword ptr [{p}]", d = out(zmm_reg) d, p = in(reg) prod.0.as_ptr().add(8 * r + 2 * p),
                                options(pure, readonly, nostack, preserves_flags));
                acc[r][p] = _mm512_fmadd_ps(d, q, acc[r][p]);
            }
        }
        if K == Q4_1 {
            let m4 = _mm_cvtph_ps(_mm_loadl_epi64(mw.as_ptr() as *const __m128i));
            let mv = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(m4));
            for h in 0..2 {
                let sv = _mm512_broadcast_f32x4(_mm_loadu_ps(e.s.as_ptr().add(4 * h)));
                mins[h] = _mm512_add_ps(mins[h], _mm512_mul_ps(mv, sv));
            }
        }
    }
    let mut out = [[0f32; 8]; R];
    let mut m32 = [0f32; 32];
    _mm512_storeu_ps(m32.as_mut_ptr(), mins[0]);
    _mm512_storeu_ps(m32.as_mut_ptr().add(16), mins[1]);
    let m = |r: usize, c: usize| m32[16 * (c / 4) + 4 * r + c % 4];
    // `hsum` of the eight outputs of a weight row at once, the same additions: output 2p's
    // lane l sits at position 2l of acc[r][p] (2p + 1's at 2l + 1). hsum adds lanes l and
    // l + 4 (positions 2l and 2l + 8: the 256-bit halves), then 0 + 2 and 1 + 3 of those
    // (128-bit lanes 0 and 1 of the result), then the two (positions 0 and 2 of a lane).
    let pick = _mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    for r in 0..R {
        let [x, y, x2, y2] = acc[r];
        let z1 = _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(x, y), _mm512_shuffle_f32x4::<0xEE>(x, y));
        let z2 = _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(x2, y2), _mm512_shuffle_f32x4::<0xEE>(x2, y2));
        let w = _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(z1, z2), _mm512_shuffle_f32x4::<0xDD>(z1, z2));
        let s = _mm512_add_ps(w, _mm512_permute_ps::<0x4E>(w));
        _mm256_storeu_ps(out[r].as_mut_ptr(), _mm512_castps512_ps256(_mm512_permutexvar_ps(pick, s)));
        if K == Q4_1 {
            for (c, o) in out[r].iter_mut().enumerate() {
                *o += m(r, c);
            }
        }
    }
    out
}

/// `tile_eight`'s bounds (asserted once for many calls): `rows` rows of `rb` bytes in `w`, each
/// holding `nb` blocks of format K.
pub fn check_eight<const K: u8>(rows: usize, w: &[u8], rb: usize, nb: usize) {
    let bytes = block_bytes(K);
    assert!(
        rows == 0 || (rb >= nb * bytes && w.len() >= (rows - 1) * rb + nb * bytes),
        "tile_eight: {rows} rows of {rb} bytes in {} bytes, {nb} blocks of {bytes}",
        w.len()
    );
}
