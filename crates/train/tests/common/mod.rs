//! What the CPU training tests share (`mod common;` in each): a fresh work folder, and the
//! bundled corpus as byte-level token files with a tiny custom model's run settings.
#![allow(dead_code)] // each test file uses its part

use smelt_data::prepare::{prepare, PrepareConfig};
use smelt_tokenizer::Tokenizer;
use smelt_train::TrainConfig;
use std::path::{Path, PathBuf};

/// An empty folder under the temporary directory, unique to this process and `name`.
pub fn workdir(prefix: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smelt-{prefix}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `d/tok.json` (byte-level) and the bundled corpus as `d/train.bin` + `d/train.val.bin`
/// (a tenth held out); returns the tokenizer.
pub fn corpus_tokens(d: &Path) -> Tokenizer {
    let tok = Tokenizer::byte_level();
    tok.save(&d.join("tok.json")).unwrap();
    let corpus = smelt_testing::repo_root().join("data/linux-doc-slice.jsonl.gz");
    let mut pc = PrepareConfig::new(vec![corpus.to_string_lossy().into()], d.join("train.bin"));
    pc.val_fraction = 0.1;
    prepare(&pc, &tok, &|_, _| {}).unwrap();
    tok
}

/// `corpus_tokens`, and a run on them: a custom model of d 32, 2 layers, 4 heads (2 kv), ffn
/// 64; batch 2 × 32, 6 steps of 2 micro-batches, lr 3e-3 after 2 warm-up steps, seed 5,
/// checkpoints every 3 steps in `d/ckpt`, 2 validation batches.
pub fn tiny_run(d: &Path) -> TrainConfig {
    corpus_tokens(d);
    TrainConfig {
        dataset: d.join("train.bin"),
        val_dataset: Some(d.join("train.val.bin")),
        tokenizer: Some(d.join("tok.json")),
        size: "custom".into(),
        dim: Some(32),
        layers: Some(2),
        heads: Some(4),
        kv_heads: Some(2),
        ffn_hidden: Some(64),
        batch_size: 2,
        seq_len: 32,
        steps: 6,
        grad_accum: 2,
        lr: 3e-3,
        warmup: 2,
        seed: 5,
        checkpoint_dir: d.join("ckpt"),
        checkpoint_interval: 3,
        val_batches: 2,
        ..Default::default()
    }
}

/// `base` with weights drawn afresh from `Rng::new(seed)`, large enough that tokens' losses
/// differ visibly: norms (1-D) 1 + 0.1·z, matrices 0.12·z, in parameter order.
pub fn visible_weights(base: smelt_model::Model, seed: u64) -> smelt_model::Model {
    let mut rng = smelt_core::rng::Rng::new(seed);
    let params = base
        .params
        .iter()
        .map(|p| {
            let v: Vec<f32> = (0..p.numel())
                .map(|_| {
                    let z = rng.normal() as f32;
                    if p.shape().len() == 1 {
                        1.0 + 0.1 * z
                    } else {
                        0.12 * z
                    }
                })
                .collect();
            smelt_core::Tensor::from_f32(v, p.shape()).unwrap()
        })
        .collect();
    base.with_params(params).unwrap()
}
