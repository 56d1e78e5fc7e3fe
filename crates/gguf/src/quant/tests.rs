//! Block formats against gguf-py (tests/data/quant_golden.gguf, made by
//! scripts/gguf_goldens.py): dequantisation bit for bit, quantisation byte for byte where
//! gguf-py can quantise; quantised dot products against dequantise-then-f32-dot; every SIMD
//! level against the scalar build.

use super::qtensor::Level;
use super::*;
use crate::GgufFile;
use smelt_core::quant::QuantMatrix;

fn golden() -> GgufFile {
    GgufFile::open(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/quant_golden.gguf")).unwrap()
}

fn f32s(g: &GgufFile, name: &str) -> Vec<f32> {
    let t = g.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
    let (ty, b) = g.tensor_bytes(t).unwrap();
    assert_eq!(ty, GgmlType::F32);
    dequantize(ty, b, b.len() / 4).unwrap()
}

#[test]
fn dequantize_matches_gguf_py_bit_for_bit() {
    let g = golden();
    for ty in GgmlType::ALL {
        let t = g.tensor(&format!("deq.{}", ty.name().to_uppercase())).unwrap();
        let (got_ty, b) = g.tensor_bytes(t).unwrap();
        assert_eq!(got_ty, ty);
        let want = f32s(&g, &format!("deq.{}.f32", ty.name().to_uppercase()));
        let got = dequantize(ty, b, want.len()).unwrap();
        let bad = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits() && !(a.is_nan() && b.is_nan())).count();
        assert_eq!(bad, 0, "{}: {bad} of {} values differ from gguf-py", ty.name(), want.len());
    }
}

#[test]
fn quantize_matches_gguf_py_byte_for_byte() {
    let g = golden();
    let src = f32s(&g, "qsrc");
    for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0] {
        let (_, want) = g.tensor_bytes(g.tensor(&format!("q.{}", ty.name().to_uppercase())).unwrap()).unwrap();
        let got = quantize(ty, &src, 512).unwrap();
        let bad = got.iter().zip(want).filter(|(a, b)| a != b).count();
        assert_eq!(bad, 0, "{}: {bad} of {} bytes differ from gguf-py", ty.name(), want.len());
    }
}

fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut r = smelt_core::rng::Rng::new(seed);
    (0..n).map(|_| r.normal() as f32).collect()
}

#[test]
fn k_quants_round_trip_closely() {
    // Q4_K and Q6_K quantisers (ports of llama.cpp's reference) against their own dequantiser.
    let x = rand(4 * 512, 1);
    for (ty, tol) in [(GgmlType::Q4_K, 0.12), (GgmlType::Q6_K, 0.03), (GgmlType::Q8_0, 0.01), (GgmlType::Q4_0, 0.15)] {
        let q = quantize(ty, &x, 512).unwrap();
        let y = dequantize(ty, &q, x.len()).unwrap();
        let rms = (x.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum::<f32>() / x.len() as f32).sqrt();
        assert!(rms < tol, "{}: rms error {rms}", ty.name());
    }
}

#[test]
fn quantised_matmul_matches_dequantised_f32_and_simd_matches_scalar() {
    let (rows, cols, n) = (37, 512, 3);
    let w = rand(rows * cols, 2);
    let x = rand(n * cols, 3);
    for ty in GgmlType::ALL {
        let q = QTensor::quantize(ty, &w, rows, cols).unwrap();
        let mut wd = vec![0f32; rows * cols];
        for r in 0..rows { q.dequantize_row(r, &mut wd[r * cols..(r + 1) * cols]); }
        let mut y = vec![0f32; n * rows];
        q.matmul_with(&x, n, &mut y, Level::Scalar);
        for i in 0..n {
            // The activation row as the kernel sees it: quantised to Q8_0/Q8_1/Q8_K and back.
            let xr = &x[i * cols..(i + 1) * cols];
            let xa: Vec<f32> = match ty {
                GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => xr.to_vec(),
                GgmlType::Q4_K | GgmlType::Q6_K => act::quantize_q8k(xr).iter().flat_map(|b| b.qs.map(|q| b.d * q as f32)).collect(),
                _ => act::quantize_q8(xr).iter().flat_map(|b| b.qs.map(|q| b.d * q as f32)).collect(),
            };
            for j in 0..rows {
                let mut want: f64 = (0..cols).map(|c| xa[c] as f64 * wd[j * cols + c] as f64).sum();
                if ty == GgmlType::Q4_1 {
                    // Q4_1's min term uses s = d·Σq stored as f16 (as llama.cpp's Q8_1 does).
                    let row = &q.bytes()[j * q4_1::BYTES * cols / 32..];
                    for (b, ab) in act::quantize_q8(xr).iter().enumerate() {
                        let sum: f64 = xa[32 * b..32 * b + 32].iter().map(|&v| v as f64).sum();
                        want += f16_at(&row[b * q4_1::BYTES + 2..]) as f64 * (ab.s as f64 - sum);
                    }
                }
                let got = y[i * rows + j] as f64;
                assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "{}: {got} vs {want}", ty.name());
            }
            // And the quantised product stays near the exact one (8-bit activations).
            let exact: f64 = (0..cols).map(|c| xr[c] as f64 * wd[c] as f64).sum();
            assert!((y[i * rows] as f64 - exact).abs() < 0.6, "{}: {} vs exact {exact}", ty.name(), y[i * rows]);
        }
        // SIMD kernels: the same integer sums, added in another float order.
        let mut ys = vec![0f32; n * rows];
        q.matmul_with(&x, n, &mut ys, Level::detect());
        for (a, b) in y.iter().zip(&ys) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{}: SIMD {:?} gives {b}, scalar {a}", ty.name(), Level::detect());
        }
    }
}

#[test]
fn imatrix_quantize_matches_llama_cpp_byte_for_byte() {
    // tests/data/imatrix_golden.gguf: llama.cpp's own ggml_quantize_chunk with an imatrix
    // (scripts/gguf_imatrix_goldens.py), on rows of 512 and 576 columns.
    let g = GgufFile::open(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/imatrix_golden.gguf")).unwrap();
    let mut checked = 0;
    for cols in [512usize, 576] {
        let src = f32s(&g, &format!("src.{cols}"));
        let w = f32s(&g, &format!("imatrix.{cols}"));
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
            let Some(t) = g.tensor(&format!("q.{}.{cols}", ty.name().to_uppercase())) else { continue };
            let (got_ty, want) = g.tensor_bytes(t).unwrap();
            assert_eq!(got_ty, ty);
            let got = quantize_with(ty, &src, cols, Some(&w)).unwrap();
            assert_eq!(got.len(), want.len());
            let rb = ty.row_bytes(cols).unwrap();
            let bad: Vec<usize> = (0..got.len() / rb).filter(|&r| got[r * rb..(r + 1) * rb] != want[r * rb..(r + 1) * rb]).collect();
            assert!(bad.is_empty(), "{} at {cols} columns: rows {bad:?} differ from llama.cpp", ty.name());
            checked += 1;
        }
    }
    assert_eq!(checked, 10);
    // The weights change the result (else the test would not test them), except for Q8_0.
    let src = f32s(&g, "src.512");
    let w = f32s(&g, "imatrix.512");
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        assert_ne!(quantize_with(ty, &src, 512, Some(&w)).unwrap(), quantize(ty, &src, 512).unwrap(), "{}", ty.name());
    }
}

#[test]
fn imatrix_quantisers_lower_the_weighted_error() {
    // On Gaussian rows, weighting a few columns heavily must lower the error on those columns.
    let (rows, cols) = (16, 512);
    let x = rand(rows * cols, 7);
    let mut w = vec![1f32; cols];
    for c in (0..cols).step_by(7) { w[c] = 100.0; }
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        let err = |q: &[u8]| {
            let y = dequantize(ty, q, x.len()).unwrap();
            x.iter().zip(&y).enumerate().map(|(i, (a, b))| (w[i % cols] * (a - b) * (a - b)) as f64).sum::<f64>()
        };
        let (plain, weighted) = (err(&quantize(ty, &x, cols).unwrap()), err(&quantize_with(ty, &x, cols, Some(&w)).unwrap()));
        assert!(weighted < plain, "{}: weighted error {weighted} not below the reference quantiser's {plain}", ty.name());
    }
}
