//! Parity with llama.cpp on a real quantised model: SmolLM2-135M-Instruct Q4_1 (fetched by
//! scripts/fetch_smollm2.sh into .cache/inputs/smollm2/DL/). The golden
//! (tests/data/smollm2_q4_1_llama_cpp.json, from scripts/gguf_llama_golden.py) holds, per
//! prompt, llama.cpp's prompt tokens, 64 greedy tokens and the top-20 logits at every step.
//!
//! Checked: our tokenisation of each prompt equals llama.cpp's; then, feeding llama.cpp's
//! tokens (teacher forcing), at every step our logits for llama.cpp's top-20 are within a bound
//! and our argmax is llama.cpp's except where llama.cpp's own top-2 margin is below that bound.
//! Free-running greedy agreement (identical prefix length) is printed per prompt.
//!
//! Why not bit-identical: with 8-bit activations this model is chaotic at the 0.3-logit level
//! (changing the activation scale by one part in 10⁷ moves logits by 0.35), and llama.cpp's own
//! f16-vs-f32 KV cache switch moves them by 0.9, so only identical float summation order would
//! reproduce every near-tie. docs/GGUF.md has the figures.

use smelt_core::Tensor;
use smelt_model::{KvCache, Logits, Model};
use std::path::PathBuf;

fn root() -> PathBuf { PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..") }

fn argmax(l: &[f32]) -> u32 { l.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as u32 }

fn ids(v: &serde_json::Value) -> Vec<u32> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() }

/// Greedy tokens, free running.
fn greedy(model: &Model, prompt: &[u32], n: usize, eos: u32) -> Vec<u32> {
    let mut cache = KvCache::new(&model.cfg, 1, prompt.len() + n + 1);
    let mut l = model.logits(&Tensor::from_u32(prompt.to_vec(), &[1, prompt.len()]).unwrap(), Some(&mut cache), Logits::Last).unwrap();
    let mut out = vec![];
    while out.len() < n {
        let next = argmax(l.as_f32().unwrap());
        out.push(next);
        if next == eos || out.len() == n { break; }
        l = model.logits(&Tensor::from_u32(vec![next], &[1, 1]).unwrap(), Some(&mut cache), Logits::Last).unwrap();
    }
    out
}

#[test]
fn smollm2_q4_1_matches_llama_cpp() {
    let gguf = root().join(".cache/inputs/smollm2/DL/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.exists() {
        eprintln!("SKIP: {} absent (run scripts/fetch_smollm2.sh)", gguf.display());
        return;
    }
    let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        root().join("crates/infer/tests/data/smollm2_q4_1_llama_cpp.json")).unwrap()).unwrap();
    let model = smelt_gguf::load_model(&gguf).unwrap();
    let tok = smelt_tokenizer::Tokenizer::from_file(&gguf).unwrap();
    const BOUND: f32 = 1.5;
    let (mut worst, mut identical_prompts, mut steps, mut agree) = (0f32, 0, 0, 0);
    for case in golden["cases"].as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        assert_eq!(tok.encode(case["prompt"].as_str().unwrap()), prompt, "tokenisation differs from llama.cpp");
        let want = ids(&case["ids"]);
        // Teacher forcing on llama.cpp's tokens.
        let mut cache = KvCache::new(&model.cfg, 1, prompt.len() + want.len() + 1);
        let mut logits = model.logits(&Tensor::from_u32(prompt.clone(), &[1, prompt.len()]).unwrap(), Some(&mut cache), Logits::Last).unwrap();
        let mut max_diff = 0f32;
        for (step, top) in case["top"].as_array().unwrap().iter().enumerate() {
            let l = logits.as_f32().unwrap();
            let top_ids = ids(&top["ids"]);
            let top_v: Vec<f32> = top["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            for (id, v) in top_ids.iter().zip(&top_v) { max_diff = max_diff.max((l[*id as usize] - v).abs()); }
            steps += 1;
            if argmax(l) == want[step] {
                agree += 1;
            } else {
                let ours = top_ids.iter().position(|&i| i == argmax(l)).map(|p| top_v[p]);
                let margin = ours.map_or(f32::INFINITY, |o| top_v[0] - o);
                assert!(margin < BOUND, "step {step}: we pick {} where llama.cpp's margin for {} is {margin}", argmax(l), want[step]);
            }
            if step + 1 < want.len() {
                logits = model.logits(&Tensor::from_u32(vec![want[step]], &[1, 1]).unwrap(), Some(&mut cache), Logits::Last).unwrap();
            }
        }
        let free = greedy(&model, &prompt, want.len(), *want.last().unwrap());
        let same = free.iter().zip(&want).take_while(|(a, b)| a == b).count();
        if same == want.len() { identical_prompts += 1; }
        println!("{:?}: {} prompt tokens; free-running greedy: first {same}/{} identical; max |Δlogit| (llama.cpp's top-20, teacher forced) {max_diff:.3}",
            case["prompt"].as_str().unwrap().chars().take(30).collect::<String>(), prompt.len(), want.len());
        worst = worst.max(max_diff);
    }
    println!("prompts fully identical: {identical_prompts}/{}; teacher-forced argmax agreement {agree}/{steps}; max |Δlogit| {worst:.3}",
        golden["cases"].as_array().unwrap().len());
    assert!(worst < BOUND, "max logit difference {worst}");
}
