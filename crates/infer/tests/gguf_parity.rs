//! Parity with llama.cpp (llama-cpp-python 0.3.36) on a real model, SmolLM2-135M-Instruct
//! (fetched by scripts/fetch_smollm2.sh): the published Q4_1 GGUF as smelt runs it, and the
//! GGUF files smelt exports from the Hugging Face checkpoint (f32, q8_0, q4_k) as smelt and
//! llama.cpp run them. Goldens (tests/data/*.json, from scripts/gguf_llama_golden.py) hold, per
//! prompt, llama.cpp's prompt tokens, 64 greedy tokens and its top logits at every step.
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


struct Summary { identical_prompts: usize, prompts: usize, agree: usize, steps: usize, max_diff: f32 }

/// Compares `model` with a llama.cpp golden; mismatching argmaxes are allowed only where
/// llama.cpp's own margin is below `bound`, and every logit difference must be below it.
fn check(model: &Model, tok: &smelt_tokenizer::Tokenizer, golden: &str, bound: f32) -> Summary {
    let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root().join("crates/infer/tests/data").join(golden)).unwrap()).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    let mut s = Summary { identical_prompts: 0, prompts: cases.len(), agree: 0, steps: 0, max_diff: 0.0 };
    for case in cases {
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
            s.steps += 1;
            if argmax(l) == want[step] {
                s.agree += 1;
            } else {
                let ours = top_ids.iter().position(|&i| i == argmax(l)).map(|p| top_v[p]);
                let margin = ours.map_or(f32::INFINITY, |o| top_v[0] - o);
                assert!(margin < bound, "step {step}: we pick {} where llama.cpp's margin for {} is {margin}", argmax(l), want[step]);
            }
            if step + 1 < want.len() {
                logits = model.logits(&Tensor::from_u32(vec![want[step]], &[1, 1]).unwrap(), Some(&mut cache), Logits::Last).unwrap();
            }
        }
        let free = greedy(model, &prompt, want.len(), tok.eos_id().unwrap_or(u32::MAX));
        let same = free.iter().zip(&want).take_while(|(a, b)| a == b).count();
        if same == want.len() { s.identical_prompts += 1; }
        println!("  {:?}: {} prompt tokens; free-running greedy: first {same}/{} identical; max |Δlogit| (teacher forced) {max_diff:.2e}",
            case["prompt"].as_str().unwrap().chars().take(30).collect::<String>(), prompt.len(), want.len());
        s.max_diff = s.max_diff.max(max_diff);
    }
    println!("{golden}: prompts fully identical {}/{}; teacher-forced argmax agreement {}/{}; max |Δlogit| {:.2e}",
        s.identical_prompts, s.prompts, s.agree, s.steps, s.max_diff, golden = golden["model"]);
    assert!(s.max_diff < bound, "max logit difference {}", s.max_diff);
    s
}

/// With 8-bit activations (see above) the logits of the same file differ by up to about this
/// (observed: 1.1 for Q4_1 and Q8_0, 1.7 for Q4_K, whose Q8_K activations share one scale per 256).
const QUANT_BOUND: f32 = 2.0;

#[test]
fn smollm2_q4_1_matches_llama_cpp() {
    let gguf = root().join(".cache/inputs/smollm2/DL/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.exists() {
        eprintln!("SKIP: {} absent (run scripts/fetch_smollm2.sh)", gguf.display());
        return;
    }
    let model = smelt_gguf::load_model(&gguf).unwrap();
    let tok = smelt_tokenizer::Tokenizer::from_file(&gguf).unwrap();
    check(&model, &tok, "smollm2_q4_1_llama_cpp.json", QUANT_BOUND);
}

#[test]
fn exported_ggufs_match_the_checkpoint_and_llama_cpp() {
    use smelt_gguf::export::{export, TokenizerSource};
    use smelt_gguf::quant::GgmlType;
    let hf = root().join(".cache/inputs/smollm2/hf");
    if !hf.join("model.safetensors").exists() {
        eprintln!("SKIP: {} absent (run scripts/fetch_smollm2.sh)", hf.display());
        return;
    }
    let src = Model::load(&hf).unwrap();
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let prompt = Tensor::from_u32(vec![1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198], &[1, 12]).unwrap();
    let want = src.logits(&prompt, None, Logits::All).unwrap();
    for (ty, bound) in [(GgmlType::F32, 0.01), (GgmlType::Q8_0, QUANT_BOUND), (GgmlType::Q4_K, QUANT_BOUND)] {
        let out = tmp.join(format!("smollm2-{}.gguf", ty.name()));
        export(&src, ty, TokenizerSource::HfDir { dir: &hf, pre: None }, "hf", None, &out).unwrap();
        let model = smelt_gguf::load_model(&out).unwrap();
        let tok = smelt_tokenizer::Tokenizer::from_file(&out).unwrap();
        if ty == GgmlType::F32 {
            // Q/K permuted on export and back on load: the same model, bit for bit.
            assert_eq!(model.logits(&prompt, None, Logits::All).unwrap().as_f32().unwrap(), want.as_f32().unwrap());
        }
        let s = check(&model, &tok, &format!("smollm2_export_{}_llama_cpp.json", ty.name()), bound);
        if ty == GgmlType::F32 {
            assert_eq!(s.identical_prompts, s.prompts, "f32: greedy output must be identical to llama.cpp's");
        }
        std::fs::remove_file(&out).ok();
    }
}
