//! `smelt dpo` through the binary: on an SFT adapter (`--adapter`, merged) with a LoRA adapter
//! trained on top, TRL's metrics logged and step 1 scoring the policy against itself; with
//! `--ref-model` another model (the plain base) the rewards start away from 0; a bad line is
//! an error naming `file:line`.

use smelt_model::{Model, ModelConfig};
use smelt_tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SMELT: &str = env!("CARGO_BIN_EXE_smelt");
const CHATML: &str = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

fn smelt(args: &[&str]) -> Output {
    Command::new(SMELT).args(args).output().unwrap()
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    let m = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    m.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn dpo_on_an_sft_adapter_with_lora_and_a_ref_model() {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("dpo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
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
    let (mut sft, mut pairs) = (String::new(), String::new());
    for i in 0..6 {
        sft += &format!("{}\n", serde_json::json!({"prompt": format!("{i}+{i}="), "completion": format!("{}", 2 * i)}));
        let m = |c: String| serde_json::json!([{"role": "assistant", "content": c}]);
        let p = serde_json::json!({"prompt": [{"role": "user", "content": format!("{i}+{i}?")}],
            "chosen": m(format!("{}", 2 * i)), "rejected": m("no".into())});
        pairs += &format!("{p}\n");
    }
    std::fs::write(d.join("sft.jsonl"), sft).unwrap();
    std::fs::write(d.join("pairs.jsonl"), &pairs).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let common = ["--batch-size", "2", "--seq-len", "96", "--device", "cpu", "--lora-r", "4", "--warmup", "0"];
    let (base_s, sft_data, sft_out) = (s(&base), s(&d.join("sft.jsonl")), s(&d.join("sft")));
    let mut args = vec!["sft", "--model", &base_s];
    args.extend(["--data", &sft_data, "--output", &sft_out, "--steps", "3", "--lr", "2e-2"]);
    args.extend(common);
    ok(smelt(&args));
    let sft_final = d.join("sft/final");

    let dpo = |out: &str, extra: &[&str]| -> Vec<serde_json::Value> {
        let (b, a, p, o) = (s(&base), s(&sft_final), s(&d.join("pairs.jsonl")), s(&d.join(out)));
        let mut args =
            vec!["dpo", "--model", &b, "--adapter", &a, "--data", &p, "--val-data", &p, "--output", &o, "--steps", "2"];
        args.extend(["--lr", "1e-2", "--beta", "0.2"]);
        args.extend(common);
        args.extend(extra);
        ok(smelt(&args));
        assert!(d.join(out).join("final/adapter_config.json").exists(), "a LoRA run saves its adapter");
        metrics(&d.join(out))
    };
    let m = dpo("dpo", &[]);
    assert_eq!(m.len(), 2);
    for k in ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"] {
        assert_eq!(m[0][k].as_f64(), Some(0.0), "{k}: step 1 scores the policy against itself: {}", m[0]);
    }
    for k in ["logps/chosen", "logps/rejected", "val_rewards/accuracies", "val_logps/chosen", "val_loss"] {
        assert!(m[1][k].is_number(), "{k} missing: {}", m[1]);
    }
    // The plain base as the reference: the policy (base + SFT) already differs from it.
    let r = dpo("dpo-ref", &["--ref-model", &s(&base)]);
    assert_ne!(r[0]["rewards/chosen"].as_f64(), Some(0.0), "{}", r[0]);
    // The same base as a GGUF file (f32: the same model, Q/K in llama.cpp's row order) is the
    // same reference, up to rounding.
    let gguf = d.join("base.gguf");
    ok(smelt(&["export-gguf", "--model", &s(&base), "--type", "f32", "--output", &s(&gguf), "--pre", "gpt-2"]));
    let g = dpo("dpo-ref-gguf", &["--ref-model", &s(&gguf)]);
    for k in ["rewards/chosen", "rewards/rejected"] {
        let (a, b) = (r[0][k].as_f64().unwrap(), g[0][k].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-3 * a.abs().max(1e-2), "{k}: GGUF reference {b}, folder {a}");
    }

    // QLoRA on base + SFT merged (`--quantize`, applied after the merge) resumes exactly: the
    // checkpoint rebuilds the merged base, then its blocks.
    let q = dpo("dpo-q", &["--quantize", "q8_0", "--checkpoint-interval", "1"]);
    let (step1, resumed) = (s(&d.join("dpo-q/step-000001")), s(&d.join("dpo-q-resumed")));
    ok(smelt(&["dpo", "--resume", &step1, "--output", &resumed, "--steps", "2", "--device", "cpu"]));
    let rm = metrics(&d.join("dpo-q-resumed"));
    assert_eq!(rm[0]["loss"], q[1]["loss"], "the resumed step 2 differs: {} vs {}", rm[0], q[1]);
    let a = std::fs::read(d.join("dpo-q/final/adapter_model.safetensors")).unwrap();
    let b = std::fs::read(d.join("dpo-q-resumed/final/adapter_model.safetensors")).unwrap();
    assert!(a == b, "the resumed QLoRA DPO adapter differs from the straight run's");

    std::fs::write(d.join("bad.jsonl"), format!("{pairs}{{\"prompt\": \"q\", \"chosen\": \"a\"}}\n")).unwrap();
    let o = smelt(&["dpo", "--model", &s(&base), "--data", &s(&d.join("bad.jsonl")), "--output", &s(&d.join("bad"))]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("bad.jsonl:7") && e.contains("\"rejected\" is missing"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}
