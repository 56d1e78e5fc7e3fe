//! `smelt dpo`'s run end to end on a tiny model (byte-level tokenizer, a ChatML template): the
//! first update scores the policy against itself (rewards 0, loss ln 2), TRL's metrics are
//! logged for the update and the validation pairs, training raises the validation accuracy,
//! a run resumed from a checkpoint ends bit-identical to an uninterrupted one (full fine-tune
//! and LoRA), a bad line is an error naming `file:line` and the field before training, and
//! one on 2 and 4 ranks (threads, ZeRO-1) follows the one-process run, metrics included.

mod common;

use smelt_model::{LoraConfig, Model, ModelConfig};
use smelt_tokenizer::Tokenizer;
use smelt_train::{DpoConfig, TrainConfig};
use std::path::{Path, PathBuf};

const CHATML: &str = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fn setup(d: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(d);
    let base = d.join("base");
    std::fs::create_dir_all(&base).unwrap();
    let tok = Tokenizer::byte_level();
    let mut cfg = ModelConfig::llama(tok.vocab_size(), 32, 2, 4, 2, 64);
    cfg.eos_token_ids = tok.eos_id().into_iter().collect();
    Model::init(cfg, 1).unwrap().save(&base).unwrap();
    tok.save_hf(&base).unwrap();
    // Chosen: the sum; rejected: a fixed wrong answer. Strings and conversations alternate.
    let lines: Vec<serde_json::Value> = (0..16)
        .map(|i| {
            let (q, good, bad) = (format!("{i}+{i}="), format!("{}", 2 * i), "zz".to_string());
            if i % 2 == 0 {
                serde_json::json!({"prompt": q, "chosen": good, "rejected": bad})
            } else {
                let m = |c: &str| serde_json::json!([{"role": "assistant", "content": c}]);
                serde_json::json!({"prompt": [{"role": "user", "content": q}], "chosen": m(&good), "rejected": m(&bad)})
            }
        })
        .collect();
    let text = |l: &[serde_json::Value]| l.iter().map(|l| format!("{l}\n")).collect::<String>();
    std::fs::write(d.join("train.jsonl"), text(&lines[..12])).unwrap();
    std::fs::write(d.join("val.jsonl"), text(&lines[12..])).unwrap();
    base
}

fn config(d: &Path, base: &Path, out: &str, steps: u64) -> TrainConfig {
    TrainConfig {
        init: Some(base.to_path_buf()),
        batch_size: 2,
        seq_len: 128,
        steps,
        grad_accum: 2,
        lr: 3e-3,
        min_lr: 1e-4,
        warmup: 1,
        weight_decay: 0.0,
        checkpoint_dir: d.join(out),
        checkpoint_interval: 3,
        keep_checkpoints: 2,
        val_batches: 4,
        dpo: Some(DpoConfig {
            data: d.join("train.jsonl"),
            val_data: Some(d.join("val.jsonl")),
            beta: 0.5,
            epochs: None,
            chat_template: Some(CHATML.into()),
            ref_model: None,
            adapter: None,
        }),
        ..Default::default()
    }
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn tensors(dir: &Path) -> Vec<Vec<f32>> {
    smelt_train::checkpoint::load_model(dir).unwrap().trainable().iter().map(|p| p.as_f32().unwrap().to_vec()).collect()
}

#[test]
fn dpo_logs_trl_metrics_learns_and_resumes_exactly() {
    let d = std::env::temp_dir().join(format!("smelt-dpo-e2e-{}", std::process::id()));
    let base = setup(&d);
    for lora in [false, true] {
        let tag = if lora { "lora" } else { "full" };
        let cfg = |out: &str, steps| {
            let mut c = config(&d, &base, out, steps);
            if lora {
                c.lora = Some(
                    LoraConfig::new(4, 8.0, 0.0, &LoraConfig::parse_targets("all-linear").unwrap(), false).unwrap(),
                );
                c.lr = 2e-2;
            }
            c
        };
        let straight = smelt_train::run(cfg(&format!("{tag}-a"), 9), None).unwrap();
        let m = metrics(&d.join(format!("{tag}-a")));
        assert_eq!(m.len(), 9, "{tag}");
        // Step 1 scores the policy against itself: every reward 0, no pair "accurate", loss ln 2.
        for k in ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"] {
            assert_eq!(m[0][k].as_f64(), Some(0.0), "{tag}: {k} at step 1: {}", m[0]);
        }
        assert!((m[0]["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6, "{tag}: {}", m[0]);
        assert!(m[0]["logps/chosen"].as_f64().unwrap() < 0.0 && m[0]["logps/rejected"].as_f64().unwrap() < 0.0);
        // Validation at steps 3, 6 and 9: its accuracy rises and the margin grows.
        let val: Vec<(f64, f64)> = m
            .iter()
            .filter_map(|l| Some((l["val_rewards/accuracies"].as_f64()?, l["val_rewards/margins"].as_f64()?)))
            .collect();
        assert_eq!(val.len(), 3, "{tag}: {m:?}");
        assert!(m[8]["val_loss"].as_f64().unwrap() < std::f64::consts::LN_2, "{tag}: {}", m[8]);
        assert!(val[2].0 == 1.0 && val[2].1 > val[0].1, "{tag}: validation {val:?}");

        // A second lineage continues the first's step-3 checkpoint (the same 9-step schedule).
        let from = d.join(format!("{tag}-a/step-000003"));
        let resumed = smelt_train::run(cfg(&format!("{tag}-b"), 9), Some(&from)).unwrap();
        assert_eq!(resumed.final_loss, straight.final_loss, "{tag}");
        assert!(tensors(&straight.final_dir) == tensors(&resumed.final_dir), "{tag}: resumed weights differ");
        let (mut last, mut want) = (metrics(&d.join(format!("{tag}-b"))).pop().unwrap(), m[8].clone());
        for l in [&mut last, &mut want] {
            l.as_object_mut().unwrap().remove("tokens_per_second");
        }
        assert_eq!(last, want, "{tag}: the last metrics line differs");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn dpo_errors_name_the_line_and_field_before_training() {
    let d = std::env::temp_dir().join(format!("smelt-dpo-err-{}", std::process::id()));
    let base = setup(&d);
    let bad = [
        (r#"{"prompt": "q", "chosen": "a"}"#, "field \"rejected\" is missing"),
        (r#"{"prompt": "q", "chosen": "a", "rejected": null}"#, "field \"rejected\" is missing"),
        (
            r#"{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": 1}], "rejected": [{"role": "assistant", "content": "b"}]}"#,
            "field \"chosen\"[0].content: expected a string, got a number",
        ),
        (r#"{"prompt": "q", "chosen": ["a"], "rejected": "b"}"#, "expected two strings or two message lists"),
        ("not json", "not valid JSON"),
    ];
    for (i, (line, want)) in bad.iter().enumerate() {
        std::fs::write(
            d.join("bad.jsonl"),
            format!("{{\"prompt\": \"1\", \"chosen\": \"2\", \"rejected\": \"3\"}}\n\n{line}\n"),
        )
        .unwrap();
        let mut cfg = config(&d, &base, &format!("bad{i}"), 2);
        cfg.dpo.as_mut().unwrap().data = d.join("bad.jsonl");
        let e = format!("{:#}", smelt_train::run(cfg, None).err().expect("must fail"));
        assert!(e.contains("bad.jsonl:3") && e.contains(want), "{line}: {e}");
        assert!(!d.join(format!("bad{i}/metrics.jsonl")).exists(), "nothing trained");
    }
    let mut cfg = config(&d, &base, "beta", 2);
    cfg.dpo.as_mut().unwrap().beta = 0.0;
    let e = format!("{:#}", smelt_train::run(cfg, None).err().expect("must fail"));
    assert!(e.contains("--beta 0"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// `--adapter SFT_DIR` under LoRA: the policy and the reference are base + SFT merged, and a
/// resume rebuilds that base (`checkpoint::load_model` merges the SFT adapter again) to end
/// bit-identical.
#[test]
fn dpo_on_an_sft_adapter_resumes_exactly() {
    let d = std::env::temp_dir().join(format!("smelt-dpo-sft-{}", std::process::id()));
    let base = setup(&d);
    let lora = || LoraConfig::new(4, 8.0, 0.0, &LoraConfig::parse_targets("all-linear").unwrap(), false).unwrap();
    // An SFT adapter with non-zero B: a few LoRA SFT steps on the chosen answers.
    let sft_data: String = std::fs::read_to_string(d.join("train.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            let c = o.remove("chosen").unwrap();
            o.remove("rejected");
            o.insert("completion".into(), c);
            format!("{v}\n")
        })
        .collect();
    std::fs::write(d.join("sft.jsonl"), sft_data).unwrap();
    let sft = TrainConfig {
        init: Some(base.clone()),
        batch_size: 4,
        seq_len: 128,
        steps: 3,
        lr: 2e-2,
        warmup: 0,
        checkpoint_dir: d.join("sft"),
        checkpoint_interval: 0,
        lora: Some(lora()),
        sft: Some(smelt_train::SftConfig {
            data: d.join("sft.jsonl"),
            chat_template: Some(CHATML.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sft_dir = smelt_train::run(sft, None).unwrap().final_dir;

    let cfg = |out: &str| {
        let mut c = config(&d, &base, out, 6);
        c.lora = Some(lora());
        c.lr = 2e-2;
        c.dpo.as_mut().unwrap().adapter = Some(sft_dir.clone());
        c
    };
    let start = || {
        let mut m = Model::load(&base).unwrap();
        m.attach_dir(&sft_dir).unwrap();
        (m.merged().unwrap(), Tokenizer::from_file(&base).unwrap())
    };
    let straight = smelt_train::run_with(cfg("a"), None, Some(start())).unwrap();
    let resumed = smelt_train::run_with(cfg("b"), Some(&d.join("a/step-000003")), None).unwrap();
    assert_eq!(resumed.final_loss, straight.final_loss);
    assert!(tensors(&straight.final_dir) == tensors(&resumed.final_dir), "resumed adapter differs");
    // And the SFT adapter mattered: on the plain base the run is another one.
    let mut p = cfg("plain");
    p.dpo.as_mut().unwrap().adapter = None;
    let plain = smelt_train::run(p, None).unwrap();
    assert_ne!(plain.final_loss, straight.final_loss);
    std::fs::remove_dir_all(&d).unwrap();
}

/// DPO on ranks: each takes its block of every batch's pairs (with 2 pairs a batch on 4 ranks,
/// two ranks hold a stand-in pair that counts for nothing) and their reference
/// log-probabilities; the losses and TRL's metrics (summed over the ranks' pairs) are the
/// one-process run's.
#[test]
fn dpo_on_ranks_follows_one_process() {
    let d = std::env::temp_dir().join(format!("smelt-dpo-ranks-{}", std::process::id()));
    let base = setup(&d);
    let one = config(&d, &base, "one", 6);
    smelt_train::run(one.clone(), None).unwrap();
    for world in [2, 4] {
        let c = config(&d, &base, &format!("ranks{world}"), 6);
        common::run_ranks(&c, world, None, None);
        // Rewards start at 0 (the policy is the reference): differences relative to 1 there.
        // Accuracies count rewards' signs, even at 0, so they are compared after step 1.
        for key in ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "val_loss"] {
            let (got, want) = (common::metric(&c.checkpoint_dir, key), common::metric(&one.checkpoint_dir, key));
            assert!(!want.is_empty() && got.len() == want.len(), "{key}: {got:?} vs {want:?}");
            let from = if key == "rewards/accuracies" { 1 } else { 0 };
            let diff = got[from..]
                .iter()
                .zip(&want[from..])
                .map(|((_, x), (_, y))| (x - y).abs() / y.abs().max(1.0))
                .fold(0.0, f64::max);
            println!("dpo on {world} ranks: {key}: largest difference {diff:.2e}");
            assert!(diff < 1e-4, "{key} on {world} ranks: {got:?}\nvs one process {want:?}");
        }
        let (a, b) = (tensors(&c.checkpoint_dir.join("final")), tensors(&one.checkpoint_dir.join("final")));
        for (x, y) in a.iter().zip(&b) {
            let e = smelt_testing::nmse(x, y);
            assert!(e < 1e-8, "{world} ranks: final weights NMSE {e:e}");
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}
