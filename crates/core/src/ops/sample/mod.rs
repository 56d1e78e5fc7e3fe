//! Choosing the next token from a row of logits: repetition penalty, temperature, top-k,
//! min-p, top-p, then a draw from a uniform number the caller supplies (argmax at
//! temperature 0). This file holds the definition and its CPU reference; `cuda.rs` +
//! `sample.cu` run the same definition on a GPU, where only the chosen id comes back.
//!
//! The definition is written so that both devices compute it exactly alike: given the same
//! logits and the same uniform number they pick the same token, always, not just nearly.
//! - penalty: a seen id's logit z becomes z / p if z > 0, else z · p (CTRL, as transformers);
//! - order: ids ranked by penalised logit, larger first (IEEE total order, `f32::total_cmp`),
//!   ties by lower id; greedy is the first id of that order;
//! - weight: w = exp((z − z_max) / T) by `float::exp_f32`, a polynomial of plain IEEE
//!   operations that `sample.cu` repeats operation for operation (the top id has w = 1);
//! - mass: q = ⌊w · 2^44⌋ as an integer, so every sum is exact and independent of its order;
//! - top-k: the first k ids of the order; min-p: ids with w ≥ min_p;
//! - top-p: walking the top-k ids in order, keep those passing min-p until their mass reaches
//!   ⌈top_p · mass(top-k)⌉;
//! - draw: r = ⌊u · mass(kept)⌋ for u in [0, 1); the token is the first kept id, in id order,
//!   at which the running mass exceeds r (any fixed order samples the same distribution; id
//!   order needs no sort on the device).
//!
//! Comparisons are written as `!(x > 0.0)` where NaN must take the "no" branch, as in the
//! kernel.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use crate::backend::{backend, Cpu};
use crate::float::exp_f32;
use crate::{DType, Device, Tensor};
use anyhow::{bail, Result};

#[cfg(feature = "cuda")]
pub mod cuda;

/// Masses are fixed point with this many fractional bits: 2^44 · 2^20 ids fits in a u64.
pub const MASS_BITS: u32 = 44;
/// The largest vocabulary the fixed-point masses allow.
pub const MAX_VOCAB: usize = 1 << 20;

/// The filters of one sampling step (the seed lives with the caller's RNG).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleParams {
    /// ≤ 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// ≥ 1 = off.
    pub top_p: f32,
    /// ≤ 0 = off.
    pub min_p: f32,
    /// 1 = off.
    pub repetition_penalty: f32,
}

impl Default for SampleParams {
    fn default() -> Self {
        SampleParams { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0 }
    }
}

/// Sort key of the IEEE total order (what `f32::total_cmp` compares) as a u32.
pub fn order_key(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// The penalised logit.
pub fn penalised(z: f32, seen: bool, penalty: f32) -> f32 {
    if !seen || penalty == 1.0 {
        z
    } else if z > 0.0 {
        z / penalty
    } else {
        z * penalty
    }
}

/// Fixed-point mass of a weight in [0, 1] (NaN and negatives: 0).
pub fn mass(w: f32) -> u64 {
    if !(w > 0.0) {
        0
    } else if w >= 1.0 {
        1 << MASS_BITS
    } else {
        (w as f64 * (1u64 << MASS_BITS) as f64) as u64
    }
}

/// The top-p mass threshold: ⌈top_p · total⌉, at least 1.
pub fn top_p_target(top_p: f32, total: u64) -> u64 {
    ((top_p as f64 * total as f64).ceil() as u64).clamp(1, total.max(1))
}

/// The draw's point r = ⌊u · mass⌋ in [0, mass).
pub fn draw_point(u: f64, mass: u64) -> u64 {
    ((u * mass as f64) as u64).min(mass.saturating_sub(1))
}

/// Index of the largest value, first on ties, in the IEEE total order (NaN above +∞).
///
/// Two passes, the largest key and then the first index holding it, because each vectorises
/// where a running best index does not: a server step argmaxes 32 rows of 49k logits between
/// two forwards, and the one-pass loop was ~2% of its samples.
pub fn argmax(x: &[f32]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected.
        return unsafe { argmax_avx2(x) };
    }
    argmax_body(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn argmax_avx2(x: &[f32]) -> usize {
    argmax_body(x)
}

#[inline(always)]
fn argmax_body(x: &[f32]) -> usize {
    const CHUNK: usize = 64;
    let max = x.iter().fold(0u32, |m, &v| m.max(order_key(v)));
    let holds = |c: &[f32]| c.iter().fold(false, |a, &v| a | (order_key(v) == max));
    let chunk = x.chunks(CHUNK).position(holds).unwrap_or(0);
    let rest = x.get(chunk * CHUNK..).unwrap_or(&[]);
    chunk * CHUNK + rest.iter().position(|&v| order_key(v) == max).unwrap_or(0)
}

/// `argmax` as one pass with a running best index: the reference it is tested against.
#[cfg(test)]
fn argmax_one_pass(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if order_key(v) > order_key(x[best]) {
            best = i;
        }
    }
    best
}

/// The CPU reference: the token for one row of logits. `seen` is the row's bit set of seen
/// ids (bit i % 32 of word i / 32); `u` in [0, 1) is used only when sampling.
pub fn sample_row(logits: &[f32], seen: Option<&[u32]>, p: &SampleParams, u: f64) -> u32 {
    let is_seen = |i: usize| seen.is_some_and(|s| s[i / 32] >> (i % 32) & 1 == 1);
    let z: Vec<f32> = logits.iter().enumerate().map(|(i, &x)| penalised(x, is_seen(i), p.repetition_penalty)).collect();
    let first = argmax(&z);
    if !(p.temperature > 0.0) || z.len() <= 1 {
        return first as u32;
    }
    let v = z.len();
    let k = if p.top_k > 0 { p.top_k.min(v) } else { v };
    let rank = |i: &usize| (std::cmp::Reverse(order_key(z[*i])), *i);
    let mut order: Vec<usize> = (0..v).collect();
    if k < v {
        order.select_nth_unstable_by_key(k - 1, rank);
        order.truncate(k);
    }
    order.sort_unstable_by_key(rank);
    let m = z[first];
    let w: Vec<f32> = order.iter().map(|&i| exp_f32((z[i] - m) / p.temperature)).collect();
    let q: Vec<u64> = w.iter().map(|&w| mass(w)).collect();
    let target = if p.top_p < 1.0 { top_p_target(p.top_p, q.iter().sum()) } else { u64::MAX };
    let min_p = p.min_p.min(1.0);
    let mut kept = Vec::new();
    let mut acc = 0u64;
    for j in 0..k {
        if p.min_p > 0.0 && !(w[j] >= min_p) {
            continue;
        }
        kept.push(j);
        acc += q[j];
        if acc >= target {
            break;
        }
    }
    if acc == 0 {
        return first as u32;
    }
    let r = draw_point(u, acc);
    kept.sort_unstable_by_key(|&j| order[j]);
    let mut cum = 0u64;
    for &j in &kept {
        cum += q[j];
        if cum > r {
            return order[j] as u32;
        }
    }
    order[kept[kept.len() - 1]] as u32
}

/// The ids each row has seen, for the repetition penalty: a bit per vocabulary id, kept on
/// the device where sampling runs (`sample` adds the ids it picks).
pub struct Seen {
    rows: usize,
    vocab: usize,
    bits: Bits,
}

enum Bits {
    Host(Vec<u32>),
    /// u32 words on the device that samples (its backend's `mark_seen` sets them).
    Device(Tensor),
}

impl Seen {
    pub fn new(rows: usize, vocab: usize, device: Device) -> Result<Self> {
        let words = rows * vocab.div_ceil(32);
        let bits = if device.is_cpu() {
            Bits::Host(vec![0; words])
        } else {
            Bits::Device(Tensor::zeros_typed(&[words], device, DType::U32)?)
        };
        Ok(Seen { rows, vocab, bits })
    }

    pub fn words_per_row(&self) -> usize {
        self.vocab.div_ceil(32)
    }

    /// Where the bits live (sampling needs them on the logits' device).
    pub fn device(&self) -> Device {
        match &self.bits {
            Bits::Host(_) => Device::Cpu,
            Bits::Device(t) => t.device(),
        }
    }

    /// Adds `ids` to row `row`'s set.
    pub fn mark(&mut self, row: usize, ids: &[u32]) -> Result<()> {
        if row >= self.rows {
            bail!("seen ids: row {row} of {}", self.rows);
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.vocab) {
            bail!("seen ids: id {bad} out of range for vocabulary {}", self.vocab);
        }
        let w0 = row * self.words_per_row();
        match &mut self.bits {
            Bits::Host(b) => ids.iter().for_each(|&t| b[w0 + t as usize / 32] |= 1 << (t % 32)),
            Bits::Device(t) => backend(t.device()).mark_seen(t, w0, ids)?,
        }
        Ok(())
    }

    /// Whether `id` is in row `row`'s set (a device set is copied back: for tests).
    pub fn contains(&self, row: usize, id: u32) -> Result<bool> {
        let w = row * self.words_per_row() + id as usize / 32;
        let word = match &self.bits {
            Bits::Host(b) => b[w],
            Bits::Device(t) => t.to_device(Device::Cpu)?.as_u32()?[w],
        };
        Ok(word >> (id % 32) & 1 == 1)
    }
}

/// One token per row of `logits` (R, V), as a (R) u32 tensor on the logits' device; `uniforms`
/// holds one u in [0, 1) per row (read only when sampling). The picked ids join `seen`.
pub fn sample(logits: &Tensor, seen: Option<&mut Seen>, p: &SampleParams, uniforms: &[f64]) -> Result<Tensor> {
    let (r, v) = (logits.rows(), logits.cols());
    if v == 0 || v > MAX_VOCAB {
        bail!("sample: vocabulary of {v} (1..={MAX_VOCAB} supported)");
    }
    if uniforms.len() != r {
        bail!("sample: {} uniform numbers for {r} rows", uniforms.len());
    }
    if let Some(u) = uniforms.iter().find(|u| !(0.0..1.0).contains(*u)) {
        bail!("sample: uniform number {u} is outside [0, 1)");
    }
    if let Some(s) = &seen {
        if s.rows != r || s.vocab != v {
            bail!("sample: seen ids are for {} rows of {} ids, logits are ({r}, {v})", s.rows, s.vocab);
        }
    }
    if let Some(s) = &seen {
        if s.device() != logits.device() {
            bail!("sample: the seen ids are on {}, the logits on {}", s.device(), logits.device());
        }
    }
    backend(logits.device()).sample(logits, seen, p, uniforms)
}

/// The sampling kernels a backend provides (arguments checked by `sample`).
pub trait SampleKernels {
    /// One id per row of `logits`, as a u32 tensor here; `seen` is on this device and gains
    /// the picked ids.
    fn sample(&self, logits: &Tensor, seen: Option<&mut Seen>, p: &SampleParams, uniforms: &[f64]) -> Result<Tensor>;
    /// Sets the bits of `ids` in the u32 words of `bits` from `word0` on.
    fn mark_seen(&self, bits: &mut Tensor, word0: usize, ids: &[u32]) -> Result<()>;
}

impl SampleKernels for Cpu {
    fn sample(&self, logits: &Tensor, seen: Option<&mut Seen>, p: &SampleParams, uniforms: &[f64]) -> Result<Tensor> {
        let (r, v) = (logits.rows(), logits.cols());
        let z = logits.as_f32()?;
        let words = v.div_ceil(32);
        let mut bits = match seen {
            Some(Seen { bits: Bits::Host(b), .. }) => Some(b),
            Some(_) => bail!("sample: the CPU keeps seen ids in host words (Seen::new on Device::Cpu)"),
            None => None,
        };
        let mut out = Vec::with_capacity(r);
        for (row, u) in uniforms.iter().enumerate() {
            let s = bits.as_deref().map(|b| &b[row * words..(row + 1) * words]);
            let t = sample_row(&z[row * v..(row + 1) * v], s, p, *u);
            if let Some(b) = bits.as_deref_mut() {
                b[row * words + t as usize / 32] |= 1 << (t % 32);
            }
            out.push(t);
        }
        Tensor::from_u32(out, &[r])
    }

    /// (`Seen` keeps host words itself; this serves a u32 tensor handed in directly.)
    fn mark_seen(&self, bits: &mut Tensor, word0: usize, ids: &[u32]) -> Result<()> {
        let mut w = bits.as_u32()?.to_vec();
        ids.iter().for_each(|&t| w[word0 + t as usize / 32] |= 1 << (t % 32));
        *bits = Tensor::from_u32(w, bits.shape())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(temperature: f32) -> SampleParams {
        SampleParams { temperature, ..Default::default() }
    }

    #[test]
    fn argmax_takes_the_first_of_ties() {
        assert_eq!(argmax(&[0.1, 3.0, -1.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
        assert_eq!(argmax(&[]), 0);
        // The two passes pick what the one-pass loop picks: ties across and within chunks,
        // signed zeros, NaNs of both signs, infinities, rows of any length.
        let specials = [0.0, -0.0, f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.5, -1.5];
        let mut seed = 7u64;
        for n in [1, 2, 63, 64, 65, 130, 1000, 49152] {
            for trial in 0..6 {
                let x: Vec<f32> = (0..n)
                    .map(|_| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        let r = (seed >> 33) as usize;
                        if trial < 2 || r.is_multiple_of(7) {
                            specials[r % specials.len()]
                        } else {
                            (r % 50) as f32 - 25.0
                        }
                    })
                    .collect();
                assert_eq!(argmax(&x), argmax_one_pass(&x), "n {n}, trial {trial}");
            }
        }
    }

    #[test]
    fn greedy_penalty_and_filters() {
        let z = [1.0, 5.0, 4.9, -3.0];
        assert_eq!(sample_row(&z, None, &p(0.0), 0.0), 1);
        // The penalty pushes token 1 below token 2.
        let seen = [1u32 << 1];
        let pen = SampleParams { repetition_penalty: 1.5, ..p(0.0) };
        assert_eq!(sample_row(&z, Some(&seen), &pen, 0.0), 2);
        // top-k 1 at any temperature is greedy.
        let k1 = SampleParams { top_k: 1, ..p(5.0) };
        assert!((0..50).all(|i| sample_row(&z, None, &k1, i as f64 / 50.0) == 1));
        // min-p 0.5 keeps only tokens 1 and 2; u sweeps [0, 1) and reaches both.
        let mp = SampleParams { min_p: 0.5, ..p(1.0) };
        let got: Vec<u32> = (0..200).map(|i| sample_row(&z, None, &mp, i as f64 / 200.0)).collect();
        assert!(got.iter().all(|&t| t == 1 || t == 2) && got.contains(&1) && got.contains(&2));
        // top-p 0.5: token 1 alone has ≥ half the mass.
        let tp = SampleParams { top_p: 0.5, ..p(1.0) };
        assert!((0..100).all(|i| sample_row(&z, None, &tp, i as f64 / 100.0) == 1));
    }

    /// The draw is inverse-CDF sampling in id order over the kept ids: u sweeps the masses.
    #[test]
    fn draw_follows_the_masses_in_id_order() {
        let z = [0.0f32, 2f32.ln(), 0.0]; // weights 0.5, 1, 0.5 → masses 1/4, 1/2, 1/4
        let got: Vec<u32> =
            [0.0, 0.2, 0.3, 0.7, 0.8, 0.9999].iter().map(|&u| sample_row(&z, None, &p(1.0), u)).collect();
        assert_eq!(got, vec![0, 0, 1, 1, 2, 2]);
        // The same ids counted by frequency over a fine sweep: 1/4, 1/2, 1/4.
        let mut n = [0usize; 3];
        (0..4000).for_each(|i| n[sample_row(&z, None, &p(1.0), i as f64 / 4000.0) as usize] += 1);
        assert!(n.iter().zip([1000, 2000, 1000]).all(|(&a, b)| a.abs_diff(b) <= 2), "{n:?}");
    }

    /// Ties in the order go to the lower id, in top-k and in top-p alike.
    #[test]
    fn ties_go_to_the_lower_id() {
        let z = [1.0f32, 3.0, 3.0, 3.0, 0.0];
        let k2 = SampleParams { top_k: 2, ..p(1.0) };
        let got: Vec<u32> = (0..100).map(|i| sample_row(&z, None, &k2, i as f64 / 100.0)).collect();
        assert!(got.iter().all(|&t| t == 1 || t == 2) && got.contains(&2));
        // Masses of the three tied ids are equal: top-p 0.5 of them needs two.
        let tp = SampleParams { top_p: 0.5, top_k: 4, ..p(1e-3) };
        let got: Vec<u32> = (0..100).map(|i| sample_row(&z, None, &tp, i as f64 / 100.0)).collect();
        assert!(got.iter().all(|&t| t == 1 || t == 2) && got.contains(&1) && got.contains(&2));
    }

    #[test]
    fn sample_marks_the_picked_ids() {
        let logits = Tensor::from_f32(vec![0.0, 1.0, 5.0, 2.0, 9.0, 0.0, 0.0, 1.0], &[2, 4]).unwrap();
        let mut seen = Seen::new(2, 4, Device::Cpu).unwrap();
        seen.mark(0, &[3]).unwrap();
        let pen = SampleParams { repetition_penalty: 2.0, ..p(0.0) };
        let t = sample(&logits, Some(&mut seen), &pen, &[0.0, 0.0]).unwrap();
        assert_eq!(t.as_u32().unwrap(), &[2, 0]);
        assert!(seen.contains(0, 2).unwrap() && seen.contains(0, 3).unwrap() && seen.contains(1, 0).unwrap());
        assert!(!seen.contains(1, 2).unwrap());
        assert!(seen.mark(0, &[4]).is_err());
        assert!(sample(&logits, None, &p(1.0), &[1.0, 0.0]).is_err());
    }

    /// `sample.cu` computes exp_f32 with these bit patterns as constants; mirroring its
    /// operations here must give exp_f32's bits exactly (a wrong constant would not).
    #[test]
    fn the_kernel_constants_reproduce_exp_f32() {
        let c = |b: u32| f32::from_bits(b);
        let mirror = |x: f32| {
            let x = x.clamp(c(0xc2ae999a), c(0x42b16666));
            let n = (x * c(0x3fb8aa3b) + c(0x4b400000)) - c(0x4b400000);
            let r = x - n * c(0x3f318000) - n * c(0xb95e8083);
            let mut q = c(0x39506967);
            for k in [0x3ab743ce, 0x3c088908, 0x3d2aa9c1, 0x3e2aaaaa, 0x3f000000] {
                q = q * r + c(k);
            }
            (q * r * r + r + 1.0) * f32::from_bits(((n as i32 + 127) as u32) << 23)
        };
        let mut x = -90.0f32;
        while x < 1.0 {
            assert_eq!(mirror(x).to_bits(), exp_f32(x).to_bits(), "x = {x}");
            x += 0.000_913;
        }
    }

    /// sample.cu's algorithm run sequentially: the top-k and top-p boundaries found by radix
    /// selects over the order keys (8 bits a pass) and tie counts, the draw by a scan in id
    /// order, no sort. Checked against `sample_row` below, so the device's way of computing
    /// the definition is tested where there is no GPU.
    fn by_thresholds(logits: &[f32], seen: Option<&[u32]>, p: &SampleParams, u: f64) -> u32 {
        let v = logits.len();
        let z: Vec<f32> = (0..v)
            .map(|i| penalised(logits[i], seen.is_some_and(|s| s[i / 32] >> (i % 32) & 1 == 1), p.repetition_penalty))
            .collect();
        let key = |i: usize| order_key(z[i]);
        let first = (0..v).max_by_key(|&i| (key(i), std::cmp::Reverse(i))).unwrap();
        if !(p.temperature > 0.0) || v <= 1 {
            return first as u32;
        }
        let m = z[first];
        let weight = |x: f32| exp_f32((x - m) / p.temperature);
        let w = |i: usize| weight(z[i]);
        // (key of the boundary, weight still needed there, weight of all ids with that key)
        let select = |active: &dyn Fn(usize) -> Option<u64>, target: u64| {
            let (mut prefix, mut pmask, mut want, mut tied) = (0u32, 0u32, target, 0);
            for shift in [24, 16, 8, 0] {
                let mut hist = [0u64; 256];
                for i in 0..v {
                    if let Some(wt) = active(i).filter(|_| key(i) & pmask == prefix) {
                        hist[(key(i) >> shift & 255) as usize] += wt;
                    }
                }
                let (mut acc, mut b) = (0, 255);
                while b > 0 && acc + hist[b] < want {
                    acc += hist[b];
                    b -= 1;
                }
                prefix |= (b as u32) << shift;
                pmask |= 255 << shift;
                want -= acc;
                tied = hist[b];
            }
            (prefix, want, tied)
        };
        let jth = |active: &dyn Fn(usize) -> bool, kb: u32, j: u64| {
            (0..v).filter(|&i| active(i) && key(i) == kb).nth(j as usize - 1).unwrap()
        };
        let inside =
            |b: Option<(u32, usize)>, i: usize| b.is_none_or(|(kb, bi)| key(i) > kb || (key(i) == kb && i <= bi));
        let k1 = (p.top_k > 0 && p.top_k < v).then(|| {
            let (kb, need, tie) = select(&|_| Some(1), p.top_k as u64);
            (kb, if need == tie { v - 1 } else { jth(&|_| true, kb, need) })
        });
        let min_p = p.min_p.min(1.0);
        let passes = |i: usize| !(p.min_p > 0.0) || w(i) >= min_p;
        let mk: u64 = (0..v).filter(|&i| inside(k1, i)).map(|i| mass(w(i))).sum();
        let mm: u64 = (0..v).filter(|&i| inside(k1, i) && passes(i)).map(|i| mass(w(i))).sum();
        let mut kp = None;
        let target = top_p_target(p.top_p.max(0.0), mk);
        if p.top_p < 1.0 && mm >= target {
            let active = |i: usize| inside(k1, i) && passes(i);
            let (kb, need, tie) = select(&|i| active(i).then(|| mass(w(i))), target);
            let q = mass(weight(f32::from_bits(if kb >> 31 == 1 { kb & 0x7fff_ffff } else { !kb }))).max(1);
            let j = need.div_ceil(q);
            kp = Some((kb, if j == tie / q { v - 1 } else { jth(&active, kb, j) }));
        }
        let kept: Vec<usize> = (0..v).filter(|&i| inside(k1, i) && inside(kp, i) && passes(i)).collect();
        let total: u64 = kept.iter().map(|&i| mass(w(i))).sum();
        if total == 0 {
            return first as u32;
        }
        let r = draw_point(u, total);
        let mut c = 0;
        kept.into_iter()
            .find(|&i| {
                c += mass(w(i));
                c > r
            })
            .unwrap_or(first) as u32
    }

    #[test]
    fn the_device_algorithm_computes_the_definition() {
        let mut rng = crate::rng::Rng::new(11);
        let mut cases = 0;
        for v in [1usize, 2, 5, 37, 300, 1000] {
            for trial in 0..6 {
                // Coarse logits (many ties) in half the trials, fine ones in the other half.
                let step = if trial % 2 == 0 { 0.5 } else { 1e-4 };
                let z: Vec<f32> = (0..v).map(|_| ((rng.normal() * 3.0 / step).round() * step) as f32).collect();
                let seen: Vec<u32> =
                    (0..v.div_ceil(32)).map(|_| rng.next_u64() as u32 & rng.next_u64() as u32).collect();
                for &temperature in &[0.0f32, 0.5, 1.0, 3.0] {
                    for &top_k in &[0usize, 1, 3, 40, v] {
                        for &top_p in &[1.0f32, 0.9, 0.5, 0.0] {
                            for &min_p in &[0.0f32, 0.05, 0.5] {
                                for &repetition_penalty in &[1.0f32, 1.3] {
                                    let p = SampleParams { temperature, top_k, top_p, min_p, repetition_penalty };
                                    let u = rng.uniform();
                                    let want = sample_row(&z, Some(&seen), &p, u);
                                    assert_eq!(
                                        by_thresholds(&z, Some(&seen), &p, u),
                                        want,
                                        "v {v} trial {trial} {p:?} u {u}"
                                    );
                                    cases += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        println!("{cases} cases agree");
    }
}
