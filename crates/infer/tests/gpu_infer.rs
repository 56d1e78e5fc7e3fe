//! Inference on CUDA against the CPU (built only with `--features cuda`; prints
//! `SKIP: no CUDA device` and passes without a GPU): KV-cache decode on the device (batch 1 and
//! 2, GQA) against the CPU's full forward; generation (greedy and sampled, the sampling step on
//! the device) token for token; perplexity scored on the device; the transformers fixtures of
//! hf_parity.rs with f32 matmuls, at the CPU test's thresholds.
//! The tests set the process-wide matmul precision: run them with `--test-threads=1`.
#![cfg(feature = "cuda")]

mod hf_common;

use smelt_core::cuda::{self, MatmulPrecision};
use smelt_core::rng::Rng;
use smelt_core::{Device, Tensor};
use smelt_infer::{generate, perplexity, GenerateConfig, SamplingConfig};
use smelt_model::{KvCache, Logits, Model, ModelConfig};

fn gpu() -> Option<Device> {
    match cuda::gpu(0) {
        Ok(_) => Some(Device::Cuda(0)),
        Err(e) => {
            println!("SKIP: no CUDA device ({e:#})");
            None
        }
    }
}

fn nmse(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    num / den.max(1e-30)
}

fn models() -> (Model, Model) {
    let cfg = ModelConfig::llama(300, 64, 2, 4, 2, 160);
    let cpu = Model::init(cfg.clone(), 9).unwrap();
    let mut gpu = Model::init(cfg, 9).unwrap();
    gpu.to_device(Device::Cuda(0)).unwrap();
    (cpu, gpu)
}

#[test]
fn kv_cache_decode_on_gpu_matches_the_cpu_full_forward() {
    let Some(d) = gpu() else { return };
    let (cpu, gpu_m) = models();
    let v = cpu.cfg.vocab_size;
    let (t, prefill) = (20, 8);
    let mut r = Rng::new(5);
    for (precision, tol) in [(MatmulPrecision::F32, 1e-10), (MatmulPrecision::Bf16, 1e-3)] {
        cuda::set_matmul_precision(precision);
        for b in [1usize, 2] {
            let ids: Vec<u32> = (0..b * t).map(|_| r.below(v as u64) as u32).collect();
            let full = cpu.logits(&Tensor::from_u32(ids.clone(), &[b, t]).unwrap(), None, Logits::All).unwrap().to_vec_f32();
            let mut cache = KvCache::new_on(&gpu_m.cfg, b, t, d).unwrap();
            let take = |lo: usize, hi: usize| -> Tensor {
                let rows: Vec<u32> = (0..b).flat_map(|bi| ids[bi * t + lo..bi * t + hi].to_vec()).collect();
                Tensor::from_u32(rows, &[b, hi - lo]).unwrap()
            };
            let mut worst = 0f64;
            let mut check = |pos: usize, got: Tensor| {
                let got = got.to_vec_f32();
                for bi in 0..b {
                    let want = &full[(bi * t + pos) * v..(bi * t + pos + 1) * v];
                    worst = worst.max(nmse(&got[bi * v..(bi + 1) * v], want));
                }
            };
            check(prefill - 1, gpu_m.logits(&take(0, prefill), Some(&mut cache), Logits::Last).unwrap());
            for pos in prefill..t {
                check(pos, gpu_m.logits(&take(pos, pos + 1), Some(&mut cache), Logits::Last).unwrap());
            }
            println!("{precision:?} batch {b}: worst NMSE of decoded logits {worst:.3e} (tol {tol:.0e})");
            assert!(worst <= tol, "{precision:?} batch {b}: NMSE {worst:e}");
        }
    }
}

#[test]
fn generation_and_perplexity_on_gpu_match_the_cpu() {
    let Some(_) = gpu() else { return };
    cuda::set_matmul_precision(MatmulPrecision::F32);
    let (cpu, gpu_m) = models();
    // Greedy decoding of a fresh model repeats its input (the tied head maps a token to
    // itself), so also sample, with each filter: the sampling step runs on the device, and with
    // one seed both devices draw the same tokens, since their probabilities differ by rounding.
    let s = |temperature, top_k, top_p, min_p, repetition_penalty, seed| SamplingConfig { temperature, top_k, top_p, min_p, repetition_penalty, seed };
    for sampling in [
        SamplingConfig::default(),
        SamplingConfig { repetition_penalty: 1.3, ..Default::default() },
        s(1.0, 0, 1.0, 0.0, 1.0, 4),
        s(0.8, 40, 0.95, 0.05, 1.0, 5), // the CLI's defaults
        s(1.5, 0, 0.9, 0.0, 1.2, 6),
        s(2.0, 7, 1.0, 0.1, 1.0, 7),
    ] {
        let cfg = GenerateConfig { max_tokens: 32, sampling: sampling.clone(), stop_ids: vec![] };
        let a = generate(&cpu, &[1, 2, 3], &cfg, |_| {}).unwrap();
        let b = generate(&gpu_m, &[1, 2, 3], &cfg, |_| {}).unwrap();
        let same = a.ids.iter().zip(&b.ids).take_while(|(x, y)| x == y).count();
        println!("{sampling:?}: {same}/{} tokens equal\n  cpu {:?}\n  gpu {:?}", a.ids.len(), a.ids, b.ids);
        assert_eq!(a.ids, b.ids);
    }
    // Qwen's vocabulary size, the CLI's filters and a penalty.
    let cfg = ModelConfig::llama(151_936, 64, 1, 4, 2, 128);
    let big_cpu = Model::init(cfg.clone(), 3).unwrap();
    let mut big_gpu = Model::init(cfg, 3).unwrap();
    big_gpu.to_device(Device::Cuda(0)).unwrap();
    let gen = GenerateConfig { max_tokens: 16, sampling: s(0.8, 40, 0.95, 0.05, 1.1, 8), stop_ids: vec![] };
    let (a, b) = (generate(&big_cpu, &[5, 70_000, 151_000], &gen, |_| {}).unwrap(), generate(&big_gpu, &[5, 70_000, 151_000], &gen, |_| {}).unwrap());
    println!("V=151936: cpu {:?}\n  gpu {:?} ({:.0} tokens/s on the GPU)", a.ids, b.ids, b.tokens_per_second);
    assert_eq!(a.ids, b.ids);

    let ids: Vec<u32> = (0..100u32).map(|i| (i * 37 + 11) % 300).collect();
    let pc = perplexity(&cpu, &ids, 32, |_, _| {}).unwrap();
    let pg = perplexity(&gpu_m, &ids, 32, |_, _| {}).unwrap();
    let rel = (pc.mean_nll - pg.mean_nll).abs() / pc.mean_nll;
    println!("perplexity cpu {} gpu {} (mean NLL rel diff {rel:.2e})", pc.ppl, pg.ppl);
    assert!(rel < 1e-5);
}

/// hf_parity.rs's cases on the GPU with f32 matmuls: logits, greedy tokens and perplexity
/// against transformers at the same thresholds.
#[test]
fn hf_fixtures_match_transformers_on_gpu() {
    let Some(d) = gpu() else { return };
    cuda::set_matmul_precision(MatmulPrecision::F32);
    let mut failures = Vec::new();
    for case in hf_common::CASES {
        let (mut m, g) = hf_common::load(case);
        m.to_device(d).unwrap();
        failures.extend(hf_common::compare(&m, &g, 64, &format!("{case} (cuda)")).failures(case));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
