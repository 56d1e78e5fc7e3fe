//! Smoothing (`smelt_convert::smooth`): the same function, flatter matmul inputs, and an importance
//! matrix that is the one the smoothed model collects. What it buys after quantisation is
//! measured on SmolLM2 in docs/GGUF.md (and llama.cpp scores the smoothed file identically).

use smelt_convert::imatrix::{collect, CollectOptions, Imatrix};
use smelt_convert::smooth::smooth;
use smelt_core::Tensor;
use smelt_model::params::Role;
use smelt_model::{Logits, Model, ModelConfig};

/// A tiny model whose norms have uneven weights (0.05 to 6.4), so that its matmul inputs have
/// outlier channels as trained models' do.
fn tiny() -> Model {
    tiny_with(|_| {})
}

fn tiny_with(edit: impl Fn(&mut ModelConfig)) -> Model {
    let mut c = ModelConfig::llama(96, 64, 2, 4, 2, 160);
    edit(&mut c);
    let m = Model::init(c, 5).unwrap();
    let mut params = m.params.clone();
    for l in &m.idx.layers {
        for (k, i) in [l[Role::AttnNorm], l[Role::FfnNorm]].into_iter().enumerate() {
            let g: Vec<f32> = (0..64).map(|j| 0.05 * 2f32.powf(((j * 7 + k * 3) % 15) as f32 / 2.0)).collect();
            params[i] = Tensor::from_f32(g, &[64]).unwrap();
        }
    }
    m.with_params(params).unwrap()
}

fn ids() -> Vec<u32> {
    (0..2 * 32).map(|i| (i * 29 % 96) as u32).collect()
}

fn imatrix(m: &Model) -> Imatrix {
    collect(
        m,
        &ids(),
        &CollectOptions { chunk_size: 32, max_chunks: None, process_output: false, dataset: "c.txt".into() },
        |_, _| {},
    )
    .unwrap()
}

fn logits(m: &Model) -> Vec<f32> {
    m.logits(&Tensor::from_u32(ids()[..32].to_vec(), &[1, 32]).unwrap(), None, Logits::All)
        .unwrap()
        .to_vec_f32()
        .unwrap()
}

/// max |a - b| / max |b|
fn rel(a: &[f32], b: &[f32]) -> f32 {
    let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    d / b.iter().fold(0f32, |m, y| m.max(y.abs()))
}

/// Largest over smallest column root-mean-square of a matrix's input.
fn spread(im: &Imatrix, name: &str) -> f32 {
    let w = im.weights(name).unwrap();
    let (lo, hi) = w.iter().fold((f32::MAX, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    (hi / lo).sqrt()
}

#[test]
fn smoothing_keeps_the_function_and_flattens_the_inputs() {
    let m = tiny();
    let im = imatrix(&m);
    let (s, adjusted, report) = smooth(&m, &im, 0.5).unwrap();
    assert_eq!(report.groups, 2 * m.cfg.n_layers);
    assert!(report.min_scale < 1.0 && report.max_scale > 1.0, "{report:?}");
    // The same model in exact arithmetic: f32 logits agree to rounding.
    let r = rel(&logits(&s), &logits(&m));
    assert!(r < 1e-5, "logits moved by {r:e} of their range");
    // The importance matrix smooth returns is the one the smoothed model collects.
    let collected = imatrix(&s);
    for (name, e) in &collected.entries {
        let r = rel(&e.sums, &adjusted.entries[name].sums);
        assert!(r < 1e-4, "{name}: collected and adjusted sums differ by {r:e}");
        assert_eq!(e.counts, adjusted.entries[name].counts, "{name}");
    }
    // Flatter inputs where a norm feeds the matmul; the others untouched.
    for l in 0..m.cfg.n_layers {
        for w in ["attn_q", "ffn_up"] {
            let n = format!("blk.{l}.{w}.weight");
            let (before, after) = (spread(&im, &n), spread(&collected, &n));
            assert!(after < 0.5 * before, "{n}: column rms spread {before:.1} -> {after:.1}");
        }
        let n = format!("blk.{l}.attn_output.weight");
        assert!(rel(&collected.entries[&n].sums, &im.entries[&n].sums) < 1e-4, "{n}");
    }
}

#[test]
fn smoothing_refuses_bad_alpha_and_a_foreign_imatrix() {
    let m = tiny();
    let im = imatrix(&m);
    for a in [0.0, 1.0, -0.5, f32::NAN] {
        assert!(smooth(&m, &im, a).is_err(), "alpha {a} accepted");
    }
    let mut missing = im.clone();
    missing.entries.remove("blk.1.ffn_gate.weight");
    let Err(e) = smooth(&m, &missing, 0.5) else { panic!("a missing entry accepted") };
    assert!(format!("{e:#}").contains("blk.1.ffn_gate.weight"), "{e:#}");
    let mut wrong = im.clone();
    wrong.entries.get_mut("blk.0.attn_q.weight").unwrap().sums.push(1.0);
    let Err(e) = smooth(&m, &wrong, 0.5) else { panic!("a wrong-sized entry accepted") };
    assert!(format!("{e:#}").contains("blk.0.attn_q.weight"), "{e:#}");
}

#[test]
fn smoothing_is_exact_with_qkv_bias_and_qk_norm() {
    // A bias is added after the matmul and a q/k norm acts on its output rows: neither sees the
    // scaled columns, so the function is still the same.
    for (what, m) in [("qkv bias", tiny_with(|c| c.qkv_bias = true)), ("q/k norm", tiny_with(|c| c.qk_norm = true))] {
        let (s, _, _) = smooth(&m, &imatrix(&m), 0.5).unwrap();
        let r = rel(&logits(&s), &logits(&m));
        assert!(r < 1e-5, "{what}: logits moved by {r:e} of their range");
    }
}

#[test]
fn a_legacy_imatrix_smooths_alike_and_an_empty_one_is_refused() {
    let m = tiny();
    let im = imatrix(&m);
    let p = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("smooth-legacy.dat");
    im.save_legacy(&p).unwrap();
    let legacy = Imatrix::load(&p).unwrap();
    let (a, _, _) = smooth(&m, &im, 0.5).unwrap();
    let (b, _, _) = smooth(&m, &legacy, 0.5).unwrap();
    for (x, y) in a.params.iter().zip(&b.params) {
        assert!(rel(&x.to_vec_f32().unwrap(), &y.to_vec_f32().unwrap()) < 1e-6);
    }
    let mut empty = im.clone();
    for e in empty.entries.values_mut() {
        e.counts.iter_mut().for_each(|c| *c = 0);
    }
    let Err(e) = smooth(&m, &empty, 0.5) else { panic!("an imatrix without tokens accepted") };
    assert!(format!("{e:#}").contains("saw no tokens"), "{e:#}");
}
