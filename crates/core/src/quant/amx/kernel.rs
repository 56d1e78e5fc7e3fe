//! The kernels, both in ggml's AMX order (`ggml-cpu/amx/mmq.cpp`): each output is
//! acc = fma(f32(Σ_block w·a), d_w·d_a, acc) block after block (Q4_1 then acc = fma(m_w, s_a,
//! acc)), from acc = 0; only how the exact integer sums are formed differs.
//!
//! - [`gemm_task`]: many inputs (`tinygemm_kernel_amx`). Per 32-element block, the B tiles of up
//!   to two groups of 16 outputs are loaded once (Q4 unpacked to bytes first) and every pair of
//!   16-row A tiles of the task passes them: up to four `tdpbssd` into C tiles (16 × 16 i32),
//!   stored, and scaled into f32 accumulators by AVX-512 (16 outputs a vector) while the tiles
//!   compute the next step (C double-buffered, as ggml does).
//! - [`few`]: one to four inputs (decode; ggml's `tinygemm_kernel_vnni`, its M = 1 path): the
//!   same sums by `vpdpbusd` over the packed weights, 16 outputs a vector, four groups a pass.

use super::pack::{quant_bytes, Acts, Packed, Q4_0, Q4_1, Q6_K, Q8_0};
use super::tiles::{Emu, Hw, Tmul};
use super::Engine;
use std::arch::x86_64::*;

/// Inputs one task body accumulates at once (four A tiles).
const A_GROUPS: usize = 4;

#[repr(C, align(64))]
struct CTiles([[i32; 256]; 8]);

#[repr(C, align(64))]
struct BTiles([[u8; 512]; 2]);

/// out(i, j) = input i · row j for i in i0..i1 (below `acts.n`) and j in r0..r1 (below
/// `w.rows`), at out + (i − i0)·ldo + (j − r0): `gemm_tasks`' contract. r0 and i0 are multiples
/// of 16.
///
/// # Safety
/// `out` valid for those elements; for `Engine::Amx` a CPU with AMX-INT8 granted to this
/// process, for `Engine::Amx` and `Engine::Emulated` one with AVX-512 F/BW/VL/VNNI.
pub(crate) unsafe fn gemm_task(
    engine: Engine,
    w: &Packed,
    (r0, r1): (usize, usize),
    acts: &Acts,
    (i0, i1): (usize, usize),
    out: *mut f32,
    ldo: usize,
) {
    assert_eq!(acts.rows, 16, "amx: the tiles read 16-row groups (quantize_few's rows are for `few` only)");
    // (Q6_K's 256-element blocks are eight of the activations' 32-element chunks.)
    let nb = if w.kind == Q6_K { 8 * w.nb } else { w.nb };
    assert!(r0.is_multiple_of(16) && i0.is_multiple_of(16) && nb == acts.nb, "amx gemm task: bounds");
    match (engine, w.kind) {
        (Engine::Amx, Q8_0) => gemm_avx512::<Hw, Q8_0>(Hw, w, (r0, r1), acts, (i0, i1), out, ldo),
        (Engine::Amx, Q4_0) => gemm_avx512::<Hw, Q4_0>(Hw, w, (r0, r1), acts, (i0, i1), out, ldo),
        (Engine::Amx, Q6_K) => gemm_avx512::<Hw, Q6_K>(Hw, w, (r0, r1), acts, (i0, i1), out, ldo),
        (Engine::Amx, _) => gemm_avx512::<Hw, Q4_1>(Hw, w, (r0, r1), acts, (i0, i1), out, ldo),
        (Engine::Emulated, Q8_0) => gemm_avx512::<Emu, Q8_0>(Emu::new(), w, (r0, r1), acts, (i0, i1), out, ldo),
        (Engine::Emulated, Q4_0) => gemm_avx512::<Emu, Q4_0>(Emu::new(), w, (r0, r1), acts, (i0, i1), out, ldo),
        (Engine::Emulated, Q6_K) => gemm_avx512::<Emu, Q6_K>(Emu::new(), w, (r0, r1), acts, (i0, i1), out, ldo),
        (Engine::Emulated, _) => gemm_avx512::<Emu, Q4_1>(Emu::new(), w, (r0, r1), acts, (i0, i1), out, ldo),
        (Engine::Portable, Q8_0) => gemm::<Emu, Q8_0, false>(Emu::new(), w, (r0, r1), acts, (i0, i1), out, ldo),
        (Engine::Portable, Q4_0) => gemm::<Emu, Q4_0, false>(Emu::new(), w, (r0, r1), acts, (i0, i1), out, ldo),
        (Engine::Portable, Q6_K) => gemm::<Emu, Q6_K, false>(Emu::new(), w, (r0, r1), acts, (i0, i1), out, ldo),
        (Engine::Portable, _) => gemm::<Emu, Q4_1, false>(Emu::new(), w, (r0, r1), acts, (i0, i1), out, ldo),
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn gemm_avx512<T: Tmul, const K: u8>(
    tm: T,
    w: &Packed,
    r: (usize, usize),
    acts: &Acts,
    i: (usize, usize),
    out: *mut f32,
    ldo: usize,
) {
    gemm::<T, K, true>(tm, w, r, acts, i, out, ldo)
}

/// `gemm_task` for one engine: pairs of output groups × runs of four input groups, each into a
/// zeroed local accumulator, then copied out.
#[inline(always)]
unsafe fn gemm<T: Tmul, const K: u8, const SIMD: bool>(
    mut tm: T,
    w: &Packed,
    (r0, r1): (usize, usize),
    acts: &Acts,
    (i0, i1): (usize, usize),
    out: *mut f32,
    ldo: usize,
) {
    if K == Q6_K {
        // Its own layout and loop (`q6k.rs`).
        return super::q6k::gemm::<T, SIMD>(tm, w, (r0, r1), acts, (i0, i1), out, ldo);
    }
    let (r1, i1) = (r1.min(w.rows), i1.min(acts.n));
    tm.configure();
    let mut acc = [0f32; A_GROUPS * 16 * 32];
    for g0 in (r0 / 16..r1.div_ceil(16)).step_by(2) {
        let gn = (r1.div_ceil(16) - g0).min(2);
        for a0 in (i0 / 16..i1.div_ceil(16)).step_by(A_GROUPS) {
            let an = (i1.div_ceil(16) - a0).min(A_GROUPS);
            acc.fill(0.0);
            body::<T, K, SIMD>(&mut tm, w, g0, gn, acts, a0, an, &mut acc);
            for i in a0 * 16..(a0 * 16 + an * 16).min(i1) {
                let row = &acc[(i - a0 * 16) * 32..];
                for j in g0 * 16..(g0 * 16 + gn * 16).min(r1) {
                    *out.add((i - i0) * ldo + j - r0) = row[j - g0 * 16];
                }
            }
        }
    }
}

/// Output groups g0..g0 + gn (1 or 2) × input groups a0..a0 + an (1 to 4), added into acc
/// ((an·16) × 32: row 16·a + m, column 16·t + l is input (a0 + a)·16 + m, output (g0 + t)·16 + l).
#[inline(always)]
unsafe fn body<T: Tmul, const K: u8, const SIMD: bool>(
    tm: &mut T,
    w: &Packed,
    g0: usize,
    gn: usize,
    acts: &Acts,
    a0: usize,
    an: usize,
    acc: &mut [f32],
) {
    // Every byte of these is written (a tile store, an unpack) before it is read.
    let mut c = std::mem::MaybeUninit::<CTiles>::uninit();
    let mut bt = std::mem::MaybeUninit::<BTiles>::uninit();
    let (c, bt) = (c.as_mut_ptr() as *mut i32, bt.as_mut_ptr() as *mut u8);
    let pairs = an.div_ceil(2);
    // The step whose C tiles wait for the epilogue: (block, pair, buffer set).
    let mut pending: Option<(usize, usize, usize)> = None;
    let mut set = 0;
    for b in 0..w.nb {
        load_b::<T, K, SIMD, 0>(tm, w.chunk(g0, b), bt);
        if gn == 2 {
            load_b::<T, K, SIMD, 1>(tm, w.chunk(g0 + 1, b), bt.add(512));
        }
        for p in 0..pairs {
            let two = 2 * p + 1 < an;
            tm.load::<2>(acts.tile(a0 + 2 * p, b), 32);
            if two {
                tm.load::<3>(acts.tile(a0 + 2 * p + 1, b), 32);
            }
            // C tile (A a, B t) of this step at ct + 256·(a + 2t).
            let ct = c.add(256 * 4 * set) as *mut u8;
            tm.zero::<4>();
            tm.dpbssd::<4, 2, 0>();
            tm.store::<4>(ct, 64);
            if two {
                tm.zero::<5>();
                tm.dpbssd::<5, 3, 0>();
                tm.store::<5>(ct.add(1024), 64);
            }
            if gn == 2 {
                tm.zero::<6>();
                tm.dpbssd::<6, 2, 1>();
                tm.store::<6>(ct.add(2048), 64);
                if two {
                    tm.zero::<7>();
                    tm.dpbssd::<7, 3, 1>();
                    tm.store::<7>(ct.add(3072), 64);
                }
            }
            if let Some(step) = pending {
                epilogue::<K, SIMD>(w, g0, gn, acts, a0, an, step, c, acc);
            }
            pending = Some((b, p, set));
            set ^= 1;
        }
    }
    if let Some(step) = pending {
        epilogue::<K, SIMD>(w, g0, gn, acts, a0, an, step, c, acc);
    }
}

/// B tile `R` of the chunk at `chunk`: Q8_0's straight from the packed weights, Q4's unpacked
/// into `scratch` (512 bytes) first.
#[inline(always)]
unsafe fn load_b<T: Tmul, const K: u8, const SIMD: bool, const R: u8>(tm: &mut T, chunk: *const u8, scratch: *mut u8) {
    if K == Q8_0 {
        return tm.load::<R>(chunk, 64);
    }
    if SIMD {
        unpack_avx512::<K>(chunk, scratch);
    } else {
        for p in 0..4 {
            for j in 0..64 {
                let v = *chunk.add(64 * p + j);
                let off = if K == Q4_0 { 8 } else { 0 };
                *scratch.add(128 * p + j) = (v & 0xF).wrapping_sub(off);
                *scratch.add(128 * p + 64 + j) = (v >> 4).wrapping_sub(off);
            }
        }
    }
    tm.load::<R>(scratch, 64);
}

/// Nibbles to the tile's signed bytes: Q4_0 q − 8 (stored q + 8), Q4_1 q.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn unpack_avx512<const K: u8>(chunk: *const u8, scratch: *mut u8) {
    let mask = _mm512_set1_epi8(0x0F);
    let off = _mm512_set1_epi8(if K == Q4_0 { 8 } else { 0 });
    for p in 0..4 {
        let v = _mm512_loadu_si512(chunk.add(64 * p) as *const __m512i);
        let lo = _mm512_sub_epi8(_mm512_and_si512(v, mask), off);
        let hi = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16::<4>(v), mask), off);
        _mm512_storeu_si512(scratch.add(128 * p) as *mut __m512i, lo);
        _mm512_storeu_si512(scratch.add(128 * p + 64) as *mut __m512i, hi);
    }
}

/// The float part of one step: each of its C tiles scaled into its 16 × 16 accumulators.
#[inline(always)]
unsafe fn epilogue<const K: u8, const SIMD: bool>(
    w: &Packed,
    g0: usize,
    gn: usize,
    acts: &Acts,
    a0: usize,
    an: usize,
    (b, p, set): (usize, usize, usize),
    c: *const i32,
    acc: &mut [f32],
) {
    for a in 2 * p..(2 * p + 2).min(an) {
        let (da, sa, _) = acts.scales(a0 + a, b);
        for t in 0..gn {
            let chunk = w.chunk(g0 + t, b);
            let tile = c.add(256 * (4 * set + a - 2 * p + 2 * t));
            let (dw, mw) = (chunk.add(quant_bytes(K)), chunk.add(quant_bytes(K) + 32));
            let at = acc.as_mut_ptr().add(a * 16 * 32 + t * 16);
            if SIMD {
                scale_avx512::<K>(tile, dw, mw, da, sa, at);
            } else {
                scale_scalar::<K>(tile, dw, mw, da, sa, at);
            }
        }
    }
}

/// For rows m of a C tile: acc[m] = fma(f32(C[m]), d_w·d_a[m], acc[m]) (then Q4_1's
/// fma(m_w, s_a[m], ·)), 16 outputs (lanes) a row; acc rows 32 apart. ggml's `acc_C`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn scale_avx512<const K: u8>(
    c: *const i32,
    dw: *const u8,
    mw: *const u8,
    da: *const f32,
    sa: *const f32,
    acc: *mut f32,
) {
    let dw = _mm512_cvtph_ps(_mm256_loadu_si256(dw as *const __m256i));
    let mw = if K == Q4_1 { _mm512_cvtph_ps(_mm256_loadu_si256(mw as *const __m256i)) } else { _mm512_setzero_ps() };
    for m in 0..16 {
        let v = _mm512_cvtepi32_ps(_mm512_loadu_si512(c.add(16 * m) as *const __m512i));
        let d = _mm512_mul_ps(dw, _mm512_set1_ps(*da.add(m)));
        let a = acc.add(32 * m);
        let mut x = _mm512_fmadd_ps(v, d, _mm512_loadu_ps(a));
        if K == Q4_1 {
            x = _mm512_fmadd_ps(mw, _mm512_set1_ps(*sa.add(m)), x);
        }
        _mm512_storeu_ps(a, x);
    }
}

/// `scale_avx512` lane by lane (the same roundings: `mul_add` is the fused operation).
#[inline(always)]
unsafe fn scale_scalar<const K: u8>(
    c: *const i32,
    dw: *const u8,
    mw: *const u8,
    da: *const f32,
    sa: *const f32,
    acc: *mut f32,
) {
    let f16 =
        |p: *const u8, l: usize| half::f16::from_bits(u16::from_le_bytes([*p.add(2 * l), *p.add(2 * l + 1)])).to_f32();
    for m in 0..16 {
        for l in 0..16 {
            let a = acc.add(32 * m + l);
            let mut x = (*c.add(16 * m + l) as f32).mul_add(f16(dw, l) * *da.add(m), *a);
            if K == Q4_1 {
                x = f16(mw, l).mul_add(*sa.add(m), x);
            }
            *a = x;
        }
    }
}

/// out(i, j) = input i · row j for the `acts.n` ≤ 4 inputs and the outputs of groups g0..g1
/// (below `w.rows`), at out + i·si + (j − 16·g0)·sj.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI; `out` valid for those elements; g1 ≤ `w.groups`.
pub(crate) unsafe fn few(w: &Packed, (g0, g1): (usize, usize), acts: &Acts, out: *mut f32, si: usize, sj: usize) {
    let nb = if w.kind == Q6_K { 8 * w.nb } else { w.nb };
    assert!(acts.n <= 4 && acts.nb == nb && g1 <= w.groups, "amx few: {} inputs", acts.n);
    if w.kind == Q6_K {
        use super::q6k::few as q6;
        match acts.n {
            1 => q6::<1>(w, (g0, g1), acts, out, si, sj),
            2 => q6::<2>(w, (g0, g1), acts, out, si, sj),
            3 => q6::<3>(w, (g0, g1), acts, out, si, sj),
            4 => q6::<4>(w, (g0, g1), acts, out, si, sj),
            _ => {}
        }
        return;
    }
    macro_rules! run {
        ($k:expr) => {
            match acts.n {
                1 => few_k::<{ $k }, 1>(w, (g0, g1), acts, out, si, sj),
                2 => few_k::<{ $k }, 2>(w, (g0, g1), acts, out, si, sj),
                3 => few_k::<{ $k }, 3>(w, (g0, g1), acts, out, si, sj),
                4 => few_k::<{ $k }, 4>(w, (g0, g1), acts, out, si, sj),
                _ => {}
            }
        };
    }
    match w.kind {
        Q8_0 => run!(Q8_0),
        Q4_0 => run!(Q4_0),
        _ => run!(Q4_1),
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn few_k<const K: u8, const N: usize>(
    w: &Packed,
    (g0, g1): (usize, usize),
    acts: &Acts,
    out: *mut f32,
    si: usize,
    sj: usize,
) {
    let mut g = g0;
    while g + 4 <= g1 {
        few_pass::<K, N, 4>(w, g, acts, out.add((g - g0) * 16 * sj), si, sj);
        g += 4;
    }
    if g + 2 <= g1 {
        few_pass::<K, N, 2>(w, g, acts, out.add((g - g0) * 16 * sj), si, sj);
        g += 2;
    }
    if g < g1 {
        few_pass::<K, N, 1>(w, g, acts, out.add((g - g0) * 16 * sj), si, sj);
    }
}

/// Groups g..g + G against the N inputs, every block: the weights as unsigned bytes (Q8_0 w + 128,
/// Q4_0 q + 8 as stored, Q4_1 q) against the activations broadcast four bytes at a time, less the
/// offset times Σa, is the block's exact integer sum; then `scale_avx512`'s float operations.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn few_pass<const K: u8, const N: usize, const G: usize>(
    w: &Packed,
    g: usize,
    acts: &Acts,
    out: *mut f32,
    si: usize,
    sj: usize,
) {
    let mask = _mm512_set1_epi8(0x0F);
    let flip = _mm512_set1_epi8(0x80u8 as i8);
    let off: i32 = match K {
        Q8_0 => 128,
        Q4_0 => 8,
        _ => 0,
    };
    let mut acc = [[_mm512_setzero_ps(); N]; G];
    for b in 0..w.nb {
        let (da, sa, sum) = acts.scales(0, b);
        let a = acts.tile(0, b) as *const i32;
        for t in 0..G {
            let chunk = w.chunk(g + t, b);
            let mut u = [_mm512_setzero_si512(); 8];
            if K == Q8_0 {
                for k in 0..8 {
                    u[k] = _mm512_xor_si512(_mm512_loadu_si512(chunk.add(64 * k) as *const __m512i), flip);
                }
            } else {
                for p in 0..4 {
                    let v = _mm512_loadu_si512(chunk.add(64 * p) as *const __m512i);
                    u[2 * p] = _mm512_and_si512(v, mask);
                    u[2 * p + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
                }
            }
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(chunk.add(quant_bytes(K)) as *const __m256i));
            let mw = if K == Q4_1 {
                _mm512_cvtph_ps(_mm256_loadu_si256(chunk.add(quant_bytes(K) + 32) as *const __m256i))
            } else {
                _mm512_setzero_ps()
            };
            for i in 0..N {
                // Row i of the A tile: 8 dwords, 32 bytes.
                let ai = a.add(8 * i);
                let mut s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[0], _mm512_set1_epi32(*ai));
                let mut s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[1], _mm512_set1_epi32(*ai.add(1)));
                for k in (2..8).step_by(2) {
                    s0 = _mm512_dpbusd_epi32(s0, u[k], _mm512_set1_epi32(*ai.add(k)));
                    s1 = _mm512_dpbusd_epi32(s1, u[k + 1], _mm512_set1_epi32(*ai.add(k + 1)));
                }
                let mut s = _mm512_add_epi32(s0, s1);
                if off != 0 {
                    s = _mm512_sub_epi32(s, _mm512_set1_epi32(off * *sum.add(i)));
                }
                let d = _mm512_mul_ps(dw, _mm512_set1_ps(*da.add(i)));
                acc[t][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), d, acc[t][i]);
                if K == Q4_1 {
                    acc[t][i] = _mm512_fmadd_ps(mw, _mm512_set1_ps(*sa.add(i)), acc[t][i]);
                }
            }
        }
    }
    for t in 0..G {
        for i in 0..N {
            let mut v = [0f32; 16];
            _mm512_storeu_ps(v.as_mut_ptr(), acc[t][i]);
            for l in 0..16.min(w.rows.saturating_sub((g + t) * 16)) {
                *out.add(i * si + (16 * t + l) * sj) = v[l];
            }
        }
    }
}
