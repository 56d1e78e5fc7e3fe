//! The training step on a GPU: the same forward/backward as on the CPU (the autograd tape runs
//! unchanged over device tensors), then gradient norm, clipping and AdamW over every parameter
//! without a host round trip: the norm kernel leaves the clip coefficient and a skip flag
//! (non-finite loss or norm) on the device, and the one-launch AdamW reads them there.
//! The host waits once, after the whole step is queued, to read the loss and the norm.
//!
//! Precision: f32 master weights, gradients and AdamW moments on the device; matmuls with bf16
//! operands and f32 accumulation (`smelt_core::cuda::matmul_precision`); everything else f32.

use crate::optim::AdamWState;
use anyhow::{bail, Context, Result};
use smelt_core::ops::adamw::{cuda as adamw_cuda, AdamW};
use smelt_core::ops::elementwise;
use smelt_core::{Graph, Tensor};
use smelt_model::Model;

pub fn train_step(model: &mut Model, opt: &mut AdamWState, hp: &AdamW, micro: &[(Tensor, Tensor)], clip: f64, grad_checkpoint: bool) -> Result<(f64, f64)> {
    let mut acc: Option<Vec<Tensor>> = None;
    let mut loss_acc: Option<Tensor> = None;
    for (x, y) in micro {
        let mut g = Graph::training();
        let p = model.param_vars(&mut g, true);
        let loss = model.loss(&mut g, &p, x, y, grad_checkpoint)?;
        let lt = loss.tensor().clone(); // stays on the device
        loss_acc = Some(match loss_acc {
            None => lt,
            Some(a) => elementwise::add(&a, &lt)?,
        });
        let mut grads = g.backward(&loss)?;
        let gs: Vec<Tensor> = p
            .iter()
            .map(|v| match grads.take(v) {
                Some(t) => Ok(t),
                None => v.tensor().zeros_like(),
            })
            .collect::<Result<_>>()?;
        drop(p);
        acc = Some(match acc {
            None => gs,
            Some(mut a) => {
                for (ai, gi) in a.iter_mut().zip(&gs) {
                    elementwise::add_assign(ai, gi)?;
                }
                a
            }
        });
    }
    let mut grads = acc.context("no micro-batches")?;
    let mut loss = loss_acc.context("no micro-batches")?;
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
        return Ok((l, norm));
    }
    Ok((l, norm))
}
