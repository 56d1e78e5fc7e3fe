//! Importance matrices: collection against a traced forward and against llama.cpp's
//! llama-imatrix (tests/data/imatrix_llama_golden.gguf, scripts/imatrix_llama_golden.sh), the
//! file formats round trip, damaged files are errors, and an export with an imatrix uses it.

use smelt_convert::export::{export, TokenizerSource, WithImatrix};
use smelt_convert::imatrix::{collect, CollectOptions, Entry, Imatrix};
use smelt_core::{Graph, Tensor};
use smelt_model::{Logits, Model, ModelConfig};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

fn tiny() -> Model {
    let mut c = ModelConfig::llama(96, 64, 2, 4, 2, 160);
    c.tie_embeddings = false;
    Model::init(c, 9).unwrap()
}

fn opts(chunk: usize, chunks: Option<usize>) -> CollectOptions {
    CollectOptions { chunk_size: chunk, max_chunks: chunks, process_output: false, dataset: "calib.txt".into() }
}

fn sum_sq(t: &Tensor, cols: usize, acc: &mut [f32]) {
    for row in t.to_vec_f32().unwrap().chunks_exact(cols) {
        for (a, &x) in acc.iter_mut().zip(row) {
            *a += x * x;
        }
    }
}

#[test]
fn collect_sums_the_squared_inputs_of_every_matmul() {
    // The traced forward names each matmul's input; Σx² over them must be exactly what the
    // linear hook accumulated (same values, same f32 order), per weight.
    let m = tiny();
    let c = &m.cfg;
    let ids: Vec<u32> = (0..3 * 32).map(|i| (i * 37 % 96) as u32).collect();
    let im = collect(&m, &ids, &opts(32, None), |_, _| {}).unwrap();
    assert_eq!((im.chunk_count, im.chunk_size), (3, 32));
    assert_eq!(im.entries.len(), 7 * c.n_layers, "{:?}", im.entries.keys().collect::<Vec<_>>());
    let mut want: std::collections::BTreeMap<String, Vec<f32>> = Default::default();
    for chunk in ids.chunks(32) {
        let mut g = Graph::tracing();
        let p = m.param_vars(&mut g, false);
        m.forward(&mut g, &p, &Tensor::from_u32(chunk.to_vec(), &[1, 32]).unwrap(), None, Logits::All, false).unwrap();
        let trace = g.take_trace();
        let get = |n: &str| &trace.iter().find(|e| e.name == n).unwrap().tensor;
        for l in 0..c.n_layers {
            for (input, weights) in [
                ("attn_norm", &["attn_q", "attn_k", "attn_v"][..]),
                ("kqv_out", &["attn_output"][..]),
                ("ffn_norm", &["ffn_gate", "ffn_up"][..]),
                ("ffn_swiglu", &["ffn_down"][..]),
            ] {
                let t = get(&format!("{input}-{l}"));
                let cols = *t.shape().last().unwrap();
                for w in weights {
                    sum_sq(t, cols, want.entry(format!("blk.{l}.{w}.weight")).or_insert_with(|| vec![0.0; cols]));
                }
            }
        }
    }
    for (name, sums) in &want {
        let e = &im.entries[name];
        assert_eq!(e.counts, vec![96], "{name}");
        assert_eq!(&e.sums, sums, "{name}");
    }
    // The untied head only with process_output, under llama.cpp's name.
    let with_out = collect(&m, &ids, &CollectOptions { process_output: true, ..opts(32, Some(2)) }, |_, _| {}).unwrap();
    assert_eq!(with_out.entries["output.weight"].counts, vec![64]);
    // Too little text: an error, as llama-imatrix's.
    assert!(collect(&m, &ids[..40], &opts(32, None), |_, _| {}).is_err());
}

#[test]
fn files_round_trip_in_both_formats() {
    let mut im = Imatrix { datasets: vec!["a.txt".into()], chunk_count: 3, chunk_size: 512, ..Default::default() };
    im.entries.insert("blk.0.attn_q.weight".into(), Entry { sums: vec![1.5, 3.0, 0.0, 6e3], counts: vec![1536] });
    im.entries.insert("blk.0.ffn_down.weight".into(), Entry { sums: vec![2.0, 4.0, 8.0, 16.0], counts: vec![1536] });
    im.entries.insert("blk.0.ffn_up_exps.weight".into(), Entry { sums: vec![1.0, 2.0, 3.0, 4.0], counts: vec![10, 0] });
    let p = tmp("imatrix-roundtrip.gguf");
    im.save(&p).unwrap();
    let back = Imatrix::load(&p).unwrap();
    assert_eq!(back, im);
    assert_eq!(back.weights("blk.0.attn_q.weight").unwrap(), vec![1.5 / 1536.0, 3.0 / 1536.0, 0.0, 6e3 / 1536.0]);
    // A matrix (expert) that saw no tokens weighs 1 everywhere, as in llama-quantize.
    assert_eq!(back.weights("blk.0.ffn_up_exps.weight").unwrap(), vec![0.1, 0.2, 1.0, 1.0]);
    assert!(back.weights("blk.1.attn_q.weight").is_none());

    let d = tmp("imatrix-roundtrip.dat");
    im.save_legacy(&d).unwrap();
    let legacy = Imatrix::load(&d).unwrap();
    assert!(legacy.legacy);
    assert_eq!((legacy.chunk_count, legacy.datasets.clone()), (3, vec!["a.txt".to_string()]));
    // ncall = ⌈1536/512⌉ = 3; the mean comes back within f32 rounding.
    assert_eq!(legacy.entries["blk.0.attn_q.weight"].counts, vec![3]);
    for name in ["blk.0.attn_q.weight", "blk.0.ffn_down.weight"] {
        for (a, b) in legacy.weights(name).unwrap().iter().zip(back.weights(name).unwrap()) {
            assert!((a - b).abs() <= 1e-6 * b.abs(), "{name}: {a} vs {b}");
        }
    }
    assert!(legacy.save(&tmp("x.gguf")).is_err(), "a legacy imatrix holds means, not sums");
}

#[test]
fn damaged_imatrix_files_are_errors_naming_the_file() {
    let mut im = Imatrix { datasets: vec!["a.txt".into()], chunk_count: 1, chunk_size: 512, ..Default::default() };
    im.entries.insert("blk.0.attn_q.weight".into(), Entry { sums: vec![1.0; 8], counts: vec![512] });
    let d = tmp("imatrix-damaged.dat");
    im.save_legacy(&d).unwrap();
    let bytes = std::fs::read(&d).unwrap();
    // Cut inside the entry (the trailer after it is optional).
    for cut in [0, 3, 10, 30, 40] {
        std::fs::write(&d, &bytes[..cut]).unwrap();
        let e = Imatrix::load(&d).unwrap_err();
        assert!(format!("{e:#}").contains("imatrix-damaged.dat"), "{e:#}");
    }
    // GGUF: sums without counts; and a model GGUF (no imatrix metadata).
    let mut w = smelt_gguf::GgufWriter::new();
    for (k, v) in [("imatrix.chunk_count", 1u32), ("imatrix.chunk_size", 512)] {
        w.kv(k, smelt_gguf::Value::U32(v));
    }
    w.kv("imatrix.datasets", smelt_gguf::Value::Array(vec![]));
    w.tensor("blk.0.attn_q.weight.in_sum2", &[4], smelt_core::quant::GgmlType::F32, vec![0; 16]).unwrap();
    let g = tmp("imatrix-damaged.gguf");
    smelt_convert::write_gguf(&w, &g).unwrap();
    assert!(format!("{:#}", Imatrix::load(&g).unwrap_err()).contains("without counts"));
    let golden = root().join("crates/core/tests/data/quant_golden.gguf");
    assert!(format!("{:#}", Imatrix::load(&golden).unwrap_err()).contains("missing imatrix metadata"));
}

#[test]
fn export_with_an_imatrix_uses_it_and_records_it() {
    let m = tiny();
    let ids: Vec<u32> = (0..2 * 32).map(|i| (i * 13 % 96) as u32).collect();
    let im = collect(&m, &ids, &opts(32, None), |_, _| {}).unwrap();
    let Some(tok) = smelt_testing::input("llama.cpp/models/ggml-vocab-gpt-2.gguf") else { return };
    let (plain, weighted) = (tmp("imatrix-plain.gguf"), tmp("imatrix-weighted.gguf"));
    let q = smelt_core::quant::GgmlType::Q4_0;
    export(&m, q, TokenizerSource::Gguf(&tok), "t", None, &plain).unwrap();
    let with = WithImatrix { imatrix: &im, file: Some("imx.gguf"), smooth_alpha: None };
    let r = export(&m, q, TokenizerSource::Gguf(&tok), "t", Some(&with), &weighted).unwrap();
    // Every block matrix weighted; the untied embedding (Q4_0 here) has no entry, as in
    // llama.cpp (it is not a matmul).
    assert_eq!((r.weighted, r.unweighted.clone()), (14, vec!["token_embd.weight".to_string()]));
    let (a, b) = (smelt_gguf::GgufFile::open(&plain).unwrap(), smelt_gguf::GgufFile::open(&weighted).unwrap());
    assert_eq!(b.get_str("quantize.imatrix.file"), Some("imx.gguf"));
    assert_eq!(b.get("quantize.imatrix.entries_count").and_then(|v| v.as_u64()), Some(14));
    assert!(a.get("quantize.imatrix.file").is_none());
    fn ty<'a>(f: &'a smelt_gguf::GgufFile, n: &str) -> (smelt_core::quant::GgmlType, &'a [u8]) {
        f.tensor_bytes(f.tensor(n).unwrap()).unwrap()
    }
    // llama.cpp's guard: ffn_down of the first eighth of the layers (here layer 0 of 2: 2/8 = 0
    // layers) stays Q4_0; every weighted tensor differs from the plain one.
    assert_eq!(ty(&b, "blk.0.ffn_down.weight").0, q);
    assert_ne!(ty(&a, "blk.1.attn_q.weight").1, ty(&b, "blk.1.attn_q.weight").1);
    // An imatrix of another model is refused.
    let mut wrong = im.clone();
    wrong.entries.get_mut("blk.0.attn_q.weight").unwrap().sums.push(1.0);
    let with = WithImatrix { imatrix: &wrong, file: None, smooth_alpha: None };
    let e = export(&m, q, TokenizerSource::Gguf(&tok), "t", Some(&with), &tmp("x.gguf")).unwrap_err();
    assert!(format!("{e:#}").contains("blk.0.attn_q.weight"), "{e:#}");
}

#[test]
fn collect_matches_llama_imatrix_on_smollm2() {
    let Some(q41) = smelt_testing::input("smollm2/DL/SmolLM2-135M-Instruct.Q4_1.gguf") else { return };
    // The f32 model llama-imatrix ran on: the Q4_1 file dequantised (what export-gguf --type
    // f32 writes).
    let m = smelt_convert::load_model(&q41).unwrap();
    let m = m.dequantized().unwrap();
    let tok = smelt_tokenizer::Tokenizer::from_file(&q41).unwrap();
    let mut text = String::new();
    let gz = std::fs::File::open(root().join("data/linux-doc-slice.txt.gz")).unwrap();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gz), &mut text).unwrap();
    let ids = tok.encode(&text);
    let im = collect(&m, &ids, &opts(512, Some(2)), |_, _| {}).unwrap();
    let golden = Imatrix::load(&root().join("crates/convert/tests/data/imatrix_llama_golden.gguf")).unwrap();
    assert_eq!((golden.chunk_count, golden.chunk_size), (im.chunk_count, im.chunk_size));
    assert_eq!(golden.entries.len(), 21);
    let mut worst = (0f64, String::new());
    for (name, g) in &golden.entries {
        let e = &im.entries[name];
        assert_eq!(e.counts, g.counts, "{name}");
        for (a, b) in e.sums.iter().zip(&g.sums) {
            let rel = ((a - b).abs() / b.abs().max(1e-30)) as f64;
            if rel > worst.0 {
                worst = (rel, name.clone());
            }
        }
    }
    eprintln!("imatrix vs llama-imatrix: worst relative difference per column {:.2e} ({})", worst.0, worst.1);
    assert!(worst.0 < 1e-4, "{worst:?}");
}
