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
//! The Q4_1 file and the q8_0, q4_k, q4_0, q6_k, f16 and bf16 exports are bit-identical to
//! llama.cpp (AVX-512 build): smelt's inference path runs ggml's float arithmetic in ggml's
//! order, including the order of the matmul path llama.cpp picks per tensor and batch size
//! (docs/GGUF.md "Parity"), and F16/BF16 matmuls round the activations to f16/bf16 first as
//! llama.cpp does, so every logit and every token agree. With 8-bit activations this model is chaotic
//! at the 0.3-logit level, so only identical order reproduces every near-tie; the f32 export
//! keeps the looser checks above.

use smelt_core::Tensor;
use smelt_model::{KvCache, Logits, Model};
use std::path::PathBuf;

/// The goldens are llama.cpp's AVX-512 build: on a CPU with AMX-INT8, Q8_0/Q4_0/Q4_1/Q6_K matmuls
/// would take smelt's AMX path, which sums in llama.cpp's AMX build's order instead (docs/GGUF.md,
/// "AMX"; tested in smelt-core's quant::amx). Every test here checks the AVX-512 order, so each
/// turns AMX off before it loads anything (one process, one setting: all of them want it off).
fn avx512_order() {
    std::env::set_var("SMELT_AMX", "0");
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The published SmolLM2 Q4_1 file, or None (a reported skip) when it was not fetched.
fn smollm2_q4_1() -> Option<PathBuf> {
    smelt_testing::input("smollm2/DL/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn argmax(l: &[f32]) -> u32 {
    l.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as u32
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Greedy tokens, free running.
fn greedy(model: &Model, prompt: &[u32], n: usize, eos: u32) -> Vec<u32> {
    let mut cache = KvCache::new(&model.cfg, 1, prompt.len() + n + 1);
    let mut l = model
        .logits(&Tensor::from_u32(prompt.to_vec(), &[1, prompt.len()]).unwrap(), Some(&mut cache), Logits::Last)
        .unwrap();
    let mut out = vec![];
    while out.len() < n {
        let next = argmax(l.as_f32().unwrap());
        out.push(next);
        if next == eos || out.len() == n {
            break;
        }
        l = model.logits(&Tensor::from_u32(vec![next], &[1, 1]).unwrap(), Some(&mut cache), Logits::Last).unwrap();
    }
    out
}

struct Summary {
    identical_prompts: usize,
    prompts: usize,
    agree: usize,
    steps: usize,
    max_diff: f32,
}

/// Compares `model` with a llama.cpp golden; mismatching argmaxes are allowed only where
/// llama.cpp's own margin is below `bound`, and every logit difference must be below it.
fn check(model: &Model, tok: &smelt_tokenizer::Tokenizer, golden: &str, bound: f32) -> Summary {
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("crates/infer/tests/data").join(golden)).unwrap())
            .unwrap();
    let cases = golden["cases"].as_array().unwrap();
    let mut s = Summary { identical_prompts: 0, prompts: cases.len(), agree: 0, steps: 0, max_diff: 0.0 };
    for case in cases {
        let prompt = ids(&case["prompt_ids"]);
        assert_eq!(tok.encode(case["prompt"].as_str().unwrap()), prompt, "tokenisation differs from llama.cpp");
        let want = ids(&case["ids"]);
        // Teacher forcing on llama.cpp's tokens.
        let mut cache = KvCache::new(&model.cfg, 1, prompt.len() + want.len() + 1);
        // The goldens come from llama.cpp with logits_all, i.e. its head multiplies every prompt
        // row; so does ours here: for an F16/BF16 head the number of rows picks the summation
        // order (tinyBLAS for ≥ 2, vec_dot for one; docs/GGUF.md "Parity"). The free-running
        // greedy below keeps `Logits::Last`.
        let all = model
            .logits(&Tensor::from_u32(prompt.clone(), &[1, prompt.len()]).unwrap(), Some(&mut cache), Logits::All)
            .unwrap();
        let vocab = model.cfg.vocab_size;
        let last = all.as_f32().unwrap()[(prompt.len() - 1) * vocab..].to_vec();
        let mut logits = Tensor::from_f32(last, &[1, vocab]).unwrap();
        let mut max_diff = 0f32;
        for (step, top) in case["top"].as_array().unwrap().iter().enumerate() {
            let l = logits.as_f32().unwrap();
            let top_ids = ids(&top["ids"]);
            let top_v: Vec<f32> =
                top["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            for (id, v) in top_ids.iter().zip(&top_v) {
                max_diff = max_diff.max((l[*id as usize] - v).abs());
            }
            s.steps += 1;
            if argmax(l) == want[step] {
                s.agree += 1;
            } else {
                let ours = top_ids.iter().position(|&i| i == argmax(l)).map(|p| top_v[p]);
                let margin = ours.map_or(f32::INFINITY, |o| top_v[0] - o);
                assert!(
                    margin < bound,
                    "step {step}: we pick {} where llama.cpp's margin for {} is {margin}",
                    argmax(l),
                    want[step]
                );
            }
            if step + 1 < want.len() {
                logits = model
                    .logits(&Tensor::from_u32(vec![want[step]], &[1, 1]).unwrap(), Some(&mut cache), Logits::Last)
                    .unwrap();
            }
        }
        let free = greedy(model, &prompt, want.len(), tok.eos_id().unwrap_or(u32::MAX));
        let same = free.iter().zip(&want).take_while(|(a, b)| a == b).count();
        if same == want.len() {
            s.identical_prompts += 1;
        }
        println!("  {:?}: {} prompt tokens; free-running greedy: first {same}/{} identical; max |Δlogit| (teacher forced) {max_diff:.2e}",
            case["prompt"].as_str().unwrap().chars().take(30).collect::<String>(), prompt.len(), want.len());
        s.max_diff = s.max_diff.max(max_diff);
    }
    println!(
        "{golden}: prompts fully identical {}/{}; teacher-forced argmax agreement {}/{}; max |Δlogit| {:.2e}",
        s.identical_prompts,
        s.prompts,
        s.agree,
        s.steps,
        s.max_diff,
        golden = golden["model"]
    );
    assert!(s.max_diff < bound, "max logit difference {}", s.max_diff);
    s
}

/// With 8-bit activations (see above) the logits of the same file differ by up to about this
/// (observed: 1.1 for Q4_1 and Q8_0, 1.7 for Q4_K, whose Q8_K activations share one scale per 256).
const QUANT_BOUND: f32 = 2.0;

#[test]
fn smollm2_q4_1_matches_llama_cpp() {
    avx512_order();
    let Some(gguf) = smollm2_q4_1() else { return };
    let model = smelt_convert::load_model(&gguf).unwrap();
    let tok = smelt_tokenizer::Tokenizer::from_file(&gguf).unwrap();
    let s = check(&model, &tok, "smollm2_q4_1_llama_cpp.json", QUANT_BOUND);
    // Same arithmetic as llama.cpp's CPU backend: identical text and identical logits.
    assert_eq!(s.identical_prompts, s.prompts, "Q4_1: greedy output must be identical to llama.cpp's");
    assert_eq!(s.max_diff, 0.0, "Q4_1: logits must be bit-identical to llama.cpp's");
}

/// Every file type smelt writes, made from the Q4_1 model (dequantised, as the Hugging Face
/// checkpoint of scripts/fetch_smollm2.sh is), against llama.cpp's goldens of the same files
/// (q8_0, q4_k: made from the checkpoint's exports, whose tensors are the same bytes; the others
/// from these exports, scripts/gguf_llama_golden.py). All six are bit-identical: every matmul
/// follows the float order of the llama.cpp code path it takes (repacked Q4_0/Q4_K, tiled Q6_K,
/// tinyBLAS and vec_dot for Q8_0/Q5_0; for F16/BF16 the activations rounded to the weight type,
/// tinyBLAS order for a prompt, `ggml_vec_dot_f16`/`_bf16` for one token, `vdpbf16ps` lanes;
/// docs/GGUF.md "Parity"). Before the F16/BF16 rounding (f32 activations, 8-lane sums) those two
/// were greedy 5/5 but their logits off by up to 5.5e-2.
#[test]
fn exports_of_the_q4_1_model_match_llama_cpp() {
    avx512_order();
    use smelt_convert::export::{export, TokenizerSource};
    use smelt_gguf::GgmlType;
    let Some(gguf) = smollm2_q4_1() else { return };
    let src = smelt_convert::load_model(&gguf).unwrap();
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    for ty in [GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q4_0, GgmlType::Q6_K, GgmlType::F16, GgmlType::BF16] {
        let out = tmp.join(format!("smollm2-from-q4_1-{}.gguf", ty.name()));
        export(&src, ty, TokenizerSource::Gguf(&gguf), "q4_1", None, &out).unwrap();
        let model = smelt_convert::load_model(&out).unwrap();
        let tok = smelt_tokenizer::Tokenizer::from_file(&out).unwrap();
        // Unlinking is safe while the model maps or holds the file; the F16 one is 260 MB.
        std::fs::remove_file(&out).ok();
        let s = check(&model, &tok, &format!("smollm2_export_{}_llama_cpp.json", ty.name()), QUANT_BOUND);
        assert_eq!(
            (s.identical_prompts, s.max_diff),
            (s.prompts, 0.0),
            "{}: must be bit-identical to llama.cpp",
            ty.name()
        );
    }
}

#[test]
fn exported_ggufs_match_the_checkpoint_and_llama_cpp() {
    avx512_order();
    use smelt_convert::export::{export, TokenizerSource};
    use smelt_gguf::GgmlType;
    let Some(hf) = smelt_testing::input("smollm2/hf/model.safetensors") else { return };
    let hf = hf.parent().unwrap().to_path_buf();
    let src = Model::load(&hf).unwrap();
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let prompt = Tensor::from_u32(vec![1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198], &[1, 12]).unwrap();
    let want = src.logits(&prompt, None, Logits::All).unwrap();
    for (ty, bound) in [(GgmlType::F32, 0.01), (GgmlType::Q8_0, QUANT_BOUND), (GgmlType::Q4_K, QUANT_BOUND)] {
        let out = tmp.join(format!("smollm2-{}.gguf", ty.name()));
        export(&src, ty, TokenizerSource::HfDir { dir: &hf, pre: None }, "hf", None, &out).unwrap();
        let model = smelt_convert::load_model(&out).unwrap();
        let tok = smelt_tokenizer::Tokenizer::from_file(&out).unwrap();
        if ty == GgmlType::F32 {
            // The same weights; loaded from GGUF the model runs llama.cpp's arithmetic
            // (interleaved RoPE, ggml's angles), so it agrees with the checkpoint to rounding.
            let got = model.logits(&prompt, None, Logits::All).unwrap();
            let d =
                got.as_f32().unwrap().iter().zip(want.as_f32().unwrap()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            println!("f32 export vs checkpoint: max |Δlogit| {d:.2e}");
            assert!(d < 1e-3, "f32 export differs from the checkpoint by {d}");
        }
        let s = check(&model, &tok, &format!("smollm2_export_{}_llama_cpp.json", ty.name()), bound);
        if ty == GgmlType::F32 {
            assert_eq!(s.identical_prompts, s.prompts, "f32: greedy output must be identical to llama.cpp's");
        }
        std::fs::remove_file(&out).ok();
    }
}

/// What `smelt import-hf FILE.gguf` writes (and scripts/fetch_smollm2.sh makes the SmolLM2
/// Hugging Face folder with): the Q4_1 model dequantised, saved as config.json +
/// model.safetensors (q/k rows back in Hugging Face's half-split order) + tokenizer.json +
/// tokenizer_config.json. Loaded back as a Hugging Face folder it gives the dequantised GGUF's
/// logits: the same f32 weights, only RoPE's layout and angle arithmetic differ (the f32
/// export's bound above); its tokenizer gives the GGUF's ids and chat template.
#[test]
fn hf_folder_written_from_the_gguf_gives_its_logits() {
    avx512_order();
    let Some(gguf) = smollm2_q4_1() else { return };
    let src = smelt_convert::load_model(&gguf).unwrap().dequantized().unwrap();
    let gtok = smelt_tokenizer::Tokenizer::from_file(&gguf).unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("smollm2-hf-from-q4_1");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    src.save(&dir).unwrap();
    gtok.save_hf(&dir).unwrap();
    let hf = Model::load(&dir).unwrap();
    let tok = smelt_tokenizer::Tokenizer::from_file(&dir).unwrap();
    let chat = smelt_tokenizer::ChatTemplate::from_tokenizer_config(&dir).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(hf.cfg.n_params(), src.cfg.n_params());
    for text in ["What is the capital of France?", "Prices rose 12345% in 1923 -- and   fell.\n\n\tIt's <|im_start|>x"]
    {
        assert_eq!(tok.encode(text), gtok.encode(text), "{text:?}");
    }
    assert_eq!(Some(chat.source.as_str()), gtok.chat_template());
    let prompt = Tensor::from_u32(vec![1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198], &[1, 12]).unwrap();
    let want = src.logits(&prompt, None, Logits::All).unwrap();
    let got = hf.logits(&prompt, None, Logits::All).unwrap();
    let d = got.as_f32().unwrap().iter().zip(want.as_f32().unwrap()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("HF folder written from the Q4_1 GGUF vs the GGUF dequantised: max |Δlogit| {d:.2e}");
    assert!(d < 1e-3, "the written folder's logits differ from the GGUF's by {d}");
}

/// Perplexity windows (all logits of a 128-token batch, no KV cache) against llama.cpp's
/// runtime on the published Q4_1 file (golden: scripts/gguf_ppl_golden.py). With the same
/// arithmetic every logit is llama.cpp's, so each window's mean NLL agrees to the rounding of
/// the f64 log-sum-exp (numpy's against ours); one differing 8-bit activation anywhere would
/// move it by ~1e-3.
#[test]
fn smollm2_q4_1_perplexity_matches_llama_cpp() {
    avx512_order();
    let Some(gguf) = smollm2_q4_1() else { return };
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("crates/infer/tests/data/smollm2_q4_1_ppl_llama_cpp.json")).unwrap(),
    )
    .unwrap();
    let w = golden["seq_len"].as_u64().unwrap() as usize;
    let ids = ids(&golden["ids"]);
    let model = smelt_convert::load_model(&gguf).unwrap();
    for (i, want) in golden["window_mean_nll"].as_array().unwrap().iter().enumerate() {
        let got = smelt_infer::perplexity(&model, &ids[i * w..(i + 1) * w], w, |_, _| {}).unwrap().mean_nll;
        let want = want.as_f64().unwrap();
        println!("window {i}: mean NLL {got:.12} (llama.cpp {want:.12})");
        assert!((got - want).abs() < 1e-9, "window {i}: mean NLL {got} against llama.cpp's {want}");
    }
}
