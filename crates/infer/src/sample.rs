//! Turning a row of logits into the next token: repetition penalty, temperature, top-k,
//! top-p, min-p, then a draw (or argmax at temperature 0).

use smelt_core::ops::sample::{argmax, top_k};
use smelt_core::rng::Rng;

#[derive(Clone, Debug)]
pub struct SamplingConfig {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off: drop tokens whose probability is below min_p × the top probability.
    pub min_p: f32,
    /// 1 = off; > 1 discourages tokens already in the context (CTRL-style, as transformers does).
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0, seed: 0 }
    }
}

pub struct Sampler {
    cfg: SamplingConfig,
    rng: Rng,
}

impl Sampler {
    pub fn new(cfg: SamplingConfig) -> Self {
        let rng = Rng::new(cfg.seed);
        Sampler { cfg, rng }
    }

    /// Picks the next token from `logits` given the ids seen so far (for the penalty).
    pub fn sample(&mut self, logits: &[f32], context: &[u32]) -> u32 {
        let mut z = logits.to_vec();
        if self.cfg.repetition_penalty != 1.0 {
            let mut seen = context.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &t in &seen {
                if let Some(v) = z.get_mut(t as usize) {
                    *v = if *v > 0.0 { *v / self.cfg.repetition_penalty } else { *v * self.cfg.repetition_penalty };
                }
            }
        }
        if self.cfg.temperature <= 0.0 {
            return argmax(&z) as u32;
        }
        let k = if self.cfg.top_k > 0 { self.cfg.top_k.min(z.len()) } else { z.len() };
        let cand = top_k(&z, k);
        let m = z[cand[0]];
        let mut probs: Vec<f64> = cand.iter().map(|&i| (((z[i] - m) / self.cfg.temperature) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        // min-p: relative to the most likely token.
        let mut keep = probs.len();
        if self.cfg.min_p > 0.0 {
            let floor = probs[0] * self.cfg.min_p as f64;
            keep = probs.iter().take_while(|&&p| p >= floor).count().max(1);
        }
        // top-p: the smallest prefix whose mass reaches p.
        if self.cfg.top_p < 1.0 {
            let mut acc = 0.0;
            let mut n = 0;
            for &p in &probs[..keep] {
                acc += p;
                n += 1;
                if acc >= self.cfg.top_p as f64 {
                    break;
                }
            }
            keep = n.max(1);
        }
        let mass: f64 = probs[..keep].iter().sum();
        let mut r = self.rng.uniform() * mass;
        for (i, &p) in probs[..keep].iter().enumerate() {
            r -= p;
            if r <= 0.0 {
                return cand[i] as u32;
            }
        }
        cand[keep - 1] as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_filters() {
        let logits = [1.0, 5.0, 4.9, -3.0];
        let mut s = Sampler::new(SamplingConfig::default());
        assert_eq!(s.sample(&logits, &[]), 1);
        // The penalty pushes token 1 below token 2.
        let mut s = Sampler::new(SamplingConfig { repetition_penalty: 1.5, ..Default::default() });
        assert_eq!(s.sample(&logits, &[1]), 2);
        // top-k 1 at any temperature is greedy.
        let mut s = Sampler::new(SamplingConfig { temperature: 5.0, top_k: 1, seed: 3, ..Default::default() });
        assert!((0..50).all(|_| s.sample(&logits, &[]) == 1));
        // min-p 0.5 keeps only tokens 1 and 2.
        let mut s = Sampler::new(SamplingConfig { temperature: 1.0, min_p: 0.5, seed: 4, ..Default::default() });
        assert!((0..200).all(|_| matches!(s.sample(&logits, &[]), 1 | 2)));
    }
}
