//! What the CPU training tests share (`mod common;` in each): a fresh work folder, the
//! bundled corpus as byte-level token files with a tiny custom model's run settings, and a run
//! on several ranks as threads.
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

/// Runs `cfg` as `world` data-parallel ranks, threads of this process
/// (`smelt_core::dist::ThreadGroup`), ZeRO-1 as `zero` says (None: the default, on with two or
/// more); rank 0 writes `cfg.checkpoint_dir`. Small buckets, so several are sent per update.
pub fn run_ranks(cfg: &TrainConfig, world: usize, zero: Option<bool>, resume: Option<&Path>) {
    let resume = resume.map(Path::to_path_buf);
    run_ranks_with(cfg, world, zero, move |c| smelt_train::run(c, resume.as_deref()).map(|_| ()));
}

/// `run_ranks` with each rank's run given: `run(its settings)`.
pub fn run_ranks_with(
    cfg: &TrainConfig,
    world: usize,
    zero: Option<bool>,
    run: impl Fn(TrainConfig) -> anyhow::Result<()> + Clone + Send + 'static,
) {
    use std::sync::Arc;
    let handles: Vec<_> = smelt_core::dist::ThreadGroup::new(world)
        .into_iter()
        .map(|g| {
            let mut c = cfg.clone();
            let dp = smelt_train::DataParallel::new(Arc::new(g), smelt_core::DType::F32, 16 << 10);
            c.parallel = Some(dp.with_zero(zero));
            let run = run.clone();
            std::thread::spawn(move || run(c))
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
}

/// Each metrics line's step and value of `key`, from `metrics.jsonl` in `dir`.
pub fn metric(dir: &Path, key: &str) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Some((v["step"].as_u64()?, v[key].as_f64()?))
        })
        .collect()
}

/// The largest relative difference between two curves of the same steps.
pub fn max_rel(a: &[(u64, f64)], b: &[(u64, f64)]) -> f64 {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    a.iter()
        .zip(b)
        .map(|((sa, x), (sb, y))| {
            assert_eq!(sa, sb);
            ((x - y) / y.abs().max(1e-12)).abs()
        })
        .fold(0.0, f64::max)
}
