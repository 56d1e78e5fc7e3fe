//! `mix`: realised ratios, whole documents, determinism, vocabulary checks.
mod common;

use common::tmpdir;
use smelt_data::mix::{mix, parse_source, MixConfig, MixSource};
use smelt_data::{TokenFile, TokenWriter};
use std::path::{Path, PathBuf};

/// A token file of `docs` distinct documents of varying length: [tag, i in base 250, ..., EOS=0].
fn make(path: &Path, tag: u32, docs: usize, vocab: u32) {
    let mut w = TokenWriter::create(path, vocab, Some(0)).unwrap();
    for i in 0..docs {
        let len = 5 + (i * 37) % 50;
        let mut d = vec![tag, 10 + (i % 250) as u32, 10 + (i / 250) as u32];
        d.extend((0..len).map(|j| 10 + ((i + j) % 200) as u32));
        d.push(0);
        w.push(&d).unwrap();
    }
    w.finish().unwrap();
}

fn docs_of(p: &Path) -> Vec<Vec<u32>> {
    let f = TokenFile::open(p).unwrap();
    let mut v = Vec::new();
    f.read_into(0, f.len(), &mut v).unwrap();
    v.split_inclusive(|&t| t == 0).map(|d| d.to_vec()).collect()
}

fn src(p: PathBuf, weight: f64) -> MixSource {
    MixSource { path: p, weight }
}

#[test]
fn ratios_whole_documents_and_determinism() {
    let d = tmpdir("mix");
    make(&d.join("a.bin"), 1, 3000, 300);
    make(&d.join("b.bin"), 2, 500, 300);
    let cfg = |out: &str, seed| MixConfig {
        sources: vec![src(d.join("a.bin"), 0.7), src(d.join("b.bin"), 0.3)],
        output: d.join(out),
        tokens: None,
        seed,
    };
    let s = mix(&cfg("m.bin", 1)).unwrap();
    // default size: b is scarcest relative to its ratio, so all of b is used exactly once
    assert_eq!(s.sources[1].tokens, s.sources[1].available_tokens);
    assert_eq!(s.sources[1].documents, 500);
    assert!(s.sources[0].passes < 1.0);
    for r in &s.sources {
        assert!((r.realised - r.ratio).abs() < 0.01, "{r:?}");
    }
    // every output document is a whole input document, none of b repeated
    let out = docs_of(&d.join("m.bin"));
    let a_docs = docs_of(&d.join("a.bin"));
    let b_docs = docs_of(&d.join("b.bin"));
    let mut b_seen: Vec<&Vec<u32>> = out.iter().filter(|x| x[0] == 2).collect();
    assert!(out.iter().all(|x| a_docs.contains(x) || b_docs.contains(x)));
    b_seen.sort();
    b_seen.dedup();
    assert_eq!(b_seen.len(), 500);
    // interleaved: the first tenth of the output already holds both sources near their ratio
    let head: Vec<&Vec<u32>> = out.iter().take(out.len() / 10).collect();
    let head_b: usize = head.iter().filter(|x| x[0] == 2).map(|x| x.len()).sum();
    let head_all: usize = head.iter().map(|x| x.len()).sum();
    assert!((head_b as f64 / head_all as f64 - 0.3).abs() < 0.03);
    // same seed → same bytes; other seed → other order
    mix(&cfg("m2.bin", 1)).unwrap();
    mix(&cfg("m3.bin", 2)).unwrap();
    let bytes = |n: &str| std::fs::read(d.join(n)).unwrap();
    assert_eq!(bytes("m.bin"), bytes("m2.bin"));
    assert_ne!(bytes("m.bin"), bytes("m3.bin"));
}

#[test]
fn explicit_token_count_repeats_and_reports_it() {
    let d = tmpdir("mix-n");
    make(&d.join("a.bin"), 1, 100, 300);
    make(&d.join("b.bin"), 2, 100, 300);
    let a_len = TokenFile::open(&d.join("a.bin")).unwrap().len() as u64;
    let s = mix(&MixConfig {
        sources: vec![src(d.join("a.bin"), 1.0), src(d.join("b.bin"), 1.0)],
        output: d.join("m.bin"),
        tokens: Some(a_len * 4),
        seed: 0,
    })
    .unwrap();
    assert!(s.tokens >= a_len * 4 && s.tokens < a_len * 4 + 200);
    assert!(s.sources.iter().all(|r| r.passes > 1.5));
}

#[test]
fn mismatched_vocab_and_bad_specs_are_errors() {
    let d = tmpdir("mix-bad");
    make(&d.join("a.bin"), 1, 10, 300);
    make(&d.join("b.bin"), 2, 10, 400);
    let e = mix(&MixConfig {
        sources: vec![src(d.join("a.bin"), 1.0), src(d.join("b.bin"), 1.0)],
        output: d.join("m.bin"),
        tokens: None,
        seed: 0,
    })
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("b.bin") && e.contains("vocabulary"), "{e}");
    assert!(!d.join("m.bin").exists() && !d.join("m.bin.tmp").exists());
    assert!(parse_source("x.bin").is_err());
    assert!(parse_source("x.bin:-1").is_err());
    assert!(parse_source("x.bin:abc").err().unwrap().to_string().contains("abc"));
    let p = parse_source("dir:with:colons/x.bin:0.25").unwrap();
    assert_eq!((p.path, p.weight), (PathBuf::from("dir:with:colons/x.bin"), 0.25));
}
