//! Inference on CUDA against the CPU (built only with `--features cuda`; prints
//! `SKIP: no CUDA device` and passes without a GPU): KV-cache decode on the device (batch 1 and
//! 2, GQA) against the CPU's full forward, greedy generation, perplexity.
//! The tests set the process-wide matmul precision: run them with `--test-threads=1`.
#![cfg(feature = "cuda")]

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
fn greedy_generation_and_perplexity_on_gpu_match_the_cpu() {
    let Some(_) = gpu() else { return };
    cuda::set_matmul_precision(MatmulPrecision::F32);
    let (cpu, gpu_m) = models();
    // Greedy decoding of a fresh model repeats its input (the tied head maps a token to
    // itself), so also sample: with one seed both devices draw the same tokens, since their
    // probabilities differ by rounding only.
    for sampling in [SamplingConfig::default(), SamplingConfig { temperature: 1.0, seed: 4, ..Default::default() }] {
        let cfg = GenerateConfig { max_tokens: 16, sampling, stop_ids: vec![] };
        let a = generate(&cpu, &[1, 2, 3], &cfg, |_| {}).unwrap();
        let b = generate(&gpu_m, &[1, 2, 3], &cfg, |_| {}).unwrap();
        println!("cpu {:?}\ngpu {:?}", a.ids, b.ids);
        assert_eq!(a.ids, b.ids);
    }
    let ids: Vec<u32> = (0..100u32).map(|i| (i * 37 + 11) % 300).collect();
    let pc = perplexity(&cpu, &ids, 32, |_, _| {}).unwrap();
    let pg = perplexity(&gpu_m, &ids, 32, |_, _| {}).unwrap();
    println!("perplexity cpu {} gpu {}", pc.ppl, pg.ppl);
    assert!((pc.mean_nll - pg.mean_nll).abs() < 1e-5 * pc.mean_nll);
}
