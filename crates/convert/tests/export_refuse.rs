//! export-gguf refuses what a GGUF `llama` file cannot hold, and names it: the tensors the
//! parameter table marks as having no place there, a sliding window, another attention scale.

use smelt_convert::export::{export, TokenizerSource};
use smelt_core::quant::GgmlType;
use smelt_model::{Model, ModelConfig};
use std::path::{Path, PathBuf};

fn refused(edit: impl Fn(&mut ModelConfig)) -> String {
    let mut c = ModelConfig::llama(32, 16, 1, 2, 1, 24);
    edit(&mut c);
    let m = Model::init(c, 1).unwrap();
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("refused.gguf");
    let e =
        export(&m, GgmlType::F32, TokenizerSource::Gguf(Path::new("/nonexistent.gguf")), "x", None, &out).unwrap_err();
    assert!(!out.exists(), "a refused export wrote {}", out.display());
    format!("{e:#}")
}

#[test]
fn what_a_llama_gguf_cannot_hold_is_refused_by_name() {
    for (e, want) in [
        (refused(|c| c.qkv_bias = true), "model.layers.0.self_attn.q_proj.bias"),
        (refused(|c| c.qk_norm = true), "model.layers.0.self_attn.q_norm.weight"),
        (refused(|c| c.sliding_window = Some(4)), "window Some(4)"),
        (refused(|c| c.attn_scale = Some(0.5)), "scale Some(0.5)"),
    ] {
        assert!(e.contains(want) && e.contains("GGUF `llama`"), "{e}");
    }
}
