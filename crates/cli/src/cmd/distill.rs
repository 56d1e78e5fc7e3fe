//! `smelt distill`: train a student on a teacher's next-token distributions (docs/FINETUNE.md,
//! "Distillation"). The loop, its flags and checkpoints are `smelt train`'s (`RunFlags`); the
//! data is `smelt sft`'s JSONL shapes or `smelt train`'s token files; the loss is
//! τ²·KL(teacher ‖ student) + α·CE (`smelt_train::distill`).

use super::train::RunFlags;
use anyhow::{bail, Context, Result};
use clap::Args;
use smelt_model::Model;
use smelt_tokenizer::Tokenizer;
use smelt_train::{DistillConfig, SftConfig, TrainConfig};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct DistillArgs {
    /// The teacher, run on the fly over every batch: a smelt or Hugging Face model folder, or a
    /// .gguf file (kept quantised). Its vocabulary must be the student's.
    #[arg(long, required_unless_present_any = ["teacher_logits", "resume"])]
    teacher: Option<PathBuf>,
    /// Precomputed top-k teacher logits (a file --dump-teacher-logits wrote with this run's
    /// data, seed, batch size, sequence length and grad accumulation) instead of --teacher.
    #[arg(long, conflicts_with_all = ["teacher", "dump_teacher_logits"])]
    teacher_logits: Option<PathBuf>,
    /// Write the teacher's top --top-k logits for every batch this run would draw to FILE (a
    /// safetensors file: ids.S.M (N, K) u32 and logits.S.M (N, K) f32 for micro-batch M of update
    /// S), then stop. Train with --teacher-logits FILE and the same batch flags.
    #[arg(long, value_name = "FILE", requires = "teacher")]
    dump_teacher_logits: Option<PathBuf>,
    /// Logits per position kept by --dump-teacher-logits.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    top_k: u32,
    /// The student to train: a smelt or Hugging Face model folder, or a .gguf file (dequantised;
    /// with --lora-r kept quantised).
    #[arg(long, conflicts_with_all = ["size", "resume"])]
    model: Option<PathBuf>,
    /// Or a fresh student of this preset size (see `smelt sizes`), with the teacher's vocabulary.
    #[arg(long, conflicts_with = "resume")]
    size: Option<String>,
    /// tokenizer.json (or a folder holding one), for a fresh --size student taught from
    /// --teacher-logits (otherwise the teacher's or the student's tokenizer is used).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Training examples, JSONL in `smelt sft`'s shapes ({"text"}, {"messages"},
    /// {"prompt", "completion"}); only loss tokens (the completions, unless --train-on-prompt)
    /// are distilled.
    #[arg(long, conflicts_with_all = ["dataset", "resume"])]
    data: Option<PathBuf>,
    /// Validation examples (same shapes): the student's loss on them (and, with --teacher, the
    /// teacher's, once) is logged.
    #[arg(long, conflicts_with = "resume")]
    val_data: Option<PathBuf>,
    /// Or a token file from `smelt prepare` (random windows, as `smelt train` draws them).
    #[arg(long, conflicts_with = "resume")]
    dataset: Option<PathBuf>,
    /// Validation token file for --dataset.
    #[arg(long, conflicts_with = "resume")]
    val_dataset: Option<PathBuf>,
    /// Put the prompt's tokens in the loss too (--data).
    #[arg(long, conflicts_with = "resume")]
    train_on_prompt: bool,
    /// Pack examples into rows, padding-free (--data; on CUDA: bf16, head dim 64 or 128).
    #[arg(long, conflicts_with = "resume")]
    packing: bool,
    /// Whole passes over the examples (--data); sets the number of steps.
    #[arg(long, conflicts_with = "steps", value_parser = clap::value_parser!(u64).range(1..))]
    epochs: Option<u64>,
    /// τ: teacher and student distributions are softmax(logits / τ); the KL term is scaled by τ².
    #[arg(long, default_value_t = 2.0)]
    temperature: f64,
    /// α: the weight of the plain cross-entropy on the data's next tokens beside the KL term.
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,
    /// Where checkpoints (step-NNNNNN/, final/ = the student) and metrics.jsonl go.
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    run: RunFlags,
    #[command(flatten)]
    lora: super::lora::LoraArgs,
}

/// Who the student is: `--model`, or `--size` with `--tokenizer` / `--teacher`'s tokenizer.
struct StudentArgs {
    model: Option<PathBuf>,
    size: Option<String>,
    tokenizer: Option<PathBuf>,
    teacher: Option<PathBuf>,
}

/// The student as `run_distill` takes it: (model, tokenizer) when built here (a GGUF file, a
/// fresh preset), or a folder named in `cfg.init`; and the path its tokenizer comes from.
fn student(
    a: &StudentArgs,
    cfg: &mut TrainConfig,
    teacher: Option<&Model>,
) -> Result<(Option<(Model, Tokenizer)>, PathBuf)> {
    if let Some(path) = &a.model {
        if path.extension().is_some_and(|e| e == "gguf") {
            let tok = Tokenizer::from_file(path)?;
            let m = smelt_convert::load_model(path)?;
            let m = if cfg.lora.is_some() { m } else { m.dequantized()? };
            if cfg.lora.is_some() {
                cfg.init = Some(path.clone());
            }
            return Ok((Some((m, tok)), path.clone()));
        }
        if !path.is_dir() {
            bail!("--model {}: expected a model folder or a .gguf file", path.display());
        }
        cfg.init = Some(path.clone());
        return Ok((None, path.clone()));
    }
    let size = a.size.clone().context("give the student: --model STUDENT or --size PRESET")?;
    if cfg.lora.is_some() {
        bail!("--lora-r trains an adapter on an existing student: give it with --model, not --size");
    }
    let tok_path =
        a.tokenizer.clone().or_else(|| a.teacher.clone()).context("--size with --teacher-logits needs --tokenizer")?;
    let tok = Tokenizer::from_file(&tok_path)?;
    cfg.size = size;
    // The teacher's vocabulary (its embedding may be padded past the tokenizer's).
    let vocab = teacher.map_or(tok.vocab_size(), |t| t.cfg.vocab_size);
    let mut mc = cfg.model_config(vocab)?;
    mc.bos_token_id = teacher.and_then(|t| t.cfg.bos_token_id).or(tok.bos_id());
    mc.eos_token_ids = teacher
        .map(|t| t.cfg.eos_token_ids.clone())
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| tok.eos_id().into_iter().collect());
    let m = Model::init(mc, cfg.seed)?;
    eprintln!("student: a fresh {} model ({} parameters)", cfg.size, m.cfg.n_params());
    Ok((Some((m, tok)), tok_path))
}

pub fn run(a: DistillArgs) -> Result<()> {
    if a.run.spawn_ranks()? {
        return Ok(());
    }
    let mut cfg = TrainConfig {
        checkpoint_dir: a.output.clone(),
        lora: a.lora.config()?,
        quantize_base: a.lora.quantize.clone(),
        ..TrainConfig::default()
    };
    let resume = a.run.apply(&mut cfg)?;
    let who = StudentArgs { model: a.model, size: a.size, tokenizer: a.tokenizer, teacher: a.teacher.clone() };
    if let Some(dir) = &resume {
        // The saved settings say where the teacher is.
        let saved = smelt_train::checkpoint::read_state(dir)?.config;
        let d = saved.distill.with_context(|| format!("{}: not a distillation run's checkpoint", dir.display()))?;
        let teacher = d.teacher.as_deref().map(load_teacher).transpose()?;
        let s = smelt_train::run_distill(cfg, Some(dir), None, teacher)?;
        eprintln!(
            "done: {} steps, final loss {:.4}; student saved to {}",
            s.steps,
            s.final_loss,
            s.final_dir.display()
        );
        return Ok(());
    }
    let teacher = a.teacher.as_deref().map(load_teacher).transpose()?;
    cfg.distill = Some(DistillConfig {
        teacher: a.teacher.clone(),
        teacher_logits: a.teacher_logits.clone(),
        temperature: a.temperature,
        alpha: a.alpha,
    });
    let (base, student_path) = match &a.dump_teacher_logits {
        // Only the teacher runs: it stands in for the student (its tokenizer, its template).
        Some(_) => (None, a.teacher.clone().context("--dump-teacher-logits needs --teacher")?),
        None => student(&who, &mut cfg, teacher.as_ref())?,
    };
    let tok = match &base {
        Some((_, t)) => t.clone(),
        None => Tokenizer::from_file(&student_path)?,
    };
    match (&a.data, &a.dataset) {
        (Some(data), _) => {
            cfg.sft = Some(SftConfig {
                data: data.clone(),
                val_data: a.val_data.clone(),
                train_on_prompt: a.train_on_prompt,
                packing: a.packing,
                epochs: a.epochs,
                chat_template: super::sft::chat_template(&student_path, &tok)?,
            })
        }
        (None, Some(ds)) => {
            if a.epochs.is_some() || a.packing || a.train_on_prompt || a.val_data.is_some() {
                bail!("--epochs, --packing, --train-on-prompt and --val-data go with --data (JSONL), not --dataset");
            }
            cfg.dataset = ds.clone();
            cfg.val_dataset = a.val_dataset.clone();
        }
        (None, None) => bail!(
            "give the training data: --data FILE.jsonl (sft shapes) or --dataset TOKENS (a `smelt prepare` token file)"
        ),
    }
    if let Some(out) = &a.dump_teacher_logits {
        let mut reads: Vec<PathBuf> = cfg.inputs().into_iter().map(Path::to_path_buf).collect();
        reads.extend(a.teacher.clone());
        smelt_files::check_output(out, &reads, "--dump-teacher-logits")?;
        cfg.validate()?;
        let t = teacher.context("--dump-teacher-logits needs --teacher")?;
        let steps = smelt_train::distill::dump_teacher_logits(&cfg, &t, &tok, a.top_k as usize, out)?;
        eprintln!("done: top-{} teacher logits of {steps} updates written to {}", a.top_k, out.display());
        return Ok(());
    }
    let s = smelt_train::run_distill(cfg, None, base, teacher)?;
    eprintln!("done: {} steps, final loss {:.4}; student saved to {}", s.steps, s.final_loss, s.final_dir.display());
    Ok(())
}

fn load_teacher(path: &Path) -> Result<Model> {
    let m = super::load_model(path).with_context(|| format!("loading the teacher {}", path.display()))?;
    eprintln!(
        "teacher {}: {} parameters, {} layers, dim {}, vocab {}",
        path.display(),
        m.cfg.n_params(),
        m.cfg.n_layers,
        m.cfg.dim,
        m.cfg.vocab_size
    );
    Ok(m)
}
