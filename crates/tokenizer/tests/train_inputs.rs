//! Training inputs: directories, globs, gzip and JSONL all feed the same counts; bad inputs are
//! errors naming the file.

use smelt_tokenizer::{Tokenizer, TrainConfig};
use std::io::Write;

fn cfg(field: Option<&str>) -> TrainConfig {
    TrainConfig { vocab_size: 300, min_frequency: 1, field: field.map(str::to_string), ..Default::default() }
}

#[test]
fn text_gz_jsonl_dirs_and_globs_train_alike() {
    let dir = std::env::temp_dir().join(format!("smelt-train-inputs-{}", std::process::id()));
    let sub = dir.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let lines = ["the quick brown fox\n", "jumps over the lazy dog\n", "the the the fox fox\n"];
    std::fs::write(dir.join("a.txt"), lines[..2].concat()).unwrap();
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(sub.join("b.txt.gz")).unwrap(),
        flate2::Compression::fast(),
    );
    gz.write_all(lines[2].as_bytes()).unwrap();
    gz.finish().unwrap();
    let jsonl: String = lines.iter().map(|l| format!("{}\n", serde_json::json!({"text": l, "id": 1}))).collect();
    std::fs::write(dir.join("c.jsonl"), jsonl).unwrap();

    let d = dir.to_string_lossy().into_owned();
    let from_files = Tokenizer::train(&[format!("{d}/a.txt"), format!("{d}/sub")], &cfg(None)).unwrap();
    let from_glob = Tokenizer::train(&[format!("{d}/*.txt"), format!("{d}/sub/*.gz")], &cfg(None)).unwrap();
    let from_jsonl = Tokenizer::train(&[format!("{d}/c.jsonl")], &cfg(Some("text"))).unwrap();
    let from_texts = Tokenizer::train_from_texts(lines, &cfg(None)).unwrap();
    let json = |t: &Tokenizer| t.to_json().unwrap()["model"].clone();
    assert_eq!(json(&from_files), json(&from_texts));
    assert_eq!(json(&from_glob), json(&from_texts));
    assert_eq!(json(&from_jsonl), json(&from_texts));
    assert!(from_texts.token_to_id("Ġthe").is_some());
    assert_eq!(from_texts.decode(&from_texts.encode("the lazy fox")), "the lazy fox");

    let err = |inputs: &[String], c: &TrainConfig| format!("{:#}", Tokenizer::train(inputs, c).unwrap_err());
    assert!(err(&[format!("{d}/c.jsonl")], &cfg(None)).contains("--field"));
    assert!(err(&[format!("{d}/c.jsonl")], &cfg(Some("body"))).contains("c.jsonl:1: no field \"body\""));
    assert!(err(&[format!("{d}/missing.txt")], &cfg(None)).contains("missing.txt"));
    assert!(err(&[format!("{d}/*.nothing")], &cfg(None)).contains("matched no files"));
    assert!(err(&[format!("{d}/a.txt")], &TrainConfig { vocab_size: 10, ..cfg(None) }).contains("vocab size"));
    std::fs::write(dir.join("empty.txt"), "").unwrap();
    assert!(err(&[format!("{d}/empty.txt")], &cfg(None)).contains("no text in the inputs"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tokenizer_is_send_sync_clone() {
    fn check<T: Send + Sync + Clone>() {}
    check::<Tokenizer>();
}

#[test]
fn a_tokenizer_json_whose_merges_are_not_a_list_is_an_error() {
    let dir = std::env::temp_dir().join(format!("smelt-bad-merges-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tok = Tokenizer::train_from_texts(["the the fox fox"], &cfg(None)).unwrap();
    let mut v = tok.to_json().unwrap().clone();
    v["model"]["merges"] = serde_json::json!(5);
    let p = dir.join("tokenizer.json");
    std::fs::write(&p, v.to_string()).unwrap();
    let e = format!("{:#}", Tokenizer::from_file(&p).unwrap_err());
    assert!(e.contains("tokenizer.json") && e.contains("model.merges is not a list"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
