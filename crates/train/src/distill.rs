//! Knowledge distillation's side of the training loop (`smelt distill`, docs/FINETUNE.md):
//! each update's micro-batches get the teacher's logits for the same rows, and the loss becomes
//! τ²·KL(teacher ‖ student) + α·CE (`smelt_core::ops::distill`).
//!
//! The teacher is a model run on the fly (every logit; same vocabulary size as the student), or
//! a file of its top-k logits made beforehand by `dump_teacher_logits` over the very batches
//! the run will draw. Batches are a pure function of (seed, step, micro-batch), so the file is
//! indexed by (step, micro-batch) and records the settings that fix them; a run whose settings
//! differ is refused. The loop, optimizer, checkpoints and resume are `trainer::run`'s.

use crate::trainer::{Data, TrainConfig, Update};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use smelt_core::ops::distill::{DistillLoss, TeacherLogits};
use smelt_core::{Graph, Tensor};
use smelt_model::Model;
use smelt_tokenizer::Tokenizer;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The distillation settings of a run (saved in trainer_state.json).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DistillConfig {
    /// The teacher model run on the fly (a smelt or Hugging Face folder, or a GGUF file; the
    /// caller loads it), recorded so that a resume loads it again.
    pub teacher: Option<PathBuf>,
    /// Precomputed top-k teacher logits (`dump_teacher_logits`), instead of `teacher`.
    pub teacher_logits: Option<PathBuf>,
    /// τ: both distributions are softmax(logits / τ).
    pub temperature: f64,
    /// α: the weight of the cross-entropy on the data's next tokens.
    pub alpha: f64,
}

impl DistillConfig {
    pub fn loss(&self) -> DistillLoss {
        DistillLoss { temperature: self.temperature, alpha: self.alpha }
    }
}

/// Where an update's teacher logits come from.
pub enum Teacher {
    /// Run on the fly over each micro-batch.
    Model(Box<Model>),
    /// Read from a top-k file, by (step, micro-batch).
    Logits(LogitsFile),
}

/// The file format's name, in its metadata.
const FORMAT: &str = "smelt-teacher-logits-v1";

/// The batch settings a logits file was made with: what fixes every batch it covers.
fn batch_keys(cfg: &TrainConfig) -> Vec<(&'static str, String)> {
    let data = match &cfg.sft {
        Some(s) => format!("{} (train_on_prompt {}, packing {})", s.data.display(), s.train_on_prompt, s.packing),
        None => cfg.dataset.display().to_string(),
    };
    vec![
        ("data", data),
        ("seed", cfg.seed.to_string()),
        ("batch_size", cfg.batch_size.to_string()),
        ("seq_len", cfg.seq_len.to_string()),
        ("grad_accum", cfg.grad_accum.to_string()),
    ]
}

/// A top-k teacher logits file, read whole (safetensors: `ids.S.M` (N, K) u32 and
/// `logits.S.M` (N, K) f32 for micro-batch M of update S, N = its rows × tokens).
pub struct LogitsFile {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
    steps: u64,
    vocab: usize,
}

impl LogitsFile {
    /// Opens `path` and checks it was made for the batches `cfg` draws and a vocabulary of `vocab`.
    pub fn open(path: &Path, cfg: &TrainConfig, vocab: usize) -> Result<Self> {
        let meta = read_metadata(path)?;
        let get = |k: &str| meta.get(k).cloned().with_context(|| format!("{}: metadata has no {k:?}", path.display()));
        if get("format")? != FORMAT {
            bail!("{}: not a teacher logits file (format {:?}, expected {FORMAT:?})", path.display(), get("format")?);
        }
        for (k, want) in batch_keys(cfg) {
            let have = get(k)?;
            if have != want {
                bail!("{}: made for {k} {have}, but this run has {want}: its batches would not be the file's (make the file with the run's settings)", path.display());
            }
        }
        let fv: usize = get("vocab_size")?.parse().with_context(|| format!("{}: vocab_size", path.display()))?;
        if fv != vocab {
            bail!(
                "{}: the teacher had a vocabulary of {fv}, the student has {vocab}; they must be the same",
                path.display()
            );
        }
        let steps: u64 = get("steps")?.parse().with_context(|| format!("{}: steps", path.display()))?;
        if steps < cfg.steps {
            bail!(
                "{}: holds {steps} updates' teacher logits; the run asks for {} (--steps)",
                path.display(),
                cfg.steps
            );
        }
        let tensors = smelt_model::io::read_safetensors(path)?;
        Ok(LogitsFile { path: path.to_path_buf(), tensors, steps, vocab })
    }

    fn get(&self, step: u64, m: usize, rows: usize) -> Result<TeacherLogits> {
        let at = |k: &str| {
            self.tensors.get(&format!("{k}.{step}.{m}")).cloned().with_context(|| {
                format!("{}: no {k}.{step}.{m} (the file covers {} updates)", self.path.display(), self.steps)
            })
        };
        let (ids, logits) = (at("ids")?, at("logits")?);
        if logits.rows() != rows || ids.shape() != logits.shape() {
            bail!(
                "{}: update {step} micro-batch {m} holds {:?} logits and {:?} ids for {rows} positions",
                self.path.display(),
                logits.shape(),
                ids.shape()
            );
        }
        // A corrupt file, named here rather than as a NaN loss or an id error that names neither.
        if let Some(bad) = ids.as_u32()?.iter().find(|&&i| i as usize >= self.vocab) {
            bail!("{}: ids.{step}.{m} holds id {bad}, outside the vocabulary of {}", self.path.display(), self.vocab);
        }
        if let Some(bad) = logits.as_f32()?.iter().find(|x| !x.is_finite()) {
            bail!("{}: logits.{step}.{m} holds {bad}, not a finite logit", self.path.display());
        }
        Ok(TeacherLogits { ids: Some(ids), logits })
    }
}

/// A safetensors file's `__metadata__`, read from its header alone.
fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        bail!("{}: not a safetensors file (header of {n} bytes)", path.display());
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).with_context(|| format!("{}: truncated header", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&header).with_context(|| format!("{}: the header is not JSON", path.display()))?;
    Ok(v["__metadata__"]
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default())
}

/// Every logit of `teacher` for (B, T) `x` (packed examples when `seg` is given): (B·T, V).
pub fn teacher_logits(
    teacher: &Model,
    x: &Tensor,
    seg: Option<&std::sync::Arc<smelt_core::ops::attention::Segments>>,
) -> Result<Tensor> {
    // A training graph whose parameters need no gradient: nothing is taped, and the attention
    // is the training kernels', as the student's.
    let mut g = Graph::training();
    let p = teacher.param_vars(&mut g, false);
    Ok(teacher.logits_packed(&mut g, &p, x, seg, false)?.tensor().clone())
}

impl Teacher {
    /// Refuses a teacher whose vocabulary differs from the student's.
    pub fn check(&self, student: &Model, name: &str) -> Result<()> {
        if let Teacher::Model(t) = self {
            if t.cfg.vocab_size != student.cfg.vocab_size {
                bail!(
                    "teacher {name} has a vocabulary of {} and the student {}: distillation compares their distributions token by token, so they must be the same",
                    t.cfg.vocab_size,
                    student.cfg.vocab_size
                );
            }
        }
        Ok(())
    }

    /// Adds the teacher's logits for each of `u`'s micro-batches (update `step`) and the loss
    /// settings to its layout.
    pub(crate) fn attach(&self, u: &mut Update, step: u64, o: DistillLoss) -> Result<()> {
        let mut out = Vec::with_capacity(u.micro.len());
        for (m, (x, _)) in u.micro.iter().enumerate() {
            out.push(match self {
                Teacher::Model(t) => {
                    let seg = u.layout.segments.get(m).and_then(Option::as_ref);
                    TeacherLogits { ids: None, logits: teacher_logits(t, x, seg)? }
                }
                // On one rank of several: the file holds the whole micro-batch; this rank's rows.
                Teacher::Logits(f) => match u.rows.as_ref().map(|r| &r[m]) {
                    None => f.get(step, m, x.numel())?,
                    Some((held, whole)) => {
                        let t = x.cols();
                        let all = f.get(step, m, whole * t)?;
                        let rows = |a: &Tensor| a.narrow_rows(held.start * t, held.len() * t);
                        TeacherLogits { ids: all.ids.as_ref().map(rows).transpose()?, logits: rows(&all.logits)? }
                    }
                },
            });
        }
        u.layout.teacher = out;
        u.layout.distill = Some(o);
        Ok(())
    }
}

/// Writes `teacher`'s top-`k` logits (and their ids) for every micro-batch of the updates
/// 0..steps that `cfg` draws (its data, seed, batch shape; `--epochs` sets the steps as in
/// training) to `out`, a safetensors file `--teacher-logits` reads. Ids of equal logits are
/// ordered by id. Returns the number of updates written.
pub fn dump_teacher_logits(cfg: &TrainConfig, teacher: &Model, tok: &Tokenizer, k: usize, out: &Path) -> Result<u64> {
    if cfg.parallel.as_ref().is_some_and(|p| p.world_size() > 1) {
        bail!("--dump-teacher-logits writes every whole batch from one process: run it without --nproc (the file then serves any number of ranks)");
    }
    let v = teacher.cfg.vocab_size;
    if k == 0 || k > v {
        bail!("--top-k {k}: must be between 1 and the vocabulary size {v}");
    }
    let data = Data::open(cfg, tok, teacher)?;
    let steps = data.steps_for_epochs(cfg.grad_accum).unwrap_or(cfg.steps);
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let every = (steps / 20).max(1);
    for s in 0..steps {
        let u = data.update(s, cfg)?;
        for (m, (x, _)) in u.micro.iter().enumerate() {
            let seg = u.layout.segments.get(m).and_then(Option::as_ref);
            let z = teacher_logits(teacher, x, seg)?;
            let (ids, top) = top_k(z.as_f32()?, v, k);
            let n = x.numel();
            tensors.push((format!("ids.{s}.{m}"), Tensor::from_u32(ids, &[n, k])?));
            tensors.push((format!("logits.{s}.{m}"), Tensor::from_f32(top, &[n, k])?));
        }
        if (s + 1) % every == 0 || s + 1 == steps {
            eprintln!("teacher logits: update {}/{steps}", s + 1);
        }
    }
    let mut meta: HashMap<String, String> = batch_keys(cfg).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("top_k".into(), k.to_string());
    meta.insert("vocab_size".into(), v.to_string());
    meta.insert("steps".into(), steps.to_string());
    smelt_model::io::write_safetensors(out, &tensors, smelt_core::DType::F32, Some(meta))?;
    Ok(steps)
}

/// Each row's `k` largest logits, descending (equal ones by id), and their ids.
pub fn top_k(z: &[f32], v: usize, k: usize) -> (Vec<u32>, Vec<f32>) {
    let (mut ids, mut vals) = (Vec::with_capacity(z.len() / v * k), Vec::with_capacity(z.len() / v * k));
    let mut order: Vec<u32> = Vec::with_capacity(v);
    for row in z.chunks(v) {
        order.clear();
        order.extend(0..v as u32);
        let cmp = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
        if k < v {
            order.select_nth_unstable_by(k - 1, cmp);
        }
        order[..k].sort_by(cmp);
        ids.extend_from_slice(&order[..k]);
        vals.extend(order[..k].iter().map(|&i| row[i as usize]));
    }
    (ids, vals)
}

#[cfg(test)]
mod tests {
    #[test]
    fn top_k_orders_by_logit_then_id() {
        let (ids, vals) = super::top_k(&[0.5, 2.0, 2.0, -1.0, 1.0, 0.0, 3.0, 1.0], 4, 2);
        assert_eq!(ids, [1, 2, 2, 0]);
        assert_eq!(vals, [2.0, 2.0, 3.0, 1.0]);
    }
}
