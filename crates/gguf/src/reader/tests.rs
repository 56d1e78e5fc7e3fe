//! Reader tests on hand-built files (every value type, nesting, alignment, every truncation)
//! and, when fetched, on llama.cpp's real vocab GGUFs.

use super::*;

fn s(out: &mut Vec<u8>, x: &str) {
    out.extend((x.len() as u64).to_le_bytes());
    out.extend(x.as_bytes());
}

/// A small v3 file: one of each metadata type, a nested array, alignment 64, two tensors.
fn sample() -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    b.extend(14u64.to_le_bytes());
    let kv: Vec<(&str, u32, Vec<u8>)> = vec![
        ("a.u8", 0, vec![7]),
        ("a.i8", 1, vec![0xff]),
        ("a.u16", 2, 500u16.to_le_bytes().to_vec()),
        ("a.i16", 3, (-5i16).to_le_bytes().to_vec()),
        ("a.u32", 4, 70000u32.to_le_bytes().to_vec()),
        ("a.i32", 5, (-7i32).to_le_bytes().to_vec()),
        ("a.f32", 6, 1.5f32.to_le_bytes().to_vec()),
        ("a.bool", 7, vec![1]),
        ("a.u64", 10, 1u64.to_le_bytes().to_vec()),
        ("a.i64", 11, (-1i64).to_le_bytes().to_vec()),
        ("a.f64", 12, 2.25f64.to_le_bytes().to_vec()),
    ];
    for (k, t, v) in kv {
        s(&mut b, k);
        b.extend(t.to_le_bytes());
        b.extend(v);
    }
    s(&mut b, "a.str");
    b.extend(8u32.to_le_bytes());
    s(&mut b, "héllo");
    // [[1,2],[3]] as array of arrays of u32
    s(&mut b, "a.nested");
    b.extend(9u32.to_le_bytes());
    b.extend(9u32.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    for inner in [&[1u32, 2][..], &[3u32][..]] {
        b.extend(4u32.to_le_bytes());
        b.extend((inner.len() as u64).to_le_bytes());
        for x in inner {
            b.extend(x.to_le_bytes());
        }
    }
    s(&mut b, "general.alignment");
    b.extend(4u32.to_le_bytes());
    b.extend(64u32.to_le_bytes());
    for (name, off) in [("w", 0u64), ("v", 64)] {
        s(&mut b, name);
        b.extend(2u32.to_le_bytes());
        b.extend(4u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(off.to_le_bytes());
    }
    while !b.len().is_multiple_of(64) {
        b.push(0);
    }
    b.extend(vec![0u8; 64 + 32]);
    b
}

fn write_tmp(name: &str, bytes: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("smelt-gguf-test-{}-{name}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn reads_every_value_type() {
    let p = write_tmp("ok.gguf", &sample());
    let g = GgufFile::open(&p).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.get("a.u8"), Some(&Value::U8(7)));
    assert_eq!(g.get("a.i8"), Some(&Value::I8(-1)));
    assert_eq!(g.get("a.u16").unwrap().as_u64(), Some(500));
    assert_eq!(g.get("a.i16").unwrap().as_i64(), Some(-5));
    assert_eq!(g.get("a.u32").unwrap().as_u64(), Some(70000));
    assert_eq!(g.get("a.i32").unwrap().as_i64(), Some(-7));
    assert_eq!(g.get("a.f32").unwrap().as_f64(), Some(1.5));
    assert_eq!(g.get("a.bool").unwrap().as_bool(), Some(true));
    assert_eq!(g.get("a.u64").unwrap().as_u64(), Some(1));
    assert_eq!(g.get("a.i64").unwrap().as_i64(), Some(-1));
    assert_eq!(g.get("a.f64").unwrap().as_f64(), Some(2.25));
    assert_eq!(g.get_str("a.str"), Some("héllo"));
    let nested = g.get("a.nested").unwrap().as_array().unwrap();
    assert_eq!(nested[0], Value::Array(vec![Value::U32(1), Value::U32(2)]));
    assert_eq!(nested[1], Value::Array(vec![Value::U32(3)]));
    assert_eq!(g.alignment, 64);
    assert_eq!(g.data_offset % 64, 0);
    assert_eq!(g.tensors.len(), 2);
    assert_eq!(g.tensor("v").unwrap().dims, vec![4, 2]);
    assert_eq!(g.tensor_data(g.tensor("v").unwrap(), 32).unwrap().len(), 32);
    assert!(g.tensor_data(g.tensor("v").unwrap(), 1 << 20).is_err());
    std::fs::remove_file(p).ok();
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let full = sample();
    // Cut anywhere before the data section: must fail cleanly with the file name in the error.
    let p = write_tmp("trunc.gguf", b"");
    for cut in 0..full.len() - 96 {
        std::fs::write(&p, &full[..cut]).unwrap();
        let e = GgufFile::open(&p).err().unwrap_or_else(|| panic!("cut at {cut} parsed"));
        assert!(format!("{e:#}").contains("trunc.gguf"), "{e:#}");
    }
    std::fs::remove_file(p).ok();
}

#[test]
fn wrong_magic_and_version_are_errors() {
    let mut b = sample();
    b[0] = b'X';
    let p = write_tmp("magic.gguf", &b);
    assert!(format!("{:#}", GgufFile::open(&p).unwrap_err()).contains("not a GGUF file"));
    let mut b = sample();
    b[4] = 1;
    std::fs::write(&p, &b).unwrap();
    assert!(format!("{:#}", GgufFile::open(&p).unwrap_err()).contains("version 1"));
    // A huge array count must be refused before allocating.
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    s(&mut b, "k");
    b.extend(9u32.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend(u64::MAX.to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    assert!(format!("{:#}", GgufFile::open(&p).unwrap_err()).contains("exceeds"));
    std::fs::remove_file(p).ok();
}

#[test]
fn reads_llama_cpp_vocab_files() {
    let Some(p) = smelt_testing::input("llama.cpp/models/ggml-vocab-llama-spm.gguf") else { return };
    let g = GgufFile::open(&p).unwrap();
    assert_eq!(g.get_str("tokenizer.ggml.model"), Some("llama"));
    assert_eq!(g.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap().len(), 32000);
    assert_eq!(g.get("tokenizer.ggml.scores").unwrap().as_array().unwrap().len(), 32000);
}
