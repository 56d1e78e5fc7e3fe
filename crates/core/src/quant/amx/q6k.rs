//! Q6_K on the AMX tiles, in llama.cpp's AMX order (`ggml-cpu/amx/mmq.cpp`: `acc_C<block_q8_K,
//! block_q6_K>` after `scale_C` for prompts, `tinygemm_kernel_vnni<block_q8_K, block_q6_K>` for
//! one row): against Q8_K activations, per output
//!
//! ```text
//! acc = 0; for each 256-element block: acc = fma(f32(isum), d_w·d_a, acc)
//! ```
//!
//! with isum the block's exact integer dot Σ_g s_g·Σ_{e∈g} (q_e − 32)·a_e (sixteen groups of 16
//! with an int8 scale s_g each) and d_w·d_a one f32 product. isum is exact, so how it is formed
//! is free; ggml forms it one 16-element group at a time (a tile product per group, then the
//! group's scale on the int32 tile). Here each weight's scaled value sw = s_g·(q − 32), in
//! [−4064, 4096], is packed once as two int8 planes, sw = 64·h + l with l in [−32, 31] and h in
//! [−64, 64], so that isum = 64·(a·H) + a·L: two products over the whole block on full 32-byte K
//! steps (|64·a·H| ≤ 64·256·127·64 < 2^31), no per-group scaling.
//!
//! Packed, per group of 16 rows and 256-element block (130 lines): the H plane's eight B tiles
//! (one per 32-element chunk, 8 rows × 64 bytes: row k holds for output n its elements 4k..4k+4
//! of the chunk at bytes 4n..4n+4, as `pack.rs`'s Q8_0), the L plane's eight, d_w of the 16 rows
//! (f32, exact from f16), and per row 128·(64·ΣH + ΣL) (i32), which `few` takes off sums made
//! with the activations shifted to unsigned bytes (`vpdpbusd`). Activations: `Acts` of Q8_K
//! rows cut into 32-element chunks, each chunk's d the whole block's (`Acts::from_q8k`).

use super::pack::{Acts, Line, Packed, Q6_K};
use super::tiles::Tmul;
use crate::quant::act::{quantize_q8k, BlockQ8, BlockQ8K};
use crate::quant::{f16_at, q6_k};
use std::arch::x86_64::*;

/// Bytes of one (group, block) chunk: two planes of eight 512-byte tiles, d_w, the correction.
pub(super) const CHUNK: usize = 2 * 8 * 512 + 64 + 64;
const L_PLANE: usize = 8 * 512;
const DW: usize = 2 * 8 * 512;
const CORR: usize = DW + 64;

/// The two planes of s·(q − 32): (h, l) with 64·h + l = sw, l in [−32, 31].
#[inline]
pub(super) fn split(sw: i32) -> (i8, i8) {
    let l = (sw + 32).rem_euclid(64) - 32;
    (((sw - l) / 64) as i8, l as i8)
}

/// Repacks `w` (rows × the file's Q6_K row bytes) for `Packed`: groups in parallel.
pub(super) fn pack(w: &[u8], rows: usize, cols: usize) -> Packed {
    assert!(cols.is_multiple_of(256), "amx: Q6_K with {cols} columns");
    let nb = cols / 256;
    assert_eq!(w.len(), rows * nb * q6_k::BYTES, "amx: {rows} rows of {nb} Q6_K blocks");
    let groups = rows.div_ceil(16);
    let lines = CHUNK / 64;
    let mut data = vec![Line([0; 64]); groups * nb * lines];
    crate::par::chunks_mut(&mut data, nb * lines, |g, lines_g| {
        // SAFETY: Line is 64 plain bytes.
        let out = unsafe { std::slice::from_raw_parts_mut(lines_g.as_mut_ptr() as *mut u8, lines_g.len() * 64) };
        let mut q = [0i8; 256];
        for b in 0..nb {
            let chunk = &mut out[b * CHUNK..(b + 1) * CHUNK];
            for n in 0..16 {
                let r = g * 16 + n;
                if r >= rows {
                    continue;
                }
                let blk = &w[(r * nb + b) * q6_k::BYTES..][..q6_k::BYTES];
                q6_k::unpack(blk, &mut q);
                let (mut sum_h, mut sum_l) = (0i32, 0i32);
                for (e, &qe) in q.iter().enumerate() {
                    let s = blk[192 + e / 16] as i8 as i32;
                    let (h, l) = split(s * qe as i32);
                    let (c, k, t) = (e / 32, e % 32 / 4, e % 4);
                    chunk[c * 512 + k * 64 + 4 * n + t] = h as u8;
                    chunk[L_PLANE + c * 512 + k * 64 + 4 * n + t] = l as u8;
                    (sum_h, sum_l) = (sum_h + h as i32, sum_l + l as i32);
                }
                chunk[DW + 4 * n..DW + 4 * n + 4].copy_from_slice(&f16_at(&blk[208..]).to_le_bytes());
                chunk[CORR + 4 * n..CORR + 4 * n + 4].copy_from_slice(&(128 * (64 * sum_h + sum_l)).to_le_bytes());
            }
        }
    });
    Packed::from_parts(Q6_K, rows, groups, nb, data)
}

/// A Q8_K row as `Acts` takes it: 32-element chunks, each with its block's d (s unused).
pub(super) fn chunks_of(row: &[BlockQ8K]) -> Vec<BlockQ8> {
    row.iter()
        .flat_map(|blk| {
            (0..8).map(move |c| BlockQ8 { d: blk.d, s: 0.0, qs: blk.qs[32 * c..32 * c + 32].try_into().unwrap() })
        })
        .collect()
}

/// x's n rows (n × k) quantised to Q8_K (llama.cpp's AMX path uses `quantize_row_q8_K_ref`).
pub(super) fn rows_q8k(x: &[f32], n: usize, k: usize) -> Vec<Vec<BlockQ8>> {
    crate::par::map(n, |i| chunks_of(&quantize_q8k(&x[i * k..(i + 1) * k])))
}

/// The tile kernel for rows r0..r1, inputs i0..i1 (both from multiples of 16), as
/// `kernel::gemm_task` says; per 16-row group two input groups at a time: B tiles H, L of a
/// chunk in tmm0/1, the two A tiles in tmm2/3, C = (a·H, a′·H, a·L, a′·L) in tmm4..7 over the
/// whole block, then combined and scaled into f32 accumulators.
///
/// # Safety
/// As `kernel::gemm_task`; `SIMD` needs AVX-512 F (the epilogue), the engine's own needs.
#[inline(always)]
pub(super) unsafe fn gemm<T: Tmul, const SIMD: bool>(
    mut tm: T,
    w: &Packed,
    (r0, r1): (usize, usize),
    acts: &Acts,
    (i0, i1): (usize, usize),
    out: *mut f32,
    ldo: usize,
) {
    let (r1, i1) = (r1.min(w.rows), i1.min(acts.n));
    tm.configure();
    #[repr(C, align(64))]
    struct C([[i32; 256]; 4]);
    let mut c = C([[0; 256]; 4]);
    for g in r0 / 16..r1.div_ceil(16) {
        for a0 in (i0 / 16..i1.div_ceil(16)).step_by(2) {
            let two = a0 + 1 < i1.div_ceil(16);
            let mut acc = [[0f32; 16]; 32];
            for b in 0..w.nb {
                let chunk = w.chunk(g, b);
                tm.zero::<4>();
                tm.zero::<6>();
                if two {
                    tm.zero::<5>();
                    tm.zero::<7>();
                }
                for k in 0..8 {
                    tm.load::<0>(chunk.add(k * 512), 64);
                    tm.load::<1>(chunk.add(L_PLANE + k * 512), 64);
                    tm.load::<2>(acts.tile(a0, 8 * b + k), 32);
                    tm.dpbssd::<4, 2, 0>();
                    tm.dpbssd::<6, 2, 1>();
                    if two {
                        tm.load::<3>(acts.tile(a0 + 1, 8 * b + k), 32);
                        tm.dpbssd::<5, 3, 0>();
                        tm.dpbssd::<7, 3, 1>();
                    }
                }
                tm.store::<4>(c.0[0].as_mut_ptr() as *mut u8, 64);
                tm.store::<6>(c.0[2].as_mut_ptr() as *mut u8, 64);
                if two {
                    tm.store::<5>(c.0[1].as_mut_ptr() as *mut u8, 64);
                    tm.store::<7>(c.0[3].as_mut_ptr() as *mut u8, 64);
                }
                let dw = chunk.add(DW) as *const f32;
                for a in 0..1 + two as usize {
                    let (da, _, _) = acts.scales(a0 + a, 8 * b);
                    let (h, l) = (c.0[a].as_ptr(), c.0[2 + a].as_ptr());
                    let at = &mut acc[16 * a..16 * a + 16];
                    if SIMD {
                        scale_avx512(h, l, dw, da, at);
                    } else {
                        for (m, row) in at.iter_mut().enumerate() {
                            for (lane, o) in row.iter_mut().enumerate() {
                                let isum = (*h.add(16 * m + lane) << 6) + *l.add(16 * m + lane);
                                *o = (isum as f32).mul_add(*dw.add(lane) * *da.add(m), *o);
                            }
                        }
                    }
                }
            }
            for i in a0 * 16..(a0 * 16 + 32).min(i1) {
                for j in g * 16..(g * 16 + 16).min(r1) {
                    *out.add((i - i0) * ldo + j - r0) = acc[i - a0 * 16][j - g * 16];
                }
            }
        }
    }
}

/// acc[m] = fma(f32(64·H[m] + L[m]), d_w·d_a[m], acc[m]) for the 16 rows m of an input group.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn scale_avx512(h: *const i32, l: *const i32, dw: *const f32, da: *const f32, acc: &mut [[f32; 16]]) {
    let dw = _mm512_loadu_ps(dw);
    for (m, row) in acc.iter_mut().enumerate() {
        let hv = _mm512_loadu_si512(h.add(16 * m) as *const __m512i);
        let lv = _mm512_loadu_si512(l.add(16 * m) as *const __m512i);
        let v = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32::<6>(hv), lv));
        let d = _mm512_mul_ps(dw, _mm512_set1_ps(*da.add(m)));
        _mm512_storeu_ps(row.as_mut_ptr(), _mm512_fmadd_ps(v, d, _mm512_loadu_ps(row.as_ptr())));
    }
}

/// One to four inputs (`acts` from `Acts::few_from`), the outputs of groups g0..g1, at out +
/// i·si + (j − 16·g0)·sj: per group and block, `vpdpbusd` of the activations as unsigned bytes
/// (a + 128, four broadcast at a time) against the planes, 16 rows a vector; 64·S_h + S_l less
/// the packed correction is isum.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI; `out` valid for those elements; g1 ≤ `w.groups`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn few<const N: usize>(
    w: &Packed,
    (g0, g1): (usize, usize),
    acts: &Acts,
    out: *mut f32,
    si: usize,
    sj: usize,
) {
    let flip = _mm512_set1_epi8(0x80u8 as i8);
    for g in g0..g1 {
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..w.nb {
            let chunk = w.chunk(g, b);
            let mut sh = [_mm512_setzero_si512(); N];
            let mut sl = [_mm512_setzero_si512(); N];
            for k in 0..8 {
                let a = acts.tile(0, 8 * b + k) as *const i32;
                for r in 0..8 {
                    let hv = _mm512_loadu_si512(chunk.add(k * 512 + r * 64) as *const __m512i);
                    let lv = _mm512_loadu_si512(chunk.add(L_PLANE + k * 512 + r * 64) as *const __m512i);
                    for i in 0..N {
                        // Input i's four bytes 4r..4r + 4 of this chunk, as a + 128.
                        let av = _mm512_xor_si512(_mm512_set1_epi32(*a.add(8 * i + r)), flip);
                        sh[i] = _mm512_dpbusd_epi32(sh[i], av, hv);
                        sl[i] = _mm512_dpbusd_epi32(sl[i], av, lv);
                    }
                }
            }
            let corr = _mm512_loadu_si512(chunk.add(CORR) as *const __m512i);
            let dw = _mm512_loadu_ps(chunk.add(DW) as *const f32);
            let (da, _, _) = acts.scales(0, 8 * b);
            for i in 0..N {
                let isum = _mm512_sub_epi32(_mm512_add_epi32(_mm512_slli_epi32::<6>(sh[i]), sl[i]), corr);
                let d = _mm512_mul_ps(dw, _mm512_set1_ps(*da.add(i)));
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), d, acc[i]);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            let mut v = [0f32; 16];
            _mm512_storeu_ps(v.as_mut_ptr(), *a);
            for (l, &x) in v.iter().enumerate().take(w.rows.saturating_sub(g * 16).min(16)) {
                *out.add(i * si + ((g - g0) * 16 + l) * sj) = x;
            }
        }
    }
}

/// One output in this order from the file's Q6_K block bytes and the row's Q8_K blocks: the
/// reference the kernels are tested against.
#[cfg(test)]
pub(super) fn dot_ref(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut acc = 0f32;
    let mut q = [0i8; 256];
    for (blk, ab) in w.chunks_exact(q6_k::BYTES).zip(a) {
        q6_k::unpack(blk, &mut q);
        let mut isum = 0i32;
        for g in 0..16 {
            let s: i32 = (g * 16..g * 16 + 16).map(|e| q[e] as i32 * ab.qs[e] as i32).sum();
            isum += blk[192 + g] as i8 as i32 * s;
        }
        acc = (isum as f32).mul_add(f16_at(&blk[208..]) * ab.d, acc);
    }
    acc
}
