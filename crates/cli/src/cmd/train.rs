//! `smelt train`: pretrain a model from scratch (or from --init), resume exactly with --resume.

use anyhow::Result;
use clap::Args;
use smelt_train::optim::{OptimizerKind, Schedule};
use smelt_train::TrainConfig;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Token file from `smelt prepare`.
    #[arg(long, required_unless_present = "resume")]
    dataset: Option<PathBuf>,
    /// Validation token file; evaluated at every checkpoint and at the end.
    #[arg(long)]
    val_dataset: Option<PathBuf>,
    /// tokenizer.json (or a folder holding one) the dataset was made with.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Start from the weights of this model: a folder (smelt or Hugging Face layout) or a .gguf
    /// file (dequantised to f32 for full training; with --lora-r it stays quantised: QLoRA).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Model size: tiny (~2M), small (~7M), medium (~45M), large (~211M), xl (~607M), max (~1.25B),
    /// 3b, 6.5b, or custom (with --dim --layers --heads [--kv-heads --ffn-hidden]). See `smelt sizes`.
    #[arg(long, default_value = "tiny")]
    size: String,
    #[arg(long)]
    dim: Option<usize>,
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    heads: Option<usize>,
    /// Key/value heads (grouped-query attention); defaults to --heads.
    #[arg(long)]
    kv_heads: Option<usize>,
    #[arg(long)]
    ffn_hidden: Option<usize>,
    /// Use a separate output head instead of tying it to the embedding.
    #[arg(long)]
    untied: bool,
    #[arg(long, default_value_t = 10000.0)]
    rope_theta: f64,
    /// Where checkpoints (step-NNNNNN/, final/) and metrics.jsonl go. Held by one run at a time
    /// (a lock); a fresh run needs it empty (see --overwrite).
    #[arg(long, default_value = "runs/train")]
    checkpoint_dir: PathBuf,
    #[command(flatten)]
    run: RunFlags,
    #[command(flatten)]
    lora: super::lora::LoraArgs,
}

/// The flags `smelt train`, `smelt sft`, `smelt distill` and `smelt dpo` share: batch shape, steps, the optimizer and its
/// schedule, checkpoints, logging, resume and the device. `smelt sft` changes some defaults
/// (see its `--help`).
#[derive(Args, Debug)]
pub struct RunFlags {
    /// Rows per micro-batch (dpo: pairs, each a chosen and a rejected row).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Tokens per row (sft: the longest row; longer examples are cut to this + 1 tokens).
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Total optimizer updates (on --resume: the new total).
    #[arg(long, default_value_t = 1000)]
    pub steps: u64,
    /// Micro-batches per update (gradients averaged; `sft`: weighted by their loss tokens; `dpo`:
    /// by their pairs).
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Peak learning rate (reached after --warmup).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Learning rate at the end of the schedule.
    #[arg(long, default_value_t = 1e-4)]
    pub min_lr: f64,
    /// Linear warmup updates.
    #[arg(long, default_value_t = 50)]
    pub warmup: u64,
    /// Learning-rate schedule after warmup: cosine, wsd (warmup-stable-decay) or constant.
    #[arg(long, default_value = "cosine")]
    pub schedule: Schedule,
    /// adamw: AdamW for every parameter. muon: Muon (Nesterov momentum orthogonalised by 5
    /// quintic Newton–Schulz steps, scaled by √max(1, rows/cols) as Keller Jordan's reference)
    /// for the layers' 2-D weight matrices, AdamW (--lr, --beta1, …) for the embedding, head,
    /// norms and biases. On CUDA the Newton–Schulz products run in f32 through cuBLASLt.
    #[arg(long, default_value = "adamw")]
    pub optimizer: OptimizerKind,
    /// Muon's peak learning rate (the reference's default); it follows --schedule, scaled by
    /// --muon-lr / --lr.
    #[arg(long, default_value_t = 0.02)]
    pub muon_lr: f64,
    /// Muon's Nesterov momentum.
    #[arg(long, default_value_t = 0.95)]
    pub muon_momentum: f64,
    /// Decoupled weight decay, applied to matrices and embeddings (not norms or biases); with
    /// Muon, its matrices decay by --muon-lr × this.
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,
    #[arg(long, default_value_t = 0.95)]
    pub beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    pub eps: f64,
    /// Clip the global gradient norm to this (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Recompute each block's activations in the backward pass (less memory, ~30% more compute).
    #[arg(long)]
    pub grad_checkpoint: bool,
    /// Save (and validate) every N updates; 0 = only at the end.
    #[arg(long, default_value_t = 100)]
    pub checkpoint_interval: u64,
    /// How many step-* checkpoints of this run to keep (other runs' are never deleted).
    #[arg(long, default_value_t = 3)]
    pub keep_checkpoints: usize,
    /// Write a metrics line every N updates (the last always).
    #[arg(long, default_value_t = 1)]
    pub log_interval: u64,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = 20)]
    pub val_batches: usize,
    /// Continue this checkpoint exactly (its saved settings are used, except --steps and the
    /// checkpoint/log options given here).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Delete what stands in the way in the checkpoint folder (train: --checkpoint-dir, sft: --output) instead of refusing: an earlier run's
    /// checkpoints and metrics, or (with --resume) this run's checkpoints newer than the one resumed.
    #[arg(long)]
    pub overwrite: bool,
    /// cpu, cuda[:N] or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[command(flatten)]
    pub parallel: super::launch::ParallelFlags,
}

impl RunFlags {
    /// `--nproc N`: starts the N ranks and waits for them (true: nothing left to do here).
    pub fn spawn_ranks(&self) -> Result<bool> {
        self.parallel.spawn_ranks(&self.device)
    }

    /// Copies the flags into `cfg`; returns the checkpoint to resume, if any.
    pub fn apply(self, cfg: &mut TrainConfig) -> Result<Option<PathBuf>> {
        cfg.batch_size = self.batch_size;
        cfg.seq_len = self.seq_len;
        cfg.steps = self.steps;
        cfg.grad_accum = self.grad_accum;
        cfg.lr = self.lr;
        cfg.min_lr = self.min_lr;
        cfg.warmup = self.warmup;
        cfg.schedule = self.schedule;
        cfg.weight_decay = self.weight_decay;
        cfg.beta1 = self.beta1;
        cfg.beta2 = self.beta2;
        cfg.eps = self.eps;
        cfg.grad_clip = self.grad_clip;
        cfg.optimizer = self.optimizer;
        cfg.muon_lr = self.muon_lr;
        cfg.muon_momentum = self.muon_momentum;
        cfg.seed = self.seed;
        cfg.grad_checkpoint = self.grad_checkpoint;
        cfg.checkpoint_interval = self.checkpoint_interval;
        cfg.keep_checkpoints = self.keep_checkpoints;
        cfg.log_interval = self.log_interval;
        cfg.val_batches = self.val_batches;
        match self.parallel.join(&self.device)? {
            Some((device, dp)) => (cfg.device, cfg.parallel) = (device, Some(dp)),
            None => cfg.device = super::device::resolve(&self.device)?,
        }
        cfg.overwrite = self.overwrite;
        Ok(self.resume)
    }
}

pub fn run(a: TrainArgs) -> Result<()> {
    if a.run.spawn_ranks()? {
        return Ok(());
    }
    let mut cfg = TrainConfig {
        dataset: a.dataset.unwrap_or_default(),
        val_dataset: a.val_dataset,
        tokenizer: a.tokenizer,
        init: a.init,
        size: a.size,
        dim: a.dim,
        layers: a.layers,
        heads: a.heads,
        kv_heads: a.kv_heads,
        ffn_hidden: a.ffn_hidden,
        untied: a.untied,
        rope_theta: a.rope_theta,
        checkpoint_dir: a.checkpoint_dir,
        lora: a.lora.config()?,
        quantize_base: a.lora.quantize.clone(),
        ..TrainConfig::default()
    };
    let resume = a.run.apply(&mut cfg)?;
    let s = smelt_train::run(cfg, resume.as_deref())?;
    eprintln!("done: {} steps, final loss {:.4}; model saved to {}", s.steps, s.final_loss, s.final_dir.display());
    Ok(())
}
