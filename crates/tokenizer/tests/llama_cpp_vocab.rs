//! Parity with llama.cpp's tokenizer test vectors: each `ggml-vocab-*.gguf` comes with `.inp`
//! (test strings) and `.out` (the ids the reference tokenizer gives, no BOS/specials).

mod common;
use smelt_tokenizer::Tokenizer;

/// (passed, failures as "case: expected vs got") for one vocab.
fn run_vocab(name: &str) -> Option<(usize, Vec<String>)> {
    let gguf = common::input(&format!("llama.cpp/models/ggml-vocab-{name}.gguf"))?;
    let inp = std::fs::read_to_string(gguf.with_extension("gguf.inp")).ok()?;
    let out = std::fs::read_to_string(gguf.with_extension("gguf.out")).ok()?;
    let tok = Tokenizer::from_file(&gguf).unwrap_or_else(|e| panic!("{e:#}"));
    let mut cases: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    if cases.last() == Some(&"") { cases.pop(); }
    let expected: Vec<&str> = out.lines().collect();
    assert_eq!(cases.len(), expected.len(), "{name}: .inp and .out disagree on the case count");
    let mut fails = Vec::new();
    for (text, exp) in cases.iter().zip(&expected) {
        let exp: Vec<u32> = exp.split_whitespace().map(|x| x.parse().unwrap()).collect();
        let got = tok.encode_with(text, false);
        if got != exp { fails.push(format!("{text:?}: expected {exp:?}, got {got:?}")); }
        // Decoding gives the text back (modulo the SPM leading space llama.cpp strips).
    }
    let passed = cases.len() - fails.len();
    println!("{name}: {passed}/{} cases pass", cases.len());
    for f in &fails { println!("  FAIL {f}"); }
    Some((passed, fails))
}

fn require(name: &str) {
    if let Some((_, fails)) = run_vocab(name) {
        assert!(fails.is_empty(), "{name}: {} llama.cpp cases differ:\n{}", fails.len(), fails.join("\n"));
    }
}

#[test] fn gpt2() { require("gpt-2") }
#[test] fn llama_spm() { require("llama-spm") }
#[test] fn llama_bpe() { require("llama-bpe") }
#[test] fn qwen2() { require("qwen2") }
#[test] fn starcoder() { require("starcoder") }
#[test] fn refact() { require("refact") }
#[test] fn mpt() { require("mpt") }
#[test] fn command_r() { require("command-r") }
