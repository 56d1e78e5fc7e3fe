//! Supervised fine-tuning's side of the training loop (`smelt sft`): JSONL examples
//! (`smelt_data::sft`) → micro-batches with masked targets, weighted by their loss tokens.
//!
//! The loop, optimizer, checkpoints and resume are `trainer::run`'s; this file only says what
//! an update's micro-batches are. The loss of an update is the mean over all its loss tokens:
//! micro-batch m is weighted c_m / Σc (`trainer::Layout::token_weighted`), the normalisation
//! TRL/transformers fixed late (a mean of per-micro-batch means weighs a short batch's tokens
//! more than a long one's).

use crate::trainer::{evaluate_packed, to_tensors, Layout, TrainConfig, Update};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use smelt_core::ops::attention::Segments;
use smelt_core::Tensor;
use smelt_data::sft::{Format, SftBatch, SftPlan};
use smelt_model::Model;
use smelt_tokenizer::{ChatTemplate, Tokenizer};
use std::path::PathBuf;
use std::sync::Arc;

// The data side writes this target id for "not in the loss"; the loss kernels skip exactly it.
const _: () = assert!(smelt_data::sft::IGNORE == smelt_core::ops::cross_entropy::IGNORE);

/// The SFT settings of a run (saved in trainer_state.json, so a resume reads the data the same way).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SftConfig {
    /// Training examples (JSONL).
    pub data: PathBuf,
    pub val_data: Option<PathBuf>,
    /// Put the prompt's tokens in the loss too.
    pub train_on_prompt: bool,
    /// Pack examples into rows (no attention across them, positions restarting).
    pub packing: bool,
    /// Whole passes over the examples; sets the number of steps.
    pub epochs: Option<u64>,
    /// The chat template conversations are rendered through (the base model's).
    pub chat_template: Option<String>,
}

/// A batch's rows as tensors, and their examples' segments when packed.
struct Rows {
    xy: (Tensor, Tensor),
    segments: Option<Arc<Segments>>,
}

/// The validation batches, all made once.
struct Val {
    batches: Vec<(Tensor, Tensor)>,
    segments: Vec<Option<Arc<Segments>>>,
}

pub(crate) struct SftData {
    train: SftPlan,
    epochs: Option<u64>,
    val: Option<Val>,
}

impl SftData {
    pub(crate) fn open(cfg: &TrainConfig, s: &SftConfig, tok: &Tokenizer, model: &Model) -> Result<Self> {
        let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).unwrap_or_default().to_string();
        let template =
            s.chat_template.as_deref().map(|src| ChatTemplate::new(src, &name(tok.bos_id()), &name(tok.eos_id())));
        let mut end_of_turn: Vec<u32> = model.cfg.eos_token_ids.clone();
        end_of_turn.extend(tok.eos_id());
        let fmt = Format {
            tokenizer: tok,
            template: template.as_ref(),
            end_of_turn,
            eos: tok.eos_id().or(model.cfg.eos_token_ids.first().copied()),
            train_on_prompt: s.train_on_prompt,
        };
        let pad = tok.eos_id().unwrap_or(0);
        let read = |path: &PathBuf, shuffle: bool| -> Result<SftPlan> {
            let examples = fmt.read_jsonl(path)?;
            let vocab = model.cfg.vocab_size as u32;
            if let Some(id) = examples.iter().flat_map(|e| &e.ids).find(|&&i| i >= vocab) {
                bail!("{}: token id {id} is outside the model's vocabulary of {vocab}", path.display());
            }
            let plan = SftPlan::new(&examples, cfg.batch_size, cfg.seq_len, s.packing, shuffle, cfg.seed, pad)
                .with_context(|| path.display().to_string())?;
            eprintln!(
                "{}: {} examples, {} {}, {} loss tokens per epoch{}{}",
                path.display(),
                examples.len(),
                plan.units(),
                if s.packing { "packed rows" } else { "rows" },
                plan.loss_tokens(),
                if plan.truncated > 0 {
                    format!("; {} cut to --seq-len {} + 1 tokens", plan.truncated, cfg.seq_len)
                } else {
                    String::new()
                },
                if plan.dropped > 0 {
                    format!("; {} dropped (no loss token left)", plan.dropped)
                } else {
                    String::new()
                },
            );
            Ok(plan)
        };
        let train = read(&s.data, true)?;
        // One update reading the data many times over is legal but rarely meant (a --grad-accum
        // typo): say how many passes an update is, before the first one takes that long.
        let per_update = cfg.grad_accum as u64;
        let epoch = train.batches_per_epoch().max(1);
        if per_update > 2 * epoch {
            eprintln!(
                "warning: --grad-accum {}: one update reads {per_update} batches, {:.1} passes over {} ({epoch} batches of --batch-size {} an epoch)",
                cfg.grad_accum,
                per_update as f64 / epoch as f64,
                s.data.display(),
                cfg.batch_size
            );
        }
        let val = match &s.val_data {
            Some(p) => {
                let plan = read(p, false)?;
                let n = plan.batches_per_epoch().min(cfg.val_batches as u64);
                let mut val = Val { batches: Vec::new(), segments: Vec::new() };
                for k in 0..n {
                    let rows = tensors(plan.batch(k))?;
                    val.batches.push(rows.xy);
                    val.segments.push(rows.segments);
                }
                Some(val)
            }
            None => None,
        };
        Ok(SftData { train, epochs: s.epochs, val })
    }

    /// The steps `--epochs` whole passes take: ⌈epochs · batches per epoch / accum⌉ (the last
    /// update's remaining micro-batches come from the next epoch's order).
    pub(crate) fn steps_for_epochs(&self, accum: usize) -> Option<u64> {
        self.epochs.map(|e| (e * self.train.batches_per_epoch()).div_ceil(accum as u64))
    }

    /// Micro-batch m of update s is batch s·accum + m of the plan: a pure function of the step.
    pub(crate) fn update(&self, step: u64, accum: usize) -> Result<Update> {
        let (mut micro, mut segs, mut tokens) = (Vec::new(), Vec::new(), 0u64);
        for m in 0..accum as u64 {
            let b = self.train.batch(step * accum as u64 + m);
            tokens += b.tokens as u64;
            let rows = tensors(b)?;
            micro.push(rows.xy);
            segs.push(rows.segments);
        }
        let layout = Layout::token_weighted(&micro, segs)?;
        Ok(Update { micro, layout, tokens, rows: None })
    }

    pub(crate) fn has_val(&self) -> bool {
        self.val.is_some()
    }

    pub(crate) fn evaluate(&self, model: &Model) -> Result<f64> {
        let v = self.val.as_ref().context("no validation data")?;
        evaluate_packed(model, &v.batches, &v.segments)
    }
}

fn tensors(b: SftBatch) -> Result<Rows> {
    let segments = match b.starts {
        Some(st) => Some(Arc::new(Segments::new(b.rows, b.t, st)?)),
        None => None,
    };
    Ok(Rows { xy: to_tensors(b.inputs, b.targets, b.t)?, segments })
}
