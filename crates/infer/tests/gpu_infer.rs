//! Inference on CUDA against the CPU (built only with `--features cuda`; skips without a GPU,
//! fails instead under SMELT_REQUIRE_GPU=1): KV-cache decode on the device (batch 1 and
//! 2, GQA) against the CPU's full forward; generation (greedy and sampled, the sampling step on
//! the device) token for token; perplexity scored on the device; the transformers fixtures of
//! hf_parity.rs with f32 matmuls, at the CPU test's thresholds; GGUF models with their weights
//! kept quantised on the device (SmolLM2's published Q4_1 file, and tiny exports in every
//! quantised type) against the CPU; the server's batched forward over the paged KV pool on the
//! device against each sequence run alone with the contiguous cache; its decode steps replayed
//! from captured CUDA graphs (`PagedDecoder`) against the same steps launched, bit for bit.
//! The tests set the process-wide matmul precision: run them with `--test-threads=1`.
#![cfg(feature = "cuda")]

mod hf_common;

use smelt_core::cuda::{self, MatmulPrecision};
use smelt_core::rng::Rng;
use smelt_core::{Device, Tensor};
use smelt_infer::{generate, perplexity, GenerateConfig, SamplingConfig};
use smelt_model::{Decoder, KvCache, KvPool, KvType, Logits, Model, ModelConfig, PagedDecoder, SeqStep};
use smelt_testing::{gpu, nmse};
use std::path::PathBuf;

fn models() -> (Model, Model) {
    let cfg = ModelConfig::llama(300, 64, 2, 4, 2, 160);
    let cpu = Model::init(cfg.clone(), 9).unwrap();
    let mut gpu = Model::init(cfg, 9).unwrap();
    gpu.to_device(Device::Cuda(0)).unwrap();
    (cpu, gpu)
}

/// One sequence decoded through a `Decoder` (captured or not): the prefill's logits of the first
/// `prefill` ids, then one step's for each id after them.
fn decode_logits(m: &Model, ids: &[u32], prefill: usize, capture: bool) -> Vec<Vec<f32>> {
    let cache = KvCache::new_on(&m.cfg, 1, ids.len(), m.device()).unwrap();
    let mut dec = Decoder::with_capture(m, cache, capture);
    let first = Tensor::from_u32(ids[..prefill].to_vec(), &[1, prefill]).unwrap();
    let mut out = vec![dec.prefill(&first).unwrap().to_vec_f32().unwrap()];
    for &id in &ids[prefill..] {
        out.push(dec.step(&Tensor::from_u32(vec![id], &[1, 1]).unwrap()).unwrap().to_vec_f32().unwrap());
    }
    out
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
            let full = cpu
                .logits(&Tensor::from_u32(ids.clone(), &[b, t]).unwrap(), None, Logits::All)
                .unwrap()
                .to_vec_f32()
                .unwrap();
            let mut cache = KvCache::new_on(&gpu_m.cfg, b, t, d).unwrap();
            let take = |lo: usize, hi: usize| -> Tensor {
                let rows: Vec<u32> = (0..b).flat_map(|bi| ids[bi * t + lo..bi * t + hi].to_vec()).collect();
                Tensor::from_u32(rows, &[b, hi - lo]).unwrap()
            };
            let mut worst = 0f64;
            let mut check = |pos: usize, got: Tensor| {
                let got = got.to_vec_f32().unwrap();
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

/// A captured decode step (a CUDA graph replayed each token, the position on the device)
/// computes what the uncaptured step computes, bit for bit, over enough positions to cross the
/// decode attention's key splits (256 keys each).
#[test]
fn captured_decode_steps_equal_uncaptured_ones() {
    let Some(d) = gpu() else { return };
    let (_, gpu_m) = models();
    let v = gpu_m.cfg.vocab_size as u64;
    let (prefill, steps) = (5, 300);
    let mut r = Rng::new(9);
    for precision in [MatmulPrecision::F32, MatmulPrecision::Bf16] {
        cuda::set_matmul_precision(precision);
        for b in [1usize, 2] {
            let ids: Vec<u32> = (0..b * (prefill + steps)).map(|_| r.below(v) as u32).collect();
            let run = |capture: bool| -> Vec<Vec<f32>> {
                let cache = KvCache::new_on(&gpu_m.cfg, b, prefill + steps, d).unwrap();
                let mut dec = Decoder::with_capture(&gpu_m, cache, capture);
                let first: Vec<u32> = (0..b).flat_map(|bi| ids[bi * (prefill + steps)..][..prefill].to_vec()).collect();
                let mut out =
                    vec![dec.prefill(&Tensor::from_u32(first, &[b, prefill]).unwrap()).unwrap().to_vec_f32().unwrap()];
                for s in 0..steps {
                    let next: Vec<u32> = (0..b).map(|bi| ids[bi * (prefill + steps) + prefill + s]).collect();
                    out.push(dec.step(&Tensor::from_u32(next, &[b, 1]).unwrap()).unwrap().to_vec_f32().unwrap());
                }
                assert_eq!(dec.is_captured(), capture, "capture {capture}: steps were (not) replayed");
                out
            };
            let (plain, captured) = (run(false), run(true));
            for (s, (p, c)) in plain.iter().zip(&captured).enumerate() {
                assert!(p == c, "{precision:?} batch {b}: step {s} differs when captured");
            }
            println!("{precision:?} batch {b}: {} captured steps equal the uncaptured ones", steps - 1);
        }
    }
    cuda::set_matmul_precision(MatmulPrecision::F32);
}

/// A decode step's L2 prefetch hints reach their launches (`cuda::prefetch`): in mixed precision,
/// from the second step on (the first makes the bf16 weight copies the hints point at), each
/// layer's q/k/v launch is handed o's weights, o's launch the first 12 MiB of gate's and up's,
/// and the down launch the next layer's q/k/v — the bytes counted on this thread equal the sum.
/// (A prefetch changes no value; the hints are off by default since they measured slower, so the
/// captured-decode tests above run with them only under `SMELT_CUDA_PREFETCH=1`.)
#[test]
fn decode_steps_hand_their_matvecs_the_next_weights_to_prefetch() {
    use smelt_core::cuda::prefetch::handed_bytes;
    let Some(d) = gpu() else { return };
    // Off by default (measured slower); on for this thread whatever SMELT_CUDA_PREFETCH says.
    smelt_core::cuda::prefetch::force(Some(true));
    let (_, gpu_m) = models();
    cuda::set_matmul_precision(MatmulPrecision::Bf16);
    let c = &gpu_m.cfg;
    // Bytes of each bf16 weight copy.
    let (q, kv, o, ffn) = (
        2 * (c.n_heads * c.head_dim * c.dim) as u64,
        2 * (c.n_kv_heads * c.head_dim * c.dim) as u64,
        2 * (c.dim * c.n_heads * c.head_dim) as u64,
        2 * (c.ffn_hidden * c.dim) as u64,
    );
    let layers = c.n_layers as u64;
    let cap = smelt_core::ops::matmul::GATE_UP_PREFETCH_BYTES as u64;
    let want = layers * (o + 2 * ffn.min(cap)) + (layers - 1) * (q + 2 * kv);
    let cache = KvCache::new_on(c, 1, 16, d).unwrap();
    let mut dec = Decoder::with_capture(&gpu_m, cache, false);
    dec.prefill(&Tensor::from_u32(vec![1, 2, 3], &[1, 3]).unwrap()).unwrap();
    let mut got = Vec::new();
    for s in 0..3u32 {
        let before = handed_bytes();
        dec.step(&Tensor::from_u32(vec![4 + s], &[1, 1]).unwrap()).unwrap();
        got.push(handed_bytes() - before);
    }
    cuda::set_matmul_precision(MatmulPrecision::F32);
    smelt_core::cuda::prefetch::force(None);
    println!("prefetch bytes handed per decode step: {got:?} (want {want} from the second on)");
    assert_eq!(&got[1..], &[want, want], "hinted bytes per step");
}

/// A model with a LoRA adapter (all seven projections, B non-zero, no dropout: q/k/v and gate/up
/// stack their A matrices, `proj_group`) decodes the same captured as uncaptured, bit for bit,
/// in both precisions: the stacking and the selection products run inside a captured step, with
/// nothing uploaded there; and its uncaptured steps match the CPU's within the decode test's
/// tolerances.
#[test]
fn captured_decode_with_an_adapter_equals_uncaptured() {
    use smelt_model::{Adapter, LoraConfig};
    let Some(d) = gpu() else { return };
    let cfg = ModelConfig::llama(300, 64, 2, 4, 2, 160);
    let targets = LoraConfig::parse_targets("all-linear").unwrap();
    let mut r = Rng::new(12);
    let adapter = |r: &mut Rng| {
        let mut a = Adapter::init(&cfg, LoraConfig::new(8, 16.0, 0.0, &targets, false).unwrap(), 3);
        for b in a.params.iter_mut().skip(1).step_by(2) {
            *b = Tensor::from_f32((0..b.numel()).map(|_| 0.05 * r.normal() as f32).collect(), b.shape()).unwrap();
        }
        a
    };
    let (mut cpu, mut gpu_m) = (Model::init(cfg.clone(), 9).unwrap(), Model::init(cfg.clone(), 9).unwrap());
    cpu.attach(adapter(&mut Rng::new(12))).unwrap();
    gpu_m.attach(adapter(&mut Rng::new(12))).unwrap();
    gpu_m.to_device(d).unwrap();
    let (prefill, steps) = (5, 40);
    let ids: Vec<u32> = (0..prefill + steps).map(|_| r.below(300) as u32).collect();
    for (precision, tol) in [(MatmulPrecision::F32, 1e-10), (MatmulPrecision::Bf16, 1e-3)] {
        cuda::set_matmul_precision(precision);
        let run = |m: &Model, capture: bool| decode_logits(m, &ids, prefill, capture);
        let (plain, captured, want) = (run(&gpu_m, false), run(&gpu_m, true), run(&cpu, false));
        for (s, (p, c)) in plain.iter().zip(&captured).enumerate() {
            assert!(p == c, "{precision:?}: step {s} with an adapter differs when captured");
        }
        let worst = plain.iter().zip(&want).map(|(g, c)| nmse(g, c)).fold(0f64, f64::max);
        println!("{precision:?}: {steps} captured steps with an adapter equal the uncaptured ones; NMSE against the CPU {worst:.3e}");
        assert!(worst <= tol, "{precision:?}: NMSE {worst:e} against the CPU");
    }
    cuda::set_matmul_precision(MatmulPrecision::F32);
}

/// `m` with its q/k/v biases (zero from `Model::init`) given values, so that adding them is
/// checked; unchanged without biases.
fn with_biases(m: Model) -> Model {
    if !m.cfg.qkv_bias {
        return m;
    }
    let params: Vec<Tensor> = m
        .params
        .iter()
        .zip(m.trainable_names())
        .map(|(t, n)| match n.contains("bias") {
            true => {
                Tensor::from_f32((0..t.numel()).map(|i| ((i * 7919) % 13) as f32 * 0.01 - 0.06).collect(), t.shape())
                    .unwrap()
            }
            false => t.clone(),
        })
        .collect();
    m.with_params(params).unwrap()
}

/// Decodes `ids` (after `prefill`) on captured decoders (the position on the device, which the
/// persistent kernel needs; each one's first step uncaptured, the rest replayed) with the
/// persistent kernel off, then on; asserts each path really ran (the kernel's launch count:
/// the first step of each decoder and its capture, replays not counted) and that every step's
/// logits are equal bit for bit.
fn persistent_equals_launched(m: &Model, ids: &[u32], prefill: usize, name: &str) {
    use smelt_core::ops::decode_layers::{launches, set_enabled};
    let run = |persist: bool| {
        set_enabled(Some(persist));
        let out = decode_logits(m, ids, prefill, true);
        set_enabled(None);
        out
    };
    let n0 = launches();
    let launched = run(false);
    assert_eq!(launches(), n0, "{name}: the persistent kernel ran with SMELT_CUDA_PERSIST off");
    let persistent = run(true);
    assert!(launches() > n0, "{name}: the persistent kernel never ran (a check sent the step to the launched kernels)");
    for (s, (a, b)) in launched.iter().zip(&persistent).enumerate() {
        if a != b {
            let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            panic!("{name}: step {s} differs in the persistent kernel (max |Δ| {worst:e}, NMSE {:.3e})", nmse(b, a));
        }
    }
}

/// Every layer of a decode step in one persistent launch (`ops::decode_layers`,
/// `SMELT_CUDA_PERSIST=1`) computes what the layers' own launches compute, bit for bit, over
/// enough positions to cross the key splits (with a cache of more than 256
/// positions, where the last split of a head merges them), on shapes that take both forms of
/// the matvecs (a warp a row; row groups for rows of ≥ 4096 values), with q/k/v biases, GQA and
/// a sliding window.
#[test]
fn persistent_decode_steps_equal_the_launched_ones() {
    let Some(d) = gpu() else { return };
    cuda::set_matmul_precision(MatmulPrecision::Bf16);
    let small = ModelConfig::llama(300, 64, 2, 4, 2, 160);
    let mut wide = ModelConfig::llama(1000, 1024, 2, 16, 4, 4096);
    wide.qkv_bias = true;
    wide.sliding_window = Some(200);
    let mut r = Rng::new(11);
    for (name, cfg, steps) in [("small", small, 300usize), ("wide", wide, 280)] {
        let mut m = with_biases(Model::init(cfg.clone(), 4).unwrap());
        m.to_device(d).unwrap();
        let v = cfg.vocab_size as u64;
        let prefill = 5;
        let ids: Vec<u32> = (0..prefill + steps).map(|_| r.below(v) as u32).collect();
        persistent_equals_launched(&m, &ids, prefill, name);
        println!(
            "{name}: {steps} persistent decode steps (the first uncaptured, then replayed) equal the launched ones"
        );
    }
    cuda::set_matmul_precision(MatmulPrecision::F32);
}

/// The persistent decode kernel with block-quantised weights (`decode_layers_quant`: the integer
/// row sums of the launched one-row kernels) gives the launched step's logits bit for bit, over
/// caches of > 256 positions (the merge runs). The bases are quantised in memory as a GGUF
/// export would type each matrix (`qbase::quantize_base`): Q8_0; Q4_K at 256-wide rows (Q4_K
/// with the Q6_K matrices llama.cpp's mix keeps); Q4_K of a 288-wide model whose down rows are
/// 768 wide (smelt's Q5_0/Q8_0 fallback beside Q4_K/Q6_K down matrices: all four formats, as in
/// the 135M shape); and Q8_0 with q/k/v biases and 8192-wide down rows, whose rows take 64 lanes
/// (row groups past a warp, and the lane doubling for products that fill few blocks).
#[test]
fn persistent_decode_with_quantised_weights_equals_the_launched_steps() {
    use smelt_gguf::GgmlType;
    let Some(d) = gpu() else { return };
    cuda::set_matmul_precision(MatmulPrecision::Bf16);
    let mut r = Rng::new(17);
    let mut biased = ModelConfig::llama(320, 512, 2, 8, 2, 8192);
    biased.qkv_bias = true;
    for (cfg, ty) in [
        (ModelConfig::llama(320, 256, 2, 4, 2, 512), GgmlType::Q8_0),
        (ModelConfig::llama(320, 256, 2, 4, 2, 512), GgmlType::Q4_K),
        (ModelConfig::llama(320, 288, 2, 4, 2, 768), GgmlType::Q4_K),
        (biased, GgmlType::Q8_0),
    ] {
        let name = format!("{} d{} ffn{}", ty.name(), cfg.dim, cfg.ffn_hidden);
        let src = with_biases(Model::init(cfg.clone(), 3).unwrap());
        let mut m = smelt_convert::qbase::quantize_base(&src, ty).unwrap();
        let mut types: Vec<&str> = m.params.iter().filter_map(|p| p.as_quant()).map(|q| q.type_name()).collect();
        types.sort();
        types.dedup();
        m.to_device(d).unwrap();
        let (prefill, steps) = (5, 280);
        let ids: Vec<u32> = (0..prefill + steps).map(|_| r.below(320) as u32).collect();
        persistent_equals_launched(&m, &ids, prefill, &format!("{name} ({})", types.join(", ")));
        println!("{name} ({}): {steps} persistent decode steps equal the launched ones", types.join(", "));
    }
    cuda::set_matmul_precision(MatmulPrecision::F32);
}

#[test]
fn generation_and_perplexity_on_gpu_match_the_cpu() {
    let Some(_) = gpu() else { return };
    cuda::set_matmul_precision(MatmulPrecision::F32);
    let (cpu, gpu_m) = models();
    // Greedy decoding of a fresh model repeats its input (the tied head maps a token to
    // itself), so also sample, with each filter: the sampling step runs on the device, and with
    // one seed both devices draw the same tokens, since their probabilities differ by rounding.
    let s = |temperature, top_k, top_p, min_p, repetition_penalty, seed| SamplingConfig {
        temperature,
        top_k,
        top_p,
        min_p,
        repetition_penalty,
        seed,
    };
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
    let (a, b) = (
        generate(&big_cpu, &[5, 70_000, 151_000], &gen, |_| {}).unwrap(),
        generate(&big_gpu, &[5, 70_000, 151_000], &gen, |_| {}).unwrap(),
    );
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

// ---- GGUF models, weights quantised on the device -------------------------------------------

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn argmax(l: &[f32]) -> u32 {
    l.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as u32
}

/// The same model with every quantised matrix dequantised to plain f32 on the host: the same
/// weight values, but f32 activations (the CPU's quantised kernels quantise activations to
/// 8 bits; the GPU's do not), so it is what the GPU path must match to rounding.
fn dequantised(m: &Model) -> Model {
    m.dequantized().unwrap()
}

/// Host logits after each of `prompt` (prefill, the last position) and then `steps` fed one at
/// a time through the KV cache on the model's device (teacher forcing).
fn stepwise(m: &Model, prompt: &[u32], steps: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = KvCache::new_on(&m.cfg, 1, prompt.len() + steps.len() + 1, m.device()).unwrap();
    let mut out = vec![m
        .logits(&Tensor::from_u32(prompt.to_vec(), &[1, prompt.len()]).unwrap(), Some(&mut cache), Logits::Last)
        .unwrap()
        .to_vec_f32()
        .unwrap()];
    for &id in steps {
        out.push(
            m.logits(&Tensor::from_u32(vec![id], &[1, 1]).unwrap(), Some(&mut cache), Logits::Last)
                .unwrap()
                .to_vec_f32()
                .unwrap(),
        );
    }
    out
}

fn greedy(m: &Model, prompt: &[u32], n: usize, stop: &[u32]) -> Vec<u32> {
    let cfg = GenerateConfig { max_tokens: n, sampling: SamplingConfig::default(), stop_ids: stop.to_vec() };
    generate(m, prompt, &cfg, |_| {}).unwrap().ids
}

fn same_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The published SmolLM2 Q4_1 file: `SMELT_SMOLLM2_GGUF`, else the repository's inputs folder
/// (`SMELT_REPO`, set by the GPU suite, or this source tree).
fn smollm2_gguf() -> Option<PathBuf> {
    let p = std::env::var_os("SMELT_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| smelt_testing::inputs_dir().join("smollm2/DL/SmolLM2-135M-Instruct.Q4_1.gguf"));
    smelt_testing::require_input(&p, "set SMELT_SMOLLM2_GGUF to the SmolLM2-135M-Instruct Q4_1 GGUF")
}

#[test]
fn smollm2_q4_1_gguf_runs_quantised_on_gpu() {
    let Some(d) = gpu() else { return };
    let Some(path) = smollm2_gguf() else { return };
    let cpu = smelt_convert::load_model(&path).unwrap();
    let reference = dequantised(&cpu);
    let quant_bytes: usize = cpu.params.iter().filter_map(|p| p.as_quant()).map(|q| q.nbytes()).sum();
    let before = cuda::mem_stats().0;
    let mut gm = smelt_convert::load_model(&path).unwrap();
    gm.to_device(d).unwrap();
    let held = cuda::mem_stats().0 - before;
    let f32_bytes = cpu.cfg.n_params() * 4;
    println!(
        "weights on {d}: {:.1} MiB (quantised blocks in the file {:.1} MiB; as f32 {:.1} MiB)",
        held as f64 / 1048576.0,
        quant_bytes as f64 / 1048576.0,
        f32_bytes as f64 / 1048576.0
    );
    assert!(held < f32_bytes / 3, "the weights did not stay quantised on the device");

    let tok = smelt_tokenizer::Tokenizer::from_file(&path).unwrap();
    let tmpl = smelt_tokenizer::ChatTemplate::from_gguf(&path).unwrap();
    let chat = tok.encode_with(
        &tmpl.render(&[smelt_tokenizer::Message::new("user", "What is the capital of France?")], true).unwrap(),
        false,
    );
    let mut stop = cpu.cfg.eos_token_ids.clone();
    stop.extend(tok.eos_id());

    // Prefill logits at every prompt position (the dequantise + cuBLASLt path, n > 8 rows).
    let all = |m: &Model| {
        m.logits(&Tensor::from_u32(chat.clone(), &[1, chat.len()]).unwrap(), None, Logits::All)
            .unwrap()
            .to_vec_f32()
            .unwrap()
    };
    let want = all(&reference);
    let c8 = all(&cpu);
    println!("prompt of {} tokens, logits at every position:", chat.len());
    println!(
        "  CPU 8-bit activations vs f32 reference: nmse {:.3e}, max |Δ| {:.3}",
        nmse(&c8, &want),
        max_abs_diff(&c8, &want)
    );
    for (precision, tol, max_tol) in [(MatmulPrecision::F32, 1e-6, 0.01), (MatmulPrecision::Bf16, 1e-3, f32::INFINITY)]
    {
        cuda::set_matmul_precision(precision);
        let g = all(&gm);
        let (e, mx) = (nmse(&g, &want), max_abs_diff(&g, &want));
        println!("  GPU {precision:?} vs f32 reference: nmse {e:.3e} (tol {tol:.0e}), max |Δ| {mx:.3e} (tol {max_tol:.0e}); vs CPU 8-bit: nmse {:.3e}, max |Δ| {:.3}", nmse(&g, &c8), max_abs_diff(&g, &c8));
        assert!(e <= tol && mx <= max_tol, "{precision:?}: prefill logits NMSE {e:e}, max |Δ| {mx}");
    }

    // Greedy 32 tokens of a plain prompt, then the reference's tokens fed to each (teacher
    // forcing, the decode matvec path) so logits can be compared step by step.
    let prompt = tok.encode("The capital of France is a city that");
    let ref_ids = greedy(&reference, &prompt, 32, &[]);
    let ref_steps = stepwise(&reference, &prompt, &ref_ids[..ref_ids.len() - 1]);
    let cpu_ids = greedy(&cpu, &prompt, 32, &[]);
    println!("greedy 32 tokens: f32 reference {ref_ids:?}");
    println!("  CPU 8-bit: first {} of 32 identical to the reference", same_prefix(&cpu_ids, &ref_ids));
    // f32 products: rounding only, so every logit within 0.01 (smelt's f32 export agrees with
    // llama.cpp to 5e-5); bf16 prefill operands: bounded by NMSE only (an argmax may flip
    // where the reference's top two are closer than the bf16 error).
    for (precision, tol, max_tol) in [(MatmulPrecision::F32, 1e-6, 0.01), (MatmulPrecision::Bf16, 1e-3, f32::INFINITY)]
    {
        cuda::set_matmul_precision(precision);
        let ids = greedy(&gm, &prompt, 32, &[]);
        let steps = stepwise(&gm, &prompt, &ref_ids[..ref_ids.len() - 1]);
        let (mut worst, mut mx, mut agree) = (0f64, 0f32, 0);
        for (s, (g, r)) in steps.iter().zip(&ref_steps).enumerate() {
            worst = worst.max(nmse(g, r));
            mx = mx.max(max_abs_diff(g, r));
            agree += (argmax(g) == ref_ids[s]) as usize;
        }
        println!("  GPU {precision:?}: first {} of 32 identical to the reference, {} to the CPU 8-bit run; teacher-forced argmax {agree}/{}, worst step nmse {worst:.3e} (tol {tol:.0e}), max |Δ| {mx:.3e} (tol {max_tol:.0e})",
            same_prefix(&ids, &ref_ids), same_prefix(&ids, &cpu_ids), steps.len());
        assert!(worst <= tol && mx <= max_tol, "{precision:?}: decode logits NMSE {worst:e}, max |Δ| {mx}");
    }

    // The chat answer, as `smelt generate --device cuda` runs it (bf16 prefill, f32 matvec decode).
    cuda::set_matmul_precision(MatmulPrecision::Bf16);
    let answer = tok.decode(&greedy(&gm, &chat, 24, &stop));
    println!("France on {d}: {answer:?}");
    assert_eq!(answer.trim(), "The capital of France is Paris.");
}

#[test]
fn exported_quantised_ggufs_run_on_gpu_like_on_the_cpu() {
    use smelt_convert::export::{export, TokenizerSource};
    use smelt_gguf::GgmlType;
    let Some(d) = gpu() else { return };
    cuda::set_matmul_precision(MatmulPrecision::F32);
    // dim 256: K-quants fit its rows; the tied output matrix is Q6_K for the 4/5-bit types.
    let src = Model::init(ModelConfig::llama(320, 256, 2, 4, 2, 512), 3).unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gpu-gguf-export");
    std::fs::create_dir_all(&dir).unwrap();
    smelt_tokenizer::Tokenizer::byte_level().save(&dir.join("tokenizer.json")).unwrap();
    let (b, t, prefill) = (2, 20, 8);
    let mut r = Rng::new(11);
    let ids: Vec<u32> = (0..b * t).map(|_| r.below(320) as u32).collect();
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q4_K] {
        let out = dir.join(format!("tiny-{}.gguf", ty.name()));
        export(&src, ty, TokenizerSource::HfDir { dir: &dir, pre: Some("gpt-2") }, "tiny", None, &out).unwrap();
        let cpu = smelt_convert::load_model(&out).unwrap();
        let mut types: Vec<&str> = cpu.params.iter().filter_map(|p| p.as_quant()).map(|q| q.type_name()).collect();
        types.sort();
        types.dedup();
        let reference = dequantised(&cpu);
        let mut gm = smelt_convert::load_model(&out).unwrap();
        gm.to_device(d).unwrap();
        let x = Tensor::from_u32(ids.clone(), &[b, t]).unwrap();
        let want = reference.logits(&x, None, Logits::All).unwrap().to_vec_f32().unwrap();
        let c8 = cpu.logits(&x, None, Logits::All).unwrap().to_vec_f32().unwrap();
        // Full forward: 40 rows per matmul (dequantise + cuBLASLt).
        let full = gm.logits(&x, None, Logits::All).unwrap().to_vec_f32().unwrap();
        // KV-cache decode, batch 2: 2 rows per matmul (the matvec kernel).
        let mut cache = KvCache::new_on(&gm.cfg, b, t, d).unwrap();
        let take = |lo: usize, hi: usize| {
            Tensor::from_u32((0..b).flat_map(|bi| ids[bi * t + lo..bi * t + hi].to_vec()).collect(), &[b, hi - lo])
                .unwrap()
        };
        let v = gm.cfg.vocab_size;
        let mut worst = 0f64;
        let mut check = |pos: usize, got: Vec<f32>| {
            for bi in 0..b {
                worst = worst.max(nmse(&got[bi * v..(bi + 1) * v], &want[(bi * t + pos) * v..(bi * t + pos + 1) * v]));
            }
        };
        check(prefill - 1, gm.logits(&take(0, prefill), Some(&mut cache), Logits::Last).unwrap().to_vec_f32().unwrap());
        for pos in prefill..t {
            check(pos, gm.logits(&take(pos, pos + 1), Some(&mut cache), Logits::Last).unwrap().to_vec_f32().unwrap());
        }
        let e = nmse(&full, &want);
        println!("{} export ({}): GPU full forward nmse {e:.3e}, decode worst nmse {worst:.3e} (tol 1e-10) vs the f32 reference; CPU 8-bit nmse {:.3e}, GPU vs CPU max |Δ| {:.3e}",
            ty.name(), types.join(", "), nmse(&c8, &want), max_abs_diff(&full, &c8));
        assert!(e <= 1e-10 && worst <= 1e-10, "{}: NMSE {e:e} / {worst:e}", ty.name());
        std::fs::remove_file(&out).ok();
    }
}

// ---- The server's batched forward over the paged KV pool ---------------------------------------

/// Logits (each row (V) as f32) of `prompt`, then of each of `decode`, through the contiguous
/// cache on the device, this sequence alone (what `smelt generate --device cuda` computes).
fn contiguous(m: &Model, prompt: &[u32], decode: &[u32]) -> Vec<Vec<f32>> {
    let d = m.device();
    let mut cache = KvCache::new_on(&m.cfg, 1, prompt.len() + decode.len(), d).unwrap();
    let row = |t: Tensor| t.to_vec_f32().unwrap();
    let mut out = vec![row(m
        .logits(&Tensor::from_u32(prompt.to_vec(), &[1, prompt.len()]).unwrap(), Some(&mut cache), Logits::Last)
        .unwrap())];
    for &id in decode {
        out.push(row(m.logits(&Tensor::from_u32(vec![id], &[1, 1]).unwrap(), Some(&mut cache), Logits::Last).unwrap()));
    }
    out
}

/// `Model::logits_paged` on the GPU: three sequences of different lengths (one past the decode
/// attention's 256-key splits; the first step, 557 rows × 4 heads, takes the kernel's unsplit
/// path, the later ones its split path), their blocks scattered through the pool out of order, the second
/// sharing the first's two leading blocks (the prefix cache) and joining a step late with only
/// its uncached rest, so steps mix prompt chunks and decode rows. Every sequence's logits at
/// every step against the same sequence alone with the contiguous cache: f32 matmuls with an
/// f32 pool to ~1e-5, bf16 (mixed precision) with bf16, f16 and f32 pools at the bf16 decode
/// tolerance; an f32 model with a rounded (bf16) pool looser. Head dims 16 (the scalar kernels)
/// and 64 (the tensor-core prompt kernel as the reference).
#[test]
fn paged_batched_forward_on_gpu_equals_each_sequence_alone() {
    let Some(d) = gpu() else { return };
    for (dim, heads) in [(64usize, 4usize), (256, 4)] {
        let cfg = ModelConfig::llama(300, dim, 2, heads, 2, 160);
        let mut m = Model::init(cfg, 21).unwrap();
        m.to_device(d).unwrap();
        let v = m.cfg.vocab_size;
        let bs = 16;
        let mut r = Rng::new(17);
        let mut ids = |n: usize| -> Vec<u32> { (0..n).map(|_| r.below(v as u64) as u32).collect() };
        let a = ids(37);
        // b shares a's first 32 tokens (two whole blocks), then goes its own way.
        let b: Vec<u32> = a[..32].iter().copied().chain(ids(13)).collect();
        let c = ids(520);
        let decode = ids(8);
        // Block tables through a shuffled pool of 64 blocks; b's first two are a's.
        let mut free: Vec<u32> = (0..64).collect();
        for i in (1..free.len()).rev() {
            free.swap(i, r.below(i as u64 + 1) as usize);
        }
        let mut take = |n: usize| -> Vec<u32> { free.drain(..n).collect() };
        let ta = take((a.len() + decode.len()).div_ceil(bs));
        let tb: Vec<u32> = ta[..2].iter().copied().chain(take((b.len() + decode.len()).div_ceil(bs) - 2)).collect();
        let tc = take((c.len() + decode.len()).div_ceil(bs));
        for (precision, kind, tol) in [
            (MatmulPrecision::F32, KvType::F32, 1e-10),
            (MatmulPrecision::Bf16, KvType::BF16, 1e-3),
            (MatmulPrecision::Bf16, KvType::F16, 1e-3),
            (MatmulPrecision::Bf16, KvType::F32, 1e-3),
            (MatmulPrecision::F32, KvType::BF16, 1e-3),
        ] {
            cuda::set_matmul_precision(precision);
            let want = [contiguous(&m, &a, &decode), contiguous(&m, &b, &decode), contiguous(&m, &c, &decode)];
            let mut pool = KvPool::with_type(&m, 64 * bs, bs, kind).unwrap();
            let mut got: [Vec<Vec<f32>>; 3] = Default::default();
            // Step 0: a and c's prompts. Step 1: b's uncached rest (positions 32..45) beside a's
            // and c's first decode rows. Then decode rows for all three.
            for step in 0..=decode.len() + 1 {
                let mut steps = Vec::new();
                let mut who = Vec::new();
                for (s, (prompt, table)) in [(&a, &ta), (&b, &tb), (&c, &tc)].into_iter().enumerate() {
                    let start = usize::from(s == 1);
                    if step < start || step - start > decode.len() {
                        continue;
                    }
                    let k = step - start;
                    let (tokens, pos0): (&[u32], usize) = match (k, s) {
                        (0, 1) => (&prompt[32..], 32),
                        (0, _) => (&prompt[..], 0),
                        _ => (&decode[k - 1..k], prompt.len() + k - 1),
                    };
                    steps.push(SeqStep { tokens, pos0, table });
                    who.push(s);
                }
                let l = m.logits_paged(&steps, &mut pool).unwrap().to_vec_f32().unwrap();
                assert_eq!(l.len(), who.len() * v);
                for (i, &s) in who.iter().enumerate() {
                    got[s].push(l[i * v..(i + 1) * v].to_vec());
                }
            }
            let mut worst = 0f64;
            let mut worst_abs = 0f32;
            for s in 0..3 {
                assert_eq!(got[s].len(), want[s].len());
                for (g, w) in got[s].iter().zip(&want[s]) {
                    worst = worst.max(nmse(g, w));
                    worst_abs = worst_abs.max(max_abs_diff(g, w));
                }
            }
            let scale = want.iter().flatten().flatten().fold(0f32, |m, x| m.max(x.abs()));
            println!(
                "head dim {}, {precision:?} matmuls, {} pool: worst NMSE {worst:.3e} (tol {tol:.0e}), largest difference {worst_abs:.3e} (logits up to {scale:.3})",
                dim / heads,
                kind.name()
            );
            assert!(worst <= tol, "head dim {}, {precision:?}, {} pool: NMSE {worst:e}", dim / heads, kind.name());
            if precision == MatmulPrecision::F32 && kind == KvType::F32 {
                assert!(worst_abs <= 1e-5 * scale.max(1.0), "f32: largest difference {worst_abs:e}");
            }
        }
    }
    // q8_0 rows stay on the CPU: the pool says so instead of running.
    let mut m = Model::init(ModelConfig::llama(300, 64, 2, 4, 2, 160), 21).unwrap();
    m.to_device(d).unwrap();
    let e = KvPool::with_type(&m, 256, 16, KvType::Q8_0).err().expect("q8_0 on a GPU is refused");
    assert!(format!("{e:#}").contains("CPU-only"), "{e:#}");
    cuda::set_matmul_precision(MatmulPrecision::F32);
}

/// The server's decode steps replayed from captured CUDA graphs (`PagedDecoder`, a graph per
/// bucket of 1, 2, 4, 8 sequences) give bit for bit the logits of the same padded steps
/// launched kernel by kernel, and the unpadded batched forward (`logits_paged`) to rounding.
/// Seven sequences of different lengths (3 to 300 positions: one past the attention's 256-key
/// splits) are prefilled, then decode in steps whose membership and order change every step:
/// sequences join and leave between replays, so a bucket's graph replays over other rows, other
/// positions and other block tables each time; a late sequence is prefilled between replays
/// (a launched mixed step). f32 matmuls with an f32 pool, then mixed precision with a bf16 pool.
#[test]
fn paged_decode_steps_replayed_from_graphs_equal_the_launched_steps() {
    let Some(d) = gpu() else { return };
    let mut cfg = ModelConfig::llama(300, 128, 2, 4, 2, 192);
    cfg.max_pos = 1024;
    let mut m = Model::init(cfg, 23).unwrap();
    m.to_device(d).unwrap();
    let v = m.cfg.vocab_size;
    let bs = 16;
    let mut r = Rng::new(29);
    let mut ids = |n: usize| -> Vec<u32> { (0..n).map(|_| r.below(v as u64) as u32).collect() };
    let lens = [5usize, 17, 33, 100, 300, 3, 40];
    let prompts: Vec<Vec<u32>> = lens.iter().map(|&n| ids(n)).collect();
    let decode: Vec<Vec<u32>> = lens.iter().map(|_| ids(40)).collect();
    // Tables through a shuffled pool of 96 blocks (room for each prompt and its 40 tokens).
    let mut free: Vec<u32> = (0..96).collect();
    for i in (1..free.len()).rev() {
        free.swap(i, r.below(i as u64 + 1) as usize);
    }
    let tables: Vec<Vec<u32>> = lens.iter().map(|&n| free.drain(..(n + 40).div_ceil(bs)).collect()).collect();
    // Which sequences decode at each step, in that order (the late one, 6, joins at step 10).
    let counts = [1usize, 1, 2, 2, 3, 4, 4, 5, 8, 7, 7, 6, 2, 1, 1, 3, 8, 4, 2, 2];
    let schedule: Vec<Vec<usize>> = counts
        .iter()
        .enumerate()
        .map(|(k, &c)| {
            let pool: Vec<usize> = (0..7).filter(|&s| s != 6 || k >= 10).collect();
            let c = c.min(pool.len());
            // A rotation of the sequences, reversed every other step: rows change places.
            let mut who: Vec<usize> = (0..c).map(|j| pool[(j + k * 5) % pool.len()]).collect();
            if k % 2 == 1 {
                who.reverse();
            }
            who
        })
        .collect();
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum How {
        Launched,
        Replayed,
        Unpadded,
    }
    for (precision, kind, tol) in
        [(MatmulPrecision::F32, KvType::F32, 1e-10), (MatmulPrecision::Bf16, KvType::BF16, 1e-3)]
    {
        cuda::set_matmul_precision(precision);
        // Per step, per decoding sequence: (sequence, position, logits row); the buckets
        // captured; the steps replayed.
        type Rows = Vec<Vec<(usize, usize, Vec<f32>)>>;
        let run = |how: How| -> (Rows, Vec<usize>, u64) {
            let mut pool = KvPool::with_type(&m, 96 * bs, bs, kind).unwrap();
            assert_eq!(pool.scratch_block(), Some(96), "a GPU pool has its scratch block past the others");
            let mut dec = match how {
                How::Unpadded => None,
                h => Some(PagedDecoder::with_capture(&m, &pool, 8, h == How::Replayed).unwrap()),
            };
            if let Some(dec) = &dec {
                assert_eq!(dec.buckets(), &[1, 2, 4, 8]);
            }
            let prefill = |pool: &mut KvPool, who: &[usize]| {
                let steps: Vec<SeqStep> =
                    who.iter().map(|&s| SeqStep { tokens: &prompts[s], pos0: 0, table: &tables[s] }).collect();
                m.logits_paged(&steps, pool).unwrap();
            };
            prefill(&mut pool, &[0, 1, 2, 3, 4, 5]);
            let mut done = [0usize; 7];
            let mut out = Vec::new();
            for (k, who) in schedule.iter().enumerate() {
                if k == 10 {
                    prefill(&mut pool, &[6]);
                }
                let steps: Vec<SeqStep> = who
                    .iter()
                    .map(|&s| SeqStep {
                        tokens: &decode[s][done[s]..done[s] + 1],
                        pos0: lens[s] + done[s],
                        table: &tables[s],
                    })
                    .collect();
                let logits = match dec.as_mut() {
                    Some(dec) => dec.step(&steps, &mut pool).unwrap(),
                    None => m.logits_paged(&steps, &mut pool).unwrap(),
                };
                let l = logits.to_vec_f32().unwrap();
                let bucket = l.len() / v;
                assert!(bucket >= who.len(), "step {k}: {bucket} rows of logits for {} sequences", who.len());
                out.push(
                    who.iter()
                        .enumerate()
                        .map(|(i, &s)| (s, lens[s] + done[s], l[i * v..(i + 1) * v].to_vec()))
                        .collect(),
                );
                for &s in who {
                    done[s] += 1;
                }
            }
            let (captured, replayed) = dec.as_ref().map_or((Vec::new(), 0), |d| (d.captured(), d.replayed()));
            (out, captured, replayed)
        };
        let (launched, none, _) = run(How::Launched);
        let (replayed, captured, replays) = run(How::Replayed);
        let (unpadded, _, _) = run(How::Unpadded);
        assert!(none.is_empty(), "with capture off nothing is captured: {none:?}");
        println!(
            "{precision:?} matmuls, {} pool: buckets captured {captured:?}, {replays} of {} steps replayed",
            kind.name(),
            schedule.len()
        );
        assert_eq!(captured, vec![1, 2, 4, 8], "every bucket captured once used");
        assert!(replays >= 12, "only {replays} steps were replayed");
        let (mut worst, mut worst_abs) = (0f64, 0f32);
        for (k, ((a, b), c)) in launched.iter().zip(&replayed).zip(&unpadded).enumerate() {
            for ((sa, pa, la), ((_, _, lb), (_, _, lc))) in a.iter().zip(b.iter().zip(c)) {
                if la != lb {
                    let (j, x, y) = la
                        .iter()
                        .zip(lb)
                        .enumerate()
                        .find(|(_, (x, y))| x.to_bits() != y.to_bits())
                        .map(|(j, (x, y))| (j, *x, *y))
                        .unwrap();
                    panic!(
                        "{precision:?}, {} pool, step {k} ({} sequences, order {:?}): sequence {sa} at position {pa}: \
                         the replayed logits differ from the launched ones first at id {j} ({y:e} against {x:e}; \
                         largest difference {:e})",
                        kind.name(),
                        a.len(),
                        schedule[k],
                        max_abs_diff(la, lb)
                    );
                }
                worst = worst.max(nmse(lb, lc));
                worst_abs = worst_abs.max(max_abs_diff(lb, lc));
            }
        }
        println!("  replayed = launched bit for bit; against the unpadded forward: NMSE {worst:.3e} (tol {tol:.0e}), largest difference {worst_abs:.3e}");
        assert!(
            worst <= tol,
            "{precision:?}, {} pool: replayed steps against logits_paged: NMSE {worst:e}",
            kind.name()
        );
    }
    cuda::set_matmul_precision(MatmulPrecision::F32);
}

/// A row's logits do not depend on the key class its step was captured for (`PagedDecoder`
/// keeps a graph per bucket and class: 256 keys, ×4, … the context): sequence A (20 positions)
/// decoding beside a short sequence (class 256: one attention split, no combine) and beside a
/// 300-position one (the pool's 368 keys: two splits and the combine) gives the same logits bit for
/// bit, launched and replayed, in f32 and mixed precision. This is what makes a served
/// request's output independent of the other requests' lengths.
#[test]
fn paged_decode_rows_do_not_depend_on_the_key_class_of_their_step() {
    let Some(d) = gpu() else { return };
    let mut cfg = ModelConfig::llama(300, 128, 2, 4, 2, 192);
    cfg.max_pos = 1024;
    let mut m = Model::init(cfg, 31).unwrap();
    m.to_device(d).unwrap();
    let v = m.cfg.vocab_size;
    let bs = 16;
    let mut r = Rng::new(37);
    let mut ids = |n: usize| -> Vec<u32> { (0..n).map(|_| r.below(v as u64) as u32).collect() };
    let lens = [20usize, 30, 300];
    let prompts: Vec<Vec<u32>> = lens.iter().map(|&n| ids(n)).collect();
    let next: Vec<u32> = ids(3);
    let mut start = 0u32;
    let tables: Vec<Vec<u32>> = lens
        .iter()
        .map(|&n| {
            let k = (n + 1).div_ceil(bs) as u32;
            start += k;
            (start - k..start).collect()
        })
        .collect();
    for (precision, kind) in [(MatmulPrecision::F32, KvType::F32), (MatmulPrecision::Bf16, KvType::BF16)] {
        cuda::set_matmul_precision(precision);
        let mut pool = KvPool::with_type(&m, start as usize * bs, bs, kind).unwrap();
        let all: Vec<SeqStep> = (0..3).map(|s| SeqStep { tokens: &prompts[s], pos0: 0, table: &tables[s] }).collect();
        m.logits_paged(&all, &mut pool).unwrap();
        let mut dec = PagedDecoder::with_capture(&m, &pool, 2, true).unwrap();
        // Classes of 256 keys, then the pool's whole size (23 blocks: 368 keys, two splits).
        assert_eq!(dec.key_classes(), &[256, start as usize * bs]);
        // Row 0 is A at position 20 every time; row 1 is the short or the long sequence.
        let step = |dec: &mut PagedDecoder, pool: &mut KvPool, other: usize| -> Vec<f32> {
            let steps = [
                SeqStep { tokens: &next[0..1], pos0: lens[0], table: &tables[0] },
                SeqStep { tokens: &next[other..other + 1], pos0: lens[other], table: &tables[other] },
            ];
            dec.step(&steps, pool).unwrap().to_vec_f32().unwrap()[..v].to_vec()
        };
        // Each step twice: its first run is launched (then captured), the second replayed.
        let short: Vec<Vec<f32>> = (0..2).map(|_| step(&mut dec, &mut pool, 1)).collect();
        let long: Vec<Vec<f32>> = (0..2).map(|_| step(&mut dec, &mut pool, 2)).collect();
        assert!(dec.replayed() >= 2, "the second run of each step replays its graph");
        for (what, x) in [("short, replayed", &short[1]), ("long, launched", &long[0]), ("long, replayed", &long[1])] {
            let same = x.iter().zip(&short[0]).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{precision:?}: A's logits beside the {what} step differ from the short launched step (largest difference {:e})",
                max_abs_diff(x, &short[0])
            );
        }
        println!(
            "{precision:?}, {} pool: A's logits equal bit for bit in the 256-key and the whole-pool classes",
            kind.name()
        );
    }
    cuda::set_matmul_precision(MatmulPrecision::F32);
}
