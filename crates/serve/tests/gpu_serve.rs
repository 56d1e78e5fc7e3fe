//! The server on CUDA (built only with `--features cuda`; skips without a GPU, fails instead
//! under SMELT_REQUIRE_GPU=1): continuous batching over the paged KV pool on the device, in
//! process over real HTTP. Greedy answers of concurrent clients (batched, one sharing another's
//! prompt prefix) equal `smelt_infer::generate` on the same device alone (its contiguous cache,
//! captured decode steps) under f32 matmuls with an f32 pool, where the two differ by f32
//! rounding only. Under the default mixed precision with a bf16 pool (what `smelt serve
//! --device cuda` runs) the two round differently at bf16's precision (the batch's matmuls over
//! more rows, the paged attention kernel for prompt rows), so a near tie may go either way and
//! a third of the answers must be equal (a wrong block table or pool write breaks all of them
//! at once); the count is printed.
//! With prompts computed in chunks of 16 (`--prefill-chunk`) beside decode rows, and decode
//! steps replayed from captured CUDA graphs (and, for comparison, launched: SMELT_CUDA_GRAPH=0),
//! greedy answers under f32 matmuls equal `generate`'s on the device too.
//! The tests set the process-wide matmul precision and SMELT_CUDA_GRAPH: run them with
//! `--test-threads=1`.
#![cfg(feature = "cuda")]

use serde_json::{json, Value};
use smelt_core::cuda::{self, MatmulPrecision};
use smelt_core::{Device, Tensor};
use smelt_infer::{generate, GenerateConfig, SamplingConfig};
use smelt_model::{KvType, Model, ModelConfig};
use smelt_serve::{Loaded, Options};
use smelt_testing::gpu;
use smelt_testing::http::request;
use smelt_tokenizer::{ChatTemplate, Tokenizer};
use std::net::SocketAddr;

/// A small random model with its matrices scaled up, so that its greedy choices are decided by
/// margins well above rounding (a fresh init's logits are nearly flat).
fn model(device: Device) -> Model {
    let mut cfg = ModelConfig::llama(257, 128, 2, 2, 1, 192);
    cfg.max_pos = 512;
    let mut m = Model::init(cfg, 11).unwrap();
    for p in m.params.iter_mut() {
        if p.shape().len() == 2 {
            let v: Vec<f32> = p.as_f32().unwrap().iter().map(|x| x * 6.0).collect();
            *p = Tensor::from_f32(v, p.shape()).unwrap();
        }
    }
    m.to_device(device).unwrap();
    m
}

fn start(device: Device, kv_type: KvType) -> SocketAddr {
    start_with(device, kv_type, smelt_serve::engine::DEFAULT_PREFILL_CHUNK)
}

fn start_with(device: Device, kv_type: KvType, prefill_chunk: usize) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = Options {
        api_key: None,
        ctx_size: Some(2048),
        model_id: "tiny".into(),
        model_path: "tiny".into(),
        body_limit: 1 << 16,
        max_queue: 64,
        prefill_chunk,
        parallel: 8,
        kv_type,
    };
    std::thread::spawn(move || {
        smelt_serve::run(listener, opts, move || {
            Ok(Loaded {
                model: model(device),
                tokenizer: Tokenizer::byte_level(),
                template: Ok(ChatTemplate::new("{% for m in messages %}{{ m.content }}{% endfor %}", "", "")),
                stop_ids: vec![256],
            })
        })
        .unwrap()
    });
    let t0 = std::time::Instant::now();
    while request(addr, "GET", "/health", &[], b"").status != 200 {
        assert!(t0.elapsed().as_secs() < 120, "never ready");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    addr
}

fn complete(addr: SocketAddr, prompt: &str, max_tokens: usize) -> Value {
    complete_with(addr, json!({"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}))
}

fn complete_with(addr: SocketAddr, body: Value) -> Value {
    let r = request(addr, "POST", "/v1/completions", &[], body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str(&r.body).unwrap()
}

fn metric(addr: SocketAddr, name: &str) -> u64 {
    let r = request(addr, "GET", "/metrics", &[], b"");
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .unwrap_or_else(|| panic!("no {name} in /metrics")) as u64
}

#[test]
fn gpu_server_batches_and_greedy_output_equals_generate_on_the_device() {
    let Some(d) = gpu() else { return };
    let tok = Tokenizer::byte_level();
    let system = "You are a helpful assistant. Answer in one short sentence, please. ";
    let prompts: Vec<String> = (0..8)
        .map(|i| match i {
            // Two share a 68-byte prefix with a third (four whole blocks from the prefix cache).
            0 | 5 | 6 => format!("{system}Question {i}: what is {}?", ["rust", "a GPU", "a page"][i % 3]),
            _ => format!("prompt {i} {}", "abcdefgh".repeat(i + 1)),
        })
        .collect();
    let max_tokens = 40;
    for (precision, kv_type) in [(MatmulPrecision::F32, KvType::F32), (MatmulPrecision::Bf16, KvType::BF16)] {
        cuda::set_matmul_precision(precision);
        let m = model(d);
        let gen = GenerateConfig { max_tokens, sampling: SamplingConfig::default(), stop_ids: vec![256] };
        let want: Vec<Vec<u32>> =
            prompts.iter().map(|p| generate(&m, &tok.encode(p), &gen, |_| {}).unwrap().ids).collect();
        let addr = start(d, kv_type);
        // The shared prefix into the cache first, then all eight at once.
        let first = complete(addr, &prompts[0], max_tokens);
        // Beside them a sampled request: the greedy rows of a step are then picked apart from it
        // (a gather of their rows), and it samples on the device with its own seed.
        let sampled_body =
            json!({"model": "tiny", "prompt": prompts[2], "max_tokens": max_tokens, "temperature": 0.8, "seed": 5});
        let (answers, sampled): (Vec<Value>, Value) = std::thread::scope(|s| {
            let hs: Vec<_> = prompts.iter().map(|p| s.spawn(move || complete(addr, p, max_tokens))).collect();
            let sampled = s.spawn(|| complete_with(addr, sampled_body));
            (hs.into_iter().map(|h| h.join().unwrap()).collect(), sampled.join().unwrap())
        });
        let sampled_want = {
            let sampling = SamplingConfig { temperature: 0.8, seed: 5, ..Default::default() };
            let g = GenerateConfig { max_tokens, sampling, stop_ids: vec![256] };
            let ids = generate(&m, &tok.encode(&prompts[2]), &g, |_| {}).unwrap().ids;
            let mut dec = smelt_tokenizer::StreamDecoder::new(&tok);
            let text: String = ids.iter().map(|&id| dec.push(id)).collect();
            text + &dec.finish()
        };
        let sampled_same = sampled["choices"][0]["text"].as_str() == Some(sampled_want.as_str());
        println!("  the sampled request (seed 5) equals generate's: {sampled_same}");
        let batch = metric(addr, "smelt_batch_size_max");
        let cached: Vec<u64> =
            answers.iter().map(|a| a["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap()).collect();
        println!(
            "{precision:?} matmuls, {} pool: largest batch {batch}, cached prompt tokens {cached:?}",
            kv_type.name()
        );
        let mut equal = 0;
        for (i, (a, w)) in answers.iter().chain([&first]).zip(want.iter().chain([&want[0]])).enumerate() {
            let text = a["choices"][0]["text"].as_str().unwrap();
            let mut dec = smelt_tokenizer::StreamDecoder::new(&tok);
            let mut want_text: String = w.iter().map(|&id| dec.push(id)).collect();
            want_text += &dec.finish();
            let same = text == want_text;
            equal += usize::from(same);
            if !same {
                println!("  answer {i} differs:\n    server   {text:?}\n    generate {want_text:?}");
            }
            if same {
                assert_eq!(a["usage"]["completion_tokens"].as_u64().unwrap() as usize, w.len(), "answer {i}");
            }
        }
        println!("  {equal}/9 answers equal generate's");
        assert!(batch >= 4, "the eight clients were never batched (largest batch {batch})");
        assert!(cached[0] >= 64 && cached[5] >= 64 && cached[6] >= 64, "the shared prefix was not reused: {cached:?}");
        let need = if precision == MatmulPrecision::F32 { 9 } else { 3 };
        if precision == MatmulPrecision::F32 {
            assert!(
                sampled_same,
                "the seeded request: {:?} against generate's {sampled_want:?}",
                sampled["choices"][0]["text"]
            );
        }
        assert!(
            equal >= need,
            "{precision:?}: {equal}/9 greedy answers through the server equal generate's on the device (need {need})"
        );
        // Log-probabilities read the (bf16 under mixed precision) row on the host.
        let body = json!({"model": "tiny", "prompt": prompts[1], "max_tokens": 4, "temperature": 0, "logprobs": 2});
        let r = request(addr, "POST", "/v1/completions", &[], body.to_string().as_bytes());
        assert_eq!(r.status, 200, "{r:?}");
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["choices"][0]["logprobs"]["token_logprobs"].as_array().map(Vec::len), Some(4), "{v}");
        // Every block back once the engine has retired the last request (it answers first).
        let t0 = std::time::Instant::now();
        while metric(addr, "smelt_kv_blocks_used") != 0 {
            assert!(t0.elapsed().as_secs() < 10, "blocks still used after every request ended");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    cuda::set_matmul_precision(MatmulPrecision::F32);
}

/// Chunked prefill and replayed decode steps on the device: six greedy requests at once, with
/// prompts of 9 to 200 bytes computed at most 16 tokens a step beside the others' decode rows,
/// whose all-decode steps replay captured graphs (buckets of 1, 2, 4, 8). Under f32 matmuls and
/// an f32 pool every answer equals `generate` on the device alone; then the same with capture
/// off (SMELT_CUDA_GRAPH=0: every step launched), which must give the same answers.
#[test]
fn gpu_server_chunked_prefill_and_replayed_decode_steps_equal_generate() {
    let Some(d) = gpu() else { return };
    cuda::set_matmul_precision(MatmulPrecision::F32);
    let tok = Tokenizer::byte_level();
    let prompts: Vec<String> = [9usize, 30, 64, 101, 150, 200]
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| char::from(b'a' + ((i * 5 + j * 7) % 26) as u8)).collect())
        .collect();
    let max_tokens = 40;
    let m = model(d);
    let gen = GenerateConfig { max_tokens, sampling: SamplingConfig::default(), stop_ids: vec![256] };
    let want: Vec<String> = prompts
        .iter()
        .map(|p| {
            let ids = generate(&m, &tok.encode(p), &gen, |_| {}).unwrap().ids;
            let mut dec = smelt_tokenizer::StreamDecoder::new(&tok);
            let text: String = ids.iter().map(|&id| dec.push(id)).collect();
            text + &dec.finish()
        })
        .collect();
    drop(m);
    let mut answers_by_mode = Vec::new();
    for graphs in [true, false] {
        std::env::set_var("SMELT_CUDA_GRAPH", if graphs { "1" } else { "0" });
        let addr = start_with(d, KvType::F32, 16);
        let answers: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = prompts
                .iter()
                .map(|p| {
                    s.spawn(move || complete(addr, p, max_tokens)["choices"][0]["text"].as_str().unwrap().to_string())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let (replayed, chunks, steps, batch) = (
            metric(addr, "smelt_cuda_graph_steps_total"),
            metric(addr, "smelt_prefill_chunks_total"),
            metric(addr, "smelt_engine_steps_total"),
            metric(addr, "smelt_batch_size_max"),
        );
        println!("graphs {graphs}: {steps} steps, {replayed} replayed, {chunks} prompt chunks, largest batch {batch}");
        let mut equal = 0;
        for (i, (a, w)) in answers.iter().zip(&want).enumerate() {
            if a == w {
                equal += 1;
            } else {
                println!(
                    "  graphs {graphs}: answer {i} ({} prompt bytes) differs:\n    server   {a:?}\n    generate {w:?}",
                    prompts[i].len()
                );
            }
        }
        assert!(chunks >= 200 / 16, "graphs {graphs}: the long prompts were not chunked ({chunks} chunks)");
        if graphs {
            assert!(replayed > 0, "no decode step was replayed from a captured graph ({steps} steps)");
        } else {
            assert_eq!(replayed, 0, "SMELT_CUDA_GRAPH=0 still replayed steps");
        }
        assert_eq!(
            equal,
            prompts.len(),
            "graphs {graphs}: {equal}/{} answers equal generate's on the device",
            prompts.len()
        );
        answers_by_mode.push(answers);
    }
    std::env::remove_var("SMELT_CUDA_GRAPH");
    assert_eq!(answers_by_mode[0], answers_by_mode[1], "replayed and launched serving differ");
}
