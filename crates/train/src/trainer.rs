//! The pretraining loop: batches → forward/backward (with gradient accumulation) → clip →
//! AdamW → metrics, validation and checkpoints; exact resume from any checkpoint.
//!
//! Nothing a run cannot stand behind is saved: settings are range-checked before anything is
//! built, memory is estimated before it is allocated, every update is checked to leave finite
//! parameters (a device-side flag on a GPU), and the checkpoint directory is held and kept to
//! one run lineage (`run_dir`).

use crate::checkpoint::{self, TrainerState};
use crate::dist::DataParallel;
use crate::distill::{DistillConfig, LogitsFile, Teacher};
use crate::dpo::{DpoConfig, DpoData, DpoLayout, DpoStats};
use crate::optim::{lr_at, AdamWState, Hyper, Optimizer, OptimizerKind, Schedule};
use crate::run_dir;
use crate::sft::{SftConfig, SftData};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use smelt_core::ops::adamw::{self, AdamW};
use smelt_core::ops::attention::Segments;
use smelt_core::ops::cross_entropy::IGNORE;
use smelt_core::ops::distill::{DistillLoss, TeacherLogits};
use smelt_core::ops::elementwise;
use smelt_core::ops::muon::Muon;
use smelt_core::profile::timed;
use smelt_core::{Graph, Tensor};
use smelt_data::{Batcher, Share, TokenFile};
use smelt_model::{presets, Model, ModelConfig};
use smelt_tokenizer::Tokenizer;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    pub dataset: PathBuf,
    pub val_dataset: Option<PathBuf>,
    /// tokenizer.json (or a model folder holding one); defaults to the one in `init`.
    pub tokenizer: Option<PathBuf>,
    /// Start from this model folder instead of fresh weights.
    pub init: Option<PathBuf>,
    pub size: String,
    pub dim: Option<usize>,
    pub layers: Option<usize>,
    pub heads: Option<usize>,
    pub kv_heads: Option<usize>,
    pub ffn_hidden: Option<usize>,
    pub untied: bool,
    pub rope_theta: f64,
    pub batch_size: usize,
    pub seq_len: usize,
    pub steps: u64,
    pub grad_accum: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: u64,
    pub schedule: Schedule,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub grad_clip: f64,
    pub seed: u64,
    pub grad_checkpoint: bool,
    pub checkpoint_dir: PathBuf,
    pub checkpoint_interval: u64,
    pub keep_checkpoints: usize,
    pub log_interval: u64,
    pub val_batches: usize,
    /// Where to train (not saved: a checkpoint resumes on whatever device is asked for).
    #[serde(skip)]
    pub device: smelt_core::Device,
    /// Delete what stands in the way in `checkpoint_dir` (an earlier run; on resume, this
    /// run's checkpoints newer than the one resumed) instead of refusing. Not saved.
    #[serde(skip)]
    pub overwrite: bool,
    /// Supervised fine-tuning (`smelt sft`): examples from JSONL instead of `dataset` windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sft: Option<SftConfig>,
    /// Preference optimisation (`smelt dpo`): pairs from JSONL and the DPO loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpo: Option<DpoConfig>,
    /// Train a LoRA adapter on the frozen `init` model instead of every weight (checkpoints
    /// then hold the adapter in PEFT's format, see `checkpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<smelt_model::LoraConfig>,
    /// QLoRA from a float base (`--quantize q8_0|q4_k|…`): the frozen base's layer matrices are
    /// quantised in memory (`smelt_convert::qbase`) before the adapter is attached, on resume too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize_base: Option<String>,
    /// AdamW for every parameter, or Muon for the hidden weight matrices (AdamW for the rest).
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// Muon's peak learning rate (it follows the same schedule as `lr`, scaled by muon_lr / lr).
    #[serde(default = "default_muon_lr")]
    pub muon_lr: f64,
    /// Muon's (Nesterov) momentum.
    #[serde(default = "default_muon_momentum")]
    pub muon_momentum: f64,
    /// Knowledge distillation (`smelt distill`): the loss is against a teacher's logits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillConfig>,
    /// Data parallel over several GPUs (`crate::dist`): this process's rank and communicator.
    /// `batch_size` stays the global batch, split among the ranks. Not saved: a checkpoint
    /// resumes on any number of GPUs.
    #[serde(skip)]
    pub parallel: Option<DataParallel>,
}

fn default_muon_lr() -> f64 {
    0.02
}

fn default_muon_momentum() -> f64 {
    0.95
}

/// The `smelt train` defaults (the CLI documents each), for library users and tests.
impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            dataset: PathBuf::new(),
            val_dataset: None,
            tokenizer: None,
            init: None,
            size: "tiny".into(),
            dim: None,
            layers: None,
            heads: None,
            kv_heads: None,
            ffn_hidden: None,
            untied: false,
            rope_theta: 10000.0,
            batch_size: 8,
            seq_len: 256,
            steps: 1000,
            grad_accum: 1,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup: 50,
            schedule: Schedule::Cosine,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            seed: 1337,
            grad_checkpoint: false,
            checkpoint_dir: PathBuf::from("runs/train"),
            checkpoint_interval: 100,
            keep_checkpoints: 3,
            log_interval: 1,
            val_batches: 20,
            device: Default::default(),
            overwrite: false,
            sft: None,
            dpo: None,
            lora: None,
            quantize_base: None,
            optimizer: OptimizerKind::AdamW,
            muon_lr: default_muon_lr(),
            muon_momentum: default_muon_momentum(),
            distill: None,
            parallel: None,
        }
    }
}

impl TrainConfig {
    /// Range-checks every setting (named as its `smelt train` flag) before anything is built:
    /// a NaN learning rate or `--beta2 1` would otherwise train, and save, NaN weights.
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, flag: &str, v: f64, want: &str| {
            if ok {
                Ok(())
            } else {
                Err(anyhow::anyhow!("--{flag} {v}: must be {want}"))
            }
        };
        for (flag, v) in [
            ("lr", self.lr),
            ("min-lr", self.min_lr),
            ("weight-decay", self.weight_decay),
            ("grad-clip", self.grad_clip),
            ("muon-lr", self.muon_lr),
        ] {
            check(v.is_finite() && v >= 0.0, flag, v, "a finite number >= 0")?;
        }
        for (flag, v) in [("beta1", self.beta1), ("beta2", self.beta2), ("muon-momentum", self.muon_momentum)] {
            check((0.0..1.0).contains(&v), flag, v, "in [0, 1)")?;
        }
        check(self.eps.is_finite() && self.eps > 0.0, "eps", self.eps, "a finite number > 0")?;
        if self.min_lr > self.lr && !matches!(self.schedule, crate::optim::Schedule::Constant) {
            // A rising schedule is legal but never what was meant (train's default --min-lr
            // 1e-4 is above a fine-tuning --lr such as 5e-5).
            eprintln!(
                "warning: --min-lr {} is above --lr {}: the schedule rises from --lr to --min-lr instead of decaying (set --min-lr at or below --lr)",
                self.min_lr, self.lr
            );
        }
        check(
            self.rope_theta.is_finite() && self.rope_theta > 0.0,
            "rope-theta",
            self.rope_theta,
            "a finite number > 0",
        )?;
        if let Some(q) = &self.quantize_base {
            if self.lora.is_none() {
                bail!("--quantize {q} keeps a frozen base quantised for a LoRA adapter: add --lora-r (a full fine-tune trains every weight in f32)");
            }
            smelt_convert::qbase::parse_type(q)?;
        }
        if let Some(d) = &self.distill {
            check(
                d.temperature.is_finite() && d.temperature > 0.0,
                "temperature",
                d.temperature,
                "a finite number > 0",
            )?;
            check(d.alpha.is_finite() && d.alpha >= 0.0, "alpha", d.alpha, "a finite number >= 0")?;
        }
        let counts = [
            ("batch-size", self.batch_size as u64),
            ("seq-len", self.seq_len as u64),
            ("grad-accum", self.grad_accum as u64),
            ("steps", self.steps),
            ("val-batches", self.val_batches as u64),
            ("keep-checkpoints", self.keep_checkpoints as u64),
        ];
        for (flag, v) in counts {
            if v == 0 {
                bail!("--{flag} 0: must be at least 1");
            }
        }
        Ok(())
    }

    /// The optimizer settings of update `step` (0-based): the schedule's learning rate for
    /// AdamW and, with Muon, the same schedule scaled to `muon_lr`.
    pub fn hyper(&self, step: u64) -> Hyper {
        let lr = lr_at(self.schedule, step, self.steps, self.warmup, self.lr, self.min_lr);
        let adamw = AdamW { lr, beta1: self.beta1, beta2: self.beta2, eps: self.eps, weight_decay: self.weight_decay };
        let muon = (self.optimizer == OptimizerKind::Muon).then(|| {
            let floor = if self.lr > 0.0 { self.min_lr / self.lr } else { 1.0 };
            let f = lr_at(self.schedule, step, self.steps, self.warmup, 1.0, floor);
            Muon { lr: self.muon_lr * f, momentum: self.muon_momentum, weight_decay: self.weight_decay }
        });
        Hyper { adamw, muon }
    }

    /// The files and folders the run reads (models, data, tokenizer).
    pub fn inputs(&self) -> Vec<&Path> {
        let (sft, dpo) = (self.sft.as_ref(), self.dpo.as_ref());
        [Some(&self.dataset), self.val_dataset.as_ref(), self.tokenizer.as_ref(), self.init.as_ref()]
            .into_iter()
            .chain([sft.map(|s| &s.data), sft.and_then(|s| s.val_data.as_ref())])
            .chain([dpo.map(|d| &d.data), dpo.and_then(|d| d.val_data.as_ref())])
            .chain([dpo.and_then(|d| d.ref_model.as_ref()), dpo.and_then(|d| d.adapter.as_ref())])
            .flatten()
            .filter(|p| !p.as_os_str().is_empty())
            .map(PathBuf::as_path)
            .collect()
    }

    pub fn model_config(&self, vocab_size: usize) -> Result<ModelConfig> {
        let mut c = if self.size == "custom" {
            let need = |v: Option<usize>, f: &str| v.with_context(|| format!("--size custom needs --{f}"));
            let (dim, layers, heads) =
                (need(self.dim, "dim")?, need(self.layers, "layers")?, need(self.heads, "heads")?);
            // The head dim is dim / heads: a remainder would silently shrink the attention width.
            if heads > 0 && !dim.is_multiple_of(heads) {
                bail!("--dim {dim} is not a multiple of --heads {heads} (each head takes dim / heads)");
            }
            let ffn = self.ffn_hidden.unwrap_or_else(|| (dim * 8 / 3).div_ceil(64) * 64);
            ModelConfig::llama(vocab_size, dim, layers, heads, self.kv_heads.unwrap_or(heads), ffn)
        } else {
            let mut c = presets::preset(&self.size, vocab_size)?;
            if let Some(kv) = self.kv_heads {
                c.n_kv_heads = kv;
            }
            c
        };
        c.tie_embeddings = !self.untied;
        c.rope_theta = self.rope_theta;
        c.max_pos = c.max_pos.max(self.seq_len);
        c.validate()?;
        Ok(c)
    }
}

/// What a finished run reports.
pub struct TrainSummary {
    pub final_loss: f64,
    pub final_dir: PathBuf,
    pub steps: u64,
}

#[derive(Serialize)]
struct Metrics {
    step: u64,
    loss: f64,
    lr: f64,
    tokens_per_second: f64,
    grad_norm: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    val_loss: Option<f64>,
    /// DPO's metrics (`rewards/chosen`, …, and `val_rewards/chosen`, … with `val_loss`).
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

/// What one update did.
#[derive(Clone, Copy, Debug)]
pub struct StepOutcome {
    /// Mean loss over the micro-batches (before the update).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Whether every parameter is finite after the update (false: the update overflowed; the
    /// parameters must not be saved).
    pub params_finite: bool,
    /// A DPO update's rewards and log-probabilities, summed over its pairs.
    pub dpo: Option<DpoStats>,
}

/// How an update's micro-batches enter the loss beyond `step`'s plain mean: packed rows'
/// segments (per micro-batch), and each micro-batch's weight. SFT weighs micro-batch m by
/// c_m / Σc (its share of the update's loss tokens), so the update's loss is the mean over
/// every loss token of the update, not a mean of per-micro-batch means.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    pub segments: Vec<Option<Arc<Segments>>>,
    /// One per micro-batch, summing to 1; `None`: the plain mean (1/n each).
    pub weights: Option<Vec<f64>>,
    /// Distillation: the loss settings and each micro-batch's teacher logits (empty: the
    /// plain next-token loss).
    pub distill: Option<DistillLoss>,
    pub teacher: Vec<TeacherLogits>,
    /// The micro-batches are DPO pairs (chosen rows, then rejected rows), scored against these
    /// reference log-probabilities (`crate::dpo`) instead of by their mean token loss.
    pub dpo: Option<Arc<DpoLayout>>,
    /// One rank's share of micro-batches drawn whole (`Update::share`: SFT examples, DPO pairs),
    /// one per micro-batch: N × this rank's part of the micro-batch's loss tokens (DPO: pairs).
    /// The rank's loss, a mean over its own part, is scaled by it (its backward seed too), so
    /// the mean over the ranks is the micro-batch's loss over all its tokens; `weights` stay the
    /// whole micro-batches'. 0: this rank's part is empty (it computes a stand-in row that
    /// counts for nothing). `None`: 1 each.
    pub scale: Option<Vec<f64>>,
    /// One per micro-batch: its count of scored targets (not `IGNORE`), announced to the loss
    /// (`Graph::expect_scored`). Needed when the targets are already on the device (a captured
    /// step, `crate::captured`), which the loss cannot count without a wait; `None`: counted
    /// from the host targets.
    pub scored: Option<Vec<usize>>,
}

impl Layout {
    /// Weights from each micro-batch's count of loss tokens (targets not `IGNORE`).
    pub fn token_weighted(micro: &[(Tensor, Tensor)], segments: Vec<Option<Arc<Segments>>>) -> Result<Self> {
        let counts: Vec<usize> = micro
            .iter()
            .map(|(_, y)| Ok(y.as_u32()?.iter().filter(|&&t| t != IGNORE).count()))
            .collect::<Result<_>>()?;
        let total: usize = counts.iter().sum();
        if total == 0 {
            bail!("no target in the loss in this update's {} micro-batch(es)", micro.len());
        }
        let weights = Some(counts.iter().map(|&c| c as f64 / total as f64).collect());
        Ok(Layout { segments, weights, ..Layout::default() })
    }
}

/// One update (see `step`). Returns (mean loss, pre-clip gradient norm).
pub fn train_step(
    model: &mut Model,
    opt: &mut AdamWState,
    hp: &AdamW,
    micro: &[(Tensor, Tensor)],
    clip: f64,
    grad_checkpoint: bool,
) -> Result<(f64, f64)> {
    step(model, opt, hp, micro, clip, grad_checkpoint).map(|o| (o.loss, o.grad_norm))
}

/// `step_with` on AdamW alone (every trainable parameter), with plain mean micro-batches.
pub fn step(
    model: &mut Model,
    opt: &mut AdamWState,
    hp: &AdamW,
    micro: &[(Tensor, Tensor)],
    clip: f64,
    grad_checkpoint: bool,
) -> Result<StepOutcome> {
    let state = AdamWState {
        m: std::mem::take(&mut opt.m),
        v: std::mem::take(&mut opt.v),
        t: opt.t,
        scalars: opt.scalars.take(),
    };
    let mut o = Optimizer::from_adamw(state);
    let out =
        step_with(model, &mut o, &Hyper { adamw: *hp, muon: None }, micro, &Layout::default(), clip, grad_checkpoint);
    *opt = o.adamw;
    out
}

/// `step_with` on one rank of a data-parallel job (`dp`; None: one process). After the last
/// micro-batch's backward the gradients and losses are averaged over the ranks, so every rank
/// clips and updates alike; with one rank this is bit for bit the one-process step.
#[allow(clippy::too_many_arguments)]
pub fn step_parallel(
    model: &mut Model,
    opt: &mut Optimizer,
    hp: &Hyper,
    micro: &[(Tensor, Tensor)],
    layout: &Layout,
    clip: f64,
    grad_checkpoint: bool,
    dp: Option<&DataParallel>,
) -> Result<StepOutcome> {
    let (grads, mut losses, mut dpo) = backward_mean(model, micro, layout, grad_checkpoint, dp)?;
    if let Some(dp) = dp {
        dp.average_losses(&mut losses)?;
        if let Some(s) = dpo.as_mut() {
            s.sum_over_ranks(dp, model.device())?;
        }
    }
    update(model, opt, hp, grads, &losses, layout, clip, dp).map(|o| StepOutcome { dpo, ..o })
}

/// One update: forward/backward over `micro` batches (gradients averaged), clip, the optimizer
/// (AdamW, or Muon + AdamW), on whatever device the model is on (the autograd tape runs unchanged over its tensors).
/// The gradient norm, the clip coefficient and a skip flag (loss or norm not finite) stay
/// where the gradients are and AdamW reads them there, so a GPU step is queued without a host
/// round trip; the host waits once, at the end, to read the losses and the norm.
/// Parameters are untouched if the loss or the norm is not finite; after an update, whether
/// every parameter is still finite comes back too (`adamw::params_finite`: a scan on the CPU,
/// a flag the AdamW kernel raises on a GPU, read with the loss: no extra wait per step).
///
/// Precision on CUDA (`smelt_core::cuda::matmul_precision`, docs/CUDA.md): f32 master weights,
/// weight gradients and AdamW moments; under mixed precision (the default) bf16 matmul operands
/// with f32 accumulation and bf16 activations and activation gradients, the residual stream f32.
/// The micro-batches are laid out and weighted as `layout` says (SFT, distillation).
pub fn step_with(
    model: &mut Model,
    opt: &mut Optimizer,
    hp: &Hyper,
    micro: &[(Tensor, Tensor)],
    layout: &Layout,
    clip: f64,
    grad_checkpoint: bool,
) -> Result<StepOutcome> {
    step_parallel(model, opt, hp, micro, layout, clip, grad_checkpoint, None)
}

/// The update from the step's gradients and losses: norm, clip, the optimizer, and the one wait.
/// Under ZeRO-1 (`dp` sharding the optimizer) `grads` are this rank's pieces of the gradients:
/// the norm is summed over the ranks and the update is `DataParallel::zero_step`.
#[allow(clippy::too_many_arguments)]
fn update(
    model: &mut Model,
    opt: &mut Optimizer,
    hp: &Hyper,
    grads: Vec<Tensor>,
    losses: &[Tensor],
    layout: &Layout,
    clip: f64,
    dp: Option<&DataParallel>,
) -> Result<StepOutcome> {
    let gnorm = queue_update(model, opt, hp, grads, losses, clip, dp)?;
    // The one wait of the step: everything above is queued; read the losses and the norm.
    let loss = update_loss(losses, layout)?;
    let (norm, _, skipped) = gnorm.read()?;
    let params_finite = skipped || adamw::params_finite(model.trainable(), &gnorm)?;
    Ok(outcome(opt, loss, norm, skipped, params_finite))
}

/// What an update's read-back numbers say: the step count is taken back when the device
/// skipped the update (loss or norm not finite), whose norm is then reported as NaN with a
/// non-finite loss.
pub(crate) fn outcome(opt: &mut Optimizer, loss: f64, norm: f64, skipped: bool, params_finite: bool) -> StepOutcome {
    if skipped {
        // The update was skipped on the device; keep the step count in step with it.
        opt.undo_count();
        let grad_norm = if loss.is_finite() { norm } else { f64::NAN };
        return StepOutcome { loss, grad_norm, params_finite: true, dpo: None };
    }
    StepOutcome { loss, grad_norm: norm, params_finite, dpo: None }
}

/// `update` up to its wait: the norm, the clip and skip state and the optimizer step, queued
/// where the gradients are; returns the norm's state (read it after the update).
pub(crate) fn queue_update(
    model: &mut Model,
    opt: &mut Optimizer,
    hp: &Hyper,
    grads: Vec<Tensor>,
    losses: &[Tensor],
    clip: f64,
    dp: Option<&DataParallel>,
) -> Result<adamw::GradNorm> {
    // Summed where the losses are, only for the skip flag; the mean is taken on the host.
    let mut loss_sum = losses[0].clone();
    for l in &losses[1..] {
        loss_sum = elementwise::add(&loss_sum, l)?;
    }
    let zero = dp.filter(|d| d.zero());
    let refs: Vec<&Tensor> = grads.iter().collect();
    let mut gnorm = timed("clip_grad_norm", || match zero {
        Some(dp) => adamw::grad_norm_across(&refs, clip, Some(&loss_sum), |s| dp.sum_over_ranks(s)),
        None => adamw::grad_norm(&refs, clip, Some(&loss_sum)),
    })?;
    let decay = model.trainable_decays();
    timed("optimizer", || match zero {
        Some(dp) => dp.zero_step(opt, hp, model.trainable_mut(), &grads, &decay, &mut gnorm),
        None => opt.step(hp, model.trainable_mut(), &grads, &decay, Some(&gnorm)),
    })?;
    Ok(gnorm)
}

/// The loss and parameter gradients (in parameter order) one update of `step_with` would use,
/// without updating: what the SFT peer test compares with PyTorch.
pub fn gradients(model: &Model, micro: &[(Tensor, Tensor)], layout: &Layout) -> Result<(f64, Vec<Tensor>)> {
    gradients_and_stats(model, micro, layout).map(|(l, g, _)| (l, g))
}

/// `gradients`, and for DPO micro-batches the update's rewards and log-probabilities (what the
/// DPO peer test compares with PyTorch).
pub fn gradients_and_stats(
    model: &Model,
    micro: &[(Tensor, Tensor)],
    layout: &Layout,
) -> Result<(f64, Vec<Tensor>, Option<DpoStats>)> {
    let (grads, losses, dpo) = backward_mean(model, micro, layout, false, None)?;
    Ok((update_loss(&losses, layout)?, grads, dpo))
}

/// The update's loss from its micro-batches' (read from the device): their weighted sum.
fn update_loss(losses: &[Tensor], layout: &Layout) -> Result<f64> {
    let values = losses.iter().map(|l| Ok(l.to_vec_f32()?[0])).collect::<Result<Vec<f32>>>()?;
    Ok(weighted_loss(&values, layout))
}

/// Σ w_m · loss_m over the micro-batches (w from `layout`, else 1/n each), in order.
pub(crate) fn weighted_loss(losses: &[f32], layout: &Layout) -> f64 {
    let mut loss = 0f64;
    for (m, &l) in losses.iter().enumerate() {
        let w = layout.weights.as_ref().map_or(1.0 / losses.len() as f64, |w| w[m]);
        loss += w * l as f64;
    }
    loss
}

/// Forward and backward over each micro-batch on whatever device the model is on. Returns the
/// gradients of `Model::trainable` over the update (summed over the micro-batches in order,
/// each scaled by its `layout` weight through the backward's seed, or their plain mean without
/// weights) and each micro-batch's loss (a 1-element tensor, left where it was computed; a DPO
/// micro-batch's is computed on the host, and its stats summed over the micro-batches).
///
/// With `dp` the gradients come back averaged over the ranks too: during the last
/// micro-batch's backward, each parameter's gradient, as soon as it is final, gets the earlier
/// micro-batches' sum added, becomes the mean, and joins a bucket that starts its all-reduce
/// when full (`dist::Averager`), while the backward of the layers below goes on. The
/// arithmetic is the one-process path's, in the same order, so one rank is bit for bit the
/// plain step.
type Summed = (Vec<Tensor>, Vec<Tensor>, Option<DpoStats>);

/// `acc` + `gs` element by element (in place), or `gs` for the first micro-batch.
fn accumulate(acc: Option<Vec<Tensor>>, gs: Vec<Tensor>) -> Result<Vec<Tensor>> {
    Ok(match acc {
        None => gs,
        Some(mut a) => {
            for (ai, gi) in a.iter_mut().zip(&gs) {
                elementwise::add_assign(ai, gi)?;
            }
            a
        }
    })
}

/// Whether a step announces its loss gradient to the graph, so that the chunked head + loss
/// computes dh and dW in the forward instead of recomputing the logits in the backward: on by
/// default on every device (`SMELT_LOSS_IN_FORWARD=0` turns it off). Checked on an H200
/// (2026-12-04): the GPU suite passes with it, and it is worth +2.6% a step at the 124M shape,
/// +1.2% at 1B and +4.8% for LoRA at Qwen2.5-0.5B's 151,936-wide vocabulary.
fn loss_in_forward() -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENV.get_or_init(|| std::env::var("SMELT_LOSS_IN_FORWARD").map_or(true, |v| v != "0"))
}

pub(crate) fn backward_mean(
    model: &Model,
    micro: &[(Tensor, Tensor)],
    layout: &Layout,
    grad_checkpoint: bool,
    dp: Option<&DataParallel>,
) -> Result<Summed> {
    let n = micro.len();
    let mean = |g: Tensor| match n > 1 && layout.weights.is_none() {
        true => elementwise::div_scalar(&g, n as f32),
        false => Ok(g),
    };
    let mut acc: Option<Vec<Tensor>> = None;
    let mut losses = Vec::with_capacity(n);
    let mut stats: Option<DpoStats> = None;
    for (m, (x, y)) in micro.iter().enumerate() {
        let scale = layout.scale.as_ref().map_or(1.0, |s| s[m]);
        if let Some(d) = &layout.dpo {
            let w = layout.weights.as_ref().map_or(1.0 / micro.len() as f64, |w| w[m]);
            let reference = d.reference.get(m).context("DPO: no reference log-probabilities for a micro-batch")?;
            let (gs, s) = crate::dpo::backward(model, x, y, reference, d.beta, w * scale, grad_checkpoint)?;
            losses.push(Tensor::from_f32(vec![(s.mean_loss() * scale) as f32], &[1])?.to_device(model.device())?);
            // A rank's stand-in pair (scale 0: its share is empty) is not counted.
            let counted = if scale == 0.0 { DpoStats::default() } else { s };
            stats.get_or_insert_with(DpoStats::default).add(&counted);
            acc = Some(accumulate(acc, gs)?);
            continue;
        }
        let mut g = Graph::training();
        let p = model.param_vars(&mut g, true);
        let seg = layout.segments.get(m).and_then(Option::as_ref);
        let w = layout.weights.as_ref().map_or(1.0, |w| w[m]);
        let seed_value = (w * scale) as f32;
        let loss = match (&layout.distill, layout.teacher.get(m)) {
            (Some(o), Some(teacher)) => {
                let z = model.logits_packed(&mut g, &p, x, seg, grad_checkpoint)?;
                g.distill_loss(&z, teacher, y, o)?.0
            }
            _ => {
                // The seed is known now: the head + loss computes its gradients in the forward
                // (see `loss_in_forward`; the same numbers either way).
                if loss_in_forward() {
                    g.expect_loss_gradient(seed_value);
                }
                if let Some(c) = layout.scored.as_ref().and_then(|s| s.get(m)) {
                    g.expect_scored(*c);
                }
                model.loss_packed(&mut g, &p, x, y, seg, grad_checkpoint)?
            }
        };
        losses.push(match scale == 1.0 {
            true => loss.tensor().clone(),
            false => elementwise::scale(loss.tensor(), scale as f32)?,
        });
        let seed = Tensor::full(loss.tensor().shape(), seed_value);
        let vars = model.trainable_vars(&p);
        if let (Some(dp), true) = (dp, m + 1 == n) {
            let mut earlier: Vec<Option<Tensor>> = match acc.take() {
                Some(a) => a.into_iter().map(Some).collect(),
                None => vec![None; vars.len()],
            };
            let mut avg = crate::dist::Averager::new(dp);
            g.backward_watching(std::slice::from_ref(&loss), &[Some(seed)], vars, &mut |i, t| {
                let t = match t {
                    Some(t) => t,
                    None => vars[i].tensor().zeros_like()?,
                };
                let sum = match earlier[i].take() {
                    Some(mut a) => {
                        elementwise::add_assign(&mut a, &t)?;
                        a
                    }
                    None => t,
                };
                avg.push(i, mean(sum)?)
            })?;
            return Ok((avg.finish(vars.len())?.0, losses, stats));
        }
        let mut grads = g.backward_from(std::slice::from_ref(&loss), &[Some(seed)])?;
        let gs: Vec<Tensor> = vars
            .iter()
            .map(|v| match grads.take(v) {
                Some(t) => Ok(t),
                None => v.tensor().zeros_like(),
            })
            .collect::<Result<_>>()?;
        // Release the graph's references to the parameters before accumulating in place.
        drop(p);
        acc = Some(accumulate(acc, gs)?);
    }
    let grads: Vec<Tensor> = acc.context("no micro-batches")?.into_iter().map(mean).collect::<Result<_>>()?;
    let Some(dp) = dp else {
        return Ok((grads, losses, stats));
    };
    // DPO's micro-batches (no watched backward): averaged after the last one, in the order a
    // backward would hand them over.
    let n = grads.len();
    let mut avg = crate::dist::Averager::new(dp);
    for (i, g) in grads.into_iter().enumerate().rev() {
        avg.push(i, g)?;
    }
    Ok((avg.finish(n)?.0, losses, stats))
}

/// Mean validation loss over deterministic windows, in the training loss's arithmetic: a
/// training graph whose parameters need no gradient tapes nothing but runs the training
/// kernels (on the CPU the flash-style `attention::attn_fwd`). An inference graph would run
/// llama.cpp's order (`attn_fwd_ggml`, kept for GGUF parity in perplexity and generation),
/// and the validation loss of the training batch would then differ from its training loss.
/// Each batch's mean is weighted by its count of loss targets (not `IGNORE`), so the result is
/// the mean over every target of every batch.
pub fn evaluate(model: &Model, batches: &[(Tensor, Tensor)]) -> Result<f64> {
    evaluate_packed(model, batches, &[])
}

/// `evaluate` with packed rows (`segments[i]` for batch i; missing: not packed).
pub fn evaluate_packed(model: &Model, batches: &[(Tensor, Tensor)], segments: &[Option<Arc<Segments>>]) -> Result<f64> {
    let (mut sum, mut n) = (0f64, 0usize);
    for (i, (x, y)) in batches.iter().enumerate() {
        let mut g = Graph::training();
        let p = model.param_vars(&mut g, false);
        let loss = model.loss_packed(&mut g, &p, x, y, segments.get(i).and_then(Option::as_ref), false)?;
        let count = y.as_u32()?.iter().filter(|&&t| t != IGNORE).count();
        sum += loss.tensor().to_vec_f32()?[0] as f64 * count as f64;
        n += count;
    }
    Ok(sum / n.max(1) as f64)
}

pub(crate) fn to_tensors(x: Vec<u32>, y: Vec<u32>, t: usize) -> Result<(Tensor, Tensor)> {
    let b = x.len() / t;
    Ok((Tensor::from_u32(x, &[b, t])?, Tensor::from_u32(y, &[b, t])?))
}

fn check_vocab(f: &TokenFile, vocab: usize) -> Result<()> {
    if f.vocab_size() as usize > vocab {
        bail!("{}: made with a vocabulary of {}, but the model has {}", f.path().display(), f.vocab_size(), vocab);
    }
    Ok(())
}

/// `metrics.jsonl` in `dir`, opened for appending: emptied for a fresh run, cut after `start`
/// on a resume.
fn open_metrics(dir: &Path, start: u64) -> Result<std::fs::File> {
    let path = dir.join("metrics.jsonl");
    if start > 0 {
        truncate_metrics(&path, start)?;
    } else if path.exists() {
        std::fs::remove_file(&path)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Keeps the metrics lines of steps ≤ `step` (on resume, later lines belong to a run being replaced).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path)?;
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    smelt_files::write_atomic(path, kept)?;
    Ok(())
}

/// Refuses a run whose weights, optimizer state and activations will not fit on its device.
fn check_memory(mc: &ModelConfig, cfg: &TrainConfig) -> Result<()> {
    // Each rank holds its share of the rows.
    let ranks = cfg.parallel.as_ref().map_or(1, DataParallel::world_size);
    let tokens = (cfg.batch_size / ranks).max(1) as f64 * cfg.seq_len as f64;
    // The estimate counts f32 activations; bf16 ones (a GPU's default) take half, as would half the tokens.
    let act_scale = if cfg.device.activation_dtype() == smelt_core::DType::F32 { 1.0 } else { 0.5 };
    let mut need = smelt_model::memory::training_bytes(mc, tokens * act_scale, cfg.grad_checkpoint);
    let mut trained = smelt_model::memory::params(mc);
    if let Some(l) = &cfg.lora {
        // The base keeps only its weights (no gradients, no moments); the adapter has all four.
        need += 16.0 * l.n_params(mc) as f64 - 12.0 * smelt_model::memory::params(mc);
        trained = l.n_params(mc) as f64;
        if let Some(ty) = cfg.quantize_base.as_deref().and_then(|q| smelt_convert::qbase::parse_type(q).ok()) {
            // `--quantize`: the layer matrices as blocks instead of f32.
            let matrices: usize = smelt_model::params::list(mc)
                .iter()
                .filter(|p| p.layer.is_some() && p.shape.len() == 2)
                .map(|p| p.shape.iter().product::<usize>())
                .sum();
            let per = ty.row_bytes(ty.block_size()).map_or(4.0, |b| b as f64 / ty.block_size() as f64);
            need -= (4.0 - per) * matrices as f64;
        }
    }
    if cfg.parallel.as_ref().is_some_and(|p| p.zero()) && cfg.optimizer == OptimizerKind::AdamW {
        // ZeRO-1: each rank keeps 1/N of AdamW's two f32 moments.
        need -= 8.0 * trained * (1.0 - 1.0 / ranks as f64);
    }
    let what = format!(
        "training a {:.0}-parameter model (--batch-size {} --seq-len {}{})",
        smelt_model::memory::params(mc),
        cfg.batch_size,
        cfg.seq_len,
        if cfg.grad_checkpoint { " --grad-checkpoint" } else { "" }
    );
    smelt_core::mem::ensure_fits(cfg.device, need, &what)
}

/// `model` with a fresh LoRA adapter when `cfg.lora` asks for one (PEFT's init from the run's
/// seed), its base recorded as `init`; otherwise `model` as it is.
fn with_lora(mut model: Model, cfg: &TrainConfig) -> Result<Model> {
    let Some(lc) = &cfg.lora else {
        return Ok(model);
    };
    let Some(init) = &cfg.init else {
        bail!("--lora-r trains an adapter on a base model: give the base with --init");
    };
    let mut lc = lc.clone();
    lc.base_model = Some(init.display().to_string());
    let a = smelt_model::Adapter::init(&model.cfg, lc, cfg.seed);
    let n: usize = a.params.iter().map(Tensor::numel).sum();
    eprintln!("LoRA: r {} on {} projections ({} trainable parameters); the base is frozen", a.cfg.r, a.slots.len(), n);
    model.attach(a)?;
    Ok(model)
}

/// One update's micro-batches ((inputs, targets), each (B, T)), how they enter the loss, and
/// the tokens they hold (not padding).
pub(crate) struct Update {
    pub micro: Vec<(Tensor, Tensor)>,
    pub layout: Layout,
    pub tokens: u64,
    /// On one rank of several: for each micro-batch, the rows of the whole micro-batch this
    /// rank holds, and the whole's count of rows (what a teacher logits file holds). None: all.
    pub rows: Option<Vec<(Range<usize>, usize)>>,
}

impl Update {
    /// This rank's share of an update drawn whole (SFT examples, DPO pairs) under `cfg.parallel`
    /// (itself with one rank): its block of rows of each micro-batch (`Share::part`; DPO: its
    /// block of pairs, their chosen and rejected rows), their segments and reference
    /// log-probabilities, and `Layout::scale`. A rank whose block is empty (a short last batch
    /// of an epoch) takes the first row (pair) as a stand-in that counts for nothing. The
    /// tokens stay the whole update's (what the job trains on).
    fn share(self, cfg: &TrainConfig) -> Result<Update> {
        let Some(share) = cfg.parallel.as_ref().filter(|p| p.world_size() > 1).map(DataParallel::share) else {
            return Ok(self);
        };
        let Update { micro, mut layout, tokens, .. } = self;
        if !layout.teacher.is_empty() {
            bail!("internal error: an update is shared among ranks before its teacher logits are attached");
        }
        let world = share.world as f64;
        let (mut out, mut scale, mut segments, mut held) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut reference = Vec::new();
        for (m, (x, y)) in micro.iter().enumerate() {
            let (rows, t) = (x.rows(), x.cols());
            let (units, part) = match &layout.dpo {
                Some(d) => {
                    let pairs = d.reference.get(m).context("DPO: no reference log-probabilities for a micro-batch")?;
                    (pairs.len(), share.part(pairs.len()))
                }
                None => (rows, share.part(rows)),
            };
            let stand_in = part.is_empty();
            let block = if stand_in { 0..1 } else { part.clone() };
            let picked: Vec<usize> = match &layout.dpo {
                Some(_) => block.clone().chain(block.clone().map(|j| units + j)).collect(),
                None => block.clone().collect(),
            };
            let xs = take_rows(x, &picked, t)?;
            let mut ys = take_rows(y, &picked, t)?;
            let counted = |y: &Tensor| -> Result<usize> { Ok(y.as_u32()?.iter().filter(|&&v| v != IGNORE).count()) };
            let s = match &layout.dpo {
                Some(d) => {
                    reference.push(d.reference[m][block.clone()].to_vec());
                    if stand_in {
                        0.0
                    } else {
                        world * part.len() as f64 / units as f64
                    }
                }
                None if stand_in => {
                    ys = Tensor::from_u32(vec![IGNORE; t], &[1, t])?;
                    0.0
                }
                None => match counted(y)? {
                    0 => 0.0,
                    all => world * counted(&ys)? as f64 / all as f64,
                },
            };
            if let Some(seg) = layout.segments.get(m).and_then(Option::as_ref) {
                let starts = match stand_in {
                    true => vec![0; t],
                    false => seg.starts[block.start * t..block.end * t].to_vec(),
                };
                segments.push(Some(Arc::new(Segments::new(picked.len(), t, starts)?)));
            } else {
                segments.push(None);
            }
            out.push((xs, ys));
            scale.push(s);
            held.push((block, rows));
        }
        if let Some(d) = &layout.dpo {
            layout.dpo = Some(Arc::new(DpoLayout { beta: d.beta, reference }));
        }
        layout.segments = segments;
        layout.scale = Some(scale);
        Ok(Update { micro: out, layout, tokens, rows: Some(held) })
    }
}

/// Rows `rows` of a (B, t) u32 tensor of token ids, as a (rows.len(), t) tensor.
fn take_rows(x: &Tensor, rows: &[usize], t: usize) -> Result<Tensor> {
    let v = x.as_u32()?;
    Tensor::from_u32(rows.iter().flat_map(|&r| v[r * t..(r + 1) * t].iter().copied()).collect(), &[rows.len(), t])
}

/// Where the batches of a run come from: random windows of a token file (pretraining) or
/// JSONL examples (SFT, `crate::sft`).
pub(crate) enum Data {
    /// `share`: this rank's rows of each batch (all of them in one process).
    Windows {
        train: Batcher,
        share: Share,
        val: Option<Vec<(Tensor, Tensor)>>,
    },
    Sft(SftData),
    Dpo(DpoData),
}

/// A validation pass: the loss, and DPO's metrics.
struct Eval {
    loss: f64,
    dpo: Option<DpoStats>,
}

impl Data {
    /// A run's data: `open`, and DPO's pairs, whose reference log-probabilities are scored here,
    /// before step 0, with `model`, the policy as the run starts (`start` > 0: resumed).
    fn open_run(cfg: &TrainConfig, tok: &Tokenizer, model: &mut Model, start: u64) -> Result<Self> {
        if let Some(d) = &cfg.dpo {
            return Ok(Data::Dpo(DpoData::open(cfg, d, tok, model, start)?));
        }
        Self::open(cfg, tok, model)
    }

    /// Pretraining windows or SFT examples (DPO's pairs need the policy: `open_run`).
    pub(crate) fn open(cfg: &TrainConfig, tok: &Tokenizer, model: &Model) -> Result<Self> {
        if cfg.dpo.is_some() {
            bail!("DPO pairs are opened with the policy model (Data::open_run)");
        }
        if let Some(s) = &cfg.sft {
            return Ok(Data::Sft(SftData::open(cfg, s, tok, model)?));
        }
        let train = Batcher::new(TokenFile::open(&cfg.dataset)?, cfg.batch_size, cfg.seq_len, cfg.seed)?;
        check_vocab(train.file(), model.cfg.vocab_size)?;
        let share = cfg.parallel.as_ref().map_or(Share::ALL, DataParallel::share);
        share.rows(cfg.batch_size)?;
        let val = match &cfg.val_dataset {
            Some(p) => {
                let v = Batcher::new(TokenFile::open(p)?, cfg.batch_size, cfg.seq_len, cfg.seed)?;
                check_vocab(v.file(), model.cfg.vocab_size)?;
                Some(
                    v.eval_batches(Some(cfg.val_batches))
                        .map(|b| b.and_then(|(x, y)| to_tensors(x, y, cfg.seq_len)))
                        .collect::<Result<Vec<_>>>()?,
                )
            }
            None => None,
        };
        Ok(Data::Windows { train, share, val })
    }

    /// The micro-batches of update `step`, their layout, and the tokens they hold (not padding).
    pub(crate) fn update(&self, step: u64, cfg: &TrainConfig) -> Result<Update> {
        match self {
            // Micro-batch m of update s is loader step s·accum + m: a pure function, so resume is exact.
            // On several ranks each reads its rows of that batch; the tokens are the update's, all ranks'.
            Data::Windows { train, share, .. } => {
                let micro = (0..cfg.grad_accum as u64)
                    .map(|m| {
                        let (mut x, mut y) = (Vec::new(), Vec::new());
                        train.batch_share(step * cfg.grad_accum as u64 + m, *share, &mut x, &mut y)?;
                        to_tensors(x, y, cfg.seq_len)
                    })
                    .collect::<Result<_>>()?;
                let tokens = (cfg.batch_size * cfg.seq_len * cfg.grad_accum) as u64;
                let rows = match share.world > 1 {
                    true => Some(vec![(share.rows(cfg.batch_size)?, cfg.batch_size); cfg.grad_accum]),
                    false => None,
                };
                Ok(Update { micro, layout: Layout::default(), tokens, rows })
            }
            // Drawn whole on every rank (cheap: token ids), then cut to this rank's share.
            Data::Sft(d) => d.update(step, cfg.grad_accum)?.share(cfg),
            Data::Dpo(d) => d.update(step, cfg.grad_accum)?.share(cfg),
        }
    }

    /// The steps `--epochs` gives (sft, dpo), if it was given.
    pub(crate) fn steps_for_epochs(&self, accum: usize) -> Option<u64> {
        match self {
            Data::Windows { .. } => None,
            Data::Sft(d) => d.steps_for_epochs(accum),
            Data::Dpo(d) => d.steps_for_epochs(accum),
        }
    }

    fn has_val(&self) -> bool {
        match self {
            Data::Windows { val, .. } => val.is_some(),
            Data::Sft(d) => d.has_val(),
            Data::Dpo(d) => d.has_val(),
        }
    }

    fn evaluate(&self, model: &Model, cfg: &TrainConfig) -> Result<Eval> {
        let loss = |loss| Eval { loss, dpo: None };
        match self {
            Data::Windows { val, .. } => evaluate(model, val.as_deref().unwrap_or_default()).map(loss),
            Data::Sft(d) => d.evaluate(model).map(loss),
            Data::Dpo(d) => d.evaluate(model, cfg.batch_size).map(|s| Eval { loss: s.mean_loss(), dpo: Some(s) }),
        }
    }
}

/// Trains from `cfg`, or continues the checkpoint `resume` (its saved settings are used except
/// `steps`, `checkpoint_dir`, `checkpoint_interval`, `keep_checkpoints`, `log_interval`,
/// `device` and `overwrite`, and SFT's `epochs`).
pub fn run(cfg: TrainConfig, resume: Option<&Path>) -> Result<TrainSummary> {
    run_with(cfg, resume, None)
}

/// A model's float parameters: quantised matrices (a QLoRA base) are blocks, not floats, and
/// the finiteness scan reads the rest.
fn floats(model: &Model) -> Vec<Tensor> {
    model.params.iter().filter(|p| p.dtype() != smelt_core::DType::Quant).cloned().collect()
}

/// `run` starting from a model and tokenizer already loaded (`smelt sft` from a GGUF file,
/// dequantised) instead of `cfg.init`; ignored on resume.
pub fn run_with(cfg: TrainConfig, resume: Option<&Path>, base: Option<(Model, Tokenizer)>) -> Result<TrainSummary> {
    run_full(cfg, resume, base, None)
}

/// `run_with` distilling (`smelt distill`; `cfg.distill`, or on resume the checkpoint's saved
/// settings, say how): from `teacher` run on the fly, or without one from the settings'
/// `teacher_logits` file.
pub fn run_distill(
    cfg: TrainConfig,
    resume: Option<&Path>,
    base: Option<(Model, Tokenizer)>,
    teacher: Option<Model>,
) -> Result<TrainSummary> {
    run_full(cfg, resume, base, Some(teacher))
}

/// `teacher`: `None` for a plain run, `Some` for a distillation (holding the teacher model when
/// it runs on the fly).
fn run_full(
    cfg: TrainConfig,
    resume: Option<&Path>,
    base: Option<(Model, Tokenizer)>,
    teacher: Option<Option<Model>>,
) -> Result<TrainSummary> {
    smelt_core::ops::matmul::tune_for_training();
    // Rank 0 of several writes checkpoints and metrics, evaluates and reports; the others train.
    let lead = cfg.parallel.as_ref().is_none_or(DataParallel::is_lead);
    let (mut model, tok, mut opt, mut cfg, start, run_id, mut tokens_seen) = match resume {
        Some(dir) => {
            cfg.validate()?;
            let model = checkpoint::load_model(dir)?;
            let (opt, state) = checkpoint::load_train_state(dir, &model)?;
            if state.config.distill.is_some() != teacher.is_some() {
                bail!(
                    "{}: {} (resume it with {})",
                    dir.display(),
                    if teacher.is_some() { "not a distillation run" } else { "a distillation run" },
                    if teacher.is_some() { "smelt train / sft" } else { "smelt distill" }
                );
            }
            let tok = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
            let mut saved = state.config.clone();
            saved.steps = cfg.steps;
            saved.checkpoint_dir = cfg.checkpoint_dir.clone();
            saved.checkpoint_interval = cfg.checkpoint_interval;
            saved.keep_checkpoints = cfg.keep_checkpoints;
            saved.log_interval = cfg.log_interval;
            saved.device = cfg.device;
            saved.overwrite = cfg.overwrite;
            saved.parallel = cfg.parallel.clone();
            if let (Some(s), Some(c)) = (saved.sft.as_mut(), cfg.sft.as_ref()) {
                s.epochs = c.epochs;
            }
            if let (Some(s), Some(c)) = (saved.dpo.as_mut(), cfg.dpo.as_ref()) {
                s.epochs = c.epochs;
            }
            saved
                .validate()
                .map_err(|e| anyhow::anyhow!("{}: saved settings: {e}", dir.join("trainer_state.json").display()))?;
            let epochs = saved.sft.as_ref().and_then(|s| s.epochs).or(saved.dpo.as_ref().and_then(|d| d.epochs));
            if saved.steps <= state.step && epochs.is_none() {
                bail!("{} is at step {}; --steps {} leaves nothing to do", dir.display(), state.step, saved.steps);
            }
            check_memory(&model.cfg, &saved)?;
            if lead {
                eprintln!("resuming {} at step {} of {}", dir.display(), state.step, saved.steps);
            }
            (model, tok, opt, saved, state.step, state.run_id, state.tokens_seen)
        }
        None => {
            cfg.validate()?;
            let (base_model, base_tok) = base.unzip();
            let tok = match base_tok {
                Some(t) => t,
                None => Tokenizer::from_file(
                    &cfg.tokenizer
                        .clone()
                        .or_else(|| cfg.init.clone())
                        .context("--tokenizer is required (a tokenizer.json, e.g. from `smelt tokenizer`)")?,
                )?,
            };
            let model = match (base_model, &cfg.init) {
                (Some(model), _) => {
                    check_memory(&model.cfg, &cfg)?;
                    if !adamw::all_finite_host(&floats(&model))? {
                        bail!("the base model's weights hold NaN or infinite values");
                    }
                    model
                }
                (None, Some(dir)) => {
                    let model = checkpoint::load_base(dir, cfg.lora.is_some())?;
                    check_memory(&model.cfg, &cfg)?;
                    if !adamw::all_finite_host(&floats(&model))? {
                        bail!("{}: the weights hold NaN or infinite values", dir.display());
                    }
                    model
                }
                (None, None) => {
                    let mut mc = cfg.model_config(tok.vocab_size())?;
                    mc.bos_token_id = tok.bos_id();
                    mc.eos_token_ids = tok.eos_id().into_iter().collect();
                    check_memory(&mc, &cfg)?;
                    Model::init(mc, cfg.seed)?
                }
            };
            let model = match &cfg.quantize_base {
                Some(q) => {
                    let quantised = smelt_convert::qbase::quantize_base(&model, smelt_convert::qbase::parse_type(q)?)?;
                    drop(model); // the f32 matrices, now blocks: freed before training, not after
                    quantised
                }
                None => model,
            };
            let model = with_lora(model, &cfg)?;
            let opt = Optimizer::new(cfg.optimizer, model.trainable(), &model.trainable_matrices());
            (model, tok, opt, cfg, 0, smelt_files::staging::unique_id(), 0)
        }
    };
    if let Some(p) = cfg.parallel.as_mut() {
        match (p.zero, cfg.optimizer) {
            (Some(true), OptimizerKind::Muon) => bail!(
                "--zero 1 shards AdamW's state, and --optimizer muon updates whole matrices: use --zero 0 with Muon"
            ),
            (None, OptimizerKind::Muon) => p.zero = Some(false),
            _ => {}
        }
        if p.zero() {
            opt = p.shard_optimizer(opt)?;
        }
    }
    model.to_device(cfg.device)?;
    let data = Data::open_run(&cfg, &tok, &mut model, start)?;
    if let Some(steps) = data.steps_for_epochs(cfg.grad_accum) {
        cfg.steps = steps;
        if let Some(dir) = resume.filter(|_| steps <= start) {
            bail!("{} is at step {start}; --epochs gives {steps} steps, leaving nothing to do", dir.display());
        }
    }
    let distill = match (teacher, &cfg.distill) {
        (Some(t), Some(d)) => {
            let t = match (&d.teacher_logits, t) {
                (Some(f), _) => Teacher::Logits(LogitsFile::open(f, &cfg, model.cfg.vocab_size)?),
                (None, Some(mut m)) => {
                    m.to_device(cfg.device)?; // the teacher runs where the student does
                    Teacher::Model(Box::new(m))
                }
                (None, None) => bail!("distillation needs a teacher model or a teacher logits file"),
            };
            let name =
                d.teacher.as_ref().or(d.teacher_logits.as_ref()).map(|p| p.display().to_string()).unwrap_or_default();
            t.check(&model, &name)?;
            if let (Teacher::Model(tm), true) = (&t, data.has_val()) {
                eprintln!("teacher {name}: validation loss {:.4}", data.evaluate(tm, &cfg)?.loss);
            }
            Some((t, d.loss()))
        }
        (None, None) => None,
        (Some(_), None) => bail!("distillation needs its settings (TrainConfig::distill)"),
        (None, Some(_)) => bail!("these settings distill from a teacher: run them with smelt distill"),
    };
    opt.to_device(cfg.device)?;
    match &cfg.parallel {
        Some(p) if lead => eprintln!(
            "training on {} ranks (this is rank 0, on {}); each reads its block of every batch's rows (--batch-size {} is the global batch), gradients averaged in {:?}{}",
            p.world_size(),
            cfg.device,
            cfg.batch_size,
            p.wire,
            if p.zero() { "; AdamW's state sharded among them (ZeRO-1)" } else { "" }
        ),
        None if cfg.device != smelt_core::Device::Cpu => eprintln!("training on {}", cfg.device),
        _ => {}
    }
    if lead && cfg.seq_len > model.cfg.max_pos {
        eprintln!("note: --seq-len {} exceeds the model's max_position_embeddings {}", cfg.seq_len, model.cfg.max_pos);
    }
    // Everything is checked; now take the checkpoint directory (held until the run ends).
    let resumed = resume.map(|from| run_dir::Resumed { run_id: &run_id, step: start, from });
    let (_run_dir, mut metrics) = match lead {
        true => {
            let d = run_dir::RunDir::open(&cfg.checkpoint_dir, resumed, cfg.overwrite, &cfg.inputs())?;
            (Some(d), Some(open_metrics(&cfg.checkpoint_dir, start)?))
        }
        false => (None, None),
    };
    let metrics_path = cfg.checkpoint_dir.join("metrics.jsonl");

    let n_params = model.cfg.n_params();
    let say = |s: String| {
        if lead {
            eprintln!("{s}")
        }
    };
    say(format!(
        "model: {} parameters ({} layers, dim {}, {} heads / {} KV), vocab {}; {}{} tokens per update",
        n_params,
        model.cfg.n_layers,
        model.cfg.dim,
        model.cfg.n_heads,
        model.cfg.n_kv_heads,
        model.cfg.vocab_size,
        if cfg.sft.is_some() || cfg.dpo.is_some() { "up to " } else { "" },
        cfg.batch_size * cfg.seq_len * cfg.grad_accum
    ));
    let bar = lead.then(|| crate::progress::Progress::new(cfg.steps, start));
    let bar_finish = || {
        if let Some(b) = &bar {
            b.finish()
        }
    };
    let mut last_loss = f64::NAN;
    // The newest checkpoint whose weights are known good: the one resumed, then each one saved.
    let mut last_good: Option<PathBuf> = resume.map(Path::to_path_buf);
    let (mut window_tokens, mut window_start) = (0u64, Instant::now());
    // SMELT_CUDA_GRAPH_STEP=1 on a GPU: each update replayed from a captured CUDA graph
    // (`crate::captured`), where the run allows it; said once when it does not.
    let mut graph: Option<crate::captured::CapturedStep> = None;
    let mut graph_note = !crate::captured::wanted() || cfg.device.is_cpu();
    for step_index in start..cfg.steps {
        let hp = cfg.hyper(step_index);
        let lr = hp.adamw.lr;
        let mut update = data.update(step_index, &cfg)?;
        if let Some((t, o)) = &distill {
            t.attach(&mut update, step_index, *o)?;
        }
        let Update { micro, layout, tokens: tokens_per_step, .. } = update;
        if let Some(a) = &model.adapter {
            a.begin_step(cfg.seed, step_index); // its dropout masks: a function of (seed, step)
        }
        let dp = cfg.parallel.as_ref();
        let (clip, ckpt) = (cfg.grad_clip, cfg.grad_checkpoint);
        let why_not = match graph_note {
            true => Some(""),
            false => crate::captured::unsupported(&model, &opt, &layout, dp),
        };
        let out = match why_not {
            None => {
                if !graph.as_ref().is_some_and(|g| g.fits(&micro, &hp, clip, ckpt)) {
                    if graph.is_some() && lead {
                        eprintln!("note: this update's micro-batches differ from the captured ones: capturing again");
                    }
                    graph = Some(crate::captured::CapturedStep::new(cfg.device, &micro, &hp, clip, ckpt)?);
                }
                match graph.as_mut() {
                    Some(g) => g.step(&mut model, &mut opt, &hp, &micro, clip, ckpt)?,
                    None => bail!("internal error: no captured step"),
                }
            }
            Some(why) => {
                if !graph_note {
                    graph_note = true;
                    if lead {
                        eprintln!("note: SMELT_CUDA_GRAPH_STEP=1, but this run's updates are not captured: {why}");
                    }
                }
                step_parallel(&mut model, &mut opt, &hp, &micro, &layout, clip, ckpt, dp)?
            }
        };
        let (loss, norm) = (out.loss, out.grad_norm);
        let keep = || {
            last_good
                .as_ref()
                .map(|p| format!("the last good checkpoint is {}", p.display()))
                .unwrap_or_else(|| "no checkpoint was written yet".into())
        };
        if !loss.is_finite() || !norm.is_finite() {
            bar_finish();
            bail!("training diverged at step {}: loss {loss}, gradient norm {norm}; stopped without applying the update ({}). Try a lower --lr or more --warmup", step_index + 1, keep());
        }
        if !out.params_finite {
            bar_finish();
            bail!("the update of step {} (learning rate {lr:e}) left NaN or infinite weights; stopped, nothing of it saved ({}). Try a lower --lr", step_index + 1, keep());
        }
        last_loss = loss;
        tokens_seen += tokens_per_step;
        window_tokens += tokens_per_step;
        let done = step_index + 1;
        let is_ckpt = cfg.checkpoint_interval > 0 && done % cfg.checkpoint_interval == 0 && done < cfg.steps;
        let is_last = done == cfg.steps;
        let val = match lead && data.has_val() && (is_ckpt || is_last) {
            true => Some(data.evaluate(&model, &cfg)?),
            false => None,
        };
        let val_loss = val.as_ref().map(|v| v.loss);
        // DPO: TRL's names, the update's then the validation pairs' (val_…).
        let mut extra = serde_json::Map::new();
        let named = out.dpo.map(|s| s.means("")).into_iter().chain(val.and_then(|v| v.dpo).map(|s| s.means("val_")));
        for (k, v) in named.flatten() {
            extra.insert(k, serde_json::json!(v));
        }
        let tps = window_tokens as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
        let note = ["rewards/accuracies", "rewards/margins", "val_rewards/accuracies"]
            .iter()
            .filter_map(|k| Some(format!(" | {} {:.3}", k.replace("rewards/", ""), extra.get(*k)?.as_f64()?)))
            .collect::<String>();
        if done % cfg.log_interval.max(1) == 0 || is_last || val_loss.is_some() {
            if let Some(metrics) = metrics.as_mut() {
                let m = Metrics { step: done, loss, lr, tokens_per_second: tps, grad_norm: norm, val_loss, extra };
                writeln!(metrics, "{}", serde_json::to_string(&m)?)
                    .and_then(|_| metrics.flush())
                    .with_context(|| format!("writing {}", metrics_path.display()))?;
            }
            (window_tokens, window_start) = (0, Instant::now());
        }
        if let Some(b) = &bar {
            b.update(done, loss, tps, lr, val_loss, &note);
        }
        // Under ZeRO-1 every rank takes part in gathering the optimizer state; rank 0 writes it.
        let gathered = match cfg.parallel.as_ref().filter(|p| p.zero() && (is_ckpt || is_last)) {
            Some(p) => p.gather_optimizer(&opt, model.trainable())?,
            None => None,
        };
        if lead && (is_ckpt || is_last) {
            let state = TrainerState {
                step: done,
                tokens_seen,
                data_position: done,
                config: cfg.clone(),
                smelt_version: env!("CARGO_PKG_VERSION").into(),
                run_id: run_id.clone(),
            };
            let dir = if is_last {
                cfg.checkpoint_dir.join("final")
            } else {
                cfg.checkpoint_dir.join(checkpoint::step_dir_name(done))
            };
            checkpoint::save(&dir, &model, &tok, Some((gathered.as_ref().unwrap_or(&opt), &state)))?;
            if is_ckpt {
                checkpoint::rotate(&cfg.checkpoint_dir, cfg.keep_checkpoints, &run_id)?;
            }
            last_good = Some(dir);
        }
    }
    bar_finish();
    let final_dir = cfg.checkpoint_dir.join("final");
    Ok(TrainSummary { final_loss: last_loss, final_dir, steps: cfg.steps })
}
