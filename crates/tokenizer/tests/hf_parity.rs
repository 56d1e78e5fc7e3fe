//! Parity with Hugging Face `tokenizers` through goldens made by
//! scripts/make_tokenizer_goldens.py: Qwen3's tokenizer.json on the bundled corpus and tricky
//! strings, and a smelt-trained tokenizer as `tokenizers` loads it (plus: smelt's trainer learns
//! the same merges as `tokenizers`' BpeTrainer).

mod common;
use serde_json::Value;
use smelt_tokenizer::{Tokenizer, TrainConfig};
use std::io::Read;

fn corpus() -> String {
    let f = std::fs::File::open(common::repo_root().join("data/linux-doc-slice.txt.gz")).unwrap();
    let mut s = String::new();
    flate2::read::GzDecoder::new(f).read_to_string(&mut s).unwrap();
    s
}

fn golden(name: &str) -> Value {
    let p = common::repo_root().join("crates/tokenizer/tests/golden").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// Same FNV-1a over u32 LE ids, with a separator per sequence, as the Python script.
fn fnv<'a>(seqs: impl IntoIterator<Item = &'a Vec<u32>>) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut eat = |b: u8| h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    for ids in seqs {
        for i in ids {
            for b in i.to_le_bytes() {
                eat(b)
            }
        }
        for b in u32::MAX.to_le_bytes() {
            eat(b)
        }
    }
    format!("{h:016x}")
}

fn merges_fingerprint(tok: &Tokenizer) -> (String, usize) {
    let merges = tok.to_json().unwrap()["model"]["merges"].as_array().unwrap().clone();
    let mut h: u64 = 0xcbf29ce484222325;
    for m in &merges {
        let line = format!("{} {}\n", m[0].as_str().unwrap(), m[1].as_str().unwrap());
        for b in line.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
    }
    (format!("{h:016x}"), merges.len())
}

/// Random awkward strings (with specials), encoded with specials: the id streams' hash.
fn check_random(tok: &Tokenizer, g: &Value, what: &str) {
    let texts: Vec<&str> = g["random"]["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t)).collect();
    assert_eq!(fnv(&ids), g["random"]["hash"].as_str().unwrap(), "{what}: ids of random strings differ from HF");
}

fn check(tok: &Tokenizer, g: &Value, what: &str) {
    check_random(tok, g, what);
    let text = corpus();
    let mut fails = Vec::new();
    for case in g["tricky"].as_array().unwrap() {
        let s = case["text"].as_str().unwrap();
        let ids = |k: &str| case[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
        let (got, got_sp) = (tok.encode_with(s, false), tok.encode(s));
        if got != ids("ids") {
            fails.push(format!("{s:?}: HF {:?} smelt {got:?}", ids("ids")));
        }
        if got_sp != ids("ids_special") {
            fails.push(format!("{s:?} (specials): HF {:?} smelt {got_sp:?}", ids("ids_special")));
        }
    }
    let whole = tok.encode_with(&text, false);
    assert_eq!(whole.len() as u64, g["corpus_whole"]["len"].as_u64().unwrap(), "{what}: corpus token count");
    assert_eq!(fnv([&whole]), g["corpus_whole"]["hash"].as_str().unwrap(), "{what}: corpus ids differ");
    let lines: Vec<&str> = text.split('\n').collect();
    let per_line = tok.encode_batch(&lines, false);
    assert_eq!(fnv(&per_line), g["corpus_lines"]["hash"].as_str().unwrap(), "{what}: per-line corpus ids differ");
    assert!(
        fails.is_empty(),
        "{what}: {} tricky strings differ from HF tokenizers:\n{}",
        fails.len(),
        fails.join("\n")
    );
}

#[test]
fn qwen3_matches_hf_tokenizers() {
    let Some(p) = common::input("qwen3/tokenizer.json") else { return };
    let tok = Tokenizer::from_file(&p).unwrap();
    check(&tok, &golden("qwen3.json"), "qwen3");
    // Decoding gives the text back.
    let s = "Qwen: 你好 🦀 <|im_start|>x";
    assert_eq!(tok.decode_with(&tok.encode_with(s, false), false), s);
}

fn train_like_golden(g: &Value) -> Tokenizer {
    let t = &g["train"];
    let cfg = TrainConfig {
        vocab_size: t["vocab_size"].as_u64().unwrap() as usize,
        min_frequency: t["min_frequency"].as_u64().unwrap(),
        special_tokens: t["special_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect(),
        ..Default::default()
    };
    let corpus = common::repo_root().join("data/linux-doc-slice.txt.gz");
    Tokenizer::train(&[corpus.to_string_lossy().into_owned()], &cfg).unwrap()
}

#[test]
fn trained_tokenizer_matches_hf_trainer_and_hf_encoding() {
    let g = golden("trained.json");
    let tok = train_like_golden(&g);
    let (fp, n) = merges_fingerprint(&tok);
    assert_eq!(
        (fp.as_str(), n as u64),
        (g["hf_trainer_merges"][0].as_str().unwrap(), g["hf_trainer_merges"][1].as_u64().unwrap()),
        "smelt's merges differ from tokenizers' BpeTrainer with the same settings"
    );
    check(&tok, &g, "smelt-trained");
    // Saved and reloaded, it is the same tokenizer.
    let p = std::env::temp_dir().join(format!("smelt-trained-{}.json", std::process::id()));
    tok.save(&p).unwrap();
    let back = Tokenizer::from_file(&p).unwrap();
    std::fs::remove_file(&p).ok();
    let s = "Round trip: the kernel's   memory\tallocator 123";
    assert_eq!(back.encode(s), tok.encode(s));
    assert_eq!(back.decode(&back.encode(s)), s);
    assert_eq!(tok.eos_id(), tok.token_to_id("<|endoftext|>"));
}

#[test]
fn byte_level_round_trips_any_bytes() {
    let g = golden("trained.json");
    let tok = train_like_golden(&g);
    let samples: [&[u8]; 4] =
        [b"plain text", b"bad \xff\xfe utf8 \xc3", &[0u8, 1, 2, 255, 128, b' ', b'a'], "ok ✓ \u{1F980}".as_bytes()];
    for s in samples {
        let ids = tok.encode_bytes(s, false);
        assert_eq!(tok.decode_bytes(&ids, true), s, "{s:?}");
    }
    let bl = Tokenizer::byte_level();
    assert_eq!(bl.encode("hi"), vec![b'h' as u32, b'i' as u32]);
    assert_eq!(bl.encode_bytes(b"\xff", false), vec![255]);
    assert_eq!(bl.vocab_size(), 257);
    assert_eq!(bl.eos_id(), Some(256));
    assert_eq!(bl.decode(&[104, 105, 256]), "hi");
}

#[test]
fn bad_files_are_errors_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("smelt-badtok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("notjson.json", "{", "not valid JSON"),
        ("wordpiece.json", r#"{"model": {"type": "WordPiece", "vocab": {}}}"#, "WordPiece"),
        ("unigram.json", r#"{"model": {"type": "Unigram", "vocab": []}}"#, "Unigram"),
        (
            "pretok.json",
            r#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "BertPreTokenizer"}}"#,
            "BertPreTokenizer",
        ),
        ("merge.json", r#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}}"#, "merges[0]"),
        ("bad.gguf", "GGUX", "not a GGUF file"),
    ];
    for (name, body, expect) in cases {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        let e = format!("{:#}", Tokenizer::from_file(&p).unwrap_err());
        assert!(e.contains(name) && e.contains(expect), "{name}: {e}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Llama-2 / Mistral style tokenizer.json files made and saved by `tokenizers` itself
/// (Prepend+Replace normalizer or Metaspace pre-tokenizer, byte_fallback, fuse_unk, `<s>`
/// template): ids on the corpus lines and tricky strings, and decoding.
#[test]
fn spm_style_tokenizer_json_matches_hf() {
    let text = corpus();
    let lines: Vec<&str> = text.split('\n').collect();
    for name in ["llama2_style", "metaspace_style"] {
        let dir = common::repo_root().join("crates/tokenizer/tests/golden");
        let tok = Tokenizer::from_file(&dir.join(format!("{name}.tokenizer.json"))).unwrap();
        let g = golden(&format!("{name}.json"));
        assert_eq!(tok.bos_id(), Some(1));
        check_random(&tok, &g, name);
        let mut fails = Vec::new();
        for case in g["tricky"].as_array().unwrap() {
            let s = case["text"].as_str().unwrap();
            let ids =
                |k: &str| case[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
            if tok.encode_with(s, false) != ids("ids") {
                fails.push(format!("{s:?}: HF {:?} smelt {:?}", ids("ids"), tok.encode_with(s, false)));
            }
            if tok.encode(s) != ids("ids_special") {
                fails.push(format!("{s:?} (specials): HF {:?} smelt {:?}", ids("ids_special"), tok.encode(s)));
            }
            let dec = tok.decode(&ids("ids"));
            if dec != case["decoded"].as_str().unwrap() {
                fails.push(format!("{s:?}: HF decodes {:?}, smelt {dec:?}", case["decoded"]));
            }
        }
        assert!(fails.is_empty(), "{name}: {} differences from HF tokenizers:\n{}", fails.len(), fails.join("\n"));
        assert_eq!(
            fnv(&tok.encode_batch(&lines, false)),
            g["corpus_lines"]["hash"].as_str().unwrap(),
            "{name}: corpus lines"
        );
    }
}

/// `token_bytes_all`: each id's bytes mid-text, so the bytes of a sequence's ids joined are
/// what those ids add to the decoded text after some earlier text (here "Hello"), for byte-level
/// BPE (Qwen3 and the byte tokenizer) and both SentencePiece styles, whose decoders treat the
/// start of a text differently; specials are spelled out.
#[test]
fn token_bytes_join_to_the_decoded_text() {
    let text = corpus();
    let lines: Vec<&str> = text.split('\n').filter(|l| !l.is_empty()).take(300).collect();
    let dir = common::repo_root().join("crates/tokenizer/tests/golden");
    let mut toks = vec![("byte_level".to_string(), Tokenizer::byte_level())];
    for name in ["llama2_style", "metaspace_style"] {
        toks.push((name.into(), Tokenizer::from_file(&dir.join(format!("{name}.tokenizer.json"))).unwrap()));
    }
    let qwen = common::repo_root().join(".cache/inputs/qwen3/tokenizer.json");
    if qwen.exists() {
        toks.push(("qwen3".into(), Tokenizer::from_file(&qwen).unwrap()));
    }
    for (name, tok) in &toks {
        let bytes = tok.token_bytes_all();
        assert_eq!(bytes.len(), tok.vocab_size(), "{name}");
        let before = tok.encode_with("Hello", false);
        let start = tok.decode_bytes(&before, false);
        for line in &lines {
            let ids = tok.encode_with(line, false);
            let mut joined = start.clone();
            joined.extend(ids.iter().flat_map(|&id| bytes[id as usize].clone()));
            let decoded = tok.decode_bytes(&[&before[..], &ids[..]].concat(), false);
            let show = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            assert!(joined == decoded, "{name}: {line:?}: {:?} vs {:?}", show(&joined), show(&decoded));
        }
    }
    let b = Tokenizer::byte_level();
    let eos = b.eos_id().unwrap();
    assert!(b.is_special(eos) && !b.is_special(u32::from(b'a')));
    assert_eq!(b.token_bytes_all()[eos as usize], b"<|endoftext|>");
}
