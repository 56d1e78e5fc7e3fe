//! Bad input gives an error naming the file and the problem, never a panic or a stray file.
mod common;

use common::tmpdir;
use smelt_data::prepare::{prepare, PrepareConfig};
use smelt_data::process::{process, ProcessConfig};
use smelt_data::TokenFile;
use smelt_tokenizer::Tokenizer;

fn prep_err(inputs: Vec<String>, out: &std::path::Path) -> String {
    let cfg = PrepareConfig::new(inputs, out.to_path_buf());
    format!("{:#}", prepare(&cfg, &Tokenizer::byte_level(), &|_, _| {}).expect_err("should fail"))
}

#[test]
fn missing_files_empty_sets_and_bad_jsonl() {
    let d = tmpdir("bad");
    let out = d.join("o.bin");
    let e = prep_err(vec![d.join("nope.txt").display().to_string()], &out);
    assert!(e.contains("nope.txt") && e.contains("No such file"), "{e}");
    let e = prep_err(vec![], &out);
    assert!(e.contains("no --input"), "{e}");
    let e = prep_err(vec![format!("{}/*.zzz", d.display())], &out);
    assert!(e.contains("matched no files"), "{e}");
    std::fs::create_dir_all(d.join("empty")).unwrap();
    let e = prep_err(vec![d.join("empty").display().to_string()], &out);
    assert!(e.contains("holds no files"), "{e}");
    std::fs::write(d.join("blank.txt"), "").unwrap();
    let e = prep_err(vec![d.join("blank.txt").display().to_string()], &out);
    assert!(e.contains("no documents"), "{e}");

    std::fs::write(d.join("x.jsonl"), "{\"text\": \"ok\"}\n{\"body\": \"no text\"}\n").unwrap();
    let e = prep_err(vec![d.join("x.jsonl").display().to_string()], &out);
    assert!(e.contains("x.jsonl:2") && e.contains("\"text\""), "{e}");
    std::fs::write(d.join("y.jsonl"), "{\"text\": 3}\n").unwrap();
    let e = prep_err(vec![d.join("y.jsonl").display().to_string()], &out);
    assert!(e.contains("y.jsonl:1") && e.contains("not a string"), "{e}");
    std::fs::write(d.join("z.jsonl"), "{\"text\": \"ok\"\n").unwrap();
    let e = prep_err(vec![d.join("z.jsonl").display().to_string()], &out);
    assert!(e.contains("z.jsonl:1") && e.contains("not valid JSON"), "{e}");
    std::fs::write(d.join("c.txt.gz"), "not gzip").unwrap();
    let e = prep_err(vec![d.join("c.txt.gz").display().to_string()], &out);
    assert!(e.contains("c.txt.gz"), "{e}");
    // nothing left behind by any of the failures
    assert!(!out.exists() && !d.join("o.bin.tmp").exists());

    let cfg = ProcessConfig::new(vec![d.join("x.jsonl").display().to_string()], d.join("o.jsonl"));
    let e = format!("{:#}", process(&cfg, &|_, _| {}).err().unwrap());
    assert!(e.contains("x.jsonl:2"), "{e}");
    assert!(!d.join("o.jsonl.tmp").exists());
}

#[test]
fn wrong_token_file_header_names_the_file() {
    let d = tmpdir("bad-hdr");
    std::fs::write(d.join("t.bin"), b"GGUF\x03\0\0\0 this is something else entirely").unwrap();
    let e = TokenFile::open(&d.join("t.bin")).err().unwrap().to_string();
    assert!(e.contains("t.bin") && e.contains("not a smelt token file"), "{e}");
    let e = format!("{:#}", TokenFile::open(&d.join("missing.bin")).err().unwrap());
    assert!(e.contains("missing.bin"), "{e}");
}
