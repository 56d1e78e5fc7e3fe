//! `--optimizer muon` and distillation through the training loop on the bundled corpus: exact
//! resume of each (the Muon momentum buffers and the distillation settings are in the
//! checkpoint), a top-k logits file holding every id trains as the teacher on the fly does, and
//! the errors for a teacher of another vocabulary and a logits file made for other batches;
//! distillation on 2 ranks (threads, ZeRO-1), from the teacher and from its logits file, follows
//! the one-process run.

mod common;

use smelt_model::{Model, ModelConfig};
use smelt_tokenizer::Tokenizer;
use smelt_train::optim::OptimizerKind;
use smelt_train::{DistillConfig, TrainConfig};
use std::path::{Path, PathBuf};

fn workdir(name: &str) -> PathBuf {
    common::workdir("distill", name)
}

/// A byte-level tokenizer and the bundled corpus as a token file; a small custom student.
fn setup(d: &Path) -> TrainConfig {
    TrainConfig { device: smelt_core::Device::Cpu, ..common::tiny_run(d) }
}

/// A teacher of `vocab` ids (random weights: what matters is that its distribution is fixed).
fn teacher(vocab: usize) -> Model {
    let mut c = ModelConfig::llama(vocab, 48, 2, 4, 2, 96);
    c.max_pos = 64;
    Model::init(c, 11).unwrap()
}

fn with_distill(mut cfg: TrainConfig, logits: Option<PathBuf>) -> TrainConfig {
    cfg.distill = Some(DistillConfig { teacher: None, teacher_logits: logits, temperature: 2.0, alpha: 0.5 });
    cfg
}

fn losses(metrics: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].to_string())
        })
        .collect()
}

fn same_weights(a: &Path, b: &Path) {
    let (a, b) = (Model::load(a).unwrap(), Model::load(b).unwrap());
    for (x, y) in a.params.iter().zip(&b.params) {
        assert_eq!(x.as_f32().unwrap(), y.as_f32().unwrap(), "final weights differ");
    }
}

#[test]
fn muon_resume_is_bit_identical_to_a_straight_run() {
    let d = workdir("muon");
    let mut cfg = setup(&d);
    cfg.checkpoint_dir = d.join("adamw");
    smelt_train::run(cfg.clone(), None).unwrap();
    cfg.optimizer = OptimizerKind::Muon;
    cfg.checkpoint_dir = d.join("ckpt");
    smelt_train::run(cfg.clone(), None).unwrap();
    let straight = losses(&d.join("ckpt/metrics.jsonl"));
    assert_ne!(straight[2..], losses(&d.join("adamw/metrics.jsonl"))[2..], "Muon trained as AdamW does");
    let st = smelt_model::io::read_safetensors(&d.join("ckpt/step-000003/optimizer.safetensors")).unwrap();
    assert!(st.contains_key("model.layers.0.mlp.up_proj.weight.momentum_buffer"));
    assert!(st.contains_key("model.embed_tokens.weight.exp_avg"));
    assert!(!st.contains_key("model.layers.0.mlp.up_proj.weight.exp_avg"));

    let mut cfg2 = cfg.clone();
    cfg2.checkpoint_dir = d.join("ckpt2");
    smelt_train::run(cfg2, Some(&d.join("ckpt/step-000003"))).unwrap();
    assert_eq!(losses(&d.join("ckpt2/metrics.jsonl")), straight[3..].to_vec(), "losses after resume differ");
    same_weights(&d.join("ckpt/final"), &d.join("ckpt2/final"));
}

#[test]
fn distill_resume_is_bit_identical_to_a_straight_run() {
    let d = workdir("resume");
    let cfg = with_distill(setup(&d), None);
    let v = Tokenizer::byte_level().vocab_size();
    smelt_train::run_distill(cfg.clone(), None, None, Some(teacher(v))).unwrap();
    let straight = losses(&d.join("ckpt/metrics.jsonl"));
    let mut cfg2 = cfg.clone();
    cfg2.checkpoint_dir = d.join("ckpt2");
    smelt_train::run_distill(cfg2, Some(&d.join("ckpt/step-000003")), None, Some(teacher(v))).unwrap();
    assert_eq!(losses(&d.join("ckpt2/metrics.jsonl")), straight[3..].to_vec(), "losses after resume differ");
    same_weights(&d.join("ckpt/final"), &d.join("ckpt2/final"));
    // A distillation checkpoint is not continued as plain training.
    let mut cfg3 = cfg.clone();
    cfg3.checkpoint_dir = d.join("ckpt3");
    let e = smelt_train::run(cfg3, Some(&d.join("ckpt/step-000003"))).err().unwrap().to_string();
    assert!(e.contains("a distillation run"), "{e}");
}

#[test]
fn a_logits_file_of_every_id_trains_as_the_teacher_does() {
    let d = workdir("file");
    let mut cfg = with_distill(setup(&d), None);
    cfg.steps = 2;
    let (tok, v) = (Tokenizer::byte_level(), Tokenizer::byte_level().vocab_size());
    let t = teacher(v);
    let file = d.join("teacher.safetensors");
    assert_eq!(smelt_train::distill::dump_teacher_logits(&cfg, &t, &tok, v, &file).unwrap(), 2);
    smelt_train::run_distill(cfg.clone(), None, None, Some(t)).unwrap();
    let on_the_fly = losses(&d.join("ckpt/metrics.jsonl"));
    let mut from_file = with_distill(cfg.clone(), Some(file.clone()));
    from_file.checkpoint_dir = d.join("ckpt-file");
    smelt_train::run_distill(from_file.clone(), None, None, None).unwrap();
    let got = losses(&d.join("ckpt-file/metrics.jsonl"));
    for ((_, a), (_, b)) in got.iter().zip(&on_the_fly) {
        let (a, b): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
        assert!((a - b).abs() <= 1e-5 * b.abs(), "from the file {a}, on the fly {b}");
    }
    // Other batches than the file's are refused, naming the setting.
    let mut other = from_file.clone();
    other.seed = 6;
    other.checkpoint_dir = d.join("ckpt-other");
    let e = smelt_train::run_distill(other, None, None, None).err().unwrap().to_string();
    assert!(e.contains("seed 5") && e.contains("6"), "{e}");
    // A teacher of another vocabulary is refused, naming both sizes.
    let mut wide = cfg.clone();
    wide.checkpoint_dir = d.join("ckpt-wide");
    let e = smelt_train::run_distill(wide, None, None, Some(teacher(v + 3))).err().unwrap().to_string();
    assert!(e.contains(&format!("{}", v + 3)) && e.contains(&format!("student {v}")), "{e}");
}

/// Distillation on two ranks: each takes its rows of every batch and their teacher logits (the
/// teacher run on its rows, or its rows of the file's whole batches): the one-process curve.
#[test]
fn distill_on_ranks_follows_one_process() {
    let d = workdir("ranks");
    let mut cfg = with_distill(setup(&d), None);
    cfg.steps = 4;
    let (tok, v) = (Tokenizer::byte_level(), Tokenizer::byte_level().vocab_size());
    let file = d.join("teacher.safetensors");
    smelt_train::distill::dump_teacher_logits(&cfg, &teacher(v), &tok, 16, &file).unwrap();
    for (name, logits) in [("teacher", None), ("file", Some(file.clone()))] {
        let mut one = with_distill(cfg.clone(), logits.clone());
        one.checkpoint_dir = d.join(format!("one-{name}"));
        let t = logits.is_none().then(|| teacher(v));
        smelt_train::run_distill(one.clone(), None, None, t).unwrap();
        let mut two = one.clone();
        two.checkpoint_dir = d.join(format!("two-{name}"));
        let on_file = logits.is_some();
        common::run_ranks_with(&two, 2, None, move |c| {
            smelt_train::run_distill(c, None, None, (!on_file).then(|| teacher(v))).map(|_| ())
        });
        let (a, b) = (common::metric(&one.checkpoint_dir, "loss"), common::metric(&two.checkpoint_dir, "loss"));
        let rel = common::max_rel(&b, &a);
        println!("distill from the {name} on 2 ranks: largest relative loss difference {rel:.2e}");
        assert!(rel < 1e-5, "{name}: {b:?}\nvs one process {a:?}");
    }
}
