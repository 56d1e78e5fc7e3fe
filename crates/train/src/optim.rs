//! The optimizer of a run and the learning-rate schedules. AdamW's state and update live
//! together in `smelt_core::ops::adamw` (re-exported here), Muon's update in
//! `smelt_core::ops::muon`; this file says which parameter each one takes (`Optimizer`) and
//! names their state in checkpoints.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
pub use smelt_core::ops::adamw::AdamWState;
use smelt_core::ops::adamw::{AdamW, GradNorm};
use smelt_core::ops::muon::{muon_multi, Muon};
use smelt_core::Tensor;
use std::collections::HashMap;

/// `--optimizer`: AdamW for every parameter, or Muon for the hidden weight matrices and AdamW
/// for the rest (embeddings, head, norm gains, biases).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    #[default]
    AdamW,
    Muon,
}

impl std::str::FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "adamw" => Ok(OptimizerKind::AdamW),
            "muon" => Ok(OptimizerKind::Muon),
            _ => Err(format!("unknown optimizer {s:?} (adamw, muon)")),
        }
    }
}

/// One update's settings: AdamW's, and Muon's when the run uses it.
#[derive(Clone, Copy, Debug)]
pub struct Hyper {
    pub adamw: AdamW,
    pub muon: Option<Muon>,
}

/// A run's optimizer state over `Model::trainable`: AdamW's moments for the parameters AdamW
/// updates, a momentum buffer for each one Muon updates.
pub struct Optimizer {
    /// Over the parameters at `adamw_idx`, in order. Its count `t` is the run's update count.
    pub adamw: AdamWState,
    /// Muon's momentum buffers, over the parameters at `muon_idx`, in order.
    pub momentum: Vec<Tensor>,
    adamw_idx: Vec<usize>,
    muon_idx: Vec<usize>,
}

impl Optimizer {
    /// Fresh state for `params`; with Muon, `matrices[i]` says parameter i is a hidden weight
    /// matrix (`Model::trainable_matrices`).
    pub fn new(kind: OptimizerKind, params: &[Tensor], matrices: &[bool]) -> Self {
        let (adamw_idx, muon_idx) = split(kind, matrices);
        let pick = |idx: &[usize]| idx.iter().map(|&i| params[i].clone()).collect::<Vec<_>>();
        Optimizer {
            adamw: AdamWState::new(&pick(&adamw_idx)),
            momentum: muon_idx.iter().map(|&i| Tensor::zeros(params[i].shape())).collect(),
            adamw_idx,
            muon_idx,
        }
    }

    /// Every parameter on AdamW with this existing state (`trainer::step`'s callers).
    pub fn from_adamw(adamw: AdamWState) -> Self {
        let n = adamw.m.len();
        Optimizer { adamw, momentum: Vec::new(), adamw_idx: (0..n).collect(), muon_idx: Vec::new() }
    }

    /// Whether AdamW updates every parameter (no Muon part).
    pub fn is_adamw_only(&self) -> bool {
        self.muon_idx.is_empty()
    }

    /// Updates taken so far.
    pub fn t(&self) -> u64 {
        self.adamw.t
    }

    /// Takes back the count of an update the device skipped (see `AdamWState::step`).
    pub fn undo_count(&mut self) {
        self.adamw.t -= 1;
    }

    pub fn to_device(&mut self, device: smelt_core::Device) -> Result<()> {
        self.adamw.to_device(device)?;
        for t in &mut self.momentum {
            *t = t.to_device(device)?;
        }
        Ok(())
    }

    /// One update of every parameter: AdamW's part, then Muon's (both clipped and skipped as
    /// `norm` says). `decay[i]`: weight decay applies to parameter i.
    pub fn step(
        &mut self,
        hp: &Hyper,
        params: &mut [Tensor],
        grads: &[Tensor],
        decay: &[bool],
        norm: Option<&GradNorm>,
    ) -> Result<()> {
        let n = self.adamw_idx.len() + self.muon_idx.len();
        if params.len() != n || grads.len() != n || decay.len() != n {
            bail!("optimizer: {} parameters, {} gradients, state for {n}", params.len(), grads.len());
        }
        if self.muon_idx.is_empty() {
            return self.adamw.step(&hp.adamw, params, grads, decay, norm);
        }
        let mu = hp.muon.context("optimizer: Muon state but no Muon settings")?;
        // Each part takes its parameters out of the list (a move, no copy) and puts them back.
        let take = |idx: &[usize], params: &mut [Tensor]| -> Vec<Tensor> {
            idx.iter().map(|&i| std::mem::replace(&mut params[i], Tensor::zeros(&[0]))).collect()
        };
        let put = |idx: &[usize], params: &mut [Tensor], part: Vec<Tensor>| {
            for (&i, t) in idx.iter().zip(part) {
                params[i] = t;
            }
        };
        let pick = |idx: &[usize]| {
            (
                idx.iter().map(|&i| grads[i].clone()).collect::<Vec<_>>(),
                idx.iter().map(|&i| decay[i]).collect::<Vec<_>>(),
            )
        };
        let (ga, da) = pick(&self.adamw_idx);
        let mut pa = take(&self.adamw_idx, params);
        let ra = self.adamw.step(&hp.adamw, &mut pa, &ga, &da, norm);
        put(&self.adamw_idx, params, pa);
        ra?;
        let (gm, dm) = pick(&self.muon_idx);
        let mut pm = take(&self.muon_idx, params);
        let rm = muon_multi(&mu, &dm, &mut pm, &gm, &mut self.momentum, norm);
        put(&self.muon_idx, params, pm);
        rm
    }

    /// The state as named tensors for `optimizer.safetensors`: `{name}.exp_avg` and
    /// `{name}.exp_avg_sq` (AdamW, PyTorch's state names), `{name}.momentum_buffer` (Muon).
    pub fn named(&self, names: &[String]) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (j, &i) in self.adamw_idx.iter().enumerate() {
            out.push((format!("{}.exp_avg", names[i]), self.adamw.m[j].clone()));
            out.push((format!("{}.exp_avg_sq", names[i]), self.adamw.v[j].clone()));
        }
        for (j, &i) in self.muon_idx.iter().enumerate() {
            out.push((format!("{}.momentum_buffer", names[i]), self.momentum[j].clone()));
        }
        out
    }

    /// The state `named` wrote, read back from `tensors` (of the file `what`) for `params`
    /// with these names, after `t` updates.
    pub fn from_named(
        kind: OptimizerKind,
        names: &[String],
        params: &[Tensor],
        matrices: &[bool],
        mut tensors: HashMap<String, Tensor>,
        t: u64,
        what: &str,
    ) -> Result<Self> {
        let mut o = Optimizer::new(kind, params, matrices);
        let mut get = |i: usize, suffix: &str| -> Result<Tensor> {
            let key = format!("{}.{suffix}", names[i]);
            let x = tensors.remove(&key).with_context(|| format!("{what}: missing {key}"))?;
            if x.shape() != params[i].shape() {
                bail!("{what}: {key} has shape {:?}, parameter has {:?}", x.shape(), params[i].shape());
            }
            Ok(x)
        };
        for (j, &i) in o.adamw_idx.iter().enumerate() {
            o.adamw.m[j] = get(i, "exp_avg")?;
            o.adamw.v[j] = get(i, "exp_avg_sq")?;
        }
        for (j, &i) in o.muon_idx.iter().enumerate() {
            o.momentum[j] = get(i, "momentum_buffer")?;
        }
        o.adamw.t = t;
        Ok(o)
    }
}

/// (AdamW's parameter indices, Muon's).
fn split(kind: OptimizerKind, matrices: &[bool]) -> (Vec<usize>, Vec<usize>) {
    let muon = |i: usize| kind == OptimizerKind::Muon && matrices[i];
    ((0..matrices.len()).filter(|&i| !muon(i)).collect(), (0..matrices.len()).filter(|&i| muon(i)).collect())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Cosine,
    /// Warmup, stable, decay: constant after warmup, then a linear decay to `min_lr` over the
    /// last 20% of steps.
    Wsd,
    Constant,
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cosine" => Ok(Schedule::Cosine),
            "wsd" => Ok(Schedule::Wsd),
            "constant" => Ok(Schedule::Constant),
            _ => Err(format!("unknown schedule {s:?} (cosine, wsd, constant)")),
        }
    }
}

/// Learning rate for update number `step` (0-based) of `total`.
pub fn lr_at(schedule: Schedule, step: u64, total: u64, warmup: u64, lr: f64, min_lr: f64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let total = total.max(warmup + 1);
    match schedule {
        Schedule::Constant => lr,
        Schedule::Cosine => {
            let p = ((step - warmup) as f64 / (total - warmup) as f64).min(1.0);
            min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * p).cos())
        }
        Schedule::Wsd => {
            let decay_start = warmup + ((total - warmup) as f64 * 0.8) as u64;
            if step < decay_start {
                lr
            } else {
                let p = ((step - decay_start) as f64 / (total - decay_start).max(1) as f64).min(1.0);
                lr + (min_lr - lr) * p
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        assert_eq!(lr_at(Schedule::Cosine, 0, 100, 10, 1.0, 0.1), 0.1);
        assert!((lr_at(Schedule::Cosine, 10, 100, 10, 1.0, 0.1) - 1.0).abs() < 1e-12);
        assert!((lr_at(Schedule::Cosine, 100, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-12);
        assert_eq!(lr_at(Schedule::Wsd, 50, 100, 10, 1.0, 0.0), 1.0);
        assert!((lr_at(Schedule::Wsd, 100, 100, 10, 1.0, 0.0)).abs() < 1e-12);
        assert_eq!(lr_at(Schedule::Constant, 99, 100, 10, 1.0, 0.0), 1.0);
    }
}
