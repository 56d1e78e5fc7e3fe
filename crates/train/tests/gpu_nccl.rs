//! Data-parallel training over NCCL on GPUs (built only with `--features cuda`):
//! - one rank (WORLD_SIZE=1, what `--nproc 1` runs) takes the NCCL path and equals the plain
//!   GPU run bit for bit, under mixed precision and in f32; so does one rank under ZeRO-1
//!   (reduce-scatter, AdamW on the rank's pieces, all-gather; `--nproc 1 --zero 1`);
//! - two GPUs (ranks as threads of this process, one communicator each) follow the one-GPU run
//!   at the same global batch: within f32 rounding with f32 matmuls and f32 reduction, within
//!   bf16 tolerance with bf16 reduction, with ZeRO-1 (the default on two) and without; the
//!   checkpoint they write under ZeRO-1 resumes on one GPU and on the CPU;
//! - `smelt sft` and `smelt dpo` on one rank (ZeRO-1 on) equal their plain GPU runs bit for bit,
//!   and with two GPUs (each its block of the rows or pairs) follow them.
//!
//! A test skips without a GPU or libnccl (fails instead under SMELT_REQUIRE_GPU=1), and the
//! two-GPU test skips loudly with fewer than two GPUs (fails under SMELT_REQUIRE_MULTI_GPU=1).
//! The tests set the process-wide matmul precision: run them with `--test-threads=1`.
#![cfg(feature = "cuda")]

use smelt_core::cuda::{self, MatmulPrecision};
use smelt_core::dist::{self, rendezvous, DistEnv};
use smelt_core::{DType, Device};
use smelt_data::prepare::{prepare, PrepareConfig};
use smelt_model::{Model, ModelConfig};
use smelt_testing::{gpu, skip, Need};
use smelt_tokenizer::Tokenizer;
use smelt_train::{DataParallel, DpoConfig, SftConfig, TrainConfig};
use std::path::{Path, PathBuf};

fn nccl() -> bool {
    match cuda::nccl::available() {
        Ok(()) => true,
        Err(e) => {
            skip(Need::Gpu, format!("{e:#}"));
            false
        }
    }
}

fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smelt-gpu-nccl-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small model on the bundled corpus (byte-level tokens), 2 micro-batches per update.
fn setup(d: &Path, device: Device) -> TrainConfig {
    let tok = Tokenizer::byte_level();
    tok.save(&d.join("tok.json")).unwrap();
    let corpus = smelt_testing::repo_root().join("data/linux-doc-slice.jsonl.gz");
    let mut pc = PrepareConfig::new(vec![corpus.to_string_lossy().into()], d.join("train.bin"));
    pc.val_fraction = 0.05;
    prepare(&pc, &tok, &|_, _| {}).unwrap();
    TrainConfig {
        dataset: d.join("train.bin"),
        val_dataset: Some(d.join("train.val.bin")),
        tokenizer: Some(d.join("tok.json")),
        size: "custom".into(),
        dim: Some(128),
        layers: Some(4),
        heads: Some(4),
        kv_heads: Some(2),
        ffn_hidden: Some(384),
        batch_size: 16,
        seq_len: 128,
        steps: 40,
        grad_accum: 2,
        lr: 3e-3,
        min_lr: 3e-4,
        warmup: 5,
        seed: 11,
        checkpoint_dir: d.join("ckpt"),
        checkpoint_interval: 20,
        val_batches: 4,
        device,
        ..Default::default()
    }
}

fn losses(metrics: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

fn max_rel(a: &[(u64, f64)], b: &[(u64, f64)]) -> f64 {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    a.iter().zip(b).map(|((_, x), (_, y))| ((x - y) / y).abs()).fold(0.0, f64::max)
}

fn env(rank: usize, world: usize, port: u16) -> DistEnv {
    DistEnv {
        rank,
        local_rank: rank,
        world_size: world,
        local_world_size: world,
        master_addr: "127.0.0.1".into(),
        master_port: port,
    }
}

/// `cfg` on `world` GPUs, rank r on cuda:r in its own thread with its own communicator; ZeRO-1
/// as `zero` says (None: the default, on with two or more).
fn run_on_gpus(cfg: &TrainConfig, world: usize, wire: DType, zero: Option<bool>, resume: Option<&Path>) {
    let port = rendezvous::free_port().unwrap();
    let handles: Vec<_> = (0..world)
        .map(|r| {
            let mut c = cfg.clone();
            let resume = resume.map(Path::to_path_buf);
            std::thread::spawn(move || {
                c.device = Device::Cuda(r);
                let comm = dist::connect(&env(r, world, port), c.device)?;
                c.parallel = Some(DataParallel::new(comm, wire, smelt_train::dist::BUCKET_BYTES).with_zero(zero));
                smelt_train::run(c, resume.as_deref()).map(|_| ())
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
}

#[test]
fn nccl_one_rank_is_the_plain_gpu_run_bit_for_bit() {
    let Some(d) = gpu() else { return };
    if !nccl() {
        return;
    }
    let dir = workdir("one");
    let mut cfg = setup(&dir, d);
    cfg.steps = 12;
    cfg.checkpoint_interval = 6;
    for (p, name) in [(MatmulPrecision::Bf16, "bf16"), (MatmulPrecision::F32, "f32")] {
        cuda::set_matmul_precision(p);
        let mut plain = cfg.clone();
        plain.checkpoint_dir = dir.join(format!("plain-{name}"));
        smelt_train::run(plain.clone(), None).unwrap();
        let mut one = cfg.clone();
        one.checkpoint_dir = dir.join(format!("nccl-{name}"));
        run_on_gpus(&one, 1, DType::F32, None, None);
        let (a, b) =
            (losses(&plain.checkpoint_dir.join("metrics.jsonl")), losses(&one.checkpoint_dir.join("metrics.jsonl")));
        println!("{name}: plain {a:?}\n{name}: nccl  {b:?}");
        assert_eq!(
            a.iter().map(|x| x.1.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|x| x.1.to_bits()).collect::<Vec<_>>(),
            "{name}: the one-rank NCCL run's losses differ from the plain run's"
        );
        let ma = Model::load(&plain.checkpoint_dir.join("final")).unwrap();
        let mb = Model::load(&one.checkpoint_dir.join("final")).unwrap();
        for (x, y) in ma.params.iter().zip(&mb.params) {
            assert_eq!(x.as_f32().unwrap(), y.as_f32().unwrap(), "{name}: final weights differ");
        }
    }
    cuda::set_matmul_precision(MatmulPrecision::Bf16);
}

/// ZeRO-1 on one rank: every gradient is "reduce-scattered" to the one piece there is, the norm
/// is the f64 sum of squares "summed" over one rank, AdamW runs on flat copies of the
/// parameters, which are "gathered" back: the plain GPU run bit for bit (losses, weights and
/// the optimizer state written).
#[test]
fn nccl_zero1_one_rank_is_the_plain_gpu_run_bit_for_bit() {
    let Some(d) = gpu() else { return };
    if !nccl() {
        return;
    }
    let dir = workdir("zero1-one");
    let mut cfg = setup(&dir, d);
    cfg.steps = 12;
    cfg.checkpoint_interval = 6;
    for (p, name) in [(MatmulPrecision::Bf16, "bf16"), (MatmulPrecision::F32, "f32")] {
        cuda::set_matmul_precision(p);
        let mut plain = cfg.clone();
        plain.checkpoint_dir = dir.join(format!("plain-{name}"));
        smelt_train::run(plain.clone(), None).unwrap();
        let mut one = cfg.clone();
        one.checkpoint_dir = dir.join(format!("zero1-{name}"));
        run_on_gpus(&one, 1, DType::F32, Some(true), None);
        let (a, b) =
            (losses(&plain.checkpoint_dir.join("metrics.jsonl")), losses(&one.checkpoint_dir.join("metrics.jsonl")));
        println!("{name}: plain {a:?}\n{name}: zero1 {b:?}");
        assert_eq!(
            a.iter().map(|x| x.1.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|x| x.1.to_bits()).collect::<Vec<_>>(),
            "{name}: the one-rank ZeRO-1 run's losses differ from the plain run's"
        );
        for (what, ckpt) in [("step 6", "step-000006"), ("final", "final")] {
            let ma = Model::load(&plain.checkpoint_dir.join(ckpt)).unwrap();
            let mb = Model::load(&one.checkpoint_dir.join(ckpt)).unwrap();
            for (x, y) in ma.params.iter().zip(&mb.params) {
                assert_eq!(x.as_f32().unwrap(), y.as_f32().unwrap(), "{name}: {what} weights differ");
            }
            let opt =
                |d: &Path| smelt_model::io::read_safetensors(&d.join(ckpt).join("optimizer.safetensors")).unwrap();
            let (oa, ob) = (opt(&plain.checkpoint_dir), opt(&one.checkpoint_dir));
            assert_eq!(oa.len(), ob.len());
            for (k, x) in &oa {
                assert_eq!(x.as_f32().unwrap(), ob[k].as_f32().unwrap(), "{name}: {what} optimizer state {k} differs");
            }
        }
    }
    cuda::set_matmul_precision(MatmulPrecision::Bf16);
}

#[test]
fn nccl_two_gpus_follow_one_gpu_and_their_checkpoint_resumes_anywhere() {
    let Some(d) = gpu() else { return };
    if !nccl() {
        return;
    }
    let n = cuda::device_count().unwrap_or(0);
    if n < 2 {
        skip(Need::MultiGpu, format!("{n} GPU visible: the two-GPU data-parallel test needs 2"));
        return;
    }
    let dir = workdir("two");
    let cfg = setup(&dir, d);
    for (p, wire, zero, tol, name) in [
        (MatmulPrecision::F32, DType::F32, None, 1e-4, "f32"),
        (MatmulPrecision::F32, DType::F32, Some(false), 1e-4, "f32 without ZeRO-1"),
        (MatmulPrecision::Bf16, DType::F32, None, 2e-2, "bf16 matmuls"),
        (MatmulPrecision::Bf16, DType::BF16, None, 2e-2, "bf16 matmuls, bf16 reduction"),
        (MatmulPrecision::Bf16, DType::BF16, Some(false), 2e-2, "bf16 matmuls, bf16 reduction, without ZeRO-1"),
    ] {
        cuda::set_matmul_precision(p);
        let tag = name.replace([' ', ','], "-");
        let mut one = cfg.clone();
        one.checkpoint_dir = dir.join(format!("one-{tag}"));
        smelt_train::run(one.clone(), None).unwrap();
        let mut two = cfg.clone();
        two.checkpoint_dir = dir.join(format!("two-{tag}"));
        run_on_gpus(&two, 2, wire, zero, None);
        let (a, b) =
            (losses(&one.checkpoint_dir.join("metrics.jsonl")), losses(&two.checkpoint_dir.join("metrics.jsonl")));
        let rel = max_rel(&b, &a);
        println!(
            "{name}: 2 GPUs vs 1 GPU at global batch {}: largest relative loss difference {rel:.2e} over {} steps",
            cfg.batch_size,
            a.len()
        );
        println!("  1 GPU  {:?}\n  2 GPUs {:?}", &a[a.len() - 3..], &b[b.len() - 3..]);
        assert!(rel < tol, "{name}: {rel:e} >= {tol:e}");
    }
    // The f32 run's mid checkpoint, written by two GPUs under ZeRO-1 (its moments gathered),
    // resumes on one GPU and on the CPU.
    cuda::set_matmul_precision(MatmulPrecision::F32);
    let two = losses(&dir.join("two-f32/metrics.jsonl"));
    for (device, tol) in [(d, 1e-4), (Device::Cpu, 1e-3)] {
        let mut c = cfg.clone();
        c.device = device;
        c.checkpoint_dir = dir.join(format!("resumed-{device}"));
        smelt_train::run(c.clone(), Some(&dir.join("two-f32/step-000020"))).unwrap();
        let got = losses(&c.checkpoint_dir.join("metrics.jsonl"));
        let rel = max_rel(&got, &two[20..]);
        println!("2 GPUs' step 20 resumed on {device}: largest relative loss difference {rel:.2e}");
        assert!(rel < tol, "{device}: {rel:e}");
    }
    cuda::set_matmul_precision(MatmulPrecision::Bf16);
}

const CHATML: &str = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A tiny base model folder, 14 SFT examples and 12 preference pairs (as sft_e2e and dpo_e2e).
fn finetune_setup(d: &Path) -> PathBuf {
    let base = d.join("base");
    std::fs::create_dir_all(&base).unwrap();
    let tok = Tokenizer::byte_level();
    let mut cfg = ModelConfig::llama(tok.vocab_size(), 64, 2, 4, 2, 128);
    cfg.eos_token_ids = tok.eos_id().into_iter().collect();
    Model::init(cfg, 1).unwrap().save(&base).unwrap();
    tok.save_hf(&base).unwrap();
    let lines = |v: Vec<serde_json::Value>| v.iter().map(|l| format!("{l}\n")).collect::<String>();
    let sft = (0..14)
        .map(|i| serde_json::json!({"prompt": format!("what is {i} plus {i}?"), "completion": format!("{}", 2 * i)}))
        .collect();
    std::fs::write(d.join("sft.jsonl"), lines(sft)).unwrap();
    let pairs = (0..12)
        .map(|i| serde_json::json!({"prompt": format!("{i}+{i}="), "chosen": format!("{}", 2 * i), "rejected": "zz"}))
        .collect();
    std::fs::write(d.join("pairs.jsonl"), lines(pairs)).unwrap();
    base
}

/// SFT (3 rows a batch: short batches leave a rank of two a stand-in row) and DPO (2 pairs a
/// batch) on the GPU: one rank through NCCL under ZeRO-1 is the plain run bit for bit (losses,
/// DPO's metrics, weights); with two GPUs, each its block of the rows (pairs), the losses
/// follow within bf16 tolerance.
#[test]
fn nccl_sft_and_dpo_one_rank_bit_for_bit_and_two_gpus_follow() {
    let Some(d) = gpu() else { return };
    if !nccl() {
        return;
    }
    cuda::set_matmul_precision(MatmulPrecision::Bf16);
    let dir = workdir("finetune");
    let base = finetune_setup(&dir);
    let common = TrainConfig {
        init: Some(base.clone()),
        seq_len: 64,
        steps: 6,
        grad_accum: 2,
        lr: 3e-3,
        min_lr: 1e-4,
        warmup: 1,
        checkpoint_interval: 3,
        device: d,
        ..Default::default()
    };
    let sft = TrainConfig {
        batch_size: 3,
        sft: Some(SftConfig {
            data: dir.join("sft.jsonl"),
            val_data: None,
            train_on_prompt: false,
            packing: false,
            epochs: None,
            chat_template: Some(CHATML.into()),
        }),
        ..common.clone()
    };
    let dpo = TrainConfig {
        batch_size: 2,
        weight_decay: 0.0,
        dpo: Some(DpoConfig {
            data: dir.join("pairs.jsonl"),
            val_data: None,
            beta: 0.5,
            epochs: None,
            chat_template: Some(CHATML.into()),
            ref_model: None,
            adapter: None,
        }),
        ..common.clone()
    };
    let gpus = cuda::device_count().unwrap_or(0);
    for (name, cfg) in [("sft", sft), ("dpo", dpo)] {
        let mut plain = cfg.clone();
        plain.checkpoint_dir = dir.join(format!("{name}-plain"));
        smelt_train::run(plain.clone(), None).unwrap();
        let mut one = cfg.clone();
        one.checkpoint_dir = dir.join(format!("{name}-one"));
        run_on_gpus(&one, 1, DType::F32, Some(true), None);
        let read = |d: &Path| std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
        // Every logged number (loss, DPO's rewards and log-probabilities) but the speed.
        let numbers = |d: &Path| -> Vec<String> {
            read(d)
                .lines()
                .map(|l| {
                    let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v.as_object_mut().unwrap().remove("tokens_per_second");
                    v.to_string()
                })
                .collect()
        };
        assert_eq!(numbers(&plain.checkpoint_dir), numbers(&one.checkpoint_dir), "{name}: one rank vs plain");
        let (ma, mb) = (
            Model::load(&plain.checkpoint_dir.join("final")).unwrap(),
            Model::load(&one.checkpoint_dir.join("final")).unwrap(),
        );
        for (x, y) in ma.params.iter().zip(&mb.params) {
            assert_eq!(x.as_f32().unwrap(), y.as_f32().unwrap(), "{name}: final weights differ");
        }
        if gpus >= 2 {
            let mut two = cfg.clone();
            two.checkpoint_dir = dir.join(format!("{name}-two"));
            run_on_gpus(&two, 2, DType::F32, None, None);
            let rel = max_rel(
                &losses(&two.checkpoint_dir.join("metrics.jsonl")),
                &losses(&plain.checkpoint_dir.join("metrics.jsonl")),
            );
            println!("{name}: 2 GPUs vs 1: largest relative loss difference {rel:.2e}");
            assert!(rel < 2e-2, "{name}: {rel:e}");
        }
    }
}
