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
                let (k0, _) = dm.key_range(i0);
                let (_, k1) = dm.key_range(i0 + rows - 1);
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
                    let (lo, hi) = dm.key_range(i0 + r);
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
    use crate::ggml;
    let d = dm.d;
    let up = |n: usize, m: usize| n.div_ceil(m) * m;
    let (_, last) = dm.key_range(dm.tq - 1);
    let n_pad = up(last, if dm.tq == 1 { 64 } else { 16 });
    let grp = dm.group();
    // One task per (batch, head, run of queries): a prompt's heads alone would leave threads
    // idle (9 heads on 16 threads; on 2, one thread gets 5 of 9), and runs of 32 queries give
    // the work-stealing pool enough pieces to even out the causal triangle's unequal rows.
    const RUN: usize = 32;
    let runs = dm.tq.div_ceil(RUN);
    // K of each (batch, KV head) transposed in blocks of 16 keys (kt[blk][e·16 + j] = element e
    // of key 16·blk + j; zeros past the last key), once for all the queries that read it, so
    // that 16 scores are one `ggml::dot_f32_keys16` (each in `dot_f32`'s order).
    let kblocks = last.div_ceil(16);
    let kts: Vec<Vec<f32>> = (0..dm.b * dm.kvh)
        .into_par_iter()
        .map(|bg| {
            let (b, g) = (bg / dm.kvh, bg % dm.kvh);
            let mut kt = vec![0f32; kblocks * 16 * d];
            for j in 0..last {
                let kr = &k[dm.kv_at(b, j, g)..][..d];
                let blk = &mut kt[j / 16 * 16 * d..][..16 * d];
                for (e, &x) in kr.iter().enumerate() {
                    blk[e * 16 + j % 16] = x;
                }
            }
            kt
        })
        .collect();
    let mut out = vec![0f32; dm.b * dm.tq * dm.h * d];
    let pieces: Vec<(usize, Vec<f32>)> = (0..dm.b * dm.h * runs)
        .into_par_iter()
        .map(|t| {
            let (bh, r) = (t / runs, t % runs);
            let (b, h) = (bh / dm.h, bh % dm.h);
            let g = h / grp;
            let (i0, i1) = (r * RUN, ((r + 1) * RUN).min(dm.tq));
            let mut out = vec![0f32; (i1 - i0) * d];
            let mut sc = vec![f32::NEG_INFINITY; up(last, 16)];
            let mut p = vec![0f32; n_pad];
            let mut acc = Vec::new();
            // V rows of this KV head: row j at v[v0 + j·stride..].
            let (v0, stride) = (dm.kv_at(b, 0, g), dm.kvh * d);
            for i in i0..i1 {
                let (lo, hi) = dm.key_range(i);
                let qr = &q[dm.q_at(b, i, h)..][..d];
                let n16 = up(hi, 16);
                sc[..n16].fill(f32::NEG_INFINITY);
                let kt = &kts[b * dm.kvh + g];
                let mut s16 = [0f32; 16];
                for blk in lo / 16..hi.div_ceil(16) {
                    ggml::dot_f32_keys16_fast(&mut s16, &kt[blk * 16 * d..][..16 * d], qr, scale);
                    let (j0, j1) = ((blk * 16).max(lo), (blk * 16 + 16).min(hi));
                    sc[j0..j1].copy_from_slice(&s16[j0 - blk * 16..j1 - blk * 16]);
                }
                let max = sc[lo..hi].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                // Only the first n16 entries are read below (the rest stay zero).
                p[..n16].fill(0.0);
                let sum = ggml::soft_max(&mut p[..n16], &sc[..n16], max);
                let inv = (1.0 / sum) as f32;
                for x in &mut p[..n16] {
                    *x *= inv;
                }
                // out_t = dot(column t of V, p) without transposing V (llama.cpp's cache
                // holds Vᵀ); padding rows are zeros with p = 0.
                let o = &mut out[(i - i0) * d..(i - i0 + 1) * d];
                if dm.tq == 1 {
                    ggml::dot_f32_columns(o, &v[v0..], stride, last, &p, &mut acc);
                } else {
                    ggml::dot_f32_tinyblas_columns_fast(o, &v[v0..], stride, last.min(n16), &p[..n16], &mut acc);
                }
            }
            (t, out)
        })
        .collect();
    for (t, o) in pieces {
        let (bh, r) = (t / runs, t % runs);
        let (b, h) = (bh / dm.h, bh % dm.h);
        for (ii, oi) in o.chunks_exact(d).enumerate() {
            out[dm.q_at(b, r * RUN + ii, h)..][..d].copy_from_slice(oi);
        }
    }
    out
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
                    let (k0, _) = dm.key_range(i0);
                    let (_, k1) = dm.key_range(i0 + rows - 1);
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
                        let (lo, hi) = dm.key_range(i);
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
}

impl AttentionKernels for Cpu {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{gradcheck, rand_vec};

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
}
