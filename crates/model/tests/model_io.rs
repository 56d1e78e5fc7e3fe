//! Loading and saving model folders; the KV-cache path against the full forward.

use smelt_core::Tensor;
use smelt_model::{KvCache, Logits, Model, ModelConfig};
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smelt-model-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn small() -> ModelConfig {
    let mut c = ModelConfig::llama(50, 32, 2, 4, 2, 48);
    c.tie_embeddings = false;
    c
}

#[test]
fn save_load_round_trip_is_exact() {
    let d = tmp("rt");
    let m = Model::init(small(), 3).unwrap();
    m.save(&d).unwrap();
    let m2 = Model::load(&d).unwrap();
    assert_eq!(m.cfg, m2.cfg);
    for (a, b) in m.params.iter().zip(&m2.params) {
        assert_eq!(a.as_f32().unwrap(), b.as_f32().unwrap());
    }
}

#[test]
fn truncated_safetensors_is_an_error_naming_the_file() {
    let d = tmp("trunc");
    Model::init(small(), 3).unwrap().save(&d).unwrap();
    let f = d.join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    for cut in [bytes.len() - 7, 100, 5] {
        std::fs::write(&f, &bytes[..cut]).unwrap();
        let e = format!("{:#}", Model::load(&d).err().expect("truncated file must not load"));
        assert!(e.contains("model.safetensors"), "error does not name the file: {e}");
    }
}

#[test]
fn missing_tensor_and_unknown_architecture_are_refused() {
    let d = tmp("bad");
    Model::init(small(), 3).unwrap().save(&d).unwrap();
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(d.join("config.json"), cfg.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3")).unwrap();
    let e = format!("{:#}", Model::load(&d).err().unwrap());
    assert!(e.contains("model.layers.2") && e.contains("missing"), "{e}");
    std::fs::write(d.join("config.json"), cfg.replace("LlamaForCausalLM", "GPTNeoXForCausalLM")).unwrap();
    let e = format!("{:#}", Model::load(&d).err().unwrap());
    assert!(e.contains("GPTNeoXForCausalLM") && e.contains("unsupported"), "{e}");
}

#[test]
fn kv_cache_decode_matches_full_forward() {
    let mut c = small();
    c.sliding_window = Some(5); // exercise the window on the cached path too
    let m = Model::init(c, 11).unwrap();
    let ids: Vec<u32> = (0..12).map(|i| (i * 7 % 50) as u32).collect();
    let full = m.logits(&Tensor::from_u32(ids.clone(), &[1, 12]).unwrap(), None, Logits::All).unwrap();
    let full = full.as_f32().unwrap();
    let mut cache = KvCache::new(&m.cfg, 1, 12);
    let first =
        m.logits(&Tensor::from_u32(ids[..4].to_vec(), &[1, 4]).unwrap(), Some(&mut cache), Logits::Last).unwrap();
    let mut rows = vec![first.as_f32().unwrap().to_vec()];
    for &id in &ids[4..] {
        rows.push(
            m.logits(&Tensor::from_u32(vec![id], &[1, 1]).unwrap(), Some(&mut cache), Logits::Last)
                .unwrap()
                .as_f32()
                .unwrap()
                .to_vec(),
        );
    }
    for (i, row) in rows.iter().enumerate() {
        let want = &full[(3 + i) * 50..(4 + i) * 50];
        let err = row.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 1e-5, "position {}: max diff {err}", 3 + i);
    }
}

/// The attention scale is config data reaching every attention path: spelled out as its default
/// it changes nothing; another value changes the logits, the same way on the cached path, and
/// the training graph's gradients.
#[test]
fn attention_scale_reaches_every_attention_path() {
    let ids = Tensor::from_u32((0..8).map(|i| (i * 7 % 50) as u32).collect(), &[1, 8]).unwrap();
    let base = Model::init(small(), 5).unwrap();
    let with = |scale: Option<f32>| {
        let mut c = small();
        c.attn_scale = scale;
        Model::new(c, base.params.clone()).unwrap()
    };
    let logits = |m: &Model| m.logits(&ids, None, Logits::All).unwrap().to_vec_f32().unwrap();
    let default = logits(&base);
    assert_eq!(logits(&with(Some(1.0 / (base.cfg.head_dim as f32).sqrt()))), default);
    let hot = with(Some(0.9));
    let full = logits(&hot);
    assert!(full.iter().zip(&default).any(|(a, b)| a != b), "a scale of 0.9 left the logits unchanged");
    let mut cache = KvCache::new(&hot.cfg, 1, 8);
    let last = hot.logits(&ids, Some(&mut cache), Logits::Last).unwrap().to_vec_f32().unwrap();
    let err = last.iter().zip(&full[7 * 50..]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(err < 1e-5, "cached path: max diff {err}");
    let grad = |m: &Model| {
        let mut g = smelt_core::Graph::training();
        let p = m.param_vars(&mut g, true);
        let loss = m.loss(&mut g, &p, &ids, &ids, false).unwrap();
        g.backward(&loss)
            .unwrap()
            .get(&p[m.idx.layers[0][smelt_model::params::Role::Wq]])
            .unwrap()
            .to_vec_f32()
            .unwrap()
    };
    assert_ne!(grad(&hot), grad(&base));
}

/// Per-layer variation is config data: a window on layer 1 only gives logits that differ from a
/// window on every layer and from none, the cached path agrees with the full forward, and a
/// malformed or unsaveable per-layer table is refused by name.
#[test]
fn sliding_window_on_some_layers_only() {
    let ids: Vec<u32> = (0..12).map(|i| (i * 7 % 50) as u32).collect();
    let x = Tensor::from_u32(ids.clone(), &[1, 12]).unwrap();
    let base = Model::init(small(), 11).unwrap();
    let with = |window: Option<usize>, layers: Option<Vec<bool>>| {
        let mut c = small();
        (c.sliding_window, c.sliding_layers) = (window, layers);
        Model::new(c, base.params.clone()).unwrap()
    };
    let logits = |m: &Model| m.logits(&x, None, Logits::All).unwrap().to_vec_f32().unwrap();
    let (none, all, second) =
        (logits(&base), logits(&with(Some(3), None)), logits(&with(Some(3), Some(vec![false, true]))));
    assert!(second != none && second != all, "a window on layer 1 alone must change the logits, differently");
    assert_eq!(logits(&with(Some(3), Some(vec![true, true]))), all);
    let m = with(Some(3), Some(vec![false, true]));
    let mut cache = KvCache::new(&m.cfg, 1, 12);
    let last = m.logits(&x, Some(&mut cache), Logits::Last).unwrap().to_vec_f32().unwrap();
    let v = m.cfg.vocab_size;
    let err = last.iter().zip(&second[11 * v..]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(err < 1e-5, "cached path: max diff {err}");
    let mut c = small();
    (c.sliding_window, c.sliding_layers) = (Some(3), Some(vec![true]));
    assert!(format!("{:#}", c.validate().unwrap_err()).contains("sliding_layers"));
    let e = format!("{:#}", m.save(&tmp("per-layer")).unwrap_err());
    assert!(e.contains("per-layer sliding windows"), "{e}");
}
