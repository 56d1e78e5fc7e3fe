//! `smelt sft`'s run end to end on a tiny model (byte-level tokenizer, a ChatML template):
//! every data shape trains, validation is logged, `epochs` sets the steps, and a run resumed
//! from a checkpoint ends bit-identical to an uninterrupted one (padded and packed, with
//! gradient accumulation), and one on 2 and 4 ranks (threads, ZeRO-1) follows the one-process
//! run at the same global batch, short last batches and ranks left without rows included.

mod common;

use smelt_model::{Model, ModelConfig};
use smelt_tokenizer::Tokenizer;
use smelt_train::{SftConfig, TrainConfig};
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
    let mut lines = Vec::new();
    for i in 0..14 {
        let q = format!("what is {i} plus {i}?");
        let a = format!("{}", 2 * i);
        lines.push(match i % 4 {
            0 => serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}),
            1 => serde_json::json!({"prompt": q, "completion": a}),
            2 => serde_json::json!({"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}]}),
            _ => serde_json::json!({"text": format!("{q} {a}")}),
        });
    }
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(d.join("train.jsonl"), &text).unwrap();
    std::fs::write(d.join("val.jsonl"), &text).unwrap();
    base
}

fn config(d: &Path, base: &Path, out: &str, packing: bool, steps: u64) -> TrainConfig {
    TrainConfig {
        init: Some(base.to_path_buf()),
        batch_size: 3,
        seq_len: 96,
        steps,
        grad_accum: 2,
        lr: 3e-3,
        min_lr: 1e-4,
        warmup: 1,
        checkpoint_dir: d.join(out),
        checkpoint_interval: 3,
        keep_checkpoints: 2,
        val_batches: 4,
        sft: Some(SftConfig {
            data: d.join("train.jsonl"),
            val_data: Some(d.join("val.jsonl")),
            train_on_prompt: false,
            packing,
            epochs: None,
            chat_template: Some(CHATML.into()),
        }),
        ..Default::default()
    }
}

fn weights(dir: &Path) -> Vec<Vec<f32>> {
    Model::load(dir).unwrap().params.iter().map(|p| p.as_f32().unwrap().to_vec()).collect()
}

#[test]
fn sft_resumes_exactly_and_logs_validation() {
    let d = std::env::temp_dir().join(format!("smelt-sft-e2e-{}", std::process::id()));
    let base = setup(&d);
    for packing in [false, true] {
        let tag = if packing { "packed" } else { "padded" };
        let straight = smelt_train::run(config(&d, &base, &format!("{tag}-a"), packing, 6), None).unwrap();
        assert!(straight.final_loss.is_finite());
        // A second lineage continues the first's step-3 checkpoint (the same 6-step schedule).
        let from = d.join(format!("{tag}-a/step-000003"));
        let resumed = smelt_train::run(config(&d, &base, &format!("{tag}-b"), packing, 6), Some(&from)).unwrap();
        assert_eq!(resumed.final_loss, straight.final_loss, "{tag}");
        assert!(weights(&straight.final_dir) == weights(&resumed.final_dir), "{tag}: resumed weights differ");

        let metrics = std::fs::read_to_string(d.join(format!("{tag}-a/metrics.jsonl"))).unwrap();
        let vals: Vec<f64> = metrics
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["val_loss"].as_f64())
            .collect();
        assert_eq!(vals.len(), 2, "{tag}: validation at step 3 and 6:\n{metrics}");
        assert!(vals[1] < vals[0], "{tag}: validation loss did not fall: {vals:?}");
        // The fine-tuned folder carries the chat template for `generate --chat`.
        let tc = std::fs::read_to_string(straight.final_dir.join("tokenizer_config.json")).unwrap();
        assert!(tc.contains("eos_token"), "{tc}");
    }

    // --epochs 2: 14 examples in batches of 3 → 5 batches per epoch, 10 batches / accum 2 = 5 steps.
    let mut cfg = config(&d, &base, "epochs", false, 1000);
    cfg.sft.as_mut().unwrap().epochs = Some(2);
    assert_eq!(smelt_train::run(cfg, None).unwrap().steps, 5);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn sft_errors_name_the_line() {
    let d = std::env::temp_dir().join(format!("smelt-sft-err-{}", std::process::id()));
    let base = setup(&d);
    std::fs::write(
        d.join("bad.jsonl"),
        "{\"text\": \"fine\"}\n{\"messages\": [{\"role\": \"user\", \"content\": 7}]}\n",
    )
    .unwrap();
    let mut cfg = config(&d, &base, "bad", false, 2);
    cfg.sft.as_mut().unwrap().data = d.join("bad.jsonl");
    let e = format!("{:#}", smelt_train::run(cfg, None).err().expect("must fail"));
    assert!(e.contains("bad.jsonl:2") && e.contains("\"messages\"[0].content"), "{e}");

    // A conversation with no template to render it.
    let mut cfg = config(&d, &base, "notmpl", false, 2);
    cfg.sft.as_mut().unwrap().chat_template = None;
    let e = format!("{:#}", smelt_train::run(cfg, None).err().expect("must fail"));
    assert!(e.contains("train.jsonl:1") && e.contains("chat template"), "{e}");

    std::fs::remove_dir_all(&d).unwrap();
}

/// SFT on ranks: each takes its block of every batch's rows (a short batch leaves some ranks a
/// stand-in row that counts for nothing) and scales its loss by its share of the batch's loss
/// tokens, so the token-weighted loss is the one-process run's: 3 rows a batch, 14 examples
/// (the last batch of an epoch 2 rows), on 2 and 4 ranks, padded and packed.
#[test]
fn sft_on_ranks_follows_one_process() {
    let d = std::env::temp_dir().join(format!("smelt-sft-ranks-{}", std::process::id()));
    let base = setup(&d);
    for packing in [false, true] {
        let tag = if packing { "packed" } else { "padded" };
        let one = config(&d, &base, &format!("one-{tag}"), packing, 8);
        smelt_train::run(one.clone(), None).unwrap();
        let want = common::metric(&one.checkpoint_dir, "loss");
        let want_w = weights(&one.checkpoint_dir.join("final"));
        for world in [2, 4] {
            let c = config(&d, &base, &format!("{world}-{tag}"), packing, 8);
            common::run_ranks(&c, world, None, None);
            let got = common::metric(&c.checkpoint_dir, "loss");
            let rel = common::max_rel(&got, &want);
            println!("sft {tag} on {world} ranks: largest relative loss difference {rel:.2e} over {} steps", got.len());
            assert!(rel < 1e-5, "{got:?}\nvs one process {want:?}");
            for (x, y) in weights(&c.checkpoint_dir.join("final")).iter().zip(&want_w) {
                let e = smelt_testing::nmse(x, y);
                assert!(e < 1e-8, "{tag}, {world} ranks: final weights NMSE {e:e}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}
