//! LoRA training end to end on the bundled corpus: only the adapter learns (the base frozen, no
//! optimizer state for it), checkpoints are PEFT adapter folders, resume is bit-exact with
//! dropout on, and a checkpoint loads back onto its base.

mod common;

use smelt_model::{LoraConfig, Model, ModelConfig};
use smelt_train::TrainConfig;
use std::path::{Path, PathBuf};

fn workdir(name: &str) -> PathBuf {
    common::workdir("lora-train", name)
}

/// A small base model saved as `d/base`, a byte-level tokenizer and the corpus as tokens.
fn setup(d: &Path) -> TrainConfig {
    let tok = common::corpus_tokens(d);
    let base = d.join("base");
    std::fs::create_dir_all(&base).unwrap();
    Model::init(ModelConfig::llama(tok.vocab_size(), 32, 2, 4, 2, 64), 9).unwrap().save(&base).unwrap();
    TrainConfig {
        dataset: d.join("train.bin"),
        val_dataset: Some(d.join("train.val.bin")),
        tokenizer: Some(d.join("tok.json")),
        init: Some(base),
        batch_size: 2,
        seq_len: 32,
        steps: 6,
        grad_accum: 2,
        lr: 1e-2,
        warmup: 1,
        seed: 5,
        checkpoint_dir: d.join("ckpt"),
        checkpoint_interval: 3,
        val_batches: 2,
        lora: Some(LoraConfig::new(4, 8.0, 0.1, &LoraConfig::parse_targets("all-linear").unwrap(), false).unwrap()),
        ..Default::default()
    }
}

fn losses(metrics: &Path) -> Vec<String> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].to_string())
        .collect()
}

#[test]
fn lora_trains_only_the_adapter_and_resumes_exactly() {
    let d = workdir("resume");
    let cfg = setup(&d);
    smelt_train::run(cfg.clone(), None).unwrap();
    let straight = losses(&d.join("ckpt/metrics.jsonl"));
    assert_eq!(straight.len(), 6);
    let first: f64 = straight[0].parse().unwrap();
    let last: f64 = straight[5].parse().unwrap();
    assert!(last < first, "the adapter learns: loss {first} → {last}");

    // The checkpoint is a PEFT adapter folder (no copy of the base) with the optimizer state
    // of the adapter alone.
    let fin = d.join("ckpt/final");
    for f in ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "optimizer.safetensors"] {
        assert!(fin.join(f).exists(), "{f} missing");
    }
    assert!(!fin.join("model.safetensors").exists());
    let opt = smelt_model::io::read_safetensors(&fin.join("optimizer.safetensors")).unwrap();
    assert_eq!(opt.len(), 2 * 2 * 7 * 2, "moments of the 28 LoRA factors only");
    assert!(opt.keys().all(|k| k.starts_with("base_model.model.model.layers.") && k.contains(".lora_")));

    // The adapter loads onto its base (from disk, unchanged) and moved away from B = 0.
    let m = smelt_train::checkpoint::load_model(&fin).unwrap();
    let base = Model::load(cfg.init.as_ref().unwrap()).unwrap();
    for (x, y) in m.params.iter().zip(&base.params) {
        assert_eq!(x.as_f32().unwrap(), y.as_f32().unwrap(), "the base is frozen");
    }
    let a = m.adapter.as_ref().unwrap();
    assert!(a.params.iter().skip(1).step_by(2).all(|b| b.as_f32().unwrap().iter().any(|&v| v != 0.0)));
    assert_eq!(a.cfg.base_model.as_deref(), Some(cfg.init.as_ref().unwrap().display().to_string().as_str()));

    // Resume from step 3 (dropout on): the same losses and the same adapter, bit for bit.
    let mut cfg2 = cfg.clone();
    cfg2.checkpoint_dir = d.join("ckpt2");
    smelt_train::run(cfg2, Some(&d.join("ckpt/step-000003"))).unwrap();
    assert_eq!(losses(&d.join("ckpt2/metrics.jsonl")), straight[3..].to_vec(), "losses after resume differ");
    let b = smelt_train::checkpoint::load_model(&d.join("ckpt2/final")).unwrap();
    for (x, y) in a.params.iter().zip(&b.adapter.as_ref().unwrap().params) {
        assert_eq!(x.as_f32().unwrap(), y.as_f32().unwrap(), "final adapters differ");
    }
}

#[test]
fn lora_needs_a_base() {
    let d = workdir("nobase");
    let mut cfg = setup(&d);
    cfg.init = None;
    cfg.size = "custom".into();
    (cfg.dim, cfg.layers, cfg.heads) = (Some(32), Some(2), Some(4));
    let e = format!("{:#}", smelt_train::run(cfg, None).err().unwrap());
    assert!(e.contains("--init"), "{e}");
}

/// A LoRA group's projections as one product over [x | the adapters' down outputs]
/// (`Graph::linear_side`, the GPU's form) give the separate products' loss and adapter
/// gradients (the CPU's form) within f32 rounding: a Qwen2-shaped base (q/k/v biases, GQA), r 8
/// on all seven projections, B non-zero, prompt positions outside the loss, on the CPU with the
/// form forced each way.
#[test]
fn lora_side_products_equal_the_separate_ones() {
    use smelt_core::rng::Rng;
    use smelt_core::Tensor;
    use smelt_model::{Adapter, Arch, LoraConfig, Model, ModelConfig};
    let mut cfg = ModelConfig::llama(96, 64, 2, 4, 2, 160);
    cfg.arch = Arch::Qwen2;
    cfg.qkv_bias = true;
    cfg.tie_embeddings = true;
    let targets = LoraConfig::parse_targets("all-linear").unwrap();
    let mut m = Model::init(cfg.clone(), 5).unwrap();
    let mut a = Adapter::init(&cfg, LoraConfig::new(8, 16.0, 0.0, &targets, false).unwrap(), 9);
    let mut r = Rng::new(4);
    for b in a.params.iter_mut().skip(1).step_by(2) {
        *b = Tensor::from_f32((0..b.numel()).map(|_| 0.05 * r.normal() as f32).collect(), b.shape()).unwrap();
    }
    m.attach(a).unwrap();
    let (b, t) = (2, 24);
    let ids = |r: &mut Rng| Tensor::from_u32((0..b * t).map(|_| r.below(96) as u32).collect(), &[b, t]).unwrap();
    let x = ids(&mut r);
    let mut y = ids(&mut r).as_u32().unwrap().to_vec();
    for (i, v) in y.iter_mut().enumerate() {
        if i % t < 6 {
            *v = smelt_core::ops::cross_entropy::IGNORE;
        }
    }
    let micro = vec![(x, Tensor::from_u32(y, &[b, t]).unwrap())];
    let layout = smelt_train::Layout::token_weighted(&micro, vec![None]).unwrap();
    let grads = |side: bool| {
        smelt_model::model::force_lora_side(Some(side));
        let out = smelt_train::gradients(&m, &micro, &layout).unwrap();
        smelt_model::model::force_lora_side(None);
        out
    };
    let ((l0, g0), (l1, g1)) = (grads(false), grads(true));
    assert!((l0 - l1).abs() <= 1e-5 * l0.abs(), "loss {l0} (separate) vs {l1} (one product)");
    assert_eq!(g0.len(), g1.len());
    // The forms differ in their sums' order, so some gradient differs in its last bits: a check
    // that the forced form was the one run.
    let bits =
        |g: &[Tensor]| -> Vec<u32> { g.iter().flat_map(|t| t.to_vec_f32().unwrap()).map(f32::to_bits).collect() };
    let differing = bits(&g0).iter().zip(bits(&g1)).filter(|(a, b)| **a != *b).count();
    println!("loss {l0} vs {l1}; {differing} gradient values differ in their bits");
    assert!(differing > 0, "the two forms gave identical bits: was the one-product form run?");
    for (i, (a, b)) in g0.iter().zip(&g1).enumerate() {
        let e = smelt_testing::nmse(&b.to_vec_f32().unwrap(), &a.to_vec_f32().unwrap());
        assert!(e < 1e-10, "adapter gradient {i}: NMSE {e:e} between the two forms");
    }
}
