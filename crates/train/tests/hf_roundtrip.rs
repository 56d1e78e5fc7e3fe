//! Fine-tuning a Hugging Face checkpoint (`smelt train --init HF_DIR`) and saving it gives a
//! folder that reads back with the same architecture (every family keeps its config fields) and
//! the same logits. `scripts/hf_roundtrip.py` runs this test with SMELT_HF_ROUNDTRIP_DIR set and
//! then checks that transformers loads each saved folder with logits identical to smelt's, which
//! this test writes beside it as `smelt_logits.safetensors`.

use smelt_core::rng::Rng;
use smelt_core::Tensor;
use smelt_data::TokenWriter;
use smelt_model::{Logits, Model};
use smelt_tokenizer::Tokenizer;
use smelt_train::TrainConfig;
use std::path::{Path, PathBuf};

const CASES: [&str; 7] =
    ["llama_tied", "llama3_untied", "llama_linear", "llama_yarn", "mistral_swa", "qwen2_bias", "qwen3_qknorm"];

fn fixture(case: &str) -> PathBuf {
    smelt_testing::fixture("hf").join(case)
}

fn config(d: &Path, init: &Path) -> TrainConfig {
    TrainConfig {
        dataset: d.join("train.bin"),
        tokenizer: Some(d.join("tok.json")),
        init: Some(init.to_path_buf()),
        size: "custom".into(),
        batch_size: 2,
        seq_len: 32,
        steps: 3,
        lr: 3e-3,
        min_lr: 3e-3,
        warmup: 0,
        seed: 5,
        checkpoint_dir: d.join("ckpt"),
        checkpoint_interval: 0,
        keep_checkpoints: 1,
        val_batches: 1,
        ..Default::default()
    }
}

#[test]
fn fine_tuned_hf_checkpoints_save_as_hf_checkpoints() {
    let root = match std::env::var_os("SMELT_HF_ROUNDTRIP_DIR") {
        Some(p) => PathBuf::from(p),
        None => std::env::temp_dir().join(format!("smelt-hf-roundtrip-{}", std::process::id())),
    };
    for case in CASES {
        let d = root.join(case);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let init = Model::load(&fixture(case)).unwrap();
        Tokenizer::byte_level().save(&d.join("tok.json")).unwrap();
        let mut w = TokenWriter::create(&d.join("train.bin"), init.cfg.vocab_size as u32, None).unwrap();
        let mut rng = Rng::new(11);
        let ids: Vec<u32> = (0..4096).map(|_| rng.below(init.cfg.vocab_size as u64) as u32).collect();
        w.push(&ids).unwrap();
        w.finish().unwrap();

        let summary = smelt_train::run(config(&d, &fixture(case)), None).unwrap_or_else(|e| panic!("{case}: {e:#}"));
        let out = summary.final_dir;
        let tuned = Model::load(&out).unwrap_or_else(|e| panic!("{case}: saved folder does not load: {e:#}"));
        // The same architecture, field for field (sliding window, head_dim, bias, q/k norm, rope scaling…).
        assert_eq!(tuned.cfg, init.cfg, "{case}: config.json did not round-trip");
        let moved =
            tuned.params.iter().zip(&init.params).filter(|(a, b)| a.as_f32().unwrap() != b.as_f32().unwrap()).count();
        assert_eq!(moved, init.params.len(), "{case}: only {moved} of {} tensors were trained", init.params.len());

        let prompt: Vec<u32> = ids[..64].to_vec();
        let logits = tuned.logits(&Tensor::from_u32(prompt.clone(), &[1, 64]).unwrap(), None, Logits::All).unwrap();
        let prompt_t = Tensor::from_i32(prompt.iter().map(|&i| i as i32).collect(), &[64]).unwrap();
        smelt_model::io::write_safetensors(
            &out.join("smelt_logits.safetensors"),
            &[("input_ids".into(), prompt_t), ("logits".into(), logits)],
            smelt_core::DType::F32,
            None,
        )
        .unwrap();
        println!("{case}: trained {} steps from {}, saved {}", summary.steps, fixture(case).display(), out.display());
    }
    if std::env::var_os("SMELT_HF_ROUNDTRIP_DIR").is_none() {
        std::fs::remove_dir_all(&root).unwrap();
    }
}
