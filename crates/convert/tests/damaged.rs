//! Damaged GGUF files get errors, never panics or out-of-bounds reads: a tiny `llama` model is
//! written, checked to load, then truncated at every 7th byte, given an unknown tensor type,
//! an out-of-range tensor offset and wrong shapes; each must fail with a message saying why.

use smelt_core::quant::{quantize, GgmlType};
use smelt_gguf::{GgufFile, GgufWriter, Value};
use smelt_model::{params, ModelConfig};
use std::path::PathBuf;

fn tiny(dir: &str) -> (PathBuf, Vec<u8>) {
    let c = ModelConfig::llama(64, 32, 2, 4, 2, 64);
    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::String("llama".into()));
    for (k, v) in [
        ("block_count", 2u32),
        ("embedding_length", 32),
        ("feed_forward_length", 64),
        ("attention.head_count", 4),
        ("attention.head_count_kv", 2),
        ("context_length", 128),
    ] {
        w.kv(&format!("llama.{k}"), Value::U32(v));
    }
    let p = params::init(&c, 1);
    for ((name, shape), t) in params::layout(&c).iter().zip(&p) {
        let g = smelt_convert::load::gguf_name(name).unwrap();
        let ty = if shape.len() == 1 { GgmlType::F32 } else { GgmlType::Q8_0 };
        w.tensor(&g, shape, ty, quantize(ty, t.as_f32().unwrap(), *shape.last().unwrap()).unwrap()).unwrap();
    }
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(dir);
    std::fs::create_dir_all(&d).unwrap();
    let path = d.join("tiny.gguf");
    smelt_convert::write_gguf(&w, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

fn load(path: &PathBuf, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).unwrap();
    smelt_convert::load_model(path).map(|_| ())
}

#[test]
fn a_valid_file_loads_and_runs() {
    let (path, _) = tiny("valid");
    let m = smelt_convert::load_model(&path).unwrap();
    let t = smelt_core::Tensor::from_u32(vec![1, 2, 3], &[1, 3]).unwrap();
    let l = m.logits(&t, None, smelt_model::Logits::All).unwrap();
    assert!(l.as_f32().unwrap().iter().all(|x| x.is_finite()));
}

#[test]
fn truncated_files_are_errors() {
    let (path, bytes) = tiny("truncated");
    for n in (0..bytes.len()).step_by(7) {
        let e = load(&path, &bytes[..n]).expect_err("a truncated file loaded");
        let msg = format!("{e:#}");
        assert!(msg.contains("tiny.gguf"), "error does not name the file: {msg}");
    }
}

#[test]
fn unknown_type_bad_offset_and_bad_shape_are_errors() {
    let (path, bytes) = tiny("fields");
    let f = GgufFile::from_bytes("x", bytes.clone()).unwrap();
    let t = f.tensor("blk.0.attn_q.weight").unwrap().clone();
    // Tensor infos: find this tensor's info record (name, n_dims, dims, type, offset).
    let mut key = (t.name.len() as u64).to_le_bytes().to_vec();
    key.extend(t.name.as_bytes());
    let at = bytes.windows(key.len()).position(|w| w == key.as_slice()).unwrap() + key.len();
    let type_at = at + 4 + 8 * t.dims.len();

    let mut b = bytes.clone();
    b[type_at..type_at + 4].copy_from_slice(&99u32.to_le_bytes());
    let e = format!("{:#}", load(&path, &b).unwrap_err());
    assert!(e.contains("not supported") && e.contains("attn_q"), "{e}");

    let mut b = bytes.clone();
    b[type_at + 4..type_at + 12].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let e = format!("{:#}", load(&path, &b).unwrap_err());
    assert!(e.contains("past the end"), "{e}");

    let mut b = bytes.clone();
    b[at + 4..at + 12].copy_from_slice(&64u64.to_le_bytes()); // 32 columns → 64
    let e = format!("{:#}", load(&path, &b).unwrap_err());
    assert!(e.contains("attn_q") && (e.contains("shape") || e.contains("past the end")), "{e}");

    let mut b = bytes;
    b[..4].copy_from_slice(b"GGUX");
    assert!(format!("{:#}", load(&path, &b).unwrap_err()).contains("not a GGUF file"));
}
