//! End-to-end training on the bundled corpus: exact resume, divergence handling.

mod common;

use smelt_model::Model;
use smelt_train::optim::Schedule;
use smelt_train::TrainConfig;
use std::path::{Path, PathBuf};

fn workdir(name: &str) -> PathBuf {
    common::workdir("train", name)
}

/// A byte-level tokenizer and the bundled corpus as a token file.
fn setup(d: &Path) -> TrainConfig {
    common::tiny_run(d)
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

#[test]
fn resume_is_bit_identical_to_a_straight_run() {
    let d = workdir("resume");
    let cfg = setup(&d);
    smelt_train::run(cfg.clone(), None).unwrap();
    let straight = losses(&d.join("ckpt/metrics.jsonl"));
    assert_eq!(straight.len(), 6);
    assert!(d.join("ckpt/step-000003/optimizer.safetensors").exists());
    assert!(d.join("ckpt/final/tokenizer.json").exists());

    let mut cfg2 = cfg.clone();
    cfg2.checkpoint_dir = d.join("ckpt2");
    smelt_train::run(cfg2, Some(&d.join("ckpt/step-000003"))).unwrap();
    let resumed = losses(&d.join("ckpt2/metrics.jsonl"));
    assert_eq!(resumed, straight[3..].to_vec(), "losses after resume differ");
    let (a, b) = (Model::load(&d.join("ckpt/final")).unwrap(), Model::load(&d.join("ckpt2/final")).unwrap());
    for (x, y) in a.params.iter().zip(&b.params) {
        assert_eq!(x.as_f32().unwrap(), y.as_f32().unwrap(), "final weights differ");
    }
}

#[test]
fn gradient_checkpointing_does_not_change_the_run() {
    let d = workdir("gc");
    let mut cfg = setup(&d);
    cfg.steps = 3;
    smelt_train::run(cfg.clone(), None).unwrap();
    let plain = losses(&d.join("ckpt/metrics.jsonl"));
    cfg.grad_checkpoint = true;
    cfg.checkpoint_dir = d.join("ckpt-gc");
    smelt_train::run(cfg, None).unwrap();
    assert_eq!(losses(&d.join("ckpt-gc/metrics.jsonl")), plain);
    // The gradients too: the checkpointed forward runs the kernels its re-run does.
    let (a, b) = (Model::load(&d.join("ckpt/final")).unwrap(), Model::load(&d.join("ckpt-gc/final")).unwrap());
    for (x, y) in a.params.iter().zip(&b.params) {
        assert_eq!(x.as_f32().unwrap(), y.as_f32().unwrap(), "final weights differ with --grad-checkpoint");
    }
}

#[test]
fn divergence_stops_with_a_clear_error_and_keeps_the_last_checkpoint() {
    let d = workdir("nan");
    let mut cfg = setup(&d);
    cfg.steps = 40;
    cfg.checkpoint_interval = 1;
    cfg.keep_checkpoints = 100;
    cfg.warmup = 0;
    cfg.schedule = Schedule::Constant;
    cfg.lr = 1e30;
    cfg.grad_clip = 0.0;
    let e = format!("{:#}", smelt_train::run(cfg, None).err().expect("lr 1e30 must diverge"));
    assert!(e.contains("diverged"), "{e}");
    // The newest checkpoint on disk is whole and loads.
    let mut steps: Vec<_> = std::fs::read_dir(d.join("ckpt"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("step-"))
        .collect();
    steps.sort();
    if let Some(last) = steps.last() {
        assert!(e.contains(&last.display().to_string()), "error should name {}: {e}", last.display());
        Model::load(last).unwrap();
    }
}
