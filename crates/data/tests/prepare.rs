//! `prepare` end to end with the byte-level tokenizer: round trip, formats, split, determinism.
mod common;

use common::*;
use smelt_data::prepare::{is_val_doc, prepare, val_path_for, PrepareConfig};
use smelt_data::TokenFile;
use smelt_tokenizer::Tokenizer;
use std::io::Write;

fn ids(f: &TokenFile) -> Vec<u32> {
    let mut v = Vec::new();
    f.read_into(0, f.len(), &mut v).unwrap();
    v
}

/// Split ids at EOS and decode each document.
fn decode_docs(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let eos = tok.eos_id().unwrap();
    assert_eq!(ids.last(), Some(&eos), "file must end with EOS");
    ids[..ids.len() - 1].split(|&i| i == eos).map(|d| tok.decode(d)).collect()
}

#[test]
fn round_trip_over_text_gz_jsonl_and_directories() {
    let d = tmpdir("prep-rt");
    let tok = Tokenizer::byte_level();
    let docs = documents(20);
    // a directory of text files (sorted by name), a gzipped text file, and a gzipped JSONL file
    std::fs::create_dir_all(d.join("dir/sub")).unwrap();
    std::fs::write(d.join("dir/a.txt"), &docs[0]).unwrap();
    std::fs::write(d.join("dir/sub/b.txt"), &docs[1]).unwrap();
    std::fs::write(d.join("dir/.hidden"), "skipped").unwrap();
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(d.join("c.txt.gz")).unwrap(), Default::default());
    gz.write_all(docs[2].as_bytes()).unwrap();
    gz.finish().unwrap();
    write_jsonl(&d.join("rest.jsonl"), &docs[3..]);
    let mut cfg = PrepareConfig::new(
        vec![
            d.join("dir").display().to_string(),
            d.join("c.txt.gz").display().to_string(),
            d.join("rest.jsonl").display().to_string(),
        ],
        d.join("train.bin"),
    );
    cfg.batch_docs = 7; // many batches, to exercise ordering across them
    let s = prepare(&cfg, &tok, &|_, _| {}).unwrap();
    assert_eq!(s.documents as usize, docs.len());
    let f = TokenFile::open(&d.join("train.bin")).unwrap();
    assert_eq!((f.vocab_size(), f.eos_id()), (257, Some(256)));
    assert_eq!(f.len() as u64, s.tokens);
    assert_eq!(decode_docs(&tok, &ids(&f)), docs);
    assert!(!d.join("train.bin.tmp").exists());
}

#[test]
fn val_split_is_whole_documents_by_hash_and_deterministic() {
    let d = tmpdir("prep-val");
    let tok = Tokenizer::byte_level();
    let docs = documents(3);
    write_jsonl(&d.join("docs.jsonl"), &docs);
    let run = |out: &str, batch: usize| {
        let mut cfg = PrepareConfig::new(vec![d.join("docs.jsonl").display().to_string()], d.join(out));
        cfg.val_fraction = 0.1;
        cfg.seed = 7;
        cfg.batch_docs = batch;
        prepare(&cfg, &tok, &|_, _| {}).unwrap()
    };
    let s = run("a.bin", 1000);
    assert_eq!(s.val_path.as_deref(), Some(d.join("a.val.bin").as_path()));
    let want_val: Vec<String> =
        docs.iter().enumerate().filter(|(i, _)| is_val_doc(*i as u64, 7, 0.1)).map(|(_, t)| t.clone()).collect();
    let want_train: Vec<String> =
        docs.iter().enumerate().filter(|(i, _)| !is_val_doc(*i as u64, 7, 0.1)).map(|(_, t)| t.clone()).collect();
    let frac = want_val.len() as f64 / docs.len() as f64;
    assert!((0.06..0.14).contains(&frac), "val fraction {frac}");
    let val = TokenFile::open(&d.join("a.val.bin")).unwrap();
    let train = TokenFile::open(&d.join("a.bin")).unwrap();
    assert_eq!(decode_docs(&tok, &ids(&val)), want_val);
    assert_eq!(decode_docs(&tok, &ids(&train)), want_train);
    // batching (and so parallel scheduling) does not change a byte
    run("b.bin", 5);
    assert_eq!(std::fs::read(d.join("a.bin")).unwrap(), std::fs::read(d.join("b.bin")).unwrap());
    assert_eq!(std::fs::read(d.join("a.val.bin")).unwrap(), std::fs::read(d.join("b.val.bin")).unwrap());
    assert_eq!(val_path_for(std::path::Path::new("x/train.bin")), std::path::Path::new("x/train.val.bin"));
}

#[test]
fn invalid_utf8_is_replaced_and_counted() {
    let d = tmpdir("prep-utf8");
    std::fs::write(d.join("bad.txt"), b"caf\xe9 au lait").unwrap();
    std::fs::write(d.join("good.txt"), "plain").unwrap();
    let cfg = PrepareConfig::new(vec![d.display().to_string()], d.join("out.bin"));
    let s = prepare(&cfg, &Tokenizer::byte_level(), &|_, _| {}).unwrap();
    assert_eq!(s.lossy_documents, 1);
    assert_eq!(s.lossy_files, vec![d.join("bad.txt")]);
    let f = TokenFile::open(&d.join("out.bin")).unwrap();
    assert_eq!(decode_docs(&Tokenizer::byte_level(), &ids(&f)), vec!["caf\u{fffd} au lait", "plain"]);
}
