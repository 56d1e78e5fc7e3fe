//! LoRA through the `smelt` binary: `train --lora-r` writes a PEFT adapter; `--adapter` on
//! perplexity, generate and bench, `merge` and `export-gguf --adapter` all compute the same
//! model (the merged folder scores what base + adapter scores, a GGUF base takes the adapter
//! too); bad flags and folders are refused with the flag or file named.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SMELT: &str = env!("CARGO_BIN_EXE_smelt");

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("lora-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn smelt(args: &[&str]) -> Output {
    Command::new(SMELT).args(args).output().unwrap()
}

#[track_caller]
fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed ({:?}):\n{}", o.status, String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[track_caller]
fn refused(o: &Output, needles: &[&str]) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && o.status.code() != Some(101), "expected a refusal:\n{e}");
    for n in needles {
        assert!(e.contains(n), "message lacks {n:?}:\n{e}");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn nll(model: &Path, adapter: Option<&Path>, text: &Path) -> f64 {
    let mut args = vec!["perplexity", "--model", s(model), "--input", s(text), "--seq-len", "32", "--format", "json"];
    if let Some(a) = adapter {
        args.extend(["--adapter", s(a)]);
    }
    let v: serde_json::Value = serde_json::from_str(ok(&smelt(&args)).trim()).unwrap();
    v["mean_nll"].as_f64().unwrap()
}

#[test]
fn train_an_adapter_then_use_merge_and_export_it() {
    let d = dir("e2e");
    let gz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/linux-doc-slice.txt.gz");
    let text = Command::new("gzip").arg("-dc").arg(&gz).output().expect("gzip").stdout;
    let corpus = d.join("corpus.txt");
    std::fs::write(&corpus, &text[..text.len().min(60_000)]).unwrap();
    ok(&smelt(&["tokenizer", "--input", s(&corpus), "--vocab-size", "300", "--output", s(&d.join("tok.json"))]));
    ok(&smelt(&["prepare", "-i", s(&corpus), "--tokenizer", s(&d.join("tok.json")), "-o", s(&d.join("train.bin"))]));
    let (tok, bin, base_dir, lora_dir) = (d.join("tok.json"), d.join("train.bin"), d.join("base"), d.join("lora"));
    let common = ["--dataset", s(&bin), "--batch-size", "2", "--seq-len", "32", "--device", "cpu"];
    // A small base, then an adapter on it.
    let mut base_args = vec!["train", "--tokenizer", s(&tok), "--size", "custom", "--dim", "32"];
    base_args.extend(["--layers", "2", "--heads", "4", "--kv-heads", "2", "--steps", "3", "--checkpoint-dir"]);
    base_args.push(s(&base_dir));
    base_args.extend(common);
    ok(&smelt(&base_args));
    let base = d.join("base/final");
    let mut lora_args = vec!["train", "--init", s(&base), "--steps", "4", "--lr", "1e-2", "--lora-r", "4"];
    lora_args.extend(["--lora-alpha", "8", "--lora-dropout", "0.1", "--lora-targets", "q,v,o,down", "--use-rslora"]);
    lora_args.extend(["--checkpoint-dir", s(&lora_dir)]);
    lora_args.extend(common);
    ok(&smelt(&lora_args));
    let adapter = d.join("lora/final");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["use_rslora"], true);
    assert_eq!(cfg["lora_dropout"], 0.1);
    assert_eq!(cfg["target_modules"], serde_json::json!(["q_proj", "v_proj", "o_proj", "down_proj"]));

    // Scores: base + adapter = merged folder ≠ base alone.
    let text = d.join("eval.txt");
    std::fs::write(&text, "The kernel's memory management code keeps a list of free pages per zone. ".repeat(8))
        .unwrap();
    let with = nll(&base, Some(&adapter), &text);
    let plain = nll(&base, None, &text);
    ok(&smelt(&["merge", "--model", s(&base), "--adapter", s(&adapter), "--output", s(&d.join("merged"))]));
    assert!(d.join("merged/tokenizer.json").exists());
    let merged = nll(&d.join("merged"), None, &text);
    assert!(((with - merged) / merged).abs() < 1e-5, "adapter {with} vs merged {merged}");
    assert!((with - plain).abs() > 1e-4, "the adapter changed nothing ({with} vs {plain})");

    // Generation: greedy through the adapter = greedy from the merged folder.
    let gen = |m: &Path, a: Option<&Path>| {
        let mut args = vec!["generate", "--model", s(m), "--prompt", "The kernel", "--temperature", "0"];
        args.extend(["--max-tokens", "12", "--format", "json"]);
        if let Some(a) = a {
            args.extend(["--adapter", s(a)]);
        }
        let v: serde_json::Value = serde_json::from_str(ok(&smelt(&args)).trim()).unwrap();
        v["ids"].clone()
    };
    assert_eq!(gen(&base, Some(&adapter)), gen(&d.join("merged"), None));
    // And through the server: `serve --adapter` answers what `generate --adapter` does.
    let want: serde_json::Value = serde_json::from_str(
        ok(&smelt(&[
            "generate",
            "--model",
            s(&base),
            "--adapter",
            s(&adapter),
            "--prompt",
            "The kernel",
            "--temperature",
            "0",
            "--max-tokens",
            "12",
            "--format",
            "json",
            "--device",
            "cpu",
        ]))
        .trim(),
    )
    .unwrap();
    assert_eq!(serve_completion(&base, &adapter, "The kernel", 12), want["text"], "serve --adapter");

    // GGUF: the export of base + adapter scores as the merged folder; a GGUF base takes the
    // adapter (its q/k rows in llama.cpp's order) and scores the same.
    let gguf = d.join("merged.gguf");
    ok(&smelt(&["export-gguf", "--model", s(&base), "--adapter", s(&adapter), "--type", "f32", "--output", s(&gguf)]));
    let g = nll(&gguf, None, &text);
    assert!(((g - merged) / merged).abs() < 1e-4, "gguf {g} vs merged {merged}");
    let base_gguf = d.join("base.gguf");
    ok(&smelt(&["export-gguf", "--model", s(&base), "--type", "f32", "--output", s(&base_gguf)]));
    let ga = nll(&base_gguf, Some(&adapter), &text);
    assert!(((ga - merged) / merged).abs() < 1e-4, "gguf base + adapter {ga} vs merged {merged}");

    // `train --init` takes a GGUF file: dequantised for a full fine-tune (the f32 export is
    // the folder's model with Q/K in llama.cpp's row order: the same first loss up to rounding).
    let from = |init: &Path, out: &str| {
        let out = d.join(out);
        let mut args = vec!["train", "--init", s(init), "--steps", "2", "--lr", "1e-3", "--checkpoint-dir", s(&out)];
        args.extend(common);
        ok(&smelt(&args));
        let m = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        serde_json::from_str::<serde_json::Value>(m.lines().next().unwrap()).unwrap()["loss"].as_f64().unwrap()
    };
    let (lf, lg) = (from(&base, "full-folder"), from(&base_gguf, "full-gguf"));
    assert!(((lf - lg) / lf).abs() < 1e-4, "train --init base.gguf starts at {lg}, the folder at {lf}");
    assert!(d.join("full-gguf/final/model.safetensors").exists());

    // bench runs through the adapter and times a training step of it.
    let b = ok(&smelt(&[
        "bench",
        "--model",
        s(&base),
        "--adapter",
        s(&adapter),
        "--iters",
        "1",
        "--batch-size",
        "1",
        "--seq-len",
        "16",
        "--decode-tokens",
        "4",
        "--device",
        "cpu",
    ]));
    assert!(b.contains("train"), "{b}");

    // Refusals name the flag or the file.
    refused(&smelt(&["train", "--dataset", "x.bin", "--lora-alpha", "4"]), &["--lora-r"]);
    refused(
        &smelt(&["train", "--init", s(&base), "--lora-r", "4", "--lora-targets", "q,lm_head", "--dataset", "x"]),
        &["lm_head"],
    );
    refused(
        &smelt(&["perplexity", "--model", s(&base), "--adapter", s(&base), "--input", s(&text)]),
        &["adapter_config.json"],
    );
    refused(
        &smelt(&["merge", "--model", s(&base), "--adapter", s(&adapter), "--output", s(&d.join("merged"))]),
        &["not empty"],
    );
}

const CHATML: &str = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

fn first_loss(out: &Path) -> f64 {
    let m = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let v: serde_json::Value = serde_json::from_str(m.lines().next().unwrap()).unwrap();
    v["loss"].as_f64().unwrap()
}

/// `smelt sft --lora-r` from a folder (step 0 is the base: B = 0, so the first loss is the full
/// fine-tune's) and from a Q8_0 GGUF kept quantised (QLoRA): the same first loss up to the
/// quantisation, an adapter that `--adapter` then runs on that GGUF.
#[test]
fn sft_trains_an_adapter_on_a_folder_and_on_a_quantised_gguf() {
    let d = dir("sft");
    let base = d.join("base");
    std::fs::create_dir_all(&base).unwrap();
    let tok = smelt_tokenizer::Tokenizer::byte_level();
    let mut cfg = smelt_model::ModelConfig::llama(tok.vocab_size(), 32, 2, 4, 2, 64);
    cfg.eos_token_ids = tok.eos_id().into_iter().collect();
    smelt_model::Model::init(cfg, 2).unwrap().save(&base).unwrap();
    tok.save_hf(&base).unwrap();
    let tc = base.join("tokenizer_config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&tc).unwrap()).unwrap();
    v["chat_template"] = CHATML.into();
    std::fs::write(&tc, v.to_string()).unwrap();
    let lines = [
        r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#,
        r#"{"prompt": "1+1=", "completion": "2"}"#,
        r#"{"text": "plain text is all in the loss"}"#,
    ];
    let data = d.join("train.jsonl");
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let run = |model: &Path, out: &str, lora: bool| {
        let out = d.join(out);
        let mut args = vec!["sft", "--model", s(model), "--data", s(&data), "--output", s(&out)];
        args.extend(["--steps", "3", "--batch-size", "2", "--seq-len", "96", "--lr", "1e-2", "--device", "cpu"]);
        if lora {
            args.extend(["--lora-r", "4", "--lora-alpha", "8"]);
        }
        ok(&smelt(&args));
        out
    };
    let full = run(&base, "full", false);
    let lora = run(&base, "lora", true);
    assert!(lora.join("final/adapter_model.safetensors").exists());
    let (f, l) = (first_loss(&full), first_loss(&lora));
    assert!((f - l).abs() / f < 1e-6, "step 0 of LoRA is the base: {l} vs {f}");

    let q8 = d.join("base-q8.gguf");
    ok(&smelt(&["export-gguf", "--model", s(&base), "--output", s(&q8), "--type", "q8_0", "--pre", "gpt-2"]));
    let q = run(&q8, "qlora", true);
    let ql = first_loss(&q);
    assert!((ql - l).abs() / l < 1e-2, "QLoRA's first loss {ql} vs {l} on the f32 base");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(q.join("final/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["base_model_name_or_path"], s(&q8));
    let text = d.join("eval.txt");
    std::fs::write(&text, "plain text is all in the loss. ".repeat(4)).unwrap();
    let (with, plain) = (nll(&q8, Some(&q.join("final")), &text), nll(&q8, None, &text));
    assert!(with < plain, "the QLoRA adapter learned the text: {with} vs {plain} without it");

    // QLoRA from the float folder (`--quantize q8_0`: its matrices quantised in memory) starts
    // where the Q8_0 GGUF does, up to the GGUF's own choices (it quantises the tied embedding
    // too; --quantize keeps it f32), and both resume exactly: the GGUF base is loaded again,
    // the folder's matrices quantised again to the same blocks.
    let run_q = |model: &Path, out: &str, extra: &[&str]| {
        let out = d.join(out);
        let mut args = vec!["sft", "--model", s(model), "--data", s(&data), "--output", s(&out)];
        args.extend(["--steps", "4", "--batch-size", "2", "--seq-len", "96", "--lr", "1e-2", "--device", "cpu"]);
        args.extend(["--lora-r", "4", "--lora-alpha", "8", "--checkpoint-interval", "2"]);
        args.extend(extra);
        ok(&smelt(&args));
        out
    };
    let qf = run_q(&base, "qlora-folder", &["--quantize", "q8_0"]);
    let qfl = first_loss(&qf);
    assert!((qfl - l).abs() / l < 1e-2, "--quantize q8_0's first loss {qfl} vs {l} on the f32 base");
    assert!(qfl != l, "--quantize q8_0 changed nothing: the base was not quantised");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(qf.join("final/trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["config"]["quantize_base"], "q8_0");
    let qg = run_q(&q8, "qlora-gguf", &[]);
    let losses = |out: &Path| -> Vec<String> {
        let m = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        m.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].to_string()).collect()
    };
    for (straight, name) in [(&qf, "qf-resumed"), (&qg, "qg-resumed")] {
        let out = d.join(name);
        let step2 = straight.join("step-000002");
        ok(&smelt(&["sft", "--resume", s(&step2), "--output", s(&out), "--steps", "4", "--device", "cpu"]));
        assert_eq!(losses(&out), losses(straight)[2..].to_vec(), "{name}: losses after resume differ");
        let a = std::fs::read(straight.join("final/adapter_model.safetensors")).unwrap();
        let b = std::fs::read(out.join("final/adapter_model.safetensors")).unwrap();
        assert!(a == b, "{name}: the resumed run's adapter differs from the straight run's");
    }
    // A full fine-tune has nothing to keep quantised.
    refused(
        &smelt(&["sft", "--model", s(&base), "--data", s(&data), "--output", s(&d.join("x")), "--quantize", "q8_0"]),
        &["--lora-r"],
    );
    refused(
        &smelt(&[
            "sft",
            "--model",
            s(&base),
            "--data",
            s(&data),
            "--output",
            s(&d.join("y")),
            "--lora-r",
            "4",
            "--quantize",
            "f16",
        ]),
        &["--quantize f16", "q8_0"],
    );
}

/// Greedy `/v1/completions` text from `smelt serve --model base --adapter adapter`.
fn serve_completion(base: &Path, adapter: &Path, prompt: &str, max_tokens: u32) -> serde_json::Value {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(["-t", "2", "serve", "--model", s(base), "--adapter", s(adapter), "--port", "0", "--device", "cpu"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let addr: std::net::SocketAddr = loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            panic!("smelt serve --adapter ended before it was ready:\n{seen}")
        };
        seen += &line;
        seen += "\n";
        if let Some(rest) = line.split("ready on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let body = serde_json::json!({"model": "final", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0});
    let r = smelt_testing::http::request(addr, "POST", "/v1/completions", &[], body.to_string().as_bytes());
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(r.status, 200, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    v["choices"][0]["text"].clone()
}
