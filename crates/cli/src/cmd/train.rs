//! `smelt train`: pretrain a model from scratch (or from --init), resume exactly with --resume.

use anyhow::Result;
use clap::Args;
use smelt_train::optim::Schedule;
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
    /// Start from the weights of this model folder (smelt or Hugging Face layout).
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
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Total optimizer updates (on --resume: the new total).
    #[arg(long, default_value_t = 1000)]
    steps: u64,
    /// Micro-batches per update (gradients averaged).
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    min_lr: f64,
    /// Linear warmup updates.
    #[arg(long, default_value_t = 50)]
    warmup: u64,
    /// Learning-rate schedule after warmup: cosine, wsd (warmup-stable-decay) or constant.
    #[arg(long, default_value = "cosine")]
    schedule: Schedule,
    /// Decoupled weight decay, applied to matrices and embeddings (not norms or biases).
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    beta1: f64,
    #[arg(long, default_value_t = 0.95)]
    beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    eps: f64,
    /// Clip the global gradient norm to this (0 = off).
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f64,
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Recompute each block's activations in the backward pass (less memory, ~30% more compute).
    #[arg(long)]
    grad_checkpoint: bool,
    /// Where checkpoints (step-NNNNNN/, final/) and metrics.jsonl go. Held by one run at a time
    /// (a lock); a fresh run needs it empty (see --overwrite).
    #[arg(long, default_value = "runs/train")]
    checkpoint_dir: PathBuf,
    /// Save (and validate) every N updates; 0 = only at the end.
    #[arg(long, default_value_t = 100)]
    checkpoint_interval: u64,
    /// How many step-* checkpoints of this run to keep (other runs' are never deleted).
    #[arg(long, default_value_t = 3)]
    keep_checkpoints: usize,
    /// Write a metrics line every N updates (the last always).
    #[arg(long, default_value_t = 1)]
    log_interval: u64,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = 20)]
    val_batches: usize,
    /// Continue this checkpoint exactly (its saved settings are used, except --steps and the
    /// checkpoint/log options given here).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Delete what stands in the way in --checkpoint-dir instead of refusing: an earlier run's
    /// checkpoints and metrics, or (with --resume) this run's checkpoints newer than the one resumed.
    #[arg(long)]
    overwrite: bool,
    /// cpu, cuda[:N] or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    #[command(flatten)]
    lora: super::lora::LoraArgs,
}

pub fn run(a: TrainArgs) -> Result<()> {
    let device = super::device::resolve(&a.device)?;
    let cfg = TrainConfig {
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
        batch_size: a.batch_size,
        seq_len: a.seq_len,
        steps: a.steps,
        grad_accum: a.grad_accum,
        lr: a.lr,
        min_lr: a.min_lr,
        warmup: a.warmup,
        schedule: a.schedule,
        weight_decay: a.weight_decay,
        beta1: a.beta1,
        beta2: a.beta2,
        eps: a.eps,
        grad_clip: a.grad_clip,
        seed: a.seed,
        grad_checkpoint: a.grad_checkpoint,
        checkpoint_dir: a.checkpoint_dir,
        checkpoint_interval: a.checkpoint_interval,
        keep_checkpoints: a.keep_checkpoints,
        log_interval: a.log_interval,
        val_batches: a.val_batches,
        device,
        overwrite: a.overwrite,
        lora: a.lora.config()?,
    };
    let s = smelt_train::run(cfg, a.resume.as_deref())?;
    eprintln!("done: {} steps, final loss {:.4}; model saved to {}", s.steps, s.final_loss, s.final_dir.display());
    Ok(())
}
