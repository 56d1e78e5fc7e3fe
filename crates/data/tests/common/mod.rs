//! Helpers shared by the integration tests: a fresh temporary directory per test and documents
//! cut from the bundled Linux documentation corpus.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};

pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smelt-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn corpus_text() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/linux-doc-slice.txt.gz");
    let mut s = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&p).unwrap()).read_to_string(&mut s).unwrap();
    s
}

/// Prose paragraphs of the corpus (blank-line separated, at least `min_words` words, mostly
/// letters: no tables or code blocks), with hard line wraps joined.
pub fn paragraphs(min_words: usize) -> Vec<String> {
    corpus_text()
        .split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| p.split(' ').count() >= min_words)
        .filter(|p| p.chars().filter(|c| c.is_alphabetic() || *c == ' ').count() * 10 >= p.len() * 9)
        .collect()
}

/// Documents of `k` consecutive paragraphs each, as the corpus has them (line wraps kept).
pub fn documents(k: usize) -> Vec<String> {
    let text = corpus_text();
    let paras: Vec<&str> = text.split("\n\n").filter(|p| !p.trim().is_empty()).collect();
    paras.chunks(k).map(|c| c.join("\n\n")).collect()
}

pub fn write_jsonl(path: &Path, docs: &[String]) {
    let mut s = String::new();
    for d in docs {
        s.push_str(&serde_json::json!({ "text": d }).to_string());
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

pub fn read_jsonl(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].as_str().unwrap().to_string())
        .collect()
}
