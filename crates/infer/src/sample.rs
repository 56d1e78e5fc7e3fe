//! Turning a row of logits into the next token: repetition penalty, temperature, top-k,
//! top-p, min-p, then a draw (or argmax at temperature 0). The step itself is
//! `smelt_core::ops::sample` and runs where the logits are (on a GPU only the id comes back);
//! this holds the settings, the RNG that supplies the draw's uniform number, and the ids seen.

use anyhow::{bail, Result};
use smelt_core::ops::sample::{self, SampleParams, Seen};
use smelt_core::rng::Rng;
use smelt_core::{Device, Tensor};

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

impl SamplingConfig {
    pub fn params(&self) -> SampleParams {
        SampleParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
        }
    }
}

/// One sequence's sampler. The same seed gives the same uniform numbers on every device, so
/// the CPU and a GPU pick the same tokens wherever their logits agree.
pub struct Sampler {
    cfg: SamplingConfig,
    rng: Rng,
    /// Ids given to `observe` before the seen set exists (it is made on the logits' device).
    pending: Vec<u32>,
    seen: Option<(Device, Seen)>,
}

impl Sampler {
    pub fn new(cfg: SamplingConfig) -> Self {
        let rng = Rng::new(cfg.seed);
        Sampler { cfg, rng, pending: Vec::new(), seen: None }
    }

    /// Ids the repetition penalty counts as seen (the prompt); sampled ids join by themselves.
    pub fn observe(&mut self, ids: &[u32]) {
        self.pending.extend_from_slice(ids);
    }

    /// The next token from `logits` (1, V) on the CPU or a GPU.
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32> {
        let p = self.cfg.params();
        let seen = if p.repetition_penalty != 1.0 {
            let device = logits.device();
            let entry = match self.seen.take() {
                Some((d, _)) if d != device => bail!("sampler: the logits moved from {d} to {device} mid-sequence"),
                Some(e) => e,
                None => (device, Seen::new(1, logits.cols(), device)?),
            };
            let (_, s) = self.seen.insert(entry);
            s.mark(0, &std::mem::take(&mut self.pending))?;
            Some(s)
        } else {
            None
        };
        let u = if p.temperature > 0.0 { self.rng.uniform() } else { 0.0 };
        let id = sample::sample(logits, seen, &p, &[u])?;
        Ok(id.to_device(Device::Cpu)?.as_u32()?[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_penalty_and_seeded_sampling() {
        let logits = Tensor::from_f32(vec![1.0, 5.0, 4.9, -3.0], &[1, 4]).unwrap();
        assert_eq!(Sampler::new(SamplingConfig::default()).sample(&logits).unwrap(), 1);
        // The penalty pushes the observed token 1 below token 2, then 2 (now seen) below 1.
        let mut s = Sampler::new(SamplingConfig { repetition_penalty: 1.5, ..Default::default() });
        s.observe(&[1]);
        assert_eq!(s.sample(&logits).unwrap(), 2);
        assert_eq!(s.sample(&logits).unwrap(), 1);
        // A seed fixes the draws.
        let cfg = SamplingConfig { temperature: 1.0, seed: 4, ..Default::default() };
        let draw = |cfg: &SamplingConfig| {
            let mut s = Sampler::new(cfg.clone());
            (0..20).map(|_| s.sample(&logits).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(draw(&cfg), draw(&cfg));
        assert!(draw(&cfg).iter().any(|&t| t != 1), "temperature 1 should not always pick the top token");
    }
}
