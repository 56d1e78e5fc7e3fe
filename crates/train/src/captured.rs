//! A training update captured once as a CUDA graph and replayed (issue 14): every micro-batch's
//! forward and backward, the gradient norm and AdamW, launched with one call per update instead
//! of a thousand-odd launches and the host's tape building between them. Opt-in while it is
//! unverified on a GPU: `SMELT_CUDA_GRAPH_STEP=1` (`wanted`).
//!
//! A graph replays its kernels' arguments as they were at the capture, so what changes from
//! one update to the next lives in device buffers made before it, written before each replay:
//! - the micro-batches' token ids and targets (`inputs`): the model reads ids from the device
//!   (the embedding's backward groups them there, `embedding_sort_pos`), and the loss is told
//!   each micro-batch's count of scored targets instead of reading them back
//!   (`Layout::scored`; the count must be the same at every replay: a token file's windows
//!   score every target);
//! - AdamW's learning rate and bias corrections (`AdamWState::scalars`);
//! - and what comes back, the micro-batches' losses and the norm state, is copied into `out`
//!   at the end of the step and read with the update's one wait.
//!
//! The step's own tensors (activations, gradients) come from one arena made before the capture
//! (`Replay::measure_steady` sizes it on an uncaptured step), so their addresses are the same
//! at every replay; AdamW's and the norm's per-tensor tables, which hold those addresses, are
//! staged once as constants (`DeviceBuf::constant`). The first update runs plainly (kernel
//! loads, cuBLASLt's algorithm choice, the weights' bf16 copies), the second is measured and
//! must allocate nothing that lasts, the third is captured; from then on each update is a
//! replay. Anything the capture cannot hold (a host copy, a wait) fails with an error that
//! names it (`smelt_core::cuda::capture`).
//!
//! What it does not cover, said by `unsupported`: data-parallel jobs (NCCL calls are not captured),
//! Muon (it reads norms on the host), SFT's token-weighted micro-batches, packing, DPO,
//! distillation, adapter dropout (its masks' seeds change every step), the profiler.
//!
//! On the CPU nothing is captured: `step` runs the same body every update, which is what the
//! CPU test compares with the plain step.

use crate::dist::DataParallel;
use crate::optim::{Hyper, Optimizer};
use crate::trainer::{backward_mean, outcome, queue_update, weighted_loss, Layout, StepOutcome};
use anyhow::{bail, Context, Result};
use smelt_core::ops::adamw;
use smelt_core::ops::cross_entropy::IGNORE;
use smelt_core::replay::Replay;
use smelt_core::{DType, Device, Tensor};
use smelt_model::Model;

/// Whether `SMELT_CUDA_GRAPH_STEP=1` asks for captured updates.
pub fn wanted() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SMELT_CUDA_GRAPH_STEP").is_ok_and(|v| v == "1"))
}

/// Why updates of this run cannot be captured (None: they can).
pub fn unsupported(model: &Model, opt: &Optimizer, layout: &Layout, dp: Option<&DataParallel>) -> Option<&'static str> {
    if dp.is_some() {
        return Some("a data-parallel job, even of one rank (its NCCL calls and ZeRO-1's pieces are not captured)");
    }
    if !opt.is_adamw_only() {
        return Some("Muon (its update reads norms on the host)");
    }
    if layout.weights.is_some() || layout.scale.is_some() {
        return Some("token-weighted micro-batches (SFT): their weights change every update");
    }
    if layout.segments.iter().any(Option::is_some) {
        return Some("packed rows (their bounds change every update)");
    }
    if layout.dpo.is_some() || layout.distill.is_some() || !layout.teacher.is_empty() {
        return Some("DPO and distillation");
    }
    if model.adapter.as_ref().is_some_and(|a| a.cfg.dropout > 0.0) {
        return Some("adapter dropout (its masks' seeds change every update)");
    }
    if Replay::profiling() {
        return Some("SMELT_CUDA_PROFILE (it waits for every kernel)");
    }
    None
}

/// The shapes and settings a graph was captured for; an update that differs cannot replay it.
#[derive(Clone, Debug, PartialEq)]
struct Key {
    shapes: Vec<(Vec<usize>, Vec<usize>)>,
    scored: Vec<usize>,
    clip: u64,
    grad_checkpoint: bool,
    hyper: [u64; 4],
}

/// A captured training update (see the module docs).
pub struct CapturedStep {
    device: Device,
    key: Key,
    /// Each micro-batch's (ids, targets), u32 on the device.
    inputs: Vec<(Tensor, Tensor)>,
    /// [loss of each micro-batch …, the norm state (norm, clip coefficient, skip, non-finite)].
    out: Tensor,
    /// AdamW's step scalars (`adamw::step_scalars`), written before each update; lent to the
    /// optimizer (`AdamWState::scalars`) only while the update's body runs, so a plain step
    /// taken later computes its own.
    scalars: Tensor,
    replay: Option<Replay>,
    /// The device addresses of `inputs`, `out` and `scalars` the graph was captured with.
    captured_at: Vec<u64>,
    /// Uncaptured updates run so far.
    warm: usize,
    /// The arena the capture takes, once a measured update made no lasting allocation.
    arena: Option<usize>,
    /// Why the update could not be captured (said once); every update then runs uncaptured.
    failed: Option<String>,
}

/// Updates run uncaptured before the capture gives up (each must end with no lasting
/// allocation for the capture to go ahead).
const MAX_WARM: usize = 4;

impl CapturedStep {
    /// Buffers for updates shaped like `micro` on `device`.
    pub fn new(
        device: Device,
        micro: &[(Tensor, Tensor)],
        hp: &Hyper,
        clip: f64,
        grad_checkpoint: bool,
    ) -> Result<Self> {
        let key = key(micro, hp, clip, grad_checkpoint)?;
        let inputs = micro
            .iter()
            .map(|(x, y)| {
                let buf = |t: &Tensor| Tensor::from_u32(vec![0; t.numel()], t.shape())?.to_device(device);
                Ok((buf(x)?, buf(y)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let out = Tensor::zeros_typed(&[micro.len() + 4], device, DType::F32)?;
        let scalars = Tensor::zeros_typed(&[3], device, DType::F32)?;
        Ok(CapturedStep {
            device,
            key,
            inputs,
            out,
            scalars,
            replay: None,
            captured_at: Vec::new(),
            warm: 0,
            arena: None,
            failed: None,
        })
    }

    /// Whether `micro` (with these settings) can replay this step's graph.
    pub fn fits(&self, micro: &[(Tensor, Tensor)], hp: &Hyper, clip: f64, grad_checkpoint: bool) -> bool {
        key(micro, hp, clip, grad_checkpoint).is_ok_and(|k| k == self.key)
    }

    /// Whether the update is now replayed from a graph.
    pub fn is_captured(&self) -> bool {
        self.replay.is_some()
    }

    /// Why the update could not be captured, if it could not (it then runs uncaptured).
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Whether the next update is uncaptured for good, or replayed: the warm-up is over.
    pub fn is_settled(&self) -> bool {
        self.replay.is_some() || self.failed.is_some()
    }

    /// The device addresses of the buffers a graph reads and writes (none on the CPU).
    fn addresses(&self) -> Result<Vec<u64>> {
        let ts = self.inputs.iter().flat_map(|(x, y)| [x, y]).chain([&self.out, &self.scalars]);
        #[cfg(feature = "cuda")]
        if !self.device.is_cpu() {
            return ts.map(|t| Ok(t.cuda_buf()?.ptr())).collect();
        }
        let _ = ts;
        Ok(Vec::new())
    }

    /// One update of `model` on `micro` (each micro-batch's (ids, targets) on the host; their
    /// plain mean, as `trainer::step_with` with `Layout::default()`), as `step_with` computes
    /// it, bit for bit.
    pub fn step(
        &mut self,
        model: &mut Model,
        opt: &mut Optimizer,
        hp: &Hyper,
        micro: &[(Tensor, Tensor)],
        clip: f64,
        grad_checkpoint: bool,
    ) -> Result<StepOutcome> {
        if !self.fits(micro, hp, clip, grad_checkpoint) {
            bail!("captured training step: this update's micro-batches or settings differ from the ones captured");
        }
        let vocab = model.cfg.vocab_size;
        for ((xd, yd), (x, y)) in self.inputs.iter_mut().zip(micro) {
            if let Some(&bad) = x.as_u32()?.iter().find(|&&i| i as usize >= vocab) {
                bail!("token id {bad} is out of range for a vocabulary of {vocab}");
            }
            if let Some(&bad) = y.as_u32()?.iter().find(|&&i| i != IGNORE && i as usize >= vocab) {
                bail!("target {bad} is out of range for a vocabulary of {vocab}");
            }
            xd.write_at(0, x)?;
            yd.write_at(0, y)?;
        }
        self.scalars.write_at(0, &Tensor::from_f32(adamw::step_scalars(&hp.adamw, opt.t() + 1).to_vec(), &[3])?)?;
        let layout = Layout { scored: Some(self.key.scored.clone()), ..Layout::default() };
        let n = micro.len();
        if let Some(r) = &self.replay {
            if self.addresses()? != self.captured_at {
                bail!("captured training step: its input or result buffers moved since the capture");
            }
            opt.adamw.t += 1; // what the captured AdamWState::step counted at the capture
            r.launch()?;
            return self.read(model, opt, n);
        }
        let (inputs, out) = (&self.inputs, &mut self.out);
        let mut body = |model: &mut Model, opt: &mut Optimizer| -> Result<()> {
            let (grads, losses, _) = backward_mean(model, inputs, &layout, grad_checkpoint, None)?;
            let gnorm = queue_update(model, opt, hp, grads, &losses, clip, None)?;
            for (m, l) in losses.iter().enumerate() {
                out.write_at(m, l)?;
            }
            out.write_range(n, &gnorm.state, 0, gnorm.state.numel().min(4))?;
            Ok(())
        };
        // The scalars are the optimizer's only while the body runs.
        opt.adamw.scalars = Some(self.scalars.clone());
        let t0 = opt.adamw.t;
        let ran = if let (Some(bytes), None) = (self.arena, &self.failed) {
            // Recording runs the host side once (AdamWState::step counts this update) and no
            // kernel; the launch then runs this update. A capture that fails changed nothing on
            // the device: the update then runs uncaptured, and so does every later one.
            let captured = Replay::release_cached_memory(self.device)
                .and_then(|_| Replay::capture(self.device, bytes, || body(model, opt)))
                .and_then(|r| r.context("the device made no graph"));
            match captured {
                Ok(r) => {
                    let launched = r.launch();
                    self.replay = Some(r);
                    launched
                }
                Err(e) => {
                    opt.adamw.t = t0;
                    self.failed = Some(format!("{e:#}"));
                    eprintln!("note: SMELT_CUDA_GRAPH_STEP=1, but the training update could not be captured ({e:#}); it runs uncaptured");
                    body(model, opt)
                }
            }
        } else if self.device.is_cpu() || self.warm == 0 || self.failed.is_some() {
            self.warm += 1;
            body(model, opt)
        } else {
            // Measured: the arena the capture needs, and whether this update still made lasting
            // allocations (then it is not yet the steady step a graph can hold).
            let (r, bytes, lasting) = Replay::measure_steady(self.device, || body(model, opt));
            self.warm += 1;
            if lasting == 0 {
                self.arena = Some(bytes);
            } else if self.warm >= MAX_WARM {
                let why =
                    format!("{MAX_WARM} uncaptured updates still made lasting allocations ({lasting} in the last)");
                eprintln!(
                    "note: SMELT_CUDA_GRAPH_STEP=1, but the training update is not captured: {why}; it runs uncaptured"
                );
                self.failed = Some(why);
            }
            r
        };
        opt.adamw.scalars = None;
        ran?;
        if self.replay.is_some() {
            self.captured_at = self.addresses()?;
        }
        self.read(model, opt, n)
    }

    /// The update's one wait: its losses and norm state from `out`.
    fn read(&self, model: &Model, opt: &mut Optimizer, n: usize) -> Result<StepOutcome> {
        let v = self.out.to_vec_f32()?;
        let loss = weighted_loss(&v[..n], &Layout::default());
        let state = &v[n..];
        let (norm, skipped) = (state[0] as f64, state[2] != 0.0);
        // The CPU's norm state has no non-finite flag: scan the parameters, as `update` does.
        let params_finite = match self.device.is_cpu() {
            true => skipped || adamw::all_finite_host(model.trainable())?,
            false => state[3] == 0.0,
        };
        Ok(outcome(opt, loss, norm, skipped, params_finite))
    }
}

fn key(micro: &[(Tensor, Tensor)], hp: &Hyper, clip: f64, grad_checkpoint: bool) -> Result<Key> {
    if micro.is_empty() {
        bail!("no micro-batches");
    }
    let scored =
        micro.iter().map(|(_, y)| Ok(y.as_u32()?.iter().filter(|&&t| t != IGNORE).count())).collect::<Result<_>>()?;
    let a = &hp.adamw;
    Ok(Key {
        shapes: micro.iter().map(|(x, y)| (x.shape().to_vec(), y.shape().to_vec())).collect(),
        scored,
        clip: clip.to_bits(),
        grad_checkpoint,
        // The learning rate is read from the device each update; these are kernel arguments.
        hyper: [a.beta1.to_bits(), a.beta2.to_bits(), a.eps.to_bits(), hp.muon.is_some() as u64],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::step_with;
    use smelt_core::ops::adamw::AdamW;
    use smelt_core::rng::Rng;
    use smelt_model::ModelConfig;

    fn batch(r: &mut Rng, vocab: usize, b: usize, t: usize) -> (Tensor, Tensor) {
        let mut ids = || (0..b * t).map(|_| r.below(vocab as u64) as u32).collect::<Vec<_>>();
        (Tensor::from_u32(ids(), &[b, t]).unwrap(), Tensor::from_u32(ids(), &[b, t]).unwrap())
    }

    /// On the CPU (where nothing is captured) the captured step's body — ids and targets from
    /// its own buffers, the scored counts announced, AdamW's scalars from a tensor, the results
    /// through `out` — updates the model exactly as the plain step does.
    #[test]
    fn the_captured_steps_body_equals_the_plain_step() {
        let cfg = ModelConfig::llama(97, 32, 2, 4, 2, 64);
        let hp = Hyper { adamw: AdamW { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }, muon: None };
        let mut r = Rng::new(5);
        let updates: Vec<Vec<(Tensor, Tensor)>> =
            (0..4).map(|_| (0..2).map(|_| batch(&mut r, 97, 2, 12)).collect()).collect();
        let fresh = || {
            let model = Model::init(cfg.clone(), 3).unwrap();
            let opt =
                Optimizer::new(crate::optim::OptimizerKind::AdamW, model.trainable(), &model.trainable_matrices());
            (model, opt)
        };
        let (mut m1, mut o1) = fresh();
        let (mut m2, mut o2) = fresh();
        let mut cap = CapturedStep::new(Device::Cpu, &updates[0], &hp, 1.0, false).unwrap();
        assert!(unsupported(&m2, &o2, &Layout::default(), None).is_none());
        for (k, micro) in updates.iter().enumerate() {
            let hp = Hyper { adamw: AdamW { lr: 3e-3 * (k + 1) as f64 / 4.0, ..hp.adamw }, ..hp };
            let a = step_with(&mut m1, &mut o1, &hp, micro, &Layout::default(), 1.0, false).unwrap();
            assert!(cap.fits(micro, &hp, 1.0, false));
            let b = cap.step(&mut m2, &mut o2, &hp, micro, 1.0, false).unwrap();
            assert_eq!(a.loss, b.loss, "update {k}: loss");
            assert!((a.grad_norm - b.grad_norm).abs() <= 1e-6 * a.grad_norm, "update {k}: norm");
            assert!(b.params_finite);
        }
        assert_eq!(o1.t(), o2.t());
        for (p, q) in m1.params.iter().zip(&m2.params) {
            assert_eq!(p.as_f32().unwrap(), q.as_f32().unwrap());
        }
        // Another shape, or targets that score differently, cannot replay the graph.
        let other = vec![batch(&mut r, 97, 2, 11), batch(&mut r, 97, 2, 11)];
        assert!(!cap.fits(&other, &hp, 1.0, false));
        let mut ignored = updates[0].clone();
        ignored[1].1 = Tensor::from_u32(vec![IGNORE; 24], &[2, 12]).unwrap();
        assert!(!cap.fits(&ignored, &hp, 1.0, false));
        assert!(cap.step(&mut m2, &mut o2, &hp, &ignored, 1.0, false).is_err());
    }
}
