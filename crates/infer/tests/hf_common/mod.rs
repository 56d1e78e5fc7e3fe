//! What the transformers parity tests share (hf_parity.rs on the CPU, gpu_infer.rs on CUDA):
//! the fixture cases, their loading, the three comparisons and their thresholds.
//!
//! Fixtures (crates/model/tests/fixtures/hf/<case>/) are tiny random-init models written by
//! `scripts/make_hf_goldens.py` with `save_pretrained`, one per supported family and feature;
//! `golden.safetensors` holds what transformers computed from the same folder in f32 on CPU.
//! They are found under `$SMELT_REPO` (the GPU suite sets it to its folder) or this source tree.
#![allow(dead_code)] // each test binary uses its own part

use smelt_core::Tensor;
use smelt_infer::{generate, perplexity, GenerateConfig, SamplingConfig};
use smelt_model::{Logits, Model};
use std::collections::HashMap;
use std::path::PathBuf;

pub const CASES: [&str; 7] =
    ["llama_tied", "llama3_untied", "llama_linear", "llama_yarn", "mistral_swa", "qwen2_bias", "qwen3_qknorm"];

/// max |dlogit| ≤ this × max |logit|.
pub const LOGIT_REL: f64 = 1e-4;
/// |mean NLL − transformers'| ≤ this × transformers'.
pub const NLL_REL: f64 = 1e-5;

pub fn fixture(case: &str) -> PathBuf {
    smelt_testing::fixture("hf").join(case)
}

/// The case's model (on the CPU) and its goldens.
pub fn load(case: &str) -> (Model, HashMap<String, Tensor>) {
    let dir = fixture(case);
    let m = Model::load(&dir).unwrap_or_else(|e| panic!("{case}: {e:#}"));
    let g =
        smelt_model::io::read_safetensors(&dir.join("golden.safetensors")).unwrap_or_else(|e| panic!("{case}: {e:#}"));
    (m, g)
}

pub fn ids(g: &HashMap<String, Tensor>, k: &str) -> Vec<u32> {
    g[k].as_i32().unwrap_or_else(|_| panic!("golden {k}: not i32")).iter().map(|&i| i as u32).collect()
}

pub fn f32s<'a>(g: &'a HashMap<String, Tensor>, k: &str) -> &'a [f32] {
    g[k].as_f32().unwrap_or_else(|_| panic!("golden {k}: not f32"))
}

pub struct Parity {
    pub logit_rel: f64,
    pub greedy_match: usize,
    pub greedy_len: usize,
    pub nll_rel: f64,
}

impl Parity {
    /// What is over the thresholds, one line per failure.
    pub fn failures(&self, label: &str) -> Vec<String> {
        let mut f = Vec::new();
        if self.logit_rel > LOGIT_REL {
            f.push(format!("{label}: logits differ by {:.2e} of max |logit|", self.logit_rel));
        }
        if self.greedy_match != self.greedy_len {
            f.push(format!("{label}: greedy diverges at token {}", self.greedy_match));
        }
        if self.nll_rel > NLL_REL {
            f.push(format!("{label}: mean NLL off by {:.2e} relative", self.nll_rel));
        }
        f
    }
}

/// Runs the three comparisons for one model (on any device) against its goldens: logits over
/// the prompt, greedy tokens, perplexity with `window`.
pub fn compare(m: &Model, g: &HashMap<String, Tensor>, window: usize, label: &str) -> Parity {
    let prompt = ids(g, "input_ids");
    let logits = m.logits(&Tensor::from_u32(prompt.clone(), &[1, prompt.len()]).unwrap(), None, Logits::All).unwrap();
    let (ours, theirs) = (logits.to_vec_f32().unwrap(), f32s(g, "logits"));
    assert_eq!(ours.len(), theirs.len(), "{label}: logits shape");
    let max_abs = theirs.iter().fold(0f32, |a, &x| a.max(x.abs())) as f64;
    let max_diff = ours.iter().zip(theirs).fold(0f32, |a, (x, y)| a.max((x - y).abs())) as f64;

    let want = ids(g, "greedy_ids");
    let cfg = GenerateConfig { max_tokens: want.len(), sampling: SamplingConfig::default(), stop_ids: vec![] };
    let got = generate(m, &prompt, &cfg, |_| {}).unwrap().ids;
    let greedy_match = got.iter().zip(&want).take_while(|(a, b)| a == b).count();

    let p = perplexity(m, &ids(g, "ppl_ids"), window, |_, _| {}).unwrap();
    let want_nll = f32s(g, "ppl_mean")[0] as f64;
    let nll_rel = (p.mean_nll - want_nll).abs() / want_nll.abs();
    assert_eq!(p.predicted, f32s(g, "ppl_nll").len(), "{label}: number of scored tokens");

    let r = Parity { logit_rel: max_diff / max_abs, greedy_match, greedy_len: want.len(), nll_rel };
    println!(
        "{label:16} max|dlogit| {max_diff:.3e} = {:.2e} x max|logit| ({max_abs:.2}); greedy {greedy_match}/{}; mean NLL {:.6} vs {want_nll:.6} (rel {:.1e})",
        r.logit_rel, want.len(), p.mean_nll, r.nll_rel
    );
    r
}
