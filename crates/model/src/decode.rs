//! Generation's loop body: a prompt, then one token per sequence per step, over one KV cache.
//!
//! On a GPU each decode step is ~10 kernels per layer, so a small model spends its time
//! launching them from the host (SmolLM2-135M: ~1,000 launches a token). `Decoder` captures the
//! step once as a CUDA graph (`smelt_core::replay`) and replays it: the position lives on the
//! device (`KvCache::hold_position_on_device`; the rotary, cache-write and attention kernels
//! read it there and the step's last kernel moves it on), the token goes into a buffer the graph
//! reads, the logits come out in one it writes. The replayed step runs the same kernels with the
//! same arguments as an uncaptured one, so it computes the same logits bit for bit (the GPU
//! suite checks it). `SMELT_CUDA_GRAPH=0` turns capture off (to compare). The CPU runs the
//! forward as always.

use crate::model::{KvCache, Logits, Model};
use anyhow::{bail, Result};
use smelt_core::replay::Replay;
use smelt_core::{DType, Tensor};

/// A captured decode step and the buffers it reads and writes.
struct Captured {
    replay: Replay,
    /// The next token of each sequence, (B, 1) u32 on the device.
    tok: Tensor,
    /// The step's logits, (B, V).
    out: Tensor,
}

pub struct Decoder<'m> {
    model: &'m Model,
    cache: KvCache,
    capture: bool,
    step: Option<Captured>,
}

/// Whether decode steps on a GPU are captured (`SMELT_CUDA_GRAPH=0` says no; so does the
/// kernel-by-kernel profile, `SMELT_CUDA_PROFILE=1`, whose waits a capture forbids). The
/// server's batched decode step (`PagedDecoder`) follows the same switch.
pub fn capture_enabled() -> bool {
    #[cfg(feature = "cuda")]
    if smelt_core::cuda::profile::enabled() {
        return false;
    }
    std::env::var("SMELT_CUDA_GRAPH").map_or(true, |v| v != "0")
}

impl<'m> Decoder<'m> {
    /// Captures decode steps on a GPU unless `SMELT_CUDA_GRAPH=0`.
    pub fn new(model: &'m Model, cache: KvCache) -> Self {
        Self::with_capture(model, cache, capture_enabled())
    }

    /// `capture`: whether steps on a GPU are captured (the CPU never captures).
    pub fn with_capture(model: &'m Model, cache: KvCache, capture: bool) -> Self {
        let capture = capture && !model.device().is_cpu();
        Decoder { model, cache, capture, step: None }
    }

    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// Whether steps are being replayed from a captured graph (after the first).
    pub fn is_captured(&self) -> bool {
        self.step.is_some()
    }

    /// Tokens (B, T) continuing the cache → the logits of each sequence's last one (B, V).
    /// Ends any captured step (the next `step` captures afresh).
    pub fn prefill(&mut self, tokens: &Tensor) -> Result<Tensor> {
        // A persistent decode step (`SMELT_CUDA_PERSIST=1`) replayed since the last prefill
        // cannot report a failed barrier itself: ask now.
        if self.step.is_some() {
            smelt_core::ops::decode_layers::check(self.model.device())?;
        }
        self.step = None;
        self.cache.release_device_position();
        self.model.logits(tokens, Some(&mut self.cache), Logits::Last)
    }

    /// One token per sequence ((B, 1) or (B) u32, on the host or the model's device) → logits
    /// (B, V). On a GPU the result is a buffer the next step overwrites: read it (sample from
    /// it) before calling `step` again.
    pub fn step(&mut self, next: &Tensor) -> Result<Tensor> {
        let b = self.cache.batch();
        if next.dtype() != DType::U32 || next.numel() != b {
            bail!("decode step: expected {b} u32 token id(s), got {:?} {:?}", next.dtype(), next.shape());
        }
        let next = next.reshape(&[b, 1])?;
        if !self.capture {
            return self.model.logits(&next, Some(&mut self.cache), Logits::Last);
        }
        if self.cache.len() + 1 > self.cache.capacity() {
            bail!("KV cache full: {} of {} positions used", self.cache.len(), self.cache.capacity());
        }
        let device = self.model.device();
        let next = next.to_device(device)?;
        if let Some(c) = &mut self.step {
            c.tok.write_at(0, &next)?;
            c.replay.launch()?;
            self.cache.advance(1);
            return Ok(c.out.clone());
        }
        // The first step runs uncaptured with the position on the device: it loads every
        // kernel, sizes the rotary table to the cache and makes any bf16 weight copies, none of
        // which a capture may do. The step after it is the one captured.
        self.cache.hold_position_on_device()?;
        // What this step allocates is what the captured one will: its arena (no memory nodes
        // in the graph, so programmatic launches overlap every kernel boundary).
        let (logits, arena) = Replay::measure(device, || self.model.logits(&next, Some(&mut self.cache), Logits::Last));
        let logits = logits?;
        if self.cache.len() < self.cache.capacity() {
            let tok = Tensor::zeros_typed(&[b, 1], device, DType::U32)?;
            let mut out = Tensor::zeros_typed(logits.shape(), device, logits.dtype())?;
            let len = self.cache.len();
            let (model, cache) = (self.model, &mut self.cache);
            let replay = Replay::capture(device, arena, || {
                let l = model.logits(&tok, Some(cache), Logits::Last)?;
                out.write_at(0, &l)
            });
            // The capture ran nothing: the host's count goes back to what the device holds.
            self.cache.rewind_host_count(len);
            if let Some(replay) = replay? {
                self.step = Some(Captured { replay, tok, out });
            }
        }
        Ok(logits)
    }
}
