//! Near-duplicate detection: MinHash signatures over word 5-gram shingles, LSH banding to find
//! candidate pairs, and a check of the estimated Jaccard similarity before calling a pair a
//! duplicate (Broder 1997; Leskovec et al., Mining of Massive Datasets, ch. 3).
//!
//! Signatures are computed per document (in parallel, by the caller); the index is sequential and
//! keeps the first document of every near-duplicate cluster, so the result is deterministic.

use crate::hash::{hash_bytes, hash_u64s, mix64};
use std::collections::HashMap;

/// Words per shingle.
pub const SHINGLE: usize = 5;

pub struct MinHasher {
    seeds: Vec<u64>,
}

impl MinHasher {
    pub fn new(num_perm: usize) -> Self {
        // Permutation i is x ↦ mix64(x ^ seed_i): a bijection on u64 per seed, which is what
        // MinHash needs from a "random permutation", at one multiply-xorshift per value.
        MinHasher { seeds: (0..num_perm as u64).map(|i| hash_u64s(&[0x6d69_6e68, i])).collect() }
    }

    pub fn num_perm(&self) -> usize {
        self.seeds.len()
    }

    /// The signature of `text`: for each permutation the minimum over its shingles (top 32 bits,
    /// which is plenty to estimate similarity and halves the memory the index keeps).
    /// Words are lower-cased runs of letters and digits, so punctuation and case do not matter.
    /// A text shorter than one shingle is hashed as a single shingle.
    pub fn signature(&self, text: &str) -> Vec<u32> {
        let words: Vec<u64> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| hash_bytes(w.to_lowercase().as_bytes(), 0))
            .collect();
        let shingles: Vec<u64> = if words.len() < SHINGLE {
            vec![hash_u64s(&words)]
        } else {
            words.windows(SHINGLE).map(hash_u64s).collect()
        };
        let mut sig = vec![u64::MAX; self.seeds.len()];
        for &s in &shingles {
            for (m, &seed) in sig.iter_mut().zip(&self.seeds) {
                *m = (*m).min(mix64(s ^ seed));
            }
        }
        sig.into_iter().map(|v| (v >> 32) as u32).collect()
    }
}

/// The share of equal positions: an unbiased estimate of the shingle sets' Jaccard similarity.
pub fn estimated_jaccard(a: &[u32], b: &[u32]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64
}

/// Bands × rows for a similarity threshold: the (b, r) with b·r ≤ num_perm that minimises the
/// sum of the false-positive and false-negative areas under the LSH S-curve 1-(1-s^r)^b
/// (the choice datasketch makes with equal weights).
pub fn optimal_bands(threshold: f64, num_perm: usize) -> (usize, usize) {
    let area = |f: &dyn Fn(f64) -> f64, lo: f64, hi: f64| {
        let n = 200;
        let h = (hi - lo) / n as f64;
        (0..n).map(|i| f(lo + (i as f64 + 0.5) * h)).sum::<f64>() * h
    };
    let mut best = (f64::INFINITY, 1, num_perm);
    for b in 1..=num_perm {
        for r in 1..=num_perm / b {
            let p = |s: f64| 1.0 - (1.0 - s.powi(r as i32)).powi(b as i32);
            let fp = area(&p, 0.0, threshold);
            let fneg = area(&|s| 1.0 - p(s), threshold, 1.0);
            if fp + fneg < best.0 {
                best = (fp + fneg, b, r);
            }
        }
    }
    (best.1, best.2)
}

/// The LSH index of kept documents.
pub struct LshIndex {
    bands: usize,
    rows: usize,
    threshold: f64,
    num_perm: usize,
    /// Signatures of kept documents, concatenated (num_perm each).
    sigs: Vec<u32>,
    buckets: HashMap<u64, Vec<u32>>,
}

impl LshIndex {
    pub fn new(num_perm: usize, bands: usize, rows: usize, threshold: f64) -> Self {
        assert!(bands * rows <= num_perm && bands > 0 && rows > 0);
        LshIndex { bands, rows, threshold, num_perm, sigs: Vec::new(), buckets: HashMap::new() }
    }

    fn keys<'a>(&'a self, sig: &'a [u32]) -> impl Iterator<Item = u64> + 'a {
        (0..self.bands).map(move |b| {
            let band = &sig[b * self.rows..(b + 1) * self.rows];
            let mut v: Vec<u64> = band.iter().map(|&x| x as u64).collect();
            v.push(b as u64);
            hash_u64s(&v)
        })
    }

    /// If `sig` is within the threshold of a kept document, that document's index among kept
    /// documents; otherwise `sig` is added to the index and `None` returned.
    pub fn check_insert(&mut self, sig: &[u32]) -> Option<u32> {
        let keys: Vec<u64> = self.keys(sig).collect();
        for k in &keys {
            if let Some(cands) = self.buckets.get(k) {
                for &c in cands {
                    let s = &self.sigs[c as usize * self.num_perm..(c as usize + 1) * self.num_perm];
                    if estimated_jaccard(sig, s) >= self.threshold {
                        return Some(c);
                    }
                }
            }
        }
        let id = (self.sigs.len() / self.num_perm) as u32;
        self.sigs.extend_from_slice(sig);
        for k in keys {
            let v = self.buckets.entry(k).or_default();
            if v.last() != Some(&id) {
                v.push(id)
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similar_texts_have_similar_signatures() {
        let m = MinHasher::new(128);
        let a = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat near the door";
        let b = a.replace("warm", "cold");
        let c = "an entirely different sentence about memory allocation in the kernel and page tables for processes";
        let (sa, sb, sc) = (m.signature(a), m.signature(&b), m.signature(c));
        // 16 shingles each; the changed word spoils 5 of them: J = 11/21 ≈ 0.52
        let j = estimated_jaccard(&sa, &sb);
        assert!((0.3..0.7).contains(&j), "{j}");
        assert!(estimated_jaccard(&sa, &sc) < 0.1);
        assert_eq!(m.signature("The QUICK, brown fox!"), m.signature("the quick brown fox"));
    }

    #[test]
    fn bands_for_common_settings() {
        // b·r fits, and the S-curve's midpoint (1/b)^(1/r) sits near the threshold.
        for (t, n) in [(0.8, 128), (0.5, 128), (0.9, 256)] {
            let (b, r) = optimal_bands(t, n);
            assert!(b * r <= n);
            let mid = (1.0 / b as f64).powf(1.0 / r as f64);
            assert!((mid - t).abs() < 0.12, "t={t} b={b} r={r} mid={mid}");
        }
    }
}
