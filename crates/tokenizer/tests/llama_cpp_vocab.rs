//! Parity with llama.cpp's tokenizer test vectors: each `ggml-vocab-*.gguf` comes with `.inp`
//! (test strings) and `.out` (the ids the reference tokenizer gives, no BOS/specials).

mod common;
use smelt_tokenizer::Tokenizer;

/// (cases passed, failures as "case: expected vs got") for one vocab; a case passes when its
/// ids equal llama.cpp's and they decode back to the text. `resave`: run the tokenizer saved
/// as a Hugging Face folder (`save_hf`) and loaded back, instead of the GGUF's.
fn run_vocab(name: &str, resave: bool) -> Option<(usize, Vec<String>)> {
    let gguf = common::input(&format!("llama.cpp/models/ggml-vocab-{name}.gguf"))?;
    let inp = common::input(&format!("llama.cpp/models/ggml-vocab-{name}.gguf.inp"))?;
    let out = common::input(&format!("llama.cpp/models/ggml-vocab-{name}.gguf.out"))?;
    let (inp, out) = (std::fs::read_to_string(inp).unwrap(), std::fs::read_to_string(out).unwrap());
    let mut tok = Tokenizer::from_file(&gguf).unwrap_or_else(|e| panic!("{e:#}"));
    if resave {
        let dir = std::env::temp_dir().join(format!("smelt-vocab-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        tok.save_hf(&dir).unwrap();
        let back = Tokenizer::from_file(&dir).unwrap_or_else(|e| panic!("{name}: saved tokenizer.json: {e:#}"));
        let template = smelt_tokenizer::ChatTemplate::from_tokenizer_config(&dir).ok().map(|t| t.source);
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(
            (back.bos_id(), back.eos_id(), back.vocab_size()),
            (tok.bos_id(), tok.eos_id(), tok.vocab_size()),
            "{name}"
        );
        assert_eq!(template.as_deref(), tok.chat_template(), "{name}: chat template");
        tok = back;
    }
    let mut cases: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    if cases.last() == Some(&"") {
        cases.pop();
    }
    let expected: Vec<&str> = out.lines().collect();
    assert_eq!(cases.len(), expected.len(), "{name}: .inp and .out disagree on the case count");
    let mut fails = Vec::new();
    let mut passed = 0;
    for (text, exp) in cases.iter().zip(&expected) {
        let before = fails.len();
        let exp: Vec<u32> = exp.split_whitespace().map(|x| x.parse().unwrap()).collect();
        let got = tok.encode_with(text, false);
        if got != exp {
            fails.push(format!("{text:?}: expected {exp:?}, got {got:?}"));
        }
        let back = tok.decode(&got);
        if back != *text {
            fails.push(format!("{text:?}: decodes back as {back:?}"));
        }
        if fails.len() == before {
            passed += 1;
        }
    }
    println!("{name}: {passed}/{} cases pass", cases.len());
    for f in &fails {
        println!("  FAIL {f}");
    }
    Some((passed, fails))
}

fn require(name: &str) {
    if let Some((_, fails)) = run_vocab(name, false) {
        assert!(fails.is_empty(), "{name}: {} llama.cpp cases differ:\n{}", fails.len(), fails.join("\n"));
    }
}

#[test]
fn gpt2() {
    require("gpt-2")
}

/// BOS comes from `tokenizer.ggml.add_bos_token` when specials are requested; specials written
/// in the text are recognised.
#[test]
fn bos_and_specials() {
    let Some(p) = common::input("llama.cpp/models/ggml-vocab-llama-spm.gguf") else { return };
    let spm = Tokenizer::from_file(&p).unwrap();
    assert_eq!(spm.bos_id(), Some(1));
    assert_eq!(spm.encode("Hello")[0], 1);
    assert_eq!(spm.encode_with("Hello", false), vec![15043]);
    assert!(spm.save(&std::env::temp_dir().join("x.json")).is_err());
    let Some(p) = common::input("llama.cpp/models/ggml-vocab-llama-bpe.gguf") else { return };
    let bpe = Tokenizer::from_file(&p).unwrap();
    let ids = bpe.encode_with("<|begin_of_text|>Hi<|eot_id|>", false);
    assert_eq!(ids.first(), Some(&128000));
    assert_eq!(ids.last(), Some(&128009));
    assert_eq!(bpe.decode(&ids), "Hi");
}
#[test]
fn llama_spm() {
    require("llama-spm")
}
#[test]
fn llama_bpe() {
    require("llama-bpe")
}
#[test]
fn qwen2() {
    require("qwen2")
}
#[test]
fn starcoder() {
    require("starcoder")
}
#[test]
fn refact() {
    require("refact")
}
#[test]
fn mpt() {
    require("mpt")
}
#[test]
fn command_r() {
    require("command-r")
}

/// `smelt import-hf FILE.gguf` writes the GGUF's vocabulary as tokenizer.json +
/// tokenizer_config.json: read back, it still gives llama.cpp's ids, for each pre-tokenizer
/// family (GPT-2's regex, Llama-3's, Qwen2's, digits split first).
#[test]
fn saved_as_tokenizer_json_still_matches_llama_cpp() {
    for name in ["gpt-2", "llama-bpe", "qwen2", "starcoder"] {
        if let Some((_, fails)) = run_vocab(name, true) {
            assert!(
                fails.is_empty(),
                "{name} (saved and reloaded): {} llama.cpp cases differ:\n{}",
                fails.len(),
                fails.join("\n")
            );
        }
    }
}

/// `import-bpe`'s path: GPT-2's vocab.json + merges.txt (written here from the GGUF) give the
/// same ids as llama.cpp on its test cases.
#[test]
fn vocab_json_and_merges_txt_import() {
    let Some(p) = common::input("llama.cpp/models/ggml-vocab-gpt-2.gguf") else { return };
    let g = smelt_gguf::GgufFile::open(&p).unwrap();
    let strs = |k: &str| {
        g.get(k).unwrap().as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    let dir = std::env::temp_dir().join(format!("smelt-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> =
        strs("tokenizer.ggml.tokens").into_iter().enumerate().map(|(i, t)| (t, i.into())).collect();
    std::fs::write(dir.join("vocab.json"), serde_json::to_string(&vocab).unwrap()).unwrap();
    std::fs::write(dir.join("merges.txt"), format!("#version: 0.2\n{}\n", strs("tokenizer.ggml.merges").join("\n")))
        .unwrap();
    let tok = Tokenizer::from_vocab_merges(&dir.join("vocab.json"), &dir.join("merges.txt")).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let inp = std::fs::read_to_string(p.with_extension("gguf.inp")).unwrap();
    let out = std::fs::read_to_string(p.with_extension("gguf.out")).unwrap();
    for (text, exp) in inp.split("\n__ggml_vocab_test__\n").zip(out.lines()) {
        let exp: Vec<u32> = exp.split_whitespace().map(|x| x.parse().unwrap()).collect();
        assert_eq!(tok.encode_with(text, false), exp, "{text:?}");
    }
    assert_eq!(tok.eos_id(), Some(50256));
}
