//! What smelt cannot run exactly it refuses, with an error that names the thing: never a
//! silent approximation. Each case edits a real transformers-saved fixture (fixtures/hf/).

use serde_json::{json, Value};
use smelt_model::{Model, ModelConfig, RopeScaling};
use std::path::{Path, PathBuf};

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf").join(case)
}

fn config(case: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(case).join("config.json")).unwrap()).unwrap()
}

/// Parses `case`'s config after `edit`; returns the error text (panics if it parses).
fn refused(case: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut v = config(case);
    edit(&mut v);
    match ModelConfig::from_hf_json(&v) {
        Ok(c) => panic!("{case}: accepted {v}\nas {c:?}"),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_names(e: &str, words: &[&str]) {
    for w in words {
        assert!(e.contains(w), "error does not name {w:?}: {e}");
    }
}

#[test]
fn unknown_architecture() {
    let e = refused("llama_tied", |v| {
        v["architectures"] = json!(["GPT2LMHeadModel"]);
        v["model_type"] = json!("gpt2");
    });
    assert_names(&e, &["GPT2LMHeadModel", "unsupported"]);
    let e = refused("qwen3_qknorm", |v| v["architectures"] = json!(["Qwen3MoeForCausalLM"]));
    assert_names(&e, &["Qwen3MoeForCausalLM"]);
}

#[test]
fn unknown_or_unsupported_rope_types() {
    for kind in ["dynamic", "longrope", "su", "made_up"] {
        // New style (transformers 5) and old style (rope_scaling with "type").
        let e = refused("llama_tied", |v| {
            v["rope_parameters"] = json!({"rope_type": kind, "rope_theta": 10000.0, "factor": 2.0})
        });
        assert_names(&e, &[kind, "not supported"]);
        let e = refused("llama3_untied", |v| v["rope_scaling"] = json!({"type": kind, "factor": 2.0}));
        assert_names(&e, &[kind, "not supported"]);
    }
    let e = refused("llama_tied", |v| {
        v["rope_parameters"] = json!({"full_attention": {"rope_type": "default", "rope_theta": 1e4}})
    });
    assert_names(&e, &["per-layer-type rope"]);
    let e = refused("llama3_untied", |v| v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0}));
    assert_names(&e, &["llama3", "low_freq_factor"]);
    let e = refused("llama_tied", |v| v["partial_rotary_factor"] = json!(0.5));
    assert_names(&e, &["partial_rotary_factor"]);
}

#[test]
fn unsupported_features() {
    let e = refused("llama_tied", |v| v["hidden_act"] = json!("gelu"));
    assert_names(&e, &["hidden_act", "gelu"]);
    let e = refused("llama_tied", |v| v["mlp_bias"] = json!(true));
    assert_names(&e, &["mlp_bias"]);
    let e = refused("llama_tied", |v| v["attention_bias"] = json!(true));
    assert_names(&e, &["attention_bias", "LlamaForCausalLM", "o_proj"]);
    let e = refused("qwen2_bias", |v| v["use_sliding_window"] = json!(true));
    assert_names(&e, &["use_sliding_window", "Qwen2ForCausalLM"]);
    let e = refused("qwen3_qknorm", |v| v["layer_types"] = json!(["full_attention", "sliding_attention"]));
    assert_names(&e, &["layer_types", "sliding_attention"]);
    let e = refused("llama_tied", |v| v.as_object_mut().unwrap().remove("hidden_size").map(|_| ()).unwrap());
    assert_names(&e, &["hidden_size", "missing"]);
}

/// Copies a fixture folder to a scratch place so its files can be damaged.
fn scratch(case: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smelt-hf-refuse-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    for f in std::fs::read_dir(fixture(case)).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, d.join(f.file_name().unwrap())).unwrap();
    }
    d
}

#[test]
fn missing_unexpected_and_misshapen_tensors() {
    let d = scratch("qwen2_bias", "tensors");
    let st = d.join("model.safetensors");
    let w = smelt_model::io::read_safetensors(&st).unwrap();
    let write = |skip: &str, extra: Option<(&str, smelt_core::Tensor)>| {
        let mut v: Vec<(String, smelt_core::Tensor)> =
            w.iter().filter(|(n, _)| n.as_str() != skip).map(|(n, t)| (n.clone(), t.clone())).collect();
        v.extend(extra.map(|(n, t)| (n.to_string(), t)));
        smelt_model::io::write_safetensors(&st, &v, smelt_core::DType::F32, None).unwrap();
    };
    write("model.layers.1.self_attn.k_proj.bias", None);
    let e = format!("{:#}", Model::load(&d).err().unwrap());
    assert_names(&e, &["model.layers.1.self_attn.k_proj.bias", "missing"]);
    write("", Some(("model.layers.0.self_attn.o_proj.bias", smelt_core::Tensor::zeros(&[32]))));
    let e = format!("{:#}", Model::load(&d).err().unwrap());
    assert_names(&e, &["model.layers.0.self_attn.o_proj.bias", "unexpected"]);
    write("model.norm.weight", Some(("model.norm.weight", smelt_core::Tensor::zeros(&[31]))));
    let e = format!("{:#}", Model::load(&d).err().unwrap());
    assert_names(&e, &["model.norm.weight", "[31]"]);
    std::fs::remove_dir_all(&d).unwrap();

    // A shard listed in the index but absent.
    let d = scratch("mistral_swa", "shard");
    std::fs::remove_file(d.join("model-00002-of-00003.safetensors")).unwrap();
    let e = format!("{:#}", Model::load(&d).err().unwrap());
    assert_names(&e, &["model-00002-of-00003.safetensors"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn both_config_styles_read_the_same() {
    // A transformers 5 config rewritten in the old style parses to the same ModelConfig.
    for case in ["llama_tied", "llama_yarn", "mistral_swa", "qwen3_qknorm"] {
        let mut v = config(case);
        let new = ModelConfig::from_hf_json(&v).unwrap();
        let mut rp = v.as_object_mut().unwrap().remove("rope_parameters").unwrap();
        v["rope_theta"] = rp.as_object_mut().unwrap().remove("rope_theta").unwrap();
        v["rope_scaling"] = if rp["rope_type"] == "default" { Value::Null } else { rp };
        v["torch_dtype"] = v.as_object_mut().unwrap().remove("dtype").unwrap();
        assert_eq!(ModelConfig::from_hf_json(&v).unwrap(), new, "{case}");
    }
    let y = ModelConfig::from_hf_json(&config("llama_yarn")).unwrap();
    assert!(
        matches!(y.rope_scaling, RopeScaling::Yarn { factor, original_max_pos, .. } if factor == 4.0 && original_max_pos == 64.0)
    );
}

#[test]
fn written_config_round_trips_for_every_architecture() {
    for case in
        ["llama_tied", "llama3_untied", "llama_linear", "llama_yarn", "mistral_swa", "qwen2_bias", "qwen3_qknorm"]
    {
        let c = ModelConfig::from_hf_json(&config(case)).unwrap();
        assert_eq!(ModelConfig::from_hf_json(&c.to_hf_json()).unwrap(), c, "{case}");
    }
    let mut m = ModelConfig::from_hf_json(&config("mistral_swa")).unwrap();
    m.sliding_window = None;
    // Absent must be written as null: transformers' Mistral would otherwise default to 4096.
    assert_eq!(m.to_hf_json()["sliding_window"], Value::Null);
    assert!(m.to_hf_json().as_object().unwrap().contains_key("sliding_window"));
}

/// RoPE settings beyond the fixtures (YaRN with mscale / untruncated / explicit attention factor,
/// llama3 taking original_max_position_embeddings from max_position_embeddings): the inverse
/// frequencies and attention factor must be transformers' (fixtures/hf/rope_tables.json, made by
/// scripts/make_hf_goldens.py; transformers computes them in f32, hence the 1e-6 tolerance).
#[test]
fn rope_tables_match_transformers() {
    let t: Value = serde_json::from_str(&std::fs::read_to_string(fixture("rope_tables.json")).unwrap()).unwrap();
    for case in t.as_array().unwrap() {
        let c = ModelConfig::from_hf_json(&case["config"]).unwrap();
        let table = c.rope_table(smelt_core::ops::rope::RopeLayout::HalfSplit);
        let want: Vec<f64> = case["inv_freq"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(table.inv_freq.len(), want.len());
        for (i, (a, b)) in table.inv_freq.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs(),
                "{}: inv_freq[{i}] {a} vs transformers {b}",
                case["config"]["rope_parameters"]
            );
        }
        let af = case["attention_factor"].as_f64().unwrap();
        assert!(
            (table.attention_factor - af).abs() < 1e-12,
            "{}: attention factor {} vs {af}",
            case["config"]["rope_parameters"],
            table.attention_factor
        );
    }
    let e =
        refused("llama_yarn", |v| v["rope_parameters"].as_object_mut().unwrap().remove("factor").map(|_| ()).unwrap());
    assert_names(&e, &["yarn", "factor"]);
}

#[test]
fn optional_fields_of_the_wrong_type_are_not_read_as_their_default() {
    for (key, bad) in [
        ("rope_theta", json!("1000000")),
        ("max_position_embeddings", json!("4096")),
        ("rms_norm_eps", json!("1e-6")),
        ("num_key_value_heads", json!(2.5)),
        ("tie_word_embeddings", json!("false")),
        ("rope_scaling", json!(2)),
        ("eos_token_id", json!(["x"])),
        ("hidden_act", json!(1)),
    ] {
        let e = refused("llama_tied", |v| v[key] = bad.clone());
        assert_names(&e, &[key, &bad.to_string(), "expected"]);
    }
    // null is absent, as transformers writes it.
    let mut v = config("qwen2_bias");
    v["sliding_window"] = Value::Null;
    v["rope_scaling"] = Value::Null;
    ModelConfig::from_hf_json(&v).unwrap();
}
