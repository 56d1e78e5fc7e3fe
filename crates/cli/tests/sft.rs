//! `smelt sft` through the binary: a fine-tune from a model folder and from a GGUF file (the same
//! weights, dequantised: the same first loss), the fine-tuning defaults on the shared flags, and
//! errors that name the line.

use smelt_model::{Model, ModelConfig};
use smelt_tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SMELT: &str = env!("CARGO_BIN_EXE_smelt");
const CHATML: &str = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("sft-{}-{name}", std::process::id()));
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

/// A tiny byte-level model folder with a chat template, and JSONL examples of every shape.
fn setup(d: &Path) -> PathBuf {
    let base = d.join("base");
    std::fs::create_dir_all(&base).unwrap();
    let tok = Tokenizer::byte_level();
    let mut cfg = ModelConfig::llama(tok.vocab_size(), 32, 2, 4, 2, 64);
    cfg.eos_token_ids = tok.eos_id().into_iter().collect();
    Model::init(cfg, 2).unwrap().save(&base).unwrap();
    tok.save_hf(&base).unwrap();
    let tc = base.join("tokenizer_config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&tc).unwrap()).unwrap();
    v["chat_template"] = CHATML.into();
    std::fs::write(&tc, v.to_string()).unwrap();
    let lines = [
        r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#,
        r#"{"prompt": "1+1=", "completion": "2"}"#,
        r#"{"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}]}"#,
        r#"{"text": "plain text is all in the loss"}"#,
    ];
    std::fs::write(d.join("train.jsonl"), lines.join("\n") + "\n").unwrap();
    base
}

fn first_loss(out: &Path) -> f64 {
    let m = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let v: serde_json::Value = serde_json::from_str(m.lines().next().unwrap()).unwrap();
    v["loss"].as_f64().unwrap()
}

#[test]
fn sft_from_a_folder_and_from_gguf() {
    let d = dir("run");
    let base = setup(&d);
    let (data, s) = (d.join("train.jsonl"), |p: &Path| p.to_str().unwrap().to_string());
    let common = ["--steps", "2", "--batch-size", "2", "--seq-len", "96", "--lr", "1e-3", "--device", "cpu"];
    let run = |model: &Path, out: &str| {
        let (model, out, data) = (s(model), s(&d.join(out)), s(&data));
        let mut args = vec!["sft", "--model", &model, "--data", &data, "--val-data", &data, "--output", &out];
        args.extend(common);
        ok(smelt(&args));
    };
    run(&base, "from-folder");
    let fin = d.join("from-folder/final");
    assert!(Model::load(&fin).is_ok());
    let tc = std::fs::read_to_string(fin.join("tokenizer_config.json")).unwrap();
    assert!(tc.contains("chat_template"), "the fine-tuned folder lost the chat template: {tc}");
    let metrics = std::fs::read_to_string(d.join("from-folder/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    assert!(metrics.lines().last().unwrap().contains("val_loss"), "{metrics}");

    let gguf = d.join("base.gguf");
    ok(smelt(&["export-gguf", "--model", &s(&base), "--output", &s(&gguf), "--type", "f32", "--pre", "gpt-2"]));
    run(&gguf, "from-gguf");
    // The same weights (f32 GGUF): the same first loss, up to llama.cpp's RoPE angles.
    let (a, b) = (first_loss(&d.join("from-folder")), first_loss(&d.join("from-gguf")));
    assert!((a - b).abs() / a < 1e-5, "folder {a} vs gguf {b}");
    let tuned = Model::load(&d.join("from-gguf/final")).unwrap();
    assert_eq!(tuned.cfg.dim, 32);
}

#[test]
fn sft_defaults_and_errors() {
    let help = String::from_utf8(ok(smelt(&["sft", "--help"])).stdout).unwrap();
    for want in ["--lr <LR>", "[default: 2e-5]", "[default: 1024]", "--packing", "--train-on-prompt", "--epochs"] {
        assert!(help.contains(want), "sft --help lacks {want}");
    }
    let train_help = String::from_utf8(ok(smelt(&["train", "--help"])).stdout).unwrap();
    assert!(train_help.contains("[default: 0.001]"), "train's own defaults must stay");

    let d = dir("err");
    let base = setup(&d);
    std::fs::write(d.join("bad.jsonl"), "{\"text\": \"ok\"}\n{\"prompt\": \"x\", \"completion\": 3}\n").unwrap();
    let o = smelt(&[
        "sft",
        "--model",
        base.to_str().unwrap(),
        "--data",
        d.join("bad.jsonl").to_str().unwrap(),
        "--output",
        d.join("out").to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("bad.jsonl:2") && err.contains("\"completion\""), "{err}");
    assert!(!d.join("out/final").exists());
    let o = smelt(&["sft", "--model", "m", "--data", "x", "--output", "o", "--epochs", "2", "--steps", "5"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("cannot be used with"));
}
