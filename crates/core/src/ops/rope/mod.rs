//! Rotary position embedding. Rotates pairs of each head's features by position-dependent
//! angles; the backward is the rotation by the opposite angle.
//!
//! Two pair layouts exist in the wild: Hugging Face rotates (i, i + D/2) ("half-split"),
//! GGUF/llama.cpp rotate (2i, 2i + 1) ("interleaved"); the same weights need their q/k rows
//! permuted to move between them. Frequencies: plain theta, linear, NTK-aware, YaRN and Llama-3
//! scaling (see `freqs.rs`).

pub mod freqs;

use crate::backend::{self, backend, Cpu};
use crate::float::Float;
use crate::ops::Pos;
use crate::Tensor;
use anyhow::{bail, Result};
use std::sync::{Arc, Mutex};

#[cfg(feature = "cuda")]
pub mod cuda;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    HalfSplit,
    Interleaved,
}

/// The per-pair inverse frequencies and the factor YaRN multiplies cos/sin by, with the f32
/// cos/sin of positions 0..P computed once and grown on demand (every layer's q and k, forward
/// and backward, read the same rows).
#[derive(Debug)]
pub struct RopeTable {
    /// Read-only after `new` (the cos/sin cache is derived from them).
    pub inv_freq: Vec<f64>,
    pub attention_factor: f64,
    pub layout: RopeLayout,
    /// llama.cpp's angles (`ggml_rope_cache_init`): (theta_scale, freq_scale), see `ggml`.
    ggml: Option<(f32, f32)>,
    f32_rows: Mutex<F32Rows>,
}

/// (positions, cos, sin) with cos/sin of shape (positions, D/2).
type F32Rows = (usize, Arc<Vec<f32>>, Arc<Vec<f32>>);

impl Clone for RopeTable {
    fn clone(&self) -> Self {
        RopeTable { ggml: self.ggml, ..RopeTable::new(self.inv_freq.clone(), self.attention_factor, self.layout) }
    }
}

impl RopeTable {
    pub fn new(inv_freq: Vec<f64>, attention_factor: f64, layout: RopeLayout) -> Self {
        RopeTable {
            inv_freq,
            attention_factor,
            layout,
            ggml: None,
            f32_rows: Mutex::new((0, Arc::default(), Arc::default())),
        }
    }

    /// llama.cpp's RoPE for a GGUF model (interleaved pairs, `GGML_ROPE_TYPE_NORMAL`), with
    /// its angles bit for bit: theta_scale = powf(base, −2/dims), the angle of pair i at
    /// position p is ((p·theta_scale)·theta_scale)… in f32 (one rounding per step, as
    /// `ggml_rope_cache_init` multiplies), times freq_scale (1/linear factor), then f32
    /// cosf/sinf. The rotation rounds as gcc compiles ggml's `rotate_pairs` (see `rope_apply`).
    pub fn ggml(base: f32, dims: usize, freq_scale: f32) -> Self {
        let theta_scale = base.powf(-2.0 / dims as f32);
        let inv_freq = (0..dims / 2).map(|i| (theta_scale as f64).powi(i as i32) * freq_scale as f64).collect();
        RopeTable { ggml: Some((theta_scale, freq_scale)), ..RopeTable::new(inv_freq, 1.0, RopeLayout::Interleaved) }
    }

    /// f32 cos and sin for positions 0..P with P ≥ `need` (rows of D/2), from the cache.
    pub fn cos_sin_f32(&self, need: usize) -> (Arc<Vec<f32>>, Arc<Vec<f32>>) {
        let mut rows = self.f32_rows.lock().unwrap_or_else(|e| e.into_inner());
        if rows.0 < need {
            let positions = need.max(256).next_power_of_two();
            let (c, s) = self.cos_sin::<f32>(0, positions);
            *rows = (positions, Arc::new(c), Arc::new(s));
        }
        (rows.1.clone(), rows.2.clone())
    }

    /// cos and sin for positions pos0..pos0+t: each (t, D/2).
    pub fn cos_sin<F: Float>(&self, pos0: usize, t: usize) -> (Vec<F>, Vec<F>) {
        let half = self.inv_freq.len();
        let mut c = Vec::with_capacity(t * half);
        let mut s = Vec::with_capacity(t * half);
        if let Some((theta_scale, freq_scale)) = self.ggml {
            for p in pos0..pos0 + t {
                let mut theta = p as f32;
                for _ in 0..half {
                    let a = freq_scale * theta;
                    c.push(F::from_f64(a.cos() as f64));
                    s.push(F::from_f64(a.sin() as f64));
                    theta *= theta_scale;
                }
            }
            return (c, s);
        }
        for p in pos0..pos0 + t {
            for &f in &self.inv_freq {
                // f32 angle, as Hugging Face computes it, so long positions round the same way.
                let a = (p as f32 * f as f32) as f64;
                c.push(F::from_f64(a.cos() * self.attention_factor));
                s.push(F::from_f64(a.sin() * self.attention_factor));
            }
        }
        (c, s)
    }
}

/// x: (b·t, h, d) rows of tokens; token r sits at position pos0 + r % t (`cos`/`sin` start at
/// pos0). `sign` = 1 rotates forward, −1 rotates back (the backward pass).
pub fn rope_apply<F: Float>(
    x: &mut [F],
    t: usize,
    heads: usize,
    d: usize,
    cos: &[F],
    sin: &[F],
    layout: RopeLayout,
    sign: F,
) {
    rope_apply_by(x, heads, d, cos, sin, layout, sign, |r| r % t)
}

/// `rope_apply` with token r at `positions[r]` (`cos`/`sin` start at position 0): packed rows,
/// whose positions restart at each example.
pub fn rope_apply_at<F: Float>(
    x: &mut [F],
    heads: usize,
    d: usize,
    cos: &[F],
    sin: &[F],
    layout: RopeLayout,
    sign: F,
    positions: &[u32],
) {
    rope_apply_by(x, heads, d, cos, sin, layout, sign, |r| positions[r] as usize)
}

#[allow(clippy::too_many_arguments)]
fn rope_apply_by<F: Float>(
    x: &mut [F],
    heads: usize,
    d: usize,
    cos: &[F],
    sin: &[F],
    layout: RopeLayout,
    sign: F,
    pos: impl Fn(usize) -> usize + Sync,
) {
    rope_rows(x, None, heads, d, cos, sin, layout, sign, pos)
}

/// `rope_apply_by` over `x`, which first takes `src`'s rows where `src` is given (each task
/// copies its own rows: a rotated copy, or keys rotated straight into a cache, costs no serial
/// pass).
#[allow(clippy::too_many_arguments)]
fn rope_rows<F: Float>(
    x: &mut [F],
    src: Option<&[F]>,
    heads: usize,
    d: usize,
    cos: &[F],
    sin: &[F],
    layout: RopeLayout,
    sign: F,
    pos: impl Fn(usize) -> usize + Sync,
) {
    let half = d / 2;
    let row_len = (heads * d).max(1);
    // Rows in groups of ~16 KB a task: one row is too little work to be worth a claim.
    let group = (4096 / row_len).max(1);
    crate::par::chunks_mut(x, row_len * group, |gi, rows| {
        if let Some(src) = src {
            rows.copy_from_slice(&src[gi * row_len * group..][..rows.len()]);
        }
        for (ri, row) in rows.chunks_mut(row_len).enumerate() {
            let tp = pos(gi * group + ri);
            let (c, s) = (&cos[tp * half..(tp + 1) * half], &sin[tp * half..(tp + 1) * half]);
            for head in row.chunks_mut(d) {
                match layout {
                    RopeLayout::HalfSplit => {
                        for i in 0..half {
                            let (a, b) = (head[i], head[i + half]);
                            let si = sign * s[i];
                            head[i] = a * c[i] - b * si;
                            head[i + half] = a * si + b * c[i];
                        }
                    }
                    RopeLayout::Interleaved => rotate_pairs(head, c, s, sign),
                }
            }
        }
    });
}

/// ggml's rotate_pairs as gcc contracts it (vfmsub231ss, vfmadd132ss): x0·cos fused with the
/// rounded x1·sin, x0·sin fused with the rounded x1·cos. The fused multiply-adds are the FMA
/// instruction where the CPU has it (a call into libm's `fmaf` per element otherwise: that was
/// 2% of a prefill); the same bits either way.
fn rotate_pairs<F: Float>(head: &mut [F], c: &[F], s: &[F], sign: F) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        if std::any::TypeId::of::<F>() == std::any::TypeId::of::<f32>() && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: F is f32 (the same type, so the same layout); AVX2 and FMA were detected.
            return unsafe {
                let f = |x: &[F]| std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len());
                let h = std::slice::from_raw_parts_mut(head.as_mut_ptr() as *mut f32, head.len());
                rotate_pairs_avx2(h, f(c), f(s), sign.to_f64() as f32)
            };
        }
        // SAFETY: FMA was detected.
        return unsafe { rotate_pairs_fma(head, c, s, sign) };
    }
    rotate_pairs_body(head, c, s, sign)
}

/// `rotate_pairs_body` for f32, four pairs a step: both results computed for every lane (the
/// pair swapped within the register) and the even lanes taken from one, the odd from the
/// other. Each lane is the scalar code's fused multiply-add of the same operands (the
/// negation a sign flip, as `-`), so the same bits; it was scalar, most of a 2-thread prompt's
/// RoPE.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rotate_pairs_avx2(head: &mut [f32], c: &[f32], s: &[f32], sign: f32) {
    use std::arch::x86_64::*;
    let pairs = (head.len() / 2).min(c.len()).min(s.len());
    let dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    let (sg, neg) = (_mm256_set1_ps(sign), _mm256_set1_ps(-0.0));
    let mut i = 0;
    while i + 4 <= pairs {
        let p = head.as_mut_ptr().add(2 * i);
        let x = _mm256_loadu_ps(p);
        let cd = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(c.as_ptr().add(i))), dup);
        let sd = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(s.as_ptr().add(i))), dup);
        let sd = _mm256_mul_ps(sg, sd);
        // xs: each pair swapped, (b, a).
        let xs = _mm256_permute_ps::<0b10_11_00_01>(x);
        // a·cos − sin·b (even lanes) and sin·a + b·cos (odd lanes).
        let even = _mm256_fmadd_ps(cd, x, _mm256_xor_ps(_mm256_mul_ps(sd, xs), neg));
        let odd = _mm256_fmadd_ps(sd, xs, _mm256_mul_ps(x, cd));
        _mm256_storeu_ps(p, _mm256_blend_ps::<0b1010_1010>(even, odd));
        i += 4;
    }
    rotate_pairs_body(&mut head[2 * i..], &c[i..], &s[i..], sign)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn rotate_pairs_fma<F: Float>(head: &mut [F], c: &[F], s: &[F], sign: F) {
    rotate_pairs_body(head, c, s, sign)
}

#[inline(always)]
fn rotate_pairs_body<F: Float>(head: &mut [F], c: &[F], s: &[F], sign: F) {
    for ((pair, &ci), &si) in head.chunks_exact_mut(2).zip(c).zip(s) {
        let (a, b) = (pair[0], pair[1]);
        let si = sign * si;
        pair[0] = ci.mul_add(a, -(si * b));
        pair[1] = si.mul_add(a, b * ci);
    }
}

fn check(x: &Tensor, table: &RopeTable) -> Result<(usize, usize)> {
    let s = x.shape();
    if s.len() != 4 {
        bail!("rope: expected (B, T, H, D), got {s:?}");
    }
    if s[3] != 2 * table.inv_freq.len() {
        bail!("rope: head dim {} but the table has {} frequencies", s[3], table.inv_freq.len());
    }
    Ok((s[1], s[2]))
}

/// The RoPE kernel a backend provides: x (B, T, H, D) at positions pos0..pos0+T (`t` = T,
/// `h` = H) rotated by `sign` times the table's angles (1 forward, −1 for the backward).
pub trait RopeKernels {
    fn rope(&self, x: &Tensor, table: &RopeTable, pos: Pos, t: usize, h: usize, sign: f32) -> Result<Tensor>;
    /// `rope_into_cache` for inputs it checked; the default is two `rope`s and two `kv_write`s.
    #[allow(clippy::too_many_arguments)]
    fn rope_into_cache(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        table: &RopeTable,
        kc: &mut Tensor,
        vc: &mut Tensor,
        pos: Pos,
        t: usize,
    ) -> Result<Tensor> {
        let qr = self.rope(q, table, pos, t, q.shape()[2], 1.0)?;
        let kr = self.rope(k, table, pos, t, k.shape()[2], 1.0)?;
        crate::ops::attention::kv_write(kc, &kr, pos)?;
        crate::ops::attention::kv_write(vc, v, pos)?;
        Ok(qr)
    }
    /// Token r of x (B·T rows) at `positions[r]` (packed rows).
    fn rope_positions(
        &self,
        _x: &Tensor,
        _table: &RopeTable,
        _positions: &[u32],
        _h: usize,
        _sign: f32,
    ) -> Result<Tensor> {
        bail!("RoPE at per-token positions (--packing) is implemented on the CPU only")
    }
}

impl RopeKernels for Cpu {
    fn rope(&self, x: &Tensor, table: &RopeTable, pos: Pos, t: usize, h: usize, sign: f32) -> Result<Tensor> {
        let pos0 = pos.value()?;
        let d = x.cols();
        let (c, s) = table.cos_sin_f32(pos0 + t);
        let rows = pos0 * d / 2..(pos0 + t) * d / 2;
        // Each task copies its own rows of x and rotates them (no serial copy first).
        let xs = x.as_f32()?;
        let mut y = crate::mem::zeros(xs.len());
        rope_rows(&mut y, Some(xs), h, d, &c[rows.clone()], &s[rows], table.layout, sign, |r| r % t);
        Tensor::from_f32(y, x.shape())
    }
    /// q through `rope`, k rotated straight into its cache rows, v through `kv_write`, each in
    /// parallel tasks (the default's rotated copy of k and its serial copies were 10% of a
    /// 16-thread prompt). The same rotations, so the same bits.
    fn rope_into_cache(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        table: &RopeTable,
        kc: &mut Tensor,
        vc: &mut Tensor,
        pos: Pos,
        t: usize,
    ) -> Result<Tensor> {
        let qr = self.rope(q, table, pos, t, q.shape()[2], 1.0)?;
        let pos0 = pos.value()?;
        let d = q.cols();
        let (c, s) = table.cos_sin_f32(pos0 + t);
        let rows = pos0 * d / 2..(pos0 + t) * d / 2;
        let ks = k.as_f32()?;
        let cs = kc.shape().to_vec();
        let (cap, row) = (cs[1], cs[2] * cs[3]);
        let per = t * row;
        let kd = kc.f32_mut()?;
        for bi in 0..cs[0] {
            let dst = &mut kd[(bi * cap + pos0) * row..][..per];
            rope_rows(
                dst,
                Some(&ks[bi * per..][..per]),
                cs[2],
                d,
                &c[rows.clone()],
                &s[rows.clone()],
                table.layout,
                1.0,
                |r| r,
            );
        }
        crate::ops::attention::kv_write(vc, v, pos)?;
        Ok(qr)
    }
    fn rope_positions(&self, x: &Tensor, table: &RopeTable, positions: &[u32], h: usize, sign: f32) -> Result<Tensor> {
        let d = x.cols();
        let (c, s) = table.cos_sin_f32(positions.iter().max().map_or(0, |&p| p as usize + 1));
        let mut y = x.as_f32()?.to_vec();
        rope_apply_at(&mut y, h, d, &c, &s, table.layout, sign, positions);
        Tensor::from_f32(y, x.shape())
    }
}

/// x: (B, T, H, D) at positions pos0..pos0+T.
pub fn rope(x: &Tensor, table: &RopeTable, pos0: usize) -> Result<Tensor> {
    let (t, h) = check(x, table)?;
    backend(x.device()).rope(x, table, Pos::Host(pos0), t, h, 1.0)
}

/// Inference with a KV cache: q (B, T, H, D) rotated and returned, k (B, T, KVH, D) rotated into
/// the key cache and v written into the value cache (both (B, cap, KVH, D)) at `pos`: what
/// `rope`, `rope` and two `attention::kv_write`s do, in one launch on a GPU.
pub fn rope_into_cache(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    table: &RopeTable,
    kc: &mut Tensor,
    vc: &mut Tensor,
    pos: Pos,
) -> Result<Tensor> {
    let (t, _) = check(q, table)?;
    let (tk, _) = check(k, table)?;
    let (qs, ks, cs) = (q.shape(), k.shape(), kc.shape());
    if tk != t
        || k.shape() != v.shape()
        || kc.shape() != vc.shape()
        || cs.len() != 4
        || cs[0] != qs[0]
        || ks[0] != qs[0]
        || cs[2..] != ks[2..]
    {
        bail!("rope_into_cache: q {qs:?}, k {ks:?}, v {:?} do not fit caches {cs:?} / {:?}", v.shape(), vc.shape());
    }
    if pos.bound(t)? > cs[1] {
        bail!("rope_into_cache: positions up to {} do not fit a cache of {}", pos.bound(t)?, cs[1]);
    }
    crate::profile::timed("rope_into_cache", || {
        backend::on("rope_into_cache", [q, k, v, &*kc, &*vc])?.rope_into_cache(q, k, v, table, kc, vc, pos, t)
    })
}

/// `rope` at a decode position that may be held on the device (`Pos::Device`: what a captured
/// decode step uses, so the graph does not depend on the position).
pub fn rope_at(x: &Tensor, table: &RopeTable, pos: Pos) -> Result<Tensor> {
    let (t, h) = check(x, table)?;
    backend(x.device()).rope(x, table, pos, t, h, 1.0)
}

pub fn rope_backward(dy: &Tensor, table: &RopeTable, pos0: usize) -> Result<Tensor> {
    let (t, h) = check(dy, table)?;
    backend(dy.device()).rope(dy, table, Pos::Host(pos0), t, h, -1.0)
}

/// x: (B, T, H, D), token (b, i) at `positions[b·T + i]` (packed rows: positions restart per example).
pub fn rope_positions(x: &Tensor, table: &RopeTable, positions: &[u32]) -> Result<Tensor> {
    rope_positions_signed(x, table, positions, 1.0)
}

pub fn rope_positions_backward(dy: &Tensor, table: &RopeTable, positions: &[u32]) -> Result<Tensor> {
    rope_positions_signed(dy, table, positions, -1.0)
}

fn rope_positions_signed(x: &Tensor, table: &RopeTable, positions: &[u32], sign: f32) -> Result<Tensor> {
    let (_, h) = check(x, table)?;
    let s = x.shape();
    if positions.len() != s[0] * s[1] {
        bail!("rope: {} positions for {} tokens", positions.len(), s[0] * s[1]);
    }
    backend(x.device()).rope_positions(x, table, positions, h, sign)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{gradcheck, rand_vec};

    /// The AVX2 rotation gives the scalar FMA code's bits, signed zeros and a tail included.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn rotate_pairs_avx2_equals_the_scalar_order() {
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            smelt_testing::skip(smelt_testing::Need::Cpu, "no AVX2/FMA on this CPU");
            return;
        }
        let f32s = |n, seed| rand_vec(n, seed).into_iter().map(|v| v as f32).collect::<Vec<f32>>();
        for (d, sign) in [(64, 1.0f32), (22, -1.0), (6, 1.0)] {
            let mut x = f32s(d, 5);
            x[0] = 0.0;
            x[1] = -0.0;
            x[3] = -0.0;
            let (mut c, s) = (f32s(d / 2, 6), f32s(d / 2, 7));
            c[1] = 0.0;
            let mut want = x.clone();
            rotate_pairs_body(&mut want, &c, &s, sign);
            // SAFETY: AVX2 and FMA were detected.
            unsafe { rotate_pairs_avx2(&mut x, &c, &s, sign) };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            assert_eq!(bits(&x), bits(&want), "d {d} sign {sign}");
        }
    }

    /// The CPU's `rope_into_cache` (parallel copies) gives what `rope`, `rope` and two
    /// `kv_write`s give, bit for bit, with rows enough for several tasks per tensor, two
    /// sequences, a prompt and a decode row, both layouts.
    #[test]
    fn rope_into_cache_equals_rope_then_kv_write() {
        let f32s = |n, seed| rand_vec(n, seed).into_iter().map(|v| v as f32).collect::<Vec<f32>>();
        let (b, h, kvh, d, cap) = (2, 2, 1, 64, 320);
        for (layout, t, pos) in
            [(RopeLayout::HalfSplit, 300, 7), (RopeLayout::Interleaved, 300, 0), (RopeLayout::Interleaved, 1, 9)]
        {
            let table = RopeTable::new(freqs::default_inv_freq(10000.0, d), 1.0, layout);
            let q = Tensor::from_f32(f32s(b * t * h * d, 1), &[b, t, h, d]).unwrap();
            let k = Tensor::from_f32(f32s(b * t * kvh * d, 2), &[b, t, kvh, d]).unwrap();
            let v = Tensor::from_f32(f32s(b * t * kvh * d, 3), &[b, t, kvh, d]).unwrap();
            let cache = Tensor::from_f32(f32s(b * cap * kvh * d, 4), &[b, cap, kvh, d]).unwrap();
            let (mut kc, mut vc) = (cache.clone(), cache.clone());
            let qc = rope_into_cache(&q, &k, &v, &table, &mut kc, &mut vc, Pos::Host(pos)).unwrap();
            let (mut ku, mut vu) = (cache.clone(), cache.clone());
            let qu = rope(&q, &table, pos).unwrap();
            crate::ops::attention::kv_write(&mut ku, &rope(&k, &table, pos).unwrap(), Pos::Host(pos)).unwrap();
            crate::ops::attention::kv_write(&mut vu, &v, Pos::Host(pos)).unwrap();
            let l = format!("{layout:?} t {t} pos {pos}");
            assert_eq!(qc.as_f32().unwrap(), qu.as_f32().unwrap(), "{l}: q");
            assert_eq!(kc.as_f32().unwrap(), ku.as_f32().unwrap(), "{l}: key cache");
            assert_eq!(vc.as_f32().unwrap(), vu.as_f32().unwrap(), "{l}: value cache");
        }
        // Keys and values of another batch than q and the caches: refused, not a panic.
        let table = RopeTable::new(freqs::default_inv_freq(10000.0, d), 1.0, RopeLayout::Interleaved);
        let q = Tensor::from_f32(f32s(b * h * d, 1), &[b, 1, h, d]).unwrap();
        let k = Tensor::from_f32(f32s(kvh * d, 2), &[1, 1, kvh, d]).unwrap();
        let mut kc = Tensor::from_f32(f32s(b * cap * kvh * d, 4), &[b, cap, kvh, d]).unwrap();
        let mut vc = kc.clone();
        let e = rope_into_cache(&q, &k, &k, &table, &mut kc, &mut vc, Pos::Host(0)).unwrap_err();
        assert!(e.to_string().contains("do not fit"), "{e}");
    }

    #[test]
    fn gradcheck_rope_both_layouts() {
        let (b, t, h, d) = (2, 3, 2, 8);
        for layout in [RopeLayout::HalfSplit, RopeLayout::Interleaved] {
            let table = RopeTable::new(freqs::default_inv_freq(10000.0, d), 1.3, layout);
            let (c, s) = table.cos_sin::<f64>(5, t);
            gradcheck(
                &[rand_vec(b * t * h * d, 1)],
                |v| {
                    let mut y = v[0].clone();
                    rope_apply(&mut y, t, h, d, &c, &s, layout, 1.0);
                    y
                },
                |_, dy| {
                    // The transpose of a (scaled) rotation is the rotation by the opposite angle.
                    let mut dx = dy.to_vec();
                    rope_apply(&mut dx, t, h, d, &c, &s, layout, -1.0);
                    vec![dx]
                },
            );
        }
    }

    #[test]
    fn layouts_agree_after_permutation() {
        // Interleaved rope on a permuted head equals the permuted half-split result.
        let d = 8;
        let x = rand_vec(d, 3);
        let inv = freqs::default_inv_freq(10000.0, d);
        let mk = |layout| RopeTable::new(inv.clone(), 1.0, layout);
        let (c, s) = mk(RopeLayout::HalfSplit).cos_sin::<f64>(7, 1);
        let mut hs = x.clone();
        rope_apply(&mut hs, 1, 1, d, &c, &s, RopeLayout::HalfSplit, 1.0);
        let perm: Vec<usize> = (0..d / 2).flat_map(|i| [i, i + d / 2]).collect();
        let mut il: Vec<f64> = perm.iter().map(|&p| x[p]).collect();
        rope_apply(&mut il, 1, 1, d, &c, &s, RopeLayout::Interleaved, 1.0);
        for (j, &p) in perm.iter().enumerate() {
            assert!((il[j] - hs[p]).abs() < 1e-12);
        }
    }

    /// Per-token positions rotate each token as `rope_apply` does at that position (both layouts),
    /// and the −1 rotation undoes it.
    #[test]
    fn per_token_positions_match_offsets() {
        let (h, d) = (2, 8);
        let positions = [0u32, 1, 2, 0, 1, 5];
        for layout in [RopeLayout::HalfSplit, RopeLayout::Interleaved] {
            let table = RopeTable::new(freqs::default_inv_freq(10000.0, d), 1.0, layout);
            let (c, s) = table.cos_sin::<f64>(0, 6);
            let x = rand_vec(positions.len() * h * d, 2);
            let mut y = x.clone();
            rope_apply_at(&mut y, h, d, &c, &s, layout, 1.0, &positions);
            for (r, &p) in positions.iter().enumerate() {
                let (c1, s1) = table.cos_sin::<f64>(p as usize, 1);
                let mut one = x[r * h * d..(r + 1) * h * d].to_vec();
                rope_apply(&mut one, 1, h, d, &c1, &s1, layout, 1.0);
                assert_eq!(one, y[r * h * d..(r + 1) * h * d]);
            }
            rope_apply_at(&mut y, h, d, &c, &s, layout, -1.0, &positions);
            assert!(y.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-12));
        }
    }
}
