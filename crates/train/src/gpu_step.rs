//! The training step on a GPU: the same forward/backward as on the CPU (the autograd tape runs
//! unchanged over device tensors), then gradient norm, clipping and AdamW over every parameter
//! without a host round trip: the norm kernel leaves the clip coefficient and a skip flag
//! (non-finite loss or norm) on the device, and the one-launch AdamW reads them there.
//! The host waits once, after the whole step is queued, to read the loss, the norm and the
//! kernel's flag saying whether every updated parameter is still finite.
//!
//! Precision (`smelt_core::cuda::matmul_precision`, docs/CUDA.md): f32 master weights, weight
//! gradients and AdamW moments on the device; under mixed precision (the default) bf16 matmul
//! operands with f32 accumulation and bf16 activations and activation gradients, the residual
//! stream f32; under f32 precision everything f32.

use crate::optim::AdamWState;
use crate::trainer::StepOutcome;
use anyhow::{bail, Result};
use smelt_core::ops::adamw::{cuda as adamw_cuda, AdamW};
use smelt_core::ops::elementwise;
use smelt_core::Tensor;
use smelt_model::Model;

pub fn train_step(model: &mut Model, opt: &mut AdamWState, hp: &AdamW, micro: &[(Tensor, Tensor)], clip: f64, grad_checkpoint: bool) -> Result<StepOutcome> {
    let (mut grads, losses) = crate::trainer::backward_sum(model, micro, grad_checkpoint)?;
    // The losses stay on the device: summed there, read once at the end of the step.
    let mut loss = losses[0].clone();
    for l in &losses[1..] {
        loss = elementwise::add(&loss, l)?;
    }
    if micro.len() > 1 {
        let inv = 1.0 / micro.len() as f32;
        for g in &mut grads {
            *g = elementwise::scale(g, inv)?;
        }
        loss = elementwise::scale(&loss, inv)?;
    }
    let state = adamw_cuda::grad_norm_state(&grads.iter().collect::<Vec<_>>(), clip, Some(&loss))?;
    let decay: Vec<bool> = model.params.iter().map(|p| smelt_model::params::decays(p.shape())).collect();
    if opt.m.len() != model.params.len() {
        bail!("optimizer: {} parameters, {} moment tensors", model.params.len(), opt.m.len());
    }
    opt.t += 1;
    adamw_cuda::adamw_multi(hp, opt.t, &decay, &mut model.params, &grads, &mut opt.m, &mut opt.v, Some(&state))?;
    // The one wait of the step: everything above is queued; read the loss and the norm.
    let l = loss.try_to_vec_f32()?[0] as f64;
    let st = state.try_to_vec_f32()?;
    let norm = st[0] as f64;
    if st[2] != 0.0 {
        // The kernels skipped the update (as the CPU step does); keep the step count in step.
        opt.t -= 1;
        let norm = if l.is_finite() { norm } else { f64::NAN };
        return Ok(StepOutcome { loss: l, grad_norm: norm, params_finite: true });
    }
    Ok(StepOutcome { loss: l, grad_norm: norm, params_finite: st[3] == 0.0 })
}
