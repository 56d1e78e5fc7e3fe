//! Causal scaled-dot-product attention with grouped-query heads, in the memory-lean style of
//! FlashAttention: the forward keeps only the output and one logsumexp per (batch, head,
//! query); the backward recomputes the probabilities from them, a tile of queries at a time.
//! No B·H·T·T buffer exists at any point; a worker holds one tile of scores (64 × T).
//!
//! Layout: q (B, Tq, H, D); k, v (B, S, KVH, D) of which the first Tk rows of each batch are
//! valid (S ≥ Tk lets a KV cache be passed without copying). Query i sits at absolute position
//! Tk − Tq + i and sees keys 0..=that (minus those outside a sliding window, if any). Query head
//! h reads KV head h / (H / KVH), as Hugging Face's `repeat_kv` does.

use crate::backend::{self, Cpu};
use crate::float::{dot, Float};
use crate::ops::Pos;
use crate::Tensor;
use anyhow::{bail, Result};
use rayon::prelude::*;

#[cfg(feature = "cuda")]
pub mod cuda;

#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub b: usize,
    pub tq: usize,
    pub tk: usize,
    /// Rows per batch in the k/v buffers (≥ tk).
    pub s: usize,
    pub h: usize,
    pub kvh: usize,
    pub d: usize,
    /// Sliding window: a query sees at most this many most recent keys (itself included).
    pub window: Option<usize>,
}

impl AttnDims {
    fn group(&self) -> usize {
        self.h / self.kvh
    }
    fn key_range(&self, i: usize) -> (usize, usize) {
        let pos = self.tk - self.tq + i;
        let lo = match self.window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        };
        (lo, pos + 1)
    }
    /// `key_range` of query i of batch row b, kept inside its packed example when `starts`
    /// (one per query position: the row index where the query's example starts) is given.
    fn key_range_in(&self, b: usize, i: usize, starts: Option<&[u32]>) -> (usize, usize) {
        let (lo, hi) = self.key_range(i);
        match starts {
            Some(st) => (lo.max(st[b * self.tq + i] as usize), hi),
            None => (lo, hi),
        }
    }
    fn q_at(&self, b: usize, i: usize, h: usize) -> usize {
        ((b * self.tq + i) * self.h + h) * self.d
    }
    fn kv_at(&self, b: usize, j: usize, g: usize) -> usize {
        ((b * self.s + j) * self.kvh + g) * self.d
    }
}

/// Queries per tile: each tile's scores are one GEMM (Q_tile·Kᵀ) and its output another (P·V).
/// A worker holds one tile of scores, TILE × Tk: memory O(T), never T × T per head kept.
const TILE: usize = 64;

/// C (m×n) = alpha·A·B + beta·C over raw strided pointers (see `Float::gemm`).
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn mm<F: Float>(
    m: usize,
    k: usize,
    n: usize,
    alpha: F,
    a: *const F,
    rsa: usize,
    csa: usize,
    b: *const F,
    rsb: usize,
    csb: usize,
    beta: F,
    c: *mut F,
    rsc: usize,
) {
    F::gemm(m, k, n, alpha, a, rsa as isize, csa as isize, b, rsb as isize, csb as isize, beta, c, rsc as isize, 1)
}

/// Returns (out (B, Tq, H, D), lse (B, H, Tq)).
pub fn attn_fwd<F: Float>(q: &[F], k: &[F], v: &[F], dm: AttnDims, scale: F) -> (Vec<F>, Vec<F>) {
    attn_fwd_packed(q, k, v, dm, scale, None)
}

/// `attn_fwd` over packed rows: with `starts` (B·Tq, see `Segments`), a query sees only the keys
/// of its own example (Tq = Tk).
pub fn attn_fwd_packed<F: Float>(
    q: &[F],
    k: &[F],
    v: &[F],
    dm: AttnDims,
    scale: F,
    starts: Option<&[u32]>,
) -> (Vec<F>, Vec<F>) {
    let d = dm.d;
    let (qrs, kvrs) = (dm.h * d, dm.kvh * d);
    let per_head: Vec<(Vec<F>, Vec<F>)> = (0..dm.b * dm.h)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / dm.h, bh % dm.h);
            let g = h / dm.group();
            let mut out = vec![F::ZERO; dm.tq * d];
            let mut lse = vec![F::ZERO; dm.tq];
            let mut s = vec![F::ZERO; TILE.min(dm.tq) * dm.tk];
            for i0 in (0..dm.tq).step_by(TILE) {
                let rows = TILE.min(dm.tq - i0);
                let (k0, _) = dm.key_range_in(b, i0, starts);
                let (_, k1) = dm.key_range_in(b, i0 + rows - 1, starts);
                let nk = k1 - k0;
                // S = scale · Q_tile · K[k0..k1]ᵀ
                if rows == 1 {
                    // One query (decoding): dot products, no GEMM packing of K.
                    let qr = &q[dm.q_at(b, i0, h)..][..d];
                    for (j, sj) in s[..nk].iter_mut().enumerate() {
                        *sj = scale * crate::float::dot(qr, &k[dm.kv_at(b, k0 + j, g)..][..d]);
                    }
                } else {
                    // SAFETY: every pointer/stride pair stays inside q, k and s.
                    unsafe {
                        mm(
                            rows,
                            d,
                            nk,
                            scale,
                            q.as_ptr().add(dm.q_at(b, i0, h)),
                            qrs,
                            1,
                            k.as_ptr().add(dm.kv_at(b, k0, g)),
                            1,
                            kvrs,
                            F::ZERO,
                            s.as_mut_ptr(),
                            nk,
                        );
                    }
                }
                for r in 0..rows {
                    let (lo, hi) = dm.key_range_in(b, i0 + r, starts);
                    let row = &mut s[r * nk..(r + 1) * nk];
                    let (a, z) = (lo - k0, hi - k0);
                    let m = row[a..z].iter().fold(F::NEG_INFINITY, |acc, &x| acc.max(x));
                    row[..a].fill(F::ZERO);
                    row[z..].fill(F::ZERO);
                    let mut l = F::ZERO;
                    for x in &mut row[a..z] {
                        *x = (*x - m).exp_fast();
                        l += *x;
                    }
                    let inv = F::ONE / l;
                    row.iter_mut().for_each(|x| *x *= inv);
                    lse[i0 + r] = m + l.ln();
                }
                // O_tile = P · V[k0..k1]
                if rows == 1 {
                    let o = &mut out[i0 * d..(i0 + 1) * d];
                    for (j, &p) in s[..nk].iter().enumerate() {
                        for (x, &vv) in o.iter_mut().zip(&v[dm.kv_at(b, k0 + j, g)..][..d]) {
                            *x += p * vv;
                        }
                    }
                } else {
                    unsafe {
                        mm(
                            rows,
                            nk,
                            d,
                            F::ONE,
                            s.as_ptr(),
                            nk,
                            1,
                            v.as_ptr().add(dm.kv_at(b, k0, g)),
                            kvrs,
                            1,
                            F::ZERO,
                            out.as_mut_ptr().add(i0 * d),
                            d,
                        );
                    }
                }
            }
            (out, lse)
        })
        .collect();
    let mut out = vec![F::ZERO; dm.b * dm.tq * dm.h * d];
    let mut lse = vec![F::ZERO; dm.b * dm.h * dm.tq];
    for (bh, (o, l)) in per_head.into_iter().enumerate() {
        let (b, h) = (bh / dm.h, bh % dm.h);
        for i in 0..dm.tq {
            out[dm.q_at(b, i, h)..][..d].copy_from_slice(&o[i * d..(i + 1) * d]);
        }
        lse[bh * dm.tq..(bh + 1) * dm.tq].copy_from_slice(&l);
    }
    (out, lse)
}

/// The inference forward (KV cache, no lse) in llama.cpp's arithmetic, bit for bit: ggml's
/// non-flash attention on the CPU (AVX-512 build) with an f32 cache. Per query: scores
/// s_j = `ggml::dot_f32`(k_j, q)·scale, masked to −∞ outside the visible keys over a row padded
/// to 16 (llama.cpp's cache is padded to 256 and masked); `ggml::soft_max` (f64 sum of 16-lane
/// chunks), times (f32)(1/sum); then out_t = Σ_j p_j·v_jt as ggml's KQV matmul sums it: one
/// query (decoding) goes through `ggml_vec_dot_f32` (`ggml::dot_f32`, row padded to 64), a
/// batch of queries (the prompt) through tinyBLAS (`ggml::dot_f32_tinyblas`, padded to 16).
/// Padding adds exact zeros (p = 0), so the sums equal llama.cpp's over its whole padded cache.
pub fn attn_fwd_ggml(q: &[f32], k: &[f32], v: &[f32], dm: AttnDims, scale: f32) -> Vec<f32> {
    let rows: Vec<Vec<usize>> = (0..dm.b).map(|b| (0..dm.tk).map(|j| dm.kv_at(b, j, 0)).collect()).collect();
    let per_b = dm.tq * dm.h * dm.d;
    let seqs: Vec<SeqAttn> = rows
        .iter()
        .enumerate()
        .map(|(b, r)| SeqAttn { q: &q[b * per_b..(b + 1) * per_b], tq: dm.tq, rows: r })
        .collect();
    let heads = Heads { h: dm.h, kvh: dm.kvh, d: dm.d, window: dm.window };
    attn_ggml_seqs(&seqs, k, v, heads, scale)
}

/// One sequence of an [`attn_ggml_seqs`] call.
pub struct SeqAttn<'a> {
    /// Queries (tq, H, D), at absolute positions tk − tq .. tk, tk = `rows.len()`.
    pub q: &'a [f32],
    pub tq: usize,
    /// Where key/value row j (j < tk) starts in the K and V buffers (its KV head 0; row j's
    /// head g is g·D further on): a KV cache's block table, or j·stride for a contiguous one.
    pub rows: &'a [usize],
}

/// The head layout shared by every sequence of a call.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub h: usize,
    pub kvh: usize,
    pub d: usize,
    pub window: Option<usize>,
}

/// [`attn_fwd_ggml`] for several sequences of their own lengths whose keys and values sit
/// anywhere in shared K/V buffers (a paged KV cache): the sequences' outputs one after another,
/// each (tq, H, D) what `attn_fwd_ggml` gives for that sequence alone with a contiguous cache,
/// bit for bit (the rows are read in the same order into the same lanes), whatever else is in
/// the call.
///
/// A prompt (tq > 1) is tiled: its keys are transposed once per KV head in blocks of 16, so
/// that 16 scores are one `ggml::dot_f32_keys16_fast` (each score `dot_f32`'s lanes and
/// additions, no horizontal sum per score), and P·V keeps its 16 lane accumulators in
/// registers (`ggml::dot_f32_tinyblas_columns_at_fast`). A decoding row (tq = 1) reads its keys
/// in place: transposing them would cost as much as its one pass over them. Tasks are
/// (sequence, head, run of 32 queries): heads alone leave threads idle (9 heads on 16 threads),
/// and runs even out the causal triangle's unequal rows on the work-stealing pool. A decoding
/// row's task takes the query heads of one KV head together (they read the same keys, which
/// stay in L1 from the first head to the next; each head's arithmetic is unchanged): a server
/// step of 32 decoding rows was 288 tasks a layer, each with its own scratch, now 96.
pub fn attn_ggml_seqs(seqs: &[SeqAttn], k: &[f32], v: &[f32], hd: Heads, scale: f32) -> Vec<f32> {
    use crate::ggml;
    const RUN: usize = 32;
    let d = hd.d;
    let grp = hd.h / hd.kvh;
    let up = |n: usize, m: usize| n.div_ceil(m) * m;
    // kts[s·KVH + g][blk·16·D + e·16 + j] = element e of key 16·blk + j of KV head g (zeros past
    // the last key); empty for decoding rows.
    let prompts = seqs.iter().any(|s| s.tq > 1);
    let kts: Vec<Vec<f32>> = if !prompts {
        Vec::new()
    } else {
        crate::par::map(seqs.len() * hd.kvh, |sg| {
            let (s, g) = (&seqs[sg / hd.kvh], sg % hd.kvh);
            if s.tq == 1 {
                return Vec::new();
            }
            let mut kt = vec![0f32; up(s.rows.len(), 16) * d];
            for (j, &at) in s.rows.iter().enumerate() {
                let blk = &mut kt[j / 16 * 16 * d..][..16 * d];
                for (e, &x) in k[at + g * d..][..d].iter().enumerate() {
                    blk[e * 16 + j % 16] = x;
                }
            }
            kt
        })
    };
    // (sequence, first head, run): a prompt's tasks one head each, a decoding row's the `grp`
    // heads of one KV head — or one head each when that leaves threads idle (one sequence
    // decoding on 16 threads: 3 KV heads, 9 heads); each head's arithmetic is the same.
    let decoding = seqs.iter().filter(|s| s.tq == 1).count();
    let per = if decoding * hd.kvh < crate::par::threads() { 1 } else { grp };
    let mut tasks: Vec<(usize, usize, usize)> = seqs
        .iter()
        .enumerate()
        .flat_map(|(si, s)| {
            let step = if s.tq == 1 { per } else { 1 };
            (0..hd.h).step_by(step).flat_map(move |h| (0..s.tq.div_ceil(RUN)).map(move |r| (si, h, r)))
        })
        .collect();
    // The longest runs (most keys: the causal triangle's last queries) first, so that the
    // threads do not end waiting on one long run claimed last.
    tasks.sort_by_key(|&(si, _, r)| std::cmp::Reverse(seqs[si].rows.len() - seqs[si].tq + r * RUN));
    // The sequences' outputs one after another, each (tq, H, D), written by the tasks that
    // compute them (no serial gather after the parallel part): a prompt's task its run's rows
    // of its head, a decoding row's task its `grp` heads.
    let starts: Vec<usize> = seqs
        .iter()
        .scan(0, |at, s| {
            let here = *at;
            *at += s.tq * hd.h * d;
            Some(here)
        })
        .collect();
    let total: usize = seqs.iter().map(|s| s.tq * hd.h * d).sum();
    let written: usize = tasks
        .iter()
        .map(|&(si, _, r)| match seqs[si].tq {
            1 => per * d,
            tq => (((r + 1) * RUN).min(tq) - r * RUN) * d,
        })
        .sum();
    assert_eq!(written, total, "attn_ggml_seqs: the tasks cover the output exactly once");
    let mut all = crate::par::uninit::<f32>(total);
    let dst = crate::par::SendPtr(all.as_mut_ptr() as *mut f32);
    crate::par::for_each(tasks.len(), |t| {
        let (si, h, r) = tasks[t];
        let s = &seqs[si];
        let g = h / grp;
        let (tq, tk) = (s.tq, s.rows.len());
        let (i0, i1) = (r * RUN, ((r + 1) * RUN).min(tq));
        let key_range = |i: usize| {
            let pos = tk - tq + i;
            let lo = hd.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            (lo, pos + 1)
        };
        let mut out = if tq > 1 { vec![0f32; (i1 - i0) * d] } else { Vec::new() };
        let mut acc = Vec::new();
        // Row j's head g at k[rows[j] + g·D..] (likewise v).
        let offs: Vec<usize> = s.rows.iter().map(|&at| at + g * d).collect();
        let kt: &[f32] = if tq > 1 { &kts[si * hd.kvh + g] } else { &[] };
        // A prompt's scores for the whole run first, key block by key block: a block of 16
        // transposed keys (4 KB at D 64) stays in L1 while the run's queries pass it, where
        // query by query every query streamed all its keys from L2. Each score is the same
        // `dot_f32_keys16_fast` call as before; scores outside a query's keys stay −∞.
        let w16 = up(tk, 16);
        let mut scs = Vec::new();
        if tq > 1 {
            scs = vec![f32::NEG_INFINITY; (i1 - i0) * w16];
            let (blk0, blk1) = (key_range(i0).0 / 16, key_range(i1 - 1).1.div_ceil(16));
            let (mut s16, mut t16) = ([0f32; 16], [0f32; 16]);
            let needs = |i: usize, blk: usize| {
                let (lo, hi) = key_range(i);
                blk >= lo / 16 && blk < hi.div_ceil(16)
            };
            let query = |i: usize| &s.q[(i * hd.h + h) * d..][..d];
            for blk in blk0..blk1 {
                let kb = &kt[blk * 16 * d..][..16 * d];
                let mut put = |i: usize, sc: &[f32; 16]| {
                    let (lo, hi) = key_range(i);
                    let (j0, j1) = ((blk * 16).max(lo), (blk * 16 + 16).min(hi));
                    scs[(i - i0) * w16 + j0..(i - i0) * w16 + j1].copy_from_slice(&sc[j0 - blk * 16..j1 - blk * 16]);
                };
                // Two queries at a time where both see this block (each key vector loaded once
                // for both; each score the same operations as one at a time).
                let mut i = i0;
                while i < i1 {
                    if !needs(i, blk) {
                        i += 1;
                        continue;
                    }
                    if i + 1 < i1 && needs(i + 1, blk) {
                        ggml::dot_f32_keys16x2_fast([&mut s16, &mut t16], kb, [query(i), query(i + 1)], scale);
                        put(i, &s16);
                        put(i + 1, &t16);
                        i += 2;
                    } else {
                        ggml::dot_f32_keys16_fast(&mut s16, kb, query(i), scale);
                        put(i, &s16);
                        i += 1;
                    }
                }
            }
        }
        // p = softmax(scores of query i), zeros past its keys; returns its rows of V.
        let probs = |i: usize, sc: &[f32], p: &mut [f32]| {
            let (lo, hi) = key_range(i);
            softmax_padded(sc, p, lo, hi);
            tk.min(up(hi, 16))
        };
        if tq == 1 {
            // A decoding row, heads h..h + grp, its keys read in place.
            let mut out = vec![0f32; per * d];
            decode_heads(&s.q[h * d..(h + per) * d], k, v, &offs, d, hd.window, scale, &mut out);
            // SAFETY: heads h..h + per of this row are this task's alone (tasks step the heads
            // by per), inside `all` (the coverage is checked above).
            unsafe { std::ptr::copy_nonoverlapping(out.as_ptr(), dst.get().add(starts[si] + h * d), per * d) };
            return;
        }
        // A prompt's queries four (or two) at a time through P·V, so that each pass over V
        // serves them all (`dot_f32_tinyblas_columns_at_many`: the same bits as one by one).
        let mut ps = vec![vec![0f32; w16]; 4];
        let mut i = i0;
        while i < i1 {
            let g = match i1 - i {
                1 => 1,
                2 | 3 => 2,
                _ => 4,
            };
            let mut rows = [0usize; 4];
            for (q, pq) in ps[..g].iter_mut().enumerate() {
                rows[q] = probs(i + q, &scs[(i + q - i0) * w16..][..w16], pq);
            }
            let mut outs: Vec<&mut [f32]> = out[(i - i0) * d..(i - i0 + g) * d].chunks_mut(d).collect();
            let pr: Vec<&[f32]> = ps[..g].iter().map(|p| &p[..]).collect();
            ggml::dot_f32_tinyblas_columns_at_many(&mut outs, v, &offs, &pr, &rows[..g], &mut acc);
            i += g;
        }
        for (ii, row) in out.chunks_exact(d).enumerate() {
            // SAFETY: query i0 + ii's head h is this task's alone (one task per (sequence,
            // head, run)), inside `all`.
            unsafe {
                std::ptr::copy_nonoverlapping(row.as_ptr(), dst.get().add(starts[si] + ((i0 + ii) * hd.h + h) * d), d)
            };
        }
    });
    // SAFETY: every task wrote its part and the parts cover `all` exactly (checked above);
    // for_each returns only when every task ran to its end.
    unsafe { crate::par::assume_init(all) }
}

/// A decoding row's query heads `q` ((n, D), the heads that read one KV head) against the
/// keys and values at `offs` in `k` and `v` (positions 0..tk, the row's own the last) → `out`
/// (n, D): scores by `dot_f32_rows_at_fast` (keys read in place), the softmax over scores
/// padded to 16 with −∞, P·V by `dot_f32_columns_at_fast` over p padded to 64 with zeros
/// (llama.cpp's cache holds Vᵀ; this reads V's columns without transposing it). What
/// `attn_ggml_seqs` runs for a row with tq = 1, and `attn_decode_packed` on widened rows.
#[allow(clippy::too_many_arguments)]
fn decode_heads(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    offs: &[usize],
    d: usize,
    window: Option<usize>,
    scale: f32,
    out: &mut [f32],
) {
    decode_heads_of(q, DecodeKv::F32(k, v), offs, d, window, scale, out)
}

/// Where `decode_heads_of` reads keys and values: f32 rows, or f16 rows (their bits) that the
/// kernels widen as they load them (`ggml::dot_f16_rows64_at`, `dot_f16_columns_at`: heads of
/// 64 on AVX-512 F + F16C), the same bits as widening the rows first.
#[derive(Clone, Copy)]
enum DecodeKv<'a> {
    F32(&'a [f32], &'a [f32]),
    F16(&'a [u16], &'a [u16]),
}

/// `decode_heads` over f32 or f16 keys and values.
#[allow(clippy::too_many_arguments)]
fn decode_heads_of(
    q: &[f32],
    kv: DecodeKv,
    offs: &[usize],
    d: usize,
    window: Option<usize>,
    scale: f32,
    out: &mut [f32],
) {
    use crate::ggml;
    let up = |n: usize, m: usize| n.div_ceil(m) * m;
    let tk = offs.len();
    let (lo, hi) = (window.map_or(0, |w| tk.saturating_sub(w)), tk);
    let (mut sc, mut p, mut acc) = (vec![f32::NEG_INFINITY; up(tk, 16)], vec![0f32; up(tk, 64)], Vec::new());
    for (qr, o) in q.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        match kv {
            DecodeKv::F32(k, _) => ggml::dot_f32_rows_at_fast(&mut sc[lo..hi], k, &offs[lo..hi], qr, scale),
            DecodeKv::F16(k, _) => ggml::dot_f16_rows64_at(&mut sc[lo..hi], k, &offs[lo..hi], qr, scale),
        }
        softmax_padded(&sc, &mut p, lo, hi);
        match kv {
            DecodeKv::F32(_, v) => ggml::dot_f32_columns_at_fast(o, v, offs, &p, &mut acc),
            DecodeKv::F16(_, v) => ggml::dot_f16_columns_at(o, v, offs, &p),
        }
    }
}

/// A packed pool's bytes as f16 values when they are f16 and 2-byte aligned.
fn as_f16<'a>(x: &PackedKv<'a>) -> Option<&'a [u16]> {
    if x.ty != crate::quant::GgmlType::F16 || !x.bytes.as_ptr().cast::<u16>().is_aligned() {
        return None;
    }
    // SAFETY: aligned (checked), u16 has no invalid bit patterns, the length is in bounds.
    Some(unsafe { std::slice::from_raw_parts(x.bytes.as_ptr().cast::<u16>(), x.bytes.len() / 2) })
}

/// p = softmax of the scores `sc[lo..hi]` as llama.cpp's masked softmax computes it: the max
/// over the row's keys, then `ggml::soft_max` over the scores padded to 16 (−∞ outside the
/// keys, so exact zeros), scaled by 1/sum; the rest of p zero.
fn softmax_padded(sc: &[f32], p: &mut [f32], lo: usize, hi: usize) {
    let n16 = hi.div_ceil(16) * 16;
    let max = sc[lo..hi].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    p.fill(0.0);
    let sum = crate::ggml::soft_max(&mut p[..n16], &sc[..n16], max);
    let inv = (1.0 / sum) as f32;
    for x in &mut p[..n16] {
        *x *= inv;
    }
}

/// A packed KV pool's keys or values: `row_bytes` a position (all KV heads), in a llama.cpp
/// block format or f16/bf16.
#[derive(Clone, Copy)]
pub struct PackedKv<'a> {
    pub ty: crate::quant::GgmlType,
    pub bytes: &'a [u8],
    pub row_bytes: usize,
}

/// [`attn_ggml_seqs`] for sequences that each decode one row (tq = 1) over a packed KV pool
/// (`rows` as for f32: value offsets, position row × KVH·D). Each (sequence, KV head) task
/// widens only that head's keys and values to f32, into a scratch of its own that stays in
/// cache, and runs `decode_heads` on it: the same values into the same kernels as widening the
/// whole pool first (exact conversions, the head a whole number of blocks), so the same bits,
/// with half (f16) or less of an f32 pool's bytes read from memory and no pool-sized scratch.
pub fn attn_decode_packed(seqs: &[SeqAttn], k: PackedKv, v: PackedKv, hd: Heads, scale: f32) -> Result<Vec<f32>> {
    let (d, grp, row) = (hd.d, hd.h / hd.kvh, hd.kvh * hd.d);
    if let Some(s) = seqs.iter().find(|s| s.tq != 1) {
        bail!("attn_decode_packed: decoding rows only, got a sequence of {} queries", s.tq);
    }
    let (kh, vh) = (k.ty.row_bytes(d)?, v.ty.row_bytes(d)?);
    for (x, h, what) in [(&k, kh, "keys"), (&v, vh, "values")] {
        let rows = x.bytes.len() / x.row_bytes.max(1);
        if x.ty.row_bytes(row)? != x.row_bytes || hd.kvh * h != x.row_bytes || !d.is_multiple_of(x.ty.block_size()) {
            bail!(
                "attn_decode_packed: {what} of {} rows of {} bytes do not hold {} heads of {d}",
                x.ty.name(),
                x.row_bytes,
                hd.kvh
            );
        }
        if let Some(&at) = seqs.iter().flat_map(|s| s.rows).find(|&&at| at / row >= rows) {
            bail!("attn_decode_packed: row {} past the pool's {rows}", at / row);
        }
    }
    // f16 keys and values with heads of 64: read in place, widened in registers by the
    // kernels (the same bits as the widened rows below; half an f32 pool's bytes from memory
    // and no scratch). A row of KVH·D f16 values: position r's head g at r·KVH·D + g·D, the
    // f32 offsets `rows` already hold.
    if let (Some(k16), Some(v16), true) = (as_f16(&k), as_f16(&v), d == 64 && crate::ggml::f16_decode_kernels()) {
        // Task t = (sequence, KV head) writes that sequence's heads g·grp.. (grp, D): in task
        // order they are the sequences' (H, D) rows one after another.
        let mut out = vec![0f32; seqs.len() * hd.h * d];
        crate::par::chunks_mut(&mut out, grp * d, |t, out| {
            let (s, g) = (&seqs[t / hd.kvh], t % hd.kvh);
            let offs: Vec<usize> = s.rows.iter().map(|&at| at + g * d).collect();
            let q = &s.q[g * grp * d..(g + 1) * grp * d];
            decode_heads_of(q, DecodeKv::F16(k16, v16), &offs, d, hd.window, scale, out);
        });
        return Ok(out);
    }
    thread_local! {
        // Each pool thread's widened keys, values and their offsets, kept from task to task
        // (grown, never zeroed: every task writes the part it reads), so a task's scratch is
        // already in cache and costs no allocation. Taken out while a task uses it (a task that
        // ran another on this thread would find it empty, not borrowed). It keeps the longest
        // context's size: 2·tk·d floats a thread.
        static SCRATCH: std::cell::Cell<(Vec<f32>, Vec<f32>, Vec<usize>)> = Default::default();
    }
    let pieces: Vec<Vec<f32>> = crate::par::map(seqs.len() * hd.kvh, |t| {
        let (s, g) = (&seqs[t / hd.kvh], t % hd.kvh);
        let tk = s.rows.len();
        let (mut kf, mut vf, mut offs) = SCRATCH.take();
        if kf.len() < tk * d {
            kf.resize(tk * d, 0.0);
            vf.resize(tk * d, 0.0);
        }
        offs.clear();
        offs.extend((0..tk).map(|j| j * d));
        for (j, &at) in s.rows.iter().enumerate() {
            let r = at / row;
            let kb = &k.bytes[r * k.row_bytes + g * kh..][..kh];
            crate::quant::dequantize_row(k.ty, kb, &mut kf[j * d..(j + 1) * d]);
            let vb = &v.bytes[r * v.row_bytes + g * vh..][..vh];
            crate::quant::dequantize_row(v.ty, vb, &mut vf[j * d..(j + 1) * d]);
        }
        let mut out = vec![0f32; grp * d];
        decode_heads(
            &s.q[g * grp * d..(g + 1) * grp * d],
            &kf[..tk * d],
            &vf[..tk * d],
            &offs,
            d,
            hd.window,
            scale,
            &mut out,
        );
        SCRATCH.set((kf, vf, offs));
        out
    });
    // Task t = (sequence, KV head) holds that sequence's heads g·grp.. (grp, D): in task order
    // they are the sequences' (H, D) rows one after another.
    Ok(pieces.concat())
}

/// Returns (dq, dk, dv); dk/dv have the k/v buffer layout (B, S, KVH, D).
#[allow(clippy::too_many_arguments)]
pub fn attn_bwd<F: Float>(
    q: &[F],
    k: &[F],
    v: &[F],
    out: &[F],
    lse: &[F],
    dout: &[F],
    dm: AttnDims,
    scale: F,
) -> (Vec<F>, Vec<F>, Vec<F>) {
    attn_bwd_packed(q, k, v, out, lse, dout, dm, scale, None)
}

/// `attn_bwd` over packed rows (see `attn_fwd_packed`).
#[allow(clippy::too_many_arguments)]
pub fn attn_bwd_packed<F: Float>(
    q: &[F],
    k: &[F],
    v: &[F],
    out: &[F],
    lse: &[F],
    dout: &[F],
    dm: AttnDims,
    scale: F,
    starts: Option<&[u32]>,
) -> (Vec<F>, Vec<F>, Vec<F>) {
    let d = dm.d;
    let grp = dm.group();
    let (qrs, kvrs) = (dm.h * d, dm.kvh * d);
    // One task per (batch, KV head): it owns dk/dv of that head and dq of its query heads.
    let parts: Vec<(Vec<F>, Vec<F>, Vec<F>)> = (0..dm.b * dm.kvh)
        .into_par_iter()
        .map(|bg| {
            let (b, g) = (bg / dm.kvh, bg % dm.kvh);
            let mut dq = vec![F::ZERO; grp * dm.tq * d];
            let mut dk = vec![F::ZERO; dm.tk * d];
            let mut dv = vec![F::ZERO; dm.tk * d];
            let tile_n = TILE.min(dm.tq) * dm.tk;
            let (mut p, mut dp) = (vec![F::ZERO; tile_n], vec![F::ZERO; tile_n]);
            for hh in 0..grp {
                let h = g * grp + hh;
                for i0 in (0..dm.tq).step_by(TILE) {
                    let rows = TILE.min(dm.tq - i0);
                    let (k0, _) = dm.key_range_in(b, i0, starts);
                    let (_, k1) = dm.key_range_in(b, i0 + rows - 1, starts);
                    let nk = k1 - k0;
                    let (qp, dop) = (dm.q_at(b, i0, h), dm.q_at(b, i0, h));
                    let (kp, vp) = (dm.kv_at(b, k0, g), dm.kv_at(b, k0, g));
                    // SAFETY (all products below): pointers and strides stay inside their buffers.
                    unsafe {
                        // P = exp(scale·Q·Kᵀ − lse), masked to each row's visible keys.
                        mm(
                            rows,
                            d,
                            nk,
                            scale,
                            q.as_ptr().add(qp),
                            qrs,
                            1,
                            k.as_ptr().add(kp),
                            1,
                            kvrs,
                            F::ZERO,
                            p.as_mut_ptr(),
                            nk,
                        );
                        // dP = dO · Vᵀ
                        mm(
                            rows,
                            d,
                            nk,
                            F::ONE,
                            dout.as_ptr().add(dop),
                            qrs,
                            1,
                            v.as_ptr().add(vp),
                            1,
                            kvrs,
                            F::ZERO,
                            dp.as_mut_ptr(),
                            nk,
                        );
                    }
                    for r in 0..rows {
                        let i = i0 + r;
                        let (lo, hi) = dm.key_range_in(b, i, starts);
                        let l = lse[(b * dm.h + h) * dm.tq + i];
                        let o = dm.q_at(b, i, h);
                        let di = dot(&dout[o..o + d], &out[o..o + d]);
                        let (pr, dpr) = (&mut p[r * nk..(r + 1) * nk], &mut dp[r * nk..(r + 1) * nk]);
                        let (a, z) = (lo - k0, hi - k0);
                        pr[..a].fill(F::ZERO);
                        pr[z..].fill(F::ZERO);
                        dpr[..a].fill(F::ZERO);
                        dpr[z..].fill(F::ZERO);
                        for (p, dp) in pr[a..z].iter_mut().zip(&mut dpr[a..z]) {
                            *p = (*p - l).exp_fast();
                            *dp = *p * (*dp - di) * scale; // dS, with the softmax scale folded in
                        }
                    }
                    unsafe {
                        // dV[k0..k1] += Pᵀ · dO
                        mm(
                            nk,
                            rows,
                            d,
                            F::ONE,
                            p.as_ptr(),
                            1,
                            nk,
                            dout.as_ptr().add(dop),
                            qrs,
                            1,
                            F::ONE,
                            dv.as_mut_ptr().add(k0 * d),
                            d,
                        );
                        // dQ_tile = dS · K
                        mm(
                            rows,
                            nk,
                            d,
                            F::ONE,
                            dp.as_ptr(),
                            nk,
                            1,
                            k.as_ptr().add(kp),
                            kvrs,
                            1,
                            F::ZERO,
                            dq.as_mut_ptr().add((hh * dm.tq + i0) * d),
                            d,
                        );
                        // dK[k0..k1] += dSᵀ · Q
                        mm(
                            nk,
                            rows,
                            d,
                            F::ONE,
                            dp.as_ptr(),
                            1,
                            nk,
                            q.as_ptr().add(qp),
                            qrs,
                            1,
                            F::ONE,
                            dk.as_mut_ptr().add(k0 * d),
                            d,
                        );
                    }
                }
            }
            (dq, dk, dv)
        })
        .collect();
    let mut dq = vec![F::ZERO; q.len()];
    let mut dk = vec![F::ZERO; k.len()];
    let mut dv = vec![F::ZERO; v.len()];
    for (bg, (pq, pk, pv)) in parts.into_iter().enumerate() {
        let (b, g) = (bg / dm.kvh, bg % dm.kvh);
        for hh in 0..grp {
            for i in 0..dm.tq {
                dq[dm.q_at(b, i, g * grp + hh)..][..d].copy_from_slice(&pq[(hh * dm.tq + i) * d..][..d]);
            }
        }
        for j in 0..dm.tk {
            dk[dm.kv_at(b, j, g)..][..d].copy_from_slice(&pk[j * d..(j + 1) * d]);
            dv[dm.kv_at(b, j, g)..][..d].copy_from_slice(&pv[j * d..(j + 1) * d]);
        }
    }
    (dq, dk, dv)
}

fn dims(q: &Tensor, k: &Tensor, v: &Tensor, tk: usize, window: Option<usize>) -> Result<AttnDims> {
    let (qs, ks) = (q.shape(), k.shape());
    if qs.len() != 4 || ks.len() != 4 || k.shape() != v.shape() {
        bail!("attention: expected q (B,T,H,D) and k, v (B,S,KVH,D), got {qs:?}, {ks:?}, {:?}", v.shape());
    }
    let dm = AttnDims { b: qs[0], tq: qs[1], tk, s: ks[1], h: qs[2], kvh: ks[2], d: qs[3], window };
    if ks[0] != dm.b || ks[3] != dm.d || dm.kvh == 0 || !dm.h.is_multiple_of(dm.kvh) || tk > dm.s || dm.tq > tk {
        bail!("attention: incompatible q {qs:?} / k {ks:?} with {tk} valid keys");
    }
    Ok(dm)
}

/// The attention kernels a backend provides, for inputs checked by `dims`.
pub trait AttentionKernels {
    /// The training forward: (out (B, Tq, H, D), lse (B, H, Tq)).
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, dm: AttnDims, scale: f32) -> Result<(Tensor, Tensor)>;
    /// The inference forward (KV cache or none; no lse kept).
    fn attention_infer(&self, q: &Tensor, k: &Tensor, v: &Tensor, dm: AttnDims, scale: f32) -> Result<Tensor>;
    /// (dq, dk, dv), dk and dv in the k/v buffer layout.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
        dm: AttnDims,
        scale: f32,
    ) -> Result<(Tensor, Tensor, Tensor)>;
    /// Writes `new` (B, T, KVH, D) into `cache` (B, S, KVH, D) at rows pos..pos+T of each sequence.
    fn kv_write(&self, cache: &mut Tensor, new: &Tensor, pos: Pos) -> Result<()>;
    /// One query per sequence (q: (B, 1, H, D)) against keys 0..=pos of the cache; `dm.tk` is
    /// the most keys the step may see (pos + 1 for a host position, the capacity otherwise).
    fn attention_decode(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        dm: AttnDims,
        pos: Pos,
        scale: f32,
    ) -> Result<Tensor>;
    /// `rope_into_cache` then `attention_decode` for one decoding row a sequence (q (B, 1, H, D)
    /// and k, v (B, 1, KVH, D) not yet rotated): one launch on CUDA for a device position
    /// (`attn_decode_rope`, the same numbers); the default is the two ops.
    #[allow(clippy::too_many_arguments)]
    fn rope_attention_decode(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        table: &crate::ops::rope::RopeTable,
        kc: &mut Tensor,
        vc: &mut Tensor,
        dm: AttnDims,
        pos: Pos,
        scale: f32,
    ) -> Result<Tensor> {
        let q = crate::ops::rope::rope_into_cache(q, k, v, table, kc, vc, pos)?;
        self.attention_decode(&q, kc, vc, dm, pos, scale)
    }
    /// Moves a device-held position (u32 [1]) on by `n`.
    fn pos_add(&self, pos: &mut Tensor, n: usize) -> Result<()>;
    /// The training forward over packed rows (`Segments`): no attention across examples.
    fn attention_packed(
        &self,
        _q: &Tensor,
        _k: &Tensor,
        _v: &Tensor,
        _dm: AttnDims,
        _scale: f32,
        _seg: &Segments,
    ) -> Result<(Tensor, Tensor)> {
        bail!("attention over packed rows (--packing) is implemented on the CPU only")
    }
    /// [`paged_rope_kv`] (arguments checked).
    #[allow(clippy::too_many_arguments)]
    fn paged_rope_kv(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        table: &crate::ops::rope::RopeTable,
        kp: &mut Tensor,
        vp: &mut Tensor,
        rows: &PagedRows,
    ) -> Result<Tensor>;
    /// [`paged_attention`] (arguments checked).
    fn paged_attention(
        &self,
        q: &Tensor,
        kp: &Tensor,
        vp: &Tensor,
        rows: &PagedRows,
        heads: Heads,
        scale: f32,
    ) -> Result<Tensor>;
    #[allow(clippy::too_many_arguments)]
    fn attention_packed_backward(
        &self,
        _q: &Tensor,
        _k: &Tensor,
        _v: &Tensor,
        _out: &Tensor,
        _lse: &Tensor,
        _dout: &Tensor,
        _dm: AttnDims,
        _scale: f32,
        _seg: &Segments,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        bail!("attention over packed rows (--packing) is implemented on the CPU only")
    }
}

impl AttentionKernels for Cpu {
    /// The reference of the device kernel (f32 pools): `rope_positions` of q and k, then each
    /// row's k and v copied to its pool row.
    fn paged_rope_kv(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        table: &crate::ops::rope::RopeTable,
        kp: &mut Tensor,
        vp: &mut Tensor,
        rows: &PagedRows,
    ) -> Result<Tensor> {
        let (qs, ks) = (q.shape().to_vec(), k.shape().to_vec());
        let (n, d) = (qs[0], qs[2]);
        let pos = rows.pos.as_u32()?;
        let rot =
            |x: &Tensor, heads: usize| crate::ops::rope::rope_positions(&x.reshape(&[1, n, heads, d])?, table, pos);
        let qr = rot(q, qs[1])?.reshape(&qs)?;
        let kr = rot(k, ks[1])?;
        let row = ks[1] * d;
        let dst = rows.dst.as_u32()?;
        for (pool, src) in [(kp, kr.as_f32()?), (vp, v.as_f32()?)] {
            let p = pool.f32_mut()?;
            for (r, &at) in dst.iter().enumerate() {
                p[at as usize * row..][..row].copy_from_slice(&src[r * row..][..row]);
            }
        }
        Ok(qr)
    }
    /// The reference of the device kernel (f32 pools): each row's softmax over its keys in
    /// one pass, read through its block table.
    fn paged_attention(
        &self,
        q: &Tensor,
        kp: &Tensor,
        vp: &Tensor,
        rows: &PagedRows,
        heads: Heads,
        scale: f32,
    ) -> Result<Tensor> {
        let (qd, kd, vd) = (q.as_f32()?, kp.as_f32()?, vp.as_f32()?);
        let (pos, toff, tables) = (rows.pos.as_u32()?, rows.toff.as_u32()?, rows.tables.as_u32()?);
        let Heads { h, kvh, d, window } = heads;
        let bs = rows.block_size;
        let mut out = vec![0f32; qd.len()];
        crate::par::chunks_mut(&mut out, h * d, |r, o| {
            let tk = pos[r] as usize + 1;
            let lo = window.map_or(0, |w| tk.saturating_sub(w));
            let table = &tables[toff[r] as usize..];
            for hh in 0..h {
                let g = hh / (h / kvh);
                let qh = &qd[(r * h + hh) * d..][..d];
                let at = |j: usize| ((table[j / bs] as usize * bs + j % bs) * kvh + g) * d;
                let sc: Vec<f32> = (lo..tk).map(|j| dot(qh, &kd[at(j)..][..d]) * scale).collect();
                let m = sc.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let w: Vec<f32> = sc.iter().map(|&x| (x - m).exp()).collect();
                let sum: f32 = w.iter().sum();
                let oh = &mut o[hh * d..][..d];
                for (j, &wj) in (lo..tk).zip(&w) {
                    for (y, &x) in oh.iter_mut().zip(&vd[at(j)..][..d]) {
                        *y += wj * x;
                    }
                }
                oh.iter_mut().for_each(|y| *y /= sum);
            }
        });
        Tensor::from_f32(out, q.shape())
    }
    fn attention_packed(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        dm: AttnDims,
        scale: f32,
        seg: &Segments,
    ) -> Result<(Tensor, Tensor)> {
        let (o, l) = attn_fwd_packed(q.as_f32()?, k.as_f32()?, v.as_f32()?, dm, scale, Some(&seg.starts));
        Ok((Tensor::from_f32(o, q.shape())?, Tensor::from_f32(l, &[dm.b, dm.h, dm.tq])?))
    }
    fn attention_packed_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
        dm: AttnDims,
        scale: f32,
        seg: &Segments,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (q_, k_, v_) = (q.as_f32()?, k.as_f32()?, v.as_f32()?);
        let (dq, dk, dv) =
            attn_bwd_packed(q_, k_, v_, out.as_f32()?, lse.as_f32()?, dout.as_f32()?, dm, scale, Some(&seg.starts));
        Ok((Tensor::from_f32(dq, q.shape())?, Tensor::from_f32(dk, k.shape())?, Tensor::from_f32(dv, v.shape())?))
    }
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, dm: AttnDims, scale: f32) -> Result<(Tensor, Tensor)> {
        let (o, l) = attn_fwd(q.as_f32()?, k.as_f32()?, v.as_f32()?, dm, scale);
        Ok((Tensor::from_f32(o, q.shape())?, Tensor::from_f32(l, &[dm.b, dm.h, dm.tq])?))
    }
    /// llama.cpp's arithmetic (`attn_fwd_ggml`), not the training kernel's: see `attention_infer`.
    fn attention_infer(&self, q: &Tensor, k: &Tensor, v: &Tensor, dm: AttnDims, scale: f32) -> Result<Tensor> {
        Tensor::from_f32(attn_fwd_ggml(q.as_f32()?, k.as_f32()?, v.as_f32()?, dm, scale), q.shape())
    }
    fn attention_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
        dm: AttnDims,
        scale: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (dq, dk, dv) =
            attn_bwd(q.as_f32()?, k.as_f32()?, v.as_f32()?, out.as_f32()?, lse.as_f32()?, dout.as_f32()?, dm, scale);
        Ok((Tensor::from_f32(dq, q.shape())?, Tensor::from_f32(dk, k.shape())?, Tensor::from_f32(dv, v.shape())?))
    }
    fn kv_write(&self, cache: &mut Tensor, new: &Tensor, pos: Pos) -> Result<()> {
        let pos0 = pos.value()?;
        let (s, t) = (cache.shape().to_vec(), new.shape()[1]);
        let (b, cap, row) = (s[0], s[1], s[2] * s[3]);
        let src = new.as_f32()?;
        let dst = cache.f32_mut()?;
        // In parallel pieces (a prompt's rows are MiBs: a serial copy was a part of every
        // 16-thread prompt that did not scale).
        const PIECE: usize = 1 << 14;
        for bi in 0..b {
            let (d, s) = (&mut dst[(bi * cap + pos0) * row..][..t * row], &src[bi * t * row..][..t * row]);
            crate::par::chunks_mut(d, PIECE, |ci, o| o.copy_from_slice(&s[ci * PIECE..][..o.len()]));
        }
        Ok(())
    }
    fn attention_decode(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        dm: AttnDims,
        pos: Pos,
        scale: f32,
    ) -> Result<Tensor> {
        let dm = AttnDims { tk: pos.value()? + 1, ..dm };
        self.attention_infer(q, k, v, dm, scale)
    }
    fn pos_add(&self, pos: &mut Tensor, n: usize) -> Result<()> {
        let p = pos.as_u32()?[0] as usize + n;
        *pos = Tensor::from_u32(vec![p as u32], &[1])?;
        Ok(())
    }
}

/// q: (B, Tq, H, D), k, v: (B, S, KVH, D) with `tk` valid rows → (out (B, Tq, H, D), lse (B, H, Tq)).
/// `scale` multiplies the scores q·k before the softmax (the model's, usually 1/√D).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    tk: usize,
    window: Option<usize>,
    scale: f32,
) -> Result<(Tensor, Tensor)> {
    let dm = dims(q, k, v, tk, window)?;
    backend::on("attention", [q, k, v])?.attention(q, k, v, dm, scale)
}

/// Attention for inference over a KV cache (no lse kept): on the CPU in llama.cpp's
/// arithmetic (`attn_fwd_ggml`), on CUDA the flash kernel.
pub fn attention_infer(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    tk: usize,
    window: Option<usize>,
    scale: f32,
) -> Result<Tensor> {
    let dm = dims(q, k, v, tk, window)?;
    crate::profile::timed("attention_infer", || {
        backend::on("attention", [q, k, v])?.attention_infer(q, k, v, dm, scale)
    })
}

/// Writes new keys or values (B, T, KVH, D) into a KV cache tensor (B, S, KVH, D) at `pos`
/// (the rows must have the cache's dtype).
pub fn kv_write(cache: &mut Tensor, new: &Tensor, pos: Pos) -> Result<()> {
    let (cs, ns) = (cache.shape(), new.shape());
    if cs.len() != 4 || ns.len() != 4 || cs[0] != ns[0] || cs[2..] != ns[2..] || cache.dtype() != new.dtype() {
        bail!("kv_write: rows {:?} {ns:?} do not fit the cache {:?} {cs:?}", new.dtype(), cache.dtype());
    }
    if pos.bound(ns[1])? > cs[1] {
        bail!("kv_write: positions up to {} do not fit a cache of {}", pos.bound(ns[1])?, cs[1]);
    }
    backend::on("kv_write", [&*cache, new])?.kv_write(cache, new, pos)
}

/// Decode attention: q (B, 1, H, D), the new keys already written at `pos`, so the query sees
/// keys 0..=pos (less with a window). The same kernels whether `pos` is on the host or the
/// device, so a captured decode step computes what an uncaptured one does.
pub fn attention_decode(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    pos: Pos,
    window: Option<usize>,
    scale: f32,
) -> Result<Tensor> {
    let dm = dims(q, k, v, pos.bound(1)?, window)?;
    if dm.tq != 1 {
        bail!("attention_decode: one query per sequence, got {}", dm.tq);
    }
    backend::on("attention", [q, k, v])?.attention_decode(q, k, v, dm, pos, scale)
}

/// One decoding row a sequence with the step's RoPE and cache write: q (B, 1, H, D), k and v
/// (B, 1, KVH, D) as the projections give them (not rotated), the caches (B, S, KVH, D). What
/// `rope::rope_into_cache` then `attention_decode` give, bit for bit; on CUDA with the position
/// on the device, one launch (the rotation and the cache write inside the attention kernel).
#[allow(clippy::too_many_arguments)]
pub fn rope_attention_decode(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    table: &crate::ops::rope::RopeTable,
    kc: &mut Tensor,
    vc: &mut Tensor,
    pos: Pos,
    window: Option<usize>,
    scale: f32,
) -> Result<Tensor> {
    let (qs, ks, cs) = (q.shape(), k.shape(), kc.shape());
    if qs.len() != 4 || qs[1] != 1 || k.shape() != v.shape() || ks.len() != 4 || ks[1] != 1 {
        bail!("rope_attention_decode: one new row a sequence, got q {qs:?}, k {ks:?}, v {:?}", v.shape());
    }
    if cs.len() != 4 || kc.shape() != vc.shape() || cs[0] != qs[0] || cs[2..] != ks[2..] {
        bail!("rope_attention_decode: rows k {ks:?} do not fit the caches {cs:?} / {:?}", vc.shape());
    }
    if ks[3] != 2 * table.inv_freq.len() {
        bail!("rope_attention_decode: head dim {} but the RoPE table has {} frequencies", ks[3], table.inv_freq.len());
    }
    let dm = dims(q, kc, vc, pos.bound(1)?, window)?;
    backend::on("attention", [q, k, v, &*kc, &*vc])?.rope_attention_decode(q, k, v, table, kc, vc, dm, pos, scale)
}

/// Moves a device-held decode position on by `n` (the end of a decode step).
pub fn pos_add(pos: &mut Tensor, n: usize) -> Result<()> {
    if pos.dtype() != crate::DType::U32 || pos.numel() != 1 {
        bail!("pos_add: a position is a u32 [1] tensor, got {:?} {:?}", pos.dtype(), pos.shape());
    }
    backend::backend(pos.device()).pos_add(pos, n)
}

/// Where a batched step's new rows sit in a paged KV pool (P, KVH, D), as u32 tensors on the
/// pool's device: made once per forward (one upload) and read by every layer's
/// [`paged_rope_kv`] and [`paged_attention`]. Row r (of N, in the order of q's rows) is at
/// position `pos[r]` of its sequence and is written to pool row `dst[r]`; its sequence's block
/// table starts at `toff[r]` in `tables`, so position j of it lives in pool row
/// `tables[toff[r] + j / block_size] · block_size + j % block_size`.
pub struct PagedRows {
    pub pos: Tensor,
    pub dst: Tensor,
    pub toff: Tensor,
    pub tables: Tensor,
    pub block_size: usize,
    /// The largest `pos[r]` + 1 (how many keys the longest row sees).
    pub max_keys: usize,
}

impl PagedRows {
    /// From host lists (checked: one `pos`, `dst` and `toff` per row, every table entry a
    /// block of a pool of `blocks`, every position covered by its table), uploaded to `device`.
    pub fn new(
        pos: Vec<u32>,
        dst: Vec<u32>,
        toff: Vec<u32>,
        tables: Vec<u32>,
        block_size: usize,
        blocks: usize,
        device: crate::Device,
    ) -> Result<Self> {
        let n = pos.len();
        if n == 0 || dst.len() != n || toff.len() != n || block_size == 0 {
            bail!(
                "paged rows: {n} positions, {} pool rows, {} table offsets, block size {block_size}",
                dst.len(),
                toff.len()
            );
        }
        if let Some(b) = tables.iter().find(|&&b| b as usize >= blocks) {
            bail!("paged rows: block {b} is outside the pool of {blocks} blocks");
        }
        for r in 0..n {
            let need = toff[r] as usize + pos[r] as usize / block_size;
            if need >= tables.len() || dst[r] as usize >= blocks * block_size {
                bail!(
                    "paged rows: row {r} (position {}, pool row {}) is outside its block table or the pool",
                    pos[r],
                    dst[r]
                );
            }
        }
        let max_keys = pos.iter().max().map_or(0, |&p| p as usize + 1);
        let up = |v: Vec<u32>| {
            let len = v.len();
            Tensor::from_u32(v, &[len])?.to_device(device)
        };
        Ok(PagedRows { pos: up(pos)?, dst: up(dst)?, toff: up(toff)?, tables: up(tables)?, block_size, max_keys })
    }
    pub fn rows(&self) -> usize {
        self.pos.numel()
    }
}

/// A batched step's new rows into a paged pool, in one launch: q (N, H, D) rotated to each
/// row's position and returned; k (N, KVH, D) rotated into the key pool and v written into the
/// value pool (both (P, KVH, D)) at each row's pool row. What `rope`, `rope` and two row
/// writes do (`rope_into_cache` with a block table); a key is rounded to q's dtype, then to
/// the pool's.
pub fn paged_rope_kv(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    table: &crate::ops::rope::RopeTable,
    kp: &mut Tensor,
    vp: &mut Tensor,
    rows: &PagedRows,
) -> Result<Tensor> {
    let (qs, ks, ps) = (q.shape(), k.shape(), kp.shape());
    let n = rows.rows();
    if qs.len() != 3
        || ks.len() != 3
        || k.shape() != v.shape()
        || kp.shape() != vp.shape()
        || ps.len() != 3
        || qs[0] != n
        || ks[0] != n
        || ps[1..] != ks[1..]
        || qs[2] != ks[2]
        || qs[2] != 2 * table.inv_freq.len()
        || kp.dtype() != vp.dtype()
    {
        bail!(
            "paged_rope_kv: q {qs:?}, k {ks:?}, v {:?} ({n} rows) do not fit the pools {ps:?} / {:?} ({:?} / {:?})",
            v.shape(),
            vp.shape(),
            kp.dtype(),
            vp.dtype()
        );
    }
    backend::on("paged_rope_kv", [q, k, v, &*kp, &*vp])?.paged_rope_kv(q, k, v, table, kp, vp, rows)
}

/// Attention of a batched step's rows q (N, H, D), each over keys 0..=pos[r] of its own
/// sequence (less with a window) read from the pools (P, KVH, D) through its block table
/// (written first by [`paged_rope_kv`]) → (N, H, D) in q's dtype. f32 arithmetic whatever the
/// pool stores. The CPU's implementation (f32 pools) is the reference the CUDA kernel is
/// tested against; the CPU's paged forward itself runs [`attn_ggml_seqs`], llama.cpp's order.
pub fn paged_attention(
    q: &Tensor,
    kp: &Tensor,
    vp: &Tensor,
    rows: &PagedRows,
    heads: Heads,
    scale: f32,
) -> Result<Tensor> {
    let (qs, ps) = (q.shape(), kp.shape());
    if qs != [rows.rows(), heads.h, heads.d]
        || ps.len() != 3
        || ps[1..] != [heads.kvh, heads.d]
        || kp.shape() != vp.shape()
        || heads.kvh == 0
        || !heads.h.is_multiple_of(heads.kvh)
    {
        bail!(
            "paged_attention: q {qs:?} and pools {ps:?} / {:?} do not fit {heads:?} over {} rows",
            vp.shape(),
            rows.rows()
        );
    }
    crate::profile::timed("paged_attention", || {
        backend::on("paged_attention", [q, kp, vp])?.paged_attention(q, kp, vp, rows, heads, scale)
    })
}

#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    window: Option<usize>,
    scale: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dm = dims(q, k, v, k.shape()[1], window)?;
    backend::on("attention_backward", [q, k, v, out, lse, dout])?.attention_backward(q, k, v, out, lse, dout, dm, scale)
}

/// Packed rows (SFT `--packing`): several examples laid end to end in each of B rows of T
/// positions. `starts[b·T + i]` is the index in row b where position i's example starts; a
/// query attends only to keys of its own example, and its RoPE position is i − start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segments {
    pub b: usize,
    pub t: usize,
    pub starts: Vec<u32>,
}

impl Segments {
    /// Checks that `starts` describes consecutive examples: each position's start is at or
    /// before it, is the start of its own example, and starts never go back within a row.
    pub fn new(b: usize, t: usize, starts: Vec<u32>) -> Result<Self> {
        if starts.len() != b * t {
            bail!("segments: {} starts for {b} rows of {t}", starts.len());
        }
        for r in 0..b {
            let row = &starts[r * t..(r + 1) * t];
            for (i, &s) in row.iter().enumerate() {
                let s = s as usize;
                if s > i || row[s] as usize != s || (i > 0 && (row[i - 1] as usize) > s) {
                    bail!("segments: row {r} position {i} has start {s}, not the start of a run of positions up to it");
                }
            }
        }
        Ok(Segments { b, t, starts })
    }

    /// Each position's place in its example: i − start (the RoPE position).
    pub fn positions(&self) -> Vec<u32> {
        self.starts.iter().enumerate().map(|(i, &s)| (i % self.t) as u32 - s).collect()
    }
}

fn check_packed(dm: &AttnDims, seg: &Segments) -> Result<()> {
    if seg.b != dm.b || seg.t != dm.tq || dm.tq != dm.tk || dm.s != dm.tk {
        bail!(
            "attention: packed segments of {}×{} for q/k of {}×{} (keys {} of {})",
            seg.b,
            seg.t,
            dm.b,
            dm.tq,
            dm.tk,
            dm.s
        );
    }
    Ok(())
}

/// `attention` over packed rows: q (B, T, H, D), k, v (B, T, KVH, D); no attention across the
/// examples of `seg`.
pub fn attention_packed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    window: Option<usize>,
    scale: f32,
    seg: &Segments,
) -> Result<(Tensor, Tensor)> {
    let dm = dims(q, k, v, k.shape().get(1).copied().unwrap_or(0), window)?;
    check_packed(&dm, seg)?;
    backend::on("attention", [q, k, v])?.attention_packed(q, k, v, dm, scale, seg)
}

#[allow(clippy::too_many_arguments)]
pub fn attention_packed_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    window: Option<usize>,
    scale: f32,
    seg: &Segments,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dm = dims(q, k, v, k.shape()[1], window)?;
    check_packed(&dm, seg)?;
    backend::on("attention_backward", [q, k, v, out, lse, dout])?
        .attention_packed_backward(q, k, v, out, lse, dout, dm, scale, seg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{gradcheck, rand_vec};

    /// The paged reference (what the CUDA kernel is tested against) equals `attn_ggml_seqs`
    /// over the same scattered rows, with and without a window: a prompt chunk of three rows
    /// after cached positions and a decode row of another sequence.
    #[test]
    fn paged_attention_reference_equals_attn_ggml_seqs() {
        let (h, kvh, d, bs, blocks) = (4, 2, 8, 4, 16);
        let row = kvh * d;
        let f32s = |n: usize, seed: u64| -> Vec<f32> { rand_vec(n, seed).iter().map(|&x| x as f32).collect() };
        let (k, v, q) = (f32s(blocks * bs * row, 3), f32s(blocks * bs * row, 4), f32s(4 * h * d, 5));
        let (ta, tb) = ([5u32, 2, 9], [0u32, 11]);
        let rows = PagedRows::new(
            vec![7, 8, 9, 5],
            vec![0; 4],
            vec![0, 0, 0, 3],
            ta.iter().chain(&tb).copied().collect(),
            bs,
            blocks,
            crate::Device::Cpu,
        )
        .unwrap();
        let offs =
            |t: &[u32], n: usize| -> Vec<usize> { (0..n).map(|p| (t[p / bs] as usize * bs + p % bs) * row).collect() };
        let (oa, ob) = (offs(&ta, 10), offs(&tb, 6));
        let kp = Tensor::from_f32(k.clone(), &[blocks * bs, kvh, d]).unwrap();
        let vp = Tensor::from_f32(v.clone(), &[blocks * bs, kvh, d]).unwrap();
        let qt = Tensor::from_f32(q.clone(), &[4, h, d]).unwrap();
        for window in [None, Some(5)] {
            let hd = Heads { h, kvh, d, window };
            let got = paged_attention(&qt, &kp, &vp, &rows, hd, 0.3).unwrap();
            let seqs =
                [SeqAttn { q: &q[..3 * h * d], tq: 3, rows: &oa }, SeqAttn { q: &q[3 * h * d..], tq: 1, rows: &ob }];
            let want = attn_ggml_seqs(&seqs, &k, &v, hd, 0.3);
            let worst = got.as_f32().unwrap().iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst < 1e-5, "window {window:?}: {worst}");
        }
    }

    /// Decoding rows over a packed pool (f16, bf16, q8_0), each (sequence, KV head) widened on
    /// its own, equal `attn_ggml_seqs` over the whole pool widened first, bit for bit: head dim
    /// 64 (the AVX-512 kernels) and 32, GQA, with and without a window, rows scattered.
    #[test]
    fn packed_decode_rows_equal_the_widened_pool_bit_for_bit() {
        use crate::quant::{dequantize_row, quantize_row, GgmlType};
        for (h, kvh, d) in [(9, 3, 64), (4, 2, 32)] {
            let (row, positions) = (kvh * d, 80);
            let f32s = |n: usize, seed: u64| -> Vec<f32> { rand_vec(n, seed).iter().map(|&x| x as f32).collect() };
            let (kx, vx, q) = (f32s(positions * row, 11), f32s(positions * row, 12), f32s(3 * h * d, 13));
            // Three sequences of 70, 1 and 33 positions over scattered pool rows.
            let perm: Vec<usize> = (0..positions).map(|i| (i * 37 + 5) % positions).collect();
            let rows: Vec<Vec<usize>> = [(0, 70), (70, 71), (71, 80)]
                .iter()
                .map(|&(a, b)| perm[a..b].iter().map(|&r| r * row).collect())
                .collect();
            for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0] {
                let pack = |x: &[f32]| {
                    let mut b = Vec::new();
                    for r in x.chunks(row) {
                        quantize_row(ty, r, &mut b);
                    }
                    b
                };
                let (kb, vb) = (pack(&kx), pack(&vx));
                let rb = ty.row_bytes(row).unwrap();
                let widen = |b: &[u8]| {
                    let mut out = vec![0f32; positions * row];
                    for (o, r) in out.chunks_mut(row).zip(b.chunks(rb)) {
                        dequantize_row(ty, r, o);
                    }
                    out
                };
                let (kw, vw) = (widen(&kb), widen(&vb));
                for window in [None, Some(20)] {
                    let hd = Heads { h, kvh, d, window };
                    let seqs: Vec<SeqAttn> = rows
                        .iter()
                        .enumerate()
                        .map(|(i, r)| SeqAttn { q: &q[i * h * d..(i + 1) * h * d], tq: 1, rows: r })
                        .collect();
                    let want = attn_ggml_seqs(&seqs, &kw, &vw, hd, 0.125);
                    let (k, v) =
                        (PackedKv { ty, bytes: &kb, row_bytes: rb }, PackedKv { ty, bytes: &vb, row_bytes: rb });
                    let got = attn_decode_packed(&seqs, k, v, hd, 0.125).unwrap();
                    for (i, (g, w)) in got.chunks(h * d).zip(want.chunks(h * d)).enumerate() {
                        let bad = g.iter().zip(w).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                        assert_eq!(bad, 0, "{} d {d} window {window:?}: sequence {i}: {bad} values differ", ty.name());
                    }
                }
            }
        }
    }

    /// `rope_attention_decode` (the fused op a GPU runs in one launch) on the CPU is
    /// `rope_into_cache` then `attention_decode`, and refuses rows that are not one a sequence.
    #[test]
    fn rope_attention_decode_is_rope_then_decode() {
        use crate::ops::rope::{freqs, rope_into_cache, RopeLayout, RopeTable};
        let f = |n: usize, seed: u64| rand_vec(n, seed).iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let (b, h, kvh, d, cap, pos) = (2, 4, 2, 16, 12, 5);
        let table = RopeTable::new(freqs::default_inv_freq(10000.0, d), 1.0, RopeLayout::Interleaved);
        let q = Tensor::from_f32(f(b * h * d, 1), &[b, 1, h, d]).unwrap();
        let k = Tensor::from_f32(f(b * kvh * d, 2), &[b, 1, kvh, d]).unwrap();
        let v = Tensor::from_f32(f(b * kvh * d, 3), &[b, 1, kvh, d]).unwrap();
        let cache = Tensor::from_f32(f(b * cap * kvh * d, 4), &[b, cap, kvh, d]).unwrap();
        let (mut kc, mut vc) = (cache.clone(), cache.clone());
        let got = rope_attention_decode(&q, &k, &v, &table, &mut kc, &mut vc, Pos::Host(pos), Some(4), 0.25).unwrap();
        let (mut ku, mut vu) = (cache.clone(), cache.clone());
        let qr = rope_into_cache(&q, &k, &v, &table, &mut ku, &mut vu, Pos::Host(pos)).unwrap();
        let want = attention_decode(&qr, &ku, &vu, Pos::Host(pos), Some(4), 0.25).unwrap();
        assert_eq!(got.as_f32().unwrap(), want.as_f32().unwrap());
        assert_eq!(kc.as_f32().unwrap(), ku.as_f32().unwrap());
        assert_eq!(vc.as_f32().unwrap(), vu.as_f32().unwrap());
        let two = Tensor::from_f32(f(b * 2 * h * d, 5), &[b, 2, h, d]).unwrap();
        let e = rope_attention_decode(&two, &k, &v, &table, &mut kc, &mut vc, Pos::Host(pos), None, 0.25).unwrap_err();
        assert!(e.to_string().contains("one new row a sequence"), "{e}");
        // A table of another head dim is refused (the fused kernel would read its rows at D/2).
        let short = RopeTable::new(freqs::default_inv_freq(10000.0, d / 2), 1.0, RopeLayout::Interleaved);
        let e = rope_attention_decode(&q, &k, &v, &short, &mut kc, &mut vc, Pos::Host(pos), None, 0.25).unwrap_err();
        assert!(e.to_string().contains("frequencies"), "{e}");
    }

    /// Decoding rows only (no key transposes set up), GQA with the query heads of a KV head in
    /// one task, with and without a window (down to one key), one key to many: each sequence
    /// equals `attn_fwd_ggml` of that row alone over a contiguous cache, bit for bit (what a
    /// served request needs: its numbers do not depend on the other rows of its step).
    #[test]
    fn grouped_decode_rows_equal_each_row_alone() {
        // kvh 1: a row alone on 2 threads is one task per query head (too few KV heads to fill
        // the threads), the same rows among others one task per KV head.
        for kvh in [2, 1] {
            let (h, d) = (8, 64);
            let row = kvh * d;
            let f32s = |n: usize, seed: u64| -> Vec<f32> { rand_vec(n, seed).iter().map(|&x| x as f32).collect() };
            let lens = [1usize, 17, 64, 65, 130];
            let total: usize = lens.iter().sum();
            let (k, v, q) = (f32s(total * row, 21), f32s(total * row, 22), f32s(lens.len() * h * d, 23));
            let mut starts = vec![0];
            for l in &lens[..lens.len() - 1] {
                starts.push(starts.last().unwrap() + l);
            }
            let offs: Vec<Vec<usize>> =
                lens.iter().zip(&starts).map(|(&l, &s)| (s..s + l).map(|j| j * row).collect()).collect();
            for window in [None, Some(50), Some(1)] {
                let hd = Heads { h, kvh, d, window };
                let seqs: Vec<SeqAttn> = offs
                    .iter()
                    .enumerate()
                    .map(|(i, o)| SeqAttn { q: &q[i * h * d..(i + 1) * h * d], tq: 1, rows: o })
                    .collect();
                let got = attn_ggml_seqs(&seqs, &k, &v, hd, 0.125);
                for (i, (&l, &s)) in lens.iter().zip(&starts).enumerate() {
                    let dm = AttnDims { b: 1, tq: 1, tk: l, s: l, h, kvh, d, window };
                    let want = attn_fwd_ggml(
                        &q[i * h * d..(i + 1) * h * d],
                        &k[s * row..(s + l) * row],
                        &v[s * row..(s + l) * row],
                        dm,
                        0.125,
                    );
                    let same =
                        got[i * h * d..(i + 1) * h * d].iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "window {window:?}: sequence {i} of {l} keys differs from the row alone");
                }
            }
        }
    }

    fn rand_t(shape: &[usize], seed: u64) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_f32(rand_vec(n, seed).iter().map(|&x| x as f32).collect(), shape).unwrap()
    }

    /// The decode entry points on the CPU: a device-style position (a u32 tensor) reads back
    /// to the host and gives what the host position gives; kv_write writes the rows there.
    #[test]
    fn decode_position_on_cpu() {
        let (b, cap, h, kvh, d) = (2, 6, 4, 2, 8);
        let mut k = Tensor::zeros(&[b, cap, kvh, d]);
        let mut v = Tensor::zeros(&[b, cap, kvh, d]);
        let (nk, nv) = (rand_t(&[b, 4, kvh, d], 1), rand_t(&[b, 4, kvh, d], 2));
        kv_write(&mut k, &nk, Pos::Host(0)).unwrap();
        kv_write(&mut v, &nv, Pos::Host(0)).unwrap();
        let mut at = Tensor::from_u32(vec![3], &[1]).unwrap();
        pos_add(&mut at, 1).unwrap();
        assert_eq!(at.as_u32().unwrap(), &[4]);
        let (k1, v1) = (rand_t(&[b, 1, kvh, d], 3), rand_t(&[b, 1, kvh, d], 4));
        kv_write(&mut k, &k1, Pos::Device { at: &at, cap }).unwrap();
        kv_write(&mut v, &v1, Pos::Device { at: &at, cap }).unwrap();
        assert_eq!(&k.as_f32().unwrap()[4 * kvh * d..5 * kvh * d], k1.as_f32().unwrap()[..kvh * d].as_ref());
        let q = rand_t(&[b, 1, h, d], 5);
        let a = attention_decode(&q, &k, &v, Pos::Device { at: &at, cap }, None, 0.3).unwrap();
        let e = attention_infer(&q, &k, &v, 5, None, 0.3).unwrap();
        assert_eq!(a.as_f32().unwrap(), e.as_f32().unwrap());
        assert!(kv_write(&mut k, &nk, Pos::Host(3)).is_err(), "rows past the capacity are refused");
    }

    fn naive(q: &[f64], k: &[f64], v: &[f64], dm: AttnDims) -> Vec<f64> {
        let mut out = vec![0.0; q.len()];
        let sc = 1.0 / (dm.d as f64).sqrt();
        for b in 0..dm.b {
            for h in 0..dm.h {
                let g = h / (dm.h / dm.kvh);
                for i in 0..dm.tq {
                    let (lo, hi) = dm.key_range(i);
                    let s: Vec<f64> = (lo..hi)
                        .map(|j| dot(&q[dm.q_at(b, i, h)..][..dm.d], &k[dm.kv_at(b, j, g)..][..dm.d]) * sc)
                        .collect();
                    let m = s.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                    for (jj, j) in (lo..hi).enumerate() {
                        let p = (s[jj] - m).exp() / z;
                        for t in 0..dm.d {
                            out[dm.q_at(b, i, h) + t] += p * v[dm.kv_at(b, j, g) + t];
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_softmax_attention_with_gqa_window_and_cache_offset() {
        for (tq, tk, s, window) in
            [(5, 5, 5, None), (2, 6, 8, None), (6, 6, 6, Some(3)), (70, 70, 70, Some(20)), (130, 150, 160, None)]
        {
            let dm = AttnDims { b: 2, tq, tk, s, h: 4, kvh: 2, d: 8, window };
            let q = rand_vec(dm.b * tq * dm.h * dm.d, 1);
            let k = rand_vec(dm.b * s * dm.kvh * dm.d, 2);
            let v = rand_vec(dm.b * s * dm.kvh * dm.d, 3);
            let (o, _) = attn_fwd(&q, &k, &v, dm, 1.0 / (dm.d as f64).sqrt());
            let want = naive(&q, &k, &v, dm);
            for (a, b) in o.iter().zip(&want) {
                assert!((a - b).abs() < 1e-12);
            }
        }
    }

    /// The llama.cpp-order inference forward (f32) against the f64 reference, one query
    /// (decoding, 4×16-lane sums) and many (the prompt, tinyBLAS order), head dim 64 and 40.
    #[test]
    fn ggml_order_forward_matches_naive() {
        for (tq, tk, s, d, window) in [
            (1, 1, 4, 64, None),
            (1, 77, 80, 64, None),
            (7, 7, 9, 64, None),
            (20, 150, 160, 40, Some(50)),
            (3, 300, 300, 64, None),
        ] {
            let dm = AttnDims { b: 2, tq, tk, s, h: 6, kvh: 2, d, window };
            let q = rand_vec(dm.b * tq * dm.h * d, 1);
            let k = rand_vec(dm.b * s * dm.kvh * d, 2);
            let v = rand_vec(dm.b * s * dm.kvh * d, 3);
            let f = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            let o = attn_fwd_ggml(&f(&q), &f(&k), &f(&v), dm, 1.0 / (d as f32).sqrt());
            let want = naive(&q, &k, &v, dm);
            for (a, b) in o.iter().zip(&want) {
                assert!((*a as f64 - b).abs() < 2e-5, "{tq} {tk}: {a} vs {b}");
            }
        }
    }

    /// Sequences read through scattered block tables, several in one call, give exactly what
    /// each gives alone with a contiguous cache (decode and prompt shapes, a window).
    #[test]
    fn paged_sequences_equal_contiguous_bit_for_bit() {
        let (h, kvh, d, bs) = (6, 2, 64, 16);
        let hd = Heads { h, kvh, d, window: None };
        let row = kvh * d;
        let pool_rows = 40 * bs;
        let f = |x: Vec<f64>| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let (kp, vp) = (f(rand_vec(pool_rows * row, 7)), f(rand_vec(pool_rows * row, 8)));
        // (tq, tk, blocks): block tables out of order and interleaved between sequences.
        let cases: [(usize, usize, Vec<usize>); 3] =
            [(1, 77, vec![9, 3, 30, 1, 22]), (20, 20, vec![5, 0]), (3, 150, (10..20).rev().collect())];
        let rows: Vec<Vec<usize>> =
            cases.iter().map(|(_, tk, bl)| (0..*tk).map(|j| (bl[j / bs] * bs + j % bs) * row).collect()).collect();
        let qs: Vec<Vec<f32>> =
            cases.iter().enumerate().map(|(i, (tq, ..))| f(rand_vec(tq * h * d, 20 + i as u64))).collect();
        let seqs: Vec<SeqAttn> =
            cases.iter().zip(&rows).zip(&qs).map(|(((tq, ..), r), q)| SeqAttn { q, tq: *tq, rows: r }).collect();
        for window in [None, Some(50)] {
            let hd = Heads { window, ..hd };
            let got = attn_ggml_seqs(&seqs, &kp, &vp, hd, 0.125);
            let mut at = 0;
            for s in &seqs {
                let o = &got[at..at + s.tq * h * d];
                at += o.len();
                let tk = s.rows.len();
                let gather =
                    |pool: &[f32]| s.rows.iter().flat_map(|&at| pool[at..at + row].to_vec()).collect::<Vec<f32>>();
                let dm = AttnDims { b: 1, tq: s.tq, tk, s: tk, h, kvh, d, window };
                let want = attn_fwd_ggml(s.q, &gather(&kp), &gather(&vp), dm, 0.125);
                assert!(o.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "tq {} tk {tk}", s.tq);
            }
        }
    }

    /// One query at a time, keys read in place (`dot_f32_rows`) and P·V through the portable
    /// tinyBLAS columns: the order the tiled prompt path must reproduce.
    fn per_query_ggml(q: &[f32], k: &[f32], v: &[f32], dm: AttnDims, scale: f32) -> Vec<f32> {
        use crate::ggml;
        let (d, up) = (dm.d, |n: usize, m: usize| n.div_ceil(m) * m);
        let mut out = vec![0f32; q.len()];
        for h in 0..dm.h {
            let g = h / dm.group();
            let offs: Vec<usize> = (0..dm.tk).map(|j| dm.kv_at(0, j, g)).collect();
            for i in 0..dm.tq {
                let (lo, hi) = dm.key_range(i);
                let n16 = up(hi, 16);
                let mut sc = vec![f32::NEG_INFINITY; n16];
                ggml::dot_f32_rows_at(&mut sc[lo..hi], k, &offs[lo..hi], &q[dm.q_at(0, i, h)..][..d], scale);
                let max = sc[lo..hi].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let mut p = vec![0f32; n16];
                let inv = (1.0 / ggml::soft_max(&mut p, &sc, max)) as f32;
                p.iter_mut().for_each(|x| *x *= inv);
                let o = &mut out[dm.q_at(0, i, h)..][..d];
                ggml::dot_f32_tinyblas_columns_at(o, v, &offs[..dm.tk.min(n16)], &p, &mut Vec::new());
            }
        }
        out
    }

    /// The prompt path's transposed-key scores, query runs and register P·V give the per-query
    /// order's bits: runs shorter and longer than 32, a window, a cache offset, D of 64 and 80.
    #[test]
    fn tiled_prompt_attention_is_the_per_query_order_bit_for_bit() {
        for (tq, tk, d, window) in [(2, 2, 64, None), (33, 40, 64, None), (70, 70, 80, Some(20)), (100, 131, 64, None)]
        {
            let dm = AttnDims { b: 1, tq, tk, s: tk, h: 6, kvh: 2, d, window };
            let f = |x: Vec<f64>| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            let q = f(rand_vec(tq * dm.h * d, 11));
            let (k, v) = (f(rand_vec(tk * dm.kvh * d, 12)), f(rand_vec(tk * dm.kvh * d, 13)));
            let got = attn_fwd_ggml(&q, &k, &v, dm, 0.125);
            let want = per_query_ggml(&q, &k, &v, dm, 0.125);
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "tq {tq} tk {tk} d {d}");
        }
    }

    #[test]
    fn gradcheck_attention_across_query_tiles() {
        let dm = AttnDims { b: 1, tq: 66, tk: 68, s: 70, h: 2, kvh: 1, d: 2, window: Some(40) };
        gradcheck(
            &[rand_vec(66 * 2 * 2, 4), rand_vec(70 * 2, 5), rand_vec(70 * 2, 6)],
            |x| attn_fwd(&x[0], &x[1], &x[2], dm, 0.7).0,
            |x, dy| {
                let (o, l) = attn_fwd(&x[0], &x[1], &x[2], dm, 0.7);
                let (a, b, c) = attn_bwd(&x[0], &x[1], &x[2], &o, &l, dy, dm, 0.7);
                vec![a, b, c]
            },
        );
    }

    #[test]
    fn gradcheck_attention() {
        for window in [None, Some(2)] {
            let dm = AttnDims { b: 2, tq: 4, tk: 4, s: 4, h: 4, kvh: 2, d: 4, window };
            let sc = 0.5;
            gradcheck(
                &[rand_vec(2 * 4 * 4 * 4, 1), rand_vec(2 * 4 * 2 * 4, 2), rand_vec(2 * 4 * 2 * 4, 3)],
                |x| attn_fwd(&x[0], &x[1], &x[2], dm, sc).0,
                |x, dy| {
                    let (o, l) = attn_fwd(&x[0], &x[1], &x[2], dm, sc);
                    let (a, b, c) = attn_bwd(&x[0], &x[1], &x[2], &o, &l, dy, dm, sc);
                    vec![a, b, c]
                },
            );
        }
    }

    fn starts_of(t: usize, rows: &[&[usize]]) -> Vec<u32> {
        let mut st = Vec::new();
        for lens in rows {
            let mut at = 0;
            for &n in *lens {
                st.extend(std::iter::repeat_n(at as u32, n));
                at += n;
            }
            assert_eq!(at, t);
        }
        st
    }

    /// Each packed example gives what it gives run alone in a row of its own (out and lse),
    /// across query tiles, with GQA and a window.
    #[test]
    fn packed_rows_equal_their_examples_run_alone() {
        let (t, h, kvh, d) = (100, 4, 2, 8);
        let rows: [&[usize]; 2] = [&[5, 70, 25], &[100]];
        for window in [None, Some(9)] {
            let dm = AttnDims { b: 2, tq: t, tk: t, s: t, h, kvh, d, window };
            let (q, k, v) = (rand_vec(2 * t * h * d, 1), rand_vec(2 * t * kvh * d, 2), rand_vec(2 * t * kvh * d, 3));
            let starts = starts_of(t, &rows);
            let (o, l) = attn_fwd_packed(&q, &k, &v, dm, 0.3, Some(&starts));
            for (b, lens) in rows.iter().enumerate() {
                let mut s0 = 0;
                for &n in *lens {
                    let cut =
                        |x: &[f64], heads: usize| x[(b * t + s0) * heads * d..(b * t + s0 + n) * heads * d].to_vec();
                    let one = AttnDims { b: 1, tq: n, tk: n, s: n, ..dm };
                    let (o1, l1) = attn_fwd(&cut(&q, h), &cut(&k, kvh), &cut(&v, kvh), one, 0.3);
                    let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
                    assert!(close(&cut(&o, h), &o1), "row {b} example at {s0}");
                    for hh in 0..h {
                        assert!(close(&l[(b * h + hh) * t + s0..][..n], &l1[hh * n..(hh + 1) * n]));
                    }
                    s0 += n;
                }
            }
        }
    }

    #[test]
    fn gradcheck_packed_attention_across_tiles() {
        let t = 70;
        let starts = starts_of(t, &[&[3, 60, 7], &[70]]);
        for window in [None, Some(20)] {
            let dm = AttnDims { b: 2, tq: t, tk: t, s: t, h: 2, kvh: 1, d: 2, window };
            let st = starts.clone();
            gradcheck(
                &[rand_vec(2 * t * 2 * 2, 4), rand_vec(2 * t * 2, 5), rand_vec(2 * t * 2, 6)],
                |x| attn_fwd_packed(&x[0], &x[1], &x[2], dm, 0.7, Some(&st)).0,
                |x, dy| {
                    let (o, l) = attn_fwd_packed(&x[0], &x[1], &x[2], dm, 0.7, Some(&starts));
                    let (a, b, c) = attn_bwd_packed(&x[0], &x[1], &x[2], &o, &l, dy, dm, 0.7, Some(&starts));
                    vec![a, b, c]
                },
            );
        }
    }

    #[test]
    fn segments_are_checked() {
        assert!(Segments::new(1, 4, vec![0, 0, 2, 2]).is_ok());
        assert_eq!(Segments::new(1, 4, vec![0, 0, 2, 2]).unwrap().positions(), vec![0, 1, 0, 1]);
        for bad in [vec![0, 0, 1, 1], vec![0, 2, 2, 2], vec![0, 0, 2, 0], vec![0, 0, 0]] {
            assert!(Segments::new(1, 4, bad).is_err());
        }
    }
}
