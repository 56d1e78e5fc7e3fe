//! `smelt distill` through the binary: a fine-tuned student from a teacher folder on JSONL
//! examples (and from the same teacher as a GGUF file: the same first loss), a fresh --size
//! student on the teacher's vocabulary, top-k logits dumped and trained from, `--optimizer muon`
//! on the shared flags, and the errors a user meets first.

use smelt_model::{Model, ModelConfig};
use smelt_tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SMELT: &str = env!("CARGO_BIN_EXE_smelt");

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("distill-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn smelt(args: &[&str]) -> Output {
    Command::new(SMELT).args(args).output().unwrap()
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

fn err(o: Output) -> String {
    assert!(!o.status.success(), "expected a failure");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A byte-level model folder of `dim` with `extra` vocabulary rows past the tokenizer's.
fn model(d: &Path, name: &str, dim: usize, extra: usize, seed: u64) -> PathBuf {
    let p = d.join(name);
    std::fs::create_dir_all(&p).unwrap();
    let tok = Tokenizer::byte_level();
    let mut cfg = ModelConfig::llama(tok.vocab_size() + extra, dim, 2, 4, 2, dim * 2);
    cfg.eos_token_ids = tok.eos_id().into_iter().collect();
    Model::init(cfg, seed).unwrap().save(&p).unwrap();
    tok.save_hf(&p).unwrap();
    p
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    let m = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    m.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn distill_a_student_from_a_teacher() {
    let d = dir("run");
    let (teacher, student) = (model(&d, "teacher", 48, 0, 1), model(&d, "student", 32, 0, 2));
    let lines = [
        r#"{"prompt": "1+1=", "completion": "2"}"#,
        r#"{"text": "plain text is all in the loss"}"#,
        r#"{"prompt": "the sky is ", "completion": "blue"}"#,
    ];
    let data = d.join("train.jsonl");
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let common =
        ["--steps", "2", "--batch-size", "2", "--seq-len", "48", "--warmup", "1", "--checkpoint-interval", "0"];
    let run = |extra: &[&str], out: &str| {
        let (t, data, out) = (s(&teacher), s(&data), s(&d.join(out)));
        let mut args = vec!["distill", "--teacher", &t, "--data", &data, "--val-data", &data, "--output", &out];
        args.extend(common);
        args.extend(extra);
        ok(smelt(&args))
    };
    let o = run(&["--model", &s(&student), "--optimizer", "muon"], "folder");
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(log.contains("validation loss"), "the teacher's validation loss is reported: {log}");
    assert!(Model::load(&d.join("folder/final")).is_ok());
    let m = metrics(&d.join("folder"));
    assert_eq!(m.len(), 2);
    assert!(m[1]["val_loss"].as_f64().unwrap().is_finite());
    // The teacher as a GGUF file gives the same first loss as its folder.
    let gguf = d.join("teacher.gguf");
    ok(smelt(&["export-gguf", "--model", &s(&teacher), "--output", &s(&gguf), "--type", "f32", "--pre", "gpt-2"]));
    let (g, st, data_s, out) = (s(&gguf), s(&student), s(&data), s(&d.join("gguf")));
    let mut args = vec!["distill", "--teacher", &g, "--model", &st, "--data", &data_s, "--output", &out];
    args.extend(common);
    ok(smelt(&args));
    let (a, b) = (metrics(&d.join("gguf"))[0]["loss"].as_f64().unwrap(), m[0]["loss"].as_f64().unwrap());
    assert!((a - b).abs() <= 1e-5 * b, "GGUF teacher {a}, folder teacher {b}");
    // A fresh preset student on the teacher's vocabulary.
    run(&["--size", "tiny"], "fresh");
    assert_eq!(Model::load(&d.join("fresh/final")).unwrap().cfg.vocab_size, Tokenizer::byte_level().vocab_size());
    // Top-k logits: dumped once, then trained from without the teacher.
    let file = d.join("teacher.safetensors");
    run(&["--dump-teacher-logits", &s(&file), "--top-k", "8"], "unused");
    assert!(file.exists() && !d.join("unused/metrics.jsonl").exists());
    let (st, f, out, data_s) = (s(&student), s(&file), s(&d.join("from-file")), s(&data));
    let mut args = vec!["distill", "--teacher-logits", &f, "--model", &st, "--data", &data_s, "--output", &out];
    args.extend(common);
    ok(smelt(&args));
    assert_eq!(metrics(&d.join("from-file")).len(), 2);
    // The same file for other batches is refused, naming the setting.
    let mut args2 = args.clone();
    args2.extend(["--seed", "7", "--overwrite"]);
    let e = err(smelt(&args2));
    assert!(e.contains("seed 1337") && e.contains("7"), "{e}");
}

#[test]
fn errors_name_the_problem() {
    let d = dir("errors");
    let (teacher, student) = (model(&d, "teacher", 48, 5, 1), model(&d, "student", 32, 0, 2));
    std::fs::write(d.join("t.jsonl"), "{\"text\": \"hello there\"}\n").unwrap();
    let (t, st, data, out) = (s(&teacher), s(&student), s(&d.join("t.jsonl")), s(&d.join("out")));
    let v = Tokenizer::byte_level().vocab_size();
    let e =
        err(smelt(&["distill", "--teacher", &t, "--model", &st, "--data", &data, "--output", &out, "--steps", "1"]));
    assert!(e.contains(&format!("vocabulary of {}", v + 5)) && e.contains(&format!("student {v}")), "{e}");
    let e = err(smelt(&["distill", "--teacher", &t, "--model", &st, "--output", &out]));
    assert!(e.contains("--data") && e.contains("--dataset"), "{e}");
    let e = err(smelt(&["distill", "--teacher", &t, "--data", &data, "--output", &out]));
    assert!(e.contains("--model") && e.contains("--size"), "{e}");
    let e = err(smelt(&[
        "distill",
        "--teacher",
        &t,
        "--model",
        &st,
        "--data",
        &data,
        "--output",
        &out,
        "--temperature",
        "0",
    ]));
    assert!(e.contains("--temperature 0"), "{e}");
    let e = err(smelt(&["sft", "--model", &st, "--data", &data, "--output", &out, "--optimizer", "sgd"]));
    assert!(e.contains("adamw, muon"), "{e}");
    // A corrupt logits file: an id past the vocabulary, a NaN logit; each named with the file.
    let logits = d.join("t.st");
    let base = ["distill", "--teacher", &st, "--model", &st, "--data", &data, "--output", &out, "--steps", "1"];
    let before = std::fs::read(d.join("t.jsonl")).unwrap();
    let e = err(smelt(&[&base[..], &["--dump-teacher-logits", &data]].concat()));
    assert!(e.contains("--dump-teacher-logits") && e.contains("is also an input"), "{e}");
    assert_eq!(std::fs::read(d.join("t.jsonl")).unwrap(), before, "the data was overwritten");
    ok(smelt(&[&base[..], &["--dump-teacher-logits", &s(&logits)]].concat()));
    let bytes = std::fs::read(&logits).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let at = |k: &str| 8 + n + header[k]["data_offsets"][0].as_u64().unwrap() as usize;
    for (key, value, want) in
        [("ids.0.0", 99_999u32.to_le_bytes(), "id 99999"), ("logits.0.0", f32::NAN.to_le_bytes(), "NaN")]
    {
        let mut b = bytes.clone();
        b[at(key)..at(key) + 4].copy_from_slice(&value);
        std::fs::write(&logits, b).unwrap();
        let teacher_at = ["--teacher-logits", logits.to_str().unwrap()];
        let e = err(smelt(&[&[base[0]][..], &base[3..], &teacher_at].concat()));
        assert!(e.contains("t.st") && e.contains(key) && e.contains(want), "{e}");
    }
}
