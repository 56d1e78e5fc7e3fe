//! Direct Preference Optimization's side of the training loop (`smelt dpo`): preference pairs
//! (`smelt_data::dpo`) → micro-batches of chosen and rejected rows, the sigmoid DPO loss on
//! their summed completion log-probabilities against a frozen reference, and TRL's metrics.
//!
//! For a pair with policy log-probabilities π_c, π_r and reference ones ρ_c, ρ_r (each the sum
//! of log p over the completion's tokens, end-of-turn included, as SFT masks them):
//!
//! ```text
//! loss = −log σ(β · ((π_c − ρ_c) − (π_r − ρ_r)))
//! ```
//!
//! averaged over the pairs of the update (micro-batch m weighted by its share of the update's
//! pairs, `Layout::weights`). The reference log-probabilities are computed once, before step 0
//! (again on `--resume`, from the same reference), and kept: no second model during training.
//! The reference is `--ref-model` if given, else the policy's starting point: the base (with
//! `--adapter`, the base with that SFT adapter merged in), or under LoRA the adapter-disabled
//! model (the same thing, since a fresh adapter starts at zero).
//!
//! One forward per micro-batch gives every row's loss (`Model::row_losses`); the log-
//! probabilities are read, the loss and its derivative per row are computed on the host
//! (a handful of numbers), and the backward is seeded with them: one forward and one backward,
//! as an SFT step. The loop, optimizer, checkpoints and resume are `trainer::run`'s.

use crate::trainer::{to_tensors, Layout, TrainConfig, Update};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use smelt_core::ops::cross_entropy::IGNORE;
use smelt_core::{Graph, Tensor, Var};
use smelt_data::dpo::{read_pairs, PairBatch, PairPlan};
use smelt_data::sft::Format;
use smelt_model::Model;
use smelt_tokenizer::{ChatTemplate, Tokenizer};
use std::path::PathBuf;
use std::sync::Arc;

/// The DPO settings of a run (saved in trainer_state.json, so a resume reads the same pairs
/// and recomputes the same reference).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DpoConfig {
    /// Training pairs (JSONL).
    pub data: PathBuf,
    pub val_data: Option<PathBuf>,
    /// β: how far the policy may move from the reference (TRL's default 0.1).
    pub beta: f64,
    /// Whole passes over the pairs; sets the number of steps.
    pub epochs: Option<u64>,
    /// The chat template conversations are rendered through (the base model's).
    pub chat_template: Option<String>,
    /// The reference model folder (`--ref-model`); `None`: the policy's starting point.
    pub ref_model: Option<PathBuf>,
    /// An SFT adapter merged into the base before training (`--adapter`): the policy starts
    /// from, and the default reference is, base + adapter.
    pub adapter: Option<PathBuf>,
}

/// What the loss needs beyond the rows: β and each micro-batch's reference log-probabilities
/// (chosen, rejected) per pair, in row order.
#[derive(Clone, Debug)]
pub struct DpoLayout {
    pub beta: f64,
    pub reference: Vec<Vec<(f64, f64)>>,
}

/// Sums over pairs of what TRL logs, mean-able over any number of micro-batches.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DpoStats {
    pub pairs: usize,
    pub loss: f64,
    pub chosen_rewards: f64,
    pub rejected_rewards: f64,
    pub accuracies: f64,
    pub chosen_logps: f64,
    pub rejected_logps: f64,
}

impl DpoStats {
    /// The sums over every rank's pairs of a data-parallel job (in f64), on every rank.
    pub(crate) fn sum_over_ranks(&mut self, dp: &crate::DataParallel, device: smelt_core::Device) -> Result<()> {
        let s = self;
        let mine = [
            s.pairs as f64,
            s.loss,
            s.chosen_rewards,
            s.rejected_rewards,
            s.accuracies,
            s.chosen_logps,
            s.rejected_logps,
        ];
        let mut t = smelt_core::dist::f64_words(&mine, device)?;
        dp.sum_over_ranks(&mut t)?;
        let v = smelt_core::dist::f64_values(&t)?;
        *s = DpoStats {
            pairs: v[0] as usize,
            loss: v[1],
            chosen_rewards: v[2],
            rejected_rewards: v[3],
            accuracies: v[4],
            chosen_logps: v[5],
            rejected_logps: v[6],
        };
        Ok(())
    }

    pub fn add(&mut self, o: &DpoStats) {
        self.pairs += o.pairs;
        self.loss += o.loss;
        self.chosen_rewards += o.chosen_rewards;
        self.rejected_rewards += o.rejected_rewards;
        self.accuracies += o.accuracies;
        self.chosen_logps += o.chosen_logps;
        self.rejected_logps += o.rejected_logps;
    }

    /// The means over the pairs, named as TRL's `DPOTrainer` logs them (`prefix` "val_" for
    /// the validation pairs): rewards/chosen = β(π_c − ρ_c), rewards/rejected, rewards/margins
    /// (their difference), rewards/accuracies (the share with chosen > rejected), logps/chosen
    /// and logps/rejected (the policy's summed log-probabilities).
    pub fn means(&self, prefix: &str) -> Vec<(String, f64)> {
        let n = self.pairs.max(1) as f64;
        [
            ("rewards/chosen", self.chosen_rewards),
            ("rewards/rejected", self.rejected_rewards),
            ("rewards/margins", self.chosen_rewards - self.rejected_rewards),
            ("rewards/accuracies", self.accuracies),
            ("logps/chosen", self.chosen_logps),
            ("logps/rejected", self.rejected_logps),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v / n))
        .collect()
    }

    /// The mean loss over the pairs.
    pub fn mean_loss(&self) -> f64 {
        self.loss / self.pairs.max(1) as f64
    }
}

/// −log σ(z), stable for any z.
fn neg_log_sigmoid(z: f64) -> f64 {
    (-z).max(0.0) + (-z.abs()).exp().ln_1p()
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Each row's scored targets (not `IGNORE`) of (2n, T) targets.
fn target_counts(y: &Tensor) -> Result<Vec<usize>> {
    let t = *y.shape().last().context("targets need a shape")?;
    Ok(y.as_u32()?.chunks(t).map(|r| r.iter().filter(|&&v| v != IGNORE).count()).collect())
}

/// The summed completion log-probability of each row: −count · (the row's mean loss).
fn row_logps(losses: &[Var], counts: &[usize]) -> Result<Vec<f64>> {
    losses.iter().zip(counts).map(|(l, &c)| Ok(-(c as f64) * l.tensor().to_vec_f32()?[0] as f64)).collect()
}

/// The loss, stats and d loss / d π (per row) of one micro-batch: rows 0..n chosen, n..2n
/// rejected, `reference` (ρ_c, ρ_r) per pair.
fn pair_loss(logps: &[f64], reference: &[(f64, f64)], beta: f64) -> Result<(DpoStats, Vec<f64>)> {
    let n = reference.len();
    if logps.len() != 2 * n {
        bail!("DPO: {} rows for {n} pairs (want chosen rows then rejected rows)", logps.len());
    }
    let mut s = DpoStats { pairs: n, ..DpoStats::default() };
    let mut d = vec![0f64; 2 * n];
    for (j, &(rc, rr)) in reference.iter().enumerate() {
        let (pc, pr) = (logps[j], logps[n + j]);
        let (wc, wr) = (beta * (pc - rc), beta * (pr - rr));
        let z = wc - wr;
        s.loss += neg_log_sigmoid(z);
        s.chosen_rewards += wc;
        s.rejected_rewards += wr;
        s.accuracies += f64::from(u8::from(wc > wr));
        s.chosen_logps += pc;
        s.rejected_logps += pr;
        // d(−log σ(z))/dz = −σ(−z); the micro-batch's loss is the mean over its pairs.
        let dz = -sigmoid(-z) / n as f64;
        d[j] = beta * dz;
        d[n + j] = -beta * dz;
    }
    Ok((s, d))
}

/// Forward and backward of one micro-batch of pairs on a fresh training graph, the backward
/// seeded so that the gradients are `weight` · d(mean pair loss). Returns the gradients of the
/// model's trainable tensors and the stats.
pub(crate) fn backward(
    model: &Model,
    x: &Tensor,
    y: &Tensor,
    reference: &[(f64, f64)],
    beta: f64,
    weight: f64,
    grad_checkpoint: bool,
) -> Result<(Vec<Tensor>, DpoStats)> {
    let mut g = Graph::training();
    let p = model.param_vars(&mut g, true);
    let losses = model.row_losses(&mut g, &p, x, y, grad_checkpoint)?;
    let counts = target_counts(y)?;
    let (stats, dlogp) = pair_loss(&row_logps(&losses, &counts)?, reference, beta)?;
    // π_i = −count_i · loss_i, so d/d loss_i = −count_i · d/dπ_i.
    let seeds: Vec<Option<Tensor>> =
        dlogp.iter().zip(&counts).map(|(d, &c)| Some(Tensor::full(&[1], (-(c as f64) * d * weight) as f32))).collect();
    let mut grads = g.backward_from(&losses, &seeds)?;
    let gs = model
        .trainable_vars(&p)
        .iter()
        .map(|v| match grads.take(v) {
            Some(t) => Ok(t),
            None => v.tensor().zeros_like(),
        })
        .collect::<Result<_>>()?;
    Ok((gs, stats))
}

/// The summed completion log-probability of each row of (B, T) inputs and targets under
/// `model` (targets `IGNORE` left out), without gradients, in the training loss's arithmetic
/// (a training graph, as `trainer::evaluate`): the reference's numbers then equal the policy's
/// at step 0 exactly.
pub fn logps(model: &Model, x: &Tensor, y: &Tensor) -> Result<Vec<f64>> {
    let mut g = Graph::training();
    let p = model.param_vars(&mut g, false);
    let losses = model.row_losses(&mut g, &p, x, y, false)?;
    row_logps(&losses, &target_counts(y)?)
}

fn batch_tensors(b: &PairBatch) -> Result<(Tensor, Tensor)> {
    to_tensors(b.inputs.clone(), b.targets.clone(), b.t)
}

/// A plan's pairs and their reference log-probabilities, indexed as the plan's pairs.
struct Scored {
    plan: PairPlan,
    reference: Vec<(f64, f64)>,
}

pub(crate) struct DpoData {
    train: Scored,
    val: Option<Scored>,
    beta: f64,
    epochs: Option<u64>,
}

impl DpoData {
    /// Reads the pairs and computes their reference log-probabilities (see the file's
    /// comment for which model that is). `model` is the policy as the run starts (`start` > 0:
    /// resumed); under LoRA its adapter is detached for the reference pass and put back.
    pub(crate) fn open(
        cfg: &TrainConfig,
        d: &DpoConfig,
        tok: &Tokenizer,
        model: &mut Model,
        start: u64,
    ) -> Result<Self> {
        if !(d.beta.is_finite() && d.beta > 0.0) {
            bail!("--beta {}: must be a finite number > 0", d.beta);
        }
        let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).unwrap_or_default().to_string();
        let template =
            d.chat_template.as_deref().map(|src| ChatTemplate::new(src, &name(tok.bos_id()), &name(tok.eos_id())));
        let mut end_of_turn: Vec<u32> = model.cfg.eos_token_ids.clone();
        end_of_turn.extend(tok.eos_id());
        let fmt = Format {
            tokenizer: tok,
            template: template.as_ref(),
            end_of_turn,
            eos: tok.eos_id().or(model.cfg.eos_token_ids.first().copied()),
            train_on_prompt: false,
        };
        let pad = tok.eos_id().unwrap_or(0);
        let read = |path: &PathBuf, shuffle: bool| -> Result<PairPlan> {
            let pairs = read_pairs(&fmt, path)?;
            let vocab = model.cfg.vocab_size as u32;
            let ids = pairs.iter().flat_map(|p| p.chosen.ids.iter().chain(&p.rejected.ids));
            if let Some(id) = ids.into_iter().find(|&&i| i >= vocab) {
                bail!("{}: token id {id} is outside the model's vocabulary of {vocab}", path.display());
            }
            let plan = PairPlan::new(&pairs, cfg.batch_size, cfg.seq_len, shuffle, cfg.seed, pad)
                .with_context(|| path.display().to_string())?;
            eprintln!(
                "{}: {} pairs{}{}",
                path.display(),
                plan.len(),
                if plan.truncated > 0 {
                    format!("; {} completions cut to --seq-len {} + 1 tokens", plan.truncated, cfg.seq_len)
                } else {
                    String::new()
                },
                if plan.dropped > 0 {
                    format!("; {} pairs dropped (a completion with no token left)", plan.dropped)
                } else {
                    String::new()
                },
            );
            Ok(plan)
        };
        let train = read(&d.data, true)?;
        let val = d.val_data.as_ref().map(|p| read(p, false)).transpose()?;
        // Up to --val-batches batches of the file's first pairs.
        let val = val.map(|plan| {
            let n = plan.len().min(cfg.val_batches * cfg.batch_size);
            (plan, n)
        });

        // The reference, on the run's device.
        let external = match &d.ref_model {
            Some(dir) => {
                // A GGUF reference keeps its block formats: it only runs forwards.
                let mut r = crate::checkpoint::load_base(dir, true)
                    .with_context(|| format!("loading --ref-model {}", dir.display()))?;
                if r.cfg.vocab_size != model.cfg.vocab_size {
                    bail!(
                        "--ref-model {}: vocabulary of {} tokens, the policy has {}: they must share a tokenizer",
                        dir.display(),
                        r.cfg.vocab_size,
                        model.cfg.vocab_size
                    );
                }
                r.to_device(cfg.device)?;
                Some(r)
            }
            None if start > 0 && model.adapter.is_none() => Some(reload_start(cfg, d)?),
            None => None,
        };
        let adapter = if external.is_none() { model.adapter.take() } else { None };
        let from_model = external.as_ref().unwrap_or(model);
        eprintln!(
            "reference log-probabilities of {} training{} pairs ({}) …",
            train.len(),
            val.as_ref().map(|(_, n)| format!(" and {n} validation")).unwrap_or_default(),
            match (&d.ref_model, &adapter) {
                (Some(p), _) => format!("--ref-model {}", p.display()),
                (None, Some(_)) => "the adapter-disabled model".into(),
                (None, None) => "the starting model".into(),
            }
        );
        let t0 = std::time::Instant::now();
        let score = |plan: &PairPlan, n: usize| -> Result<Vec<(f64, f64)>> {
            let mut out = vec![(0.0, 0.0); n];
            let idx: Vec<usize> = (0..n).collect();
            let batches = n.div_ceil(cfg.batch_size);
            for (i, chunk) in idx.chunks(cfg.batch_size).enumerate() {
                let b = plan.rows(chunk.to_vec());
                let (x, y) = batch_tensors(&b)?;
                let lp = logps(from_model, &x, &y)?;
                for (k, &p) in b.pairs.iter().enumerate() {
                    out[p] = (lp[k], lp[chunk.len() + k]);
                }
                // A long pass says how far it is (about ten lines).
                if batches >= 10 && (i + 1) % batches.div_ceil(10) == 0 && i + 1 < batches {
                    eprintln!(
                        "  {} of {n} pairs scored ({:.0}s)",
                        (i + 1) * cfg.batch_size,
                        t0.elapsed().as_secs_f64()
                    );
                }
            }
            Ok(out)
        };
        let scored = score(&train, train.len());
        let val_scored = val.map(|(plan, n)| score(&plan, n).map(|r| Scored { plan, reference: r })).transpose();
        if let Some(a) = adapter {
            model.adapter = Some(a);
        }
        let (reference, val) = (scored?, val_scored?);
        eprintln!("reference done in {:.1}s", t0.elapsed().as_secs_f64());
        if let Some(v) = &val {
            // The starting point on the held-out pairs, for comparison with the val_ metrics.
            let n = v.reference.len().max(1) as f64;
            let (c, r): (f64, f64) = v.reference.iter().fold((0.0, 0.0), |(a, b), &(c, r)| (a + c, b + r));
            let above = v.reference.iter().filter(|(c, r)| c > r).count();
            eprintln!(
                "reference on the validation pairs: logps/chosen {:.3}, logps/rejected {:.3}; chosen more likely than rejected in {above} of {}",
                c / n,
                r / n,
                v.reference.len()
            );
        }
        Ok(DpoData { train: Scored { plan: train, reference }, val, beta: d.beta, epochs: d.epochs })
    }

    /// The steps `--epochs` whole passes take: ⌈epochs · batches per epoch / accum⌉.
    pub(crate) fn steps_for_epochs(&self, accum: usize) -> Option<u64> {
        self.epochs.map(|e| (e * self.train.plan.batches_per_epoch()).div_ceil(accum as u64))
    }

    /// Micro-batch m of update s is batch s·accum + m of the plan: a pure function of the step.
    pub(crate) fn update(&self, step: u64, accum: usize) -> Result<Update> {
        let (mut micro, mut reference, mut pairs, mut tokens) = (Vec::new(), Vec::new(), Vec::new(), 0u64);
        for m in 0..accum as u64 {
            let b = self.train.plan.batch(step * accum as u64 + m);
            tokens += b.tokens as u64;
            micro.push(batch_tensors(&b)?);
            reference.push(b.pairs.iter().map(|&p| self.train.reference[p]).collect::<Vec<_>>());
            pairs.push(b.pairs.len());
        }
        let total: usize = pairs.iter().sum();
        let layout = Layout {
            segments: Vec::new(),
            weights: Some(pairs.iter().map(|&n| n as f64 / total as f64).collect()),
            dpo: Some(Arc::new(DpoLayout { beta: self.beta, reference })),
            ..Layout::default()
        };
        Ok(Update { micro, layout, tokens, rows: None })
    }

    pub(crate) fn has_val(&self) -> bool {
        self.val.is_some()
    }

    /// The loss and TRL's metrics over the validation pairs (up to --val-batches batches).
    pub(crate) fn evaluate(&self, model: &Model, batch: usize) -> Result<DpoStats> {
        let v = self.val.as_ref().context("no validation pairs")?;
        let mut total = DpoStats::default();
        let idx: Vec<usize> = (0..v.reference.len()).collect();
        for chunk in idx.chunks(batch) {
            let b = v.plan.rows(chunk.to_vec());
            let (x, y) = batch_tensors(&b)?;
            let reference: Vec<(f64, f64)> = chunk.iter().map(|&p| v.reference[p]).collect();
            let (s, _) = pair_loss(&logps(model, &x, &y)?, &reference, self.beta)?;
            total.add(&s);
        }
        Ok(total)
    }
}

/// The policy's starting point, loaded again for a resumed full fine-tune's reference: the
/// base (`init`) with the SFT adapter merged in, if there was one.
fn reload_start(cfg: &TrainConfig, d: &DpoConfig) -> Result<Model> {
    let Some(init) = &cfg.init else {
        bail!("resuming this DPO run needs its reference, and its settings name no base model (init); start again with --ref-model");
    };
    let mut m = crate::checkpoint::load_base(init, false)
        .with_context(|| format!("reloading the reference {}", init.display()))?;
    if let Some(a) = &d.adapter {
        m.attach_dir(a)?;
        m = m.merged()?;
    }
    m.to_device(cfg.device)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_loss_and_its_derivative() {
        let (beta, logps, reference) = (0.5, [-3.0, -7.5, -4.0, -6.0], [(-3.5, -4.5), (-7.0, -6.5)]);
        let (s, d) = pair_loss(&logps, &reference, beta).unwrap();
        let f = |lp: &[f64]| pair_loss(lp, &reference, beta).unwrap().0.mean_loss();
        for i in 0..4 {
            let (mut up, mut dn) = (logps, logps);
            up[i] += 1e-6;
            dn[i] -= 1e-6;
            let fd = (f(&up) - f(&dn)) / 2e-6;
            assert!((fd - d[i]).abs() < 1e-8, "row {i}: {fd} vs {}", d[i]);
        }
        assert_eq!(s.pairs, 2);
        // Pair 0: rewards 0.25 and 0.25 (a tie is not accurate); pair 1: −0.25 and 0.25.
        assert_eq!(s.accuracies, 0.0);
        let m: std::collections::HashMap<_, _> = s.means("").into_iter().collect();
        assert!((m["rewards/chosen"] - 0.0).abs() < 1e-12 && (m["rewards/margins"] - -0.25).abs() < 1e-12);
        assert!((neg_log_sigmoid(-800.0) - 800.0).abs() < 1e-9 && neg_log_sigmoid(800.0) < 1e-300);
    }
}
