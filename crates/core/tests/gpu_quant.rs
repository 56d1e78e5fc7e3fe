//! Quantised weights on CUDA (ops/qmatmul) against the CPU
//! dequantisers, for every block format the kernels read: fresh random weights quantised with
//! smelt's quantisers, random f32 activations. Checked: the device dequantisation is
//! bit-identical to `quant::dequantize`; `linear` by the device matrix equals the
//! dequantise-then-f64 dot (NMSE, printed) for n = 1, 3, 8 (the matvec kernel) and 9, 64 (the
//! dequantise + cuBLASLt path, f32 and bf16 operands), with a bias; `embedding` from the device
//! matrix gathers exactly the dequantised rows (host and device ids). Every device output is
//! poisoned with NaN before its kernel runs (`cuda::set_poison`), so an unwritten element fails.
//!
//! Built only with `--features cuda`; skips without a GPU (fails under SMELT_REQUIRE_GPU=1).
//! The tests set the process-wide matmul precision: run with `--test-threads=1`.
#![cfg(feature = "cuda")]

use smelt_core::cuda::{self, MatmulPrecision};
use smelt_core::ops::{embedding::embedding, matmul::linear};
use smelt_core::quant::{dequantize, GgmlType, QTensor};
use smelt_core::rng::Rng;
use smelt_core::{DType, Device, Tensor};

fn gpu() -> Option<Device> {
    let d = smelt_testing::gpu()?;
    cuda::set_poison(true);
    Some(d)
}

fn seed() -> u64 {
    let s = std::env::var("SMELT_PARITY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    println!("seed {s} (SMELT_PARITY_SEED={s} replays it)");
    s
}

fn randn(r: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| r.normal() as f32 * scale).collect()
}

use smelt_testing::nmse;

/// y (n × m) = x (n × k) · wᵀ + b in f64, w the dequantised (m × k) weight.
fn reference(x: &[f32], w: &[f32], b: Option<&[f32]>, n: usize, k: usize, m: usize) -> Vec<f64> {
    let mut y = vec![0f64; n * m];
    for i in 0..n {
        for j in 0..m {
            let dot: f64 = (0..k).map(|t| x[i * k + t] as f64 * w[j * k + t] as f64).sum();
            y[i * m + j] = dot + b.map_or(0.0, |b| b[j] as f64);
        }
    }
    y
}

const FORMATS: [GgmlType; 6] =
    [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K];

#[test]
fn quantised_linear_and_embedding_on_gpu_match_the_cpu_dequantiser() {
    let Some(d) = gpu() else { return };
    let mut r = Rng::new(seed());
    // 70 rows: not a multiple of the matvec's 4 rows per block; 512 columns: two super-blocks.
    let (m, k) = (70, 512);
    for ty in FORMATS {
        let w = randn(&mut r, m * k, 0.5);
        let q = QTensor::quantize(ty, &w, m, k).unwrap();
        let wd = dequantize(ty, q.bytes(), m * k).unwrap();
        let host = q.into_tensor();
        let dev = host.to_device(d).unwrap();
        assert_eq!(dev.dtype(), DType::Quant, "{}: kept quantised on the device", ty.name());
        let dq = dev.as_device_quant().expect("device quantised storage");
        println!("{}: {} bytes of blocks on {d}", ty.name(), dq.row_bytes * dq.rows);

        // Dequantisation on the device: the same float operations as the CPU, so exact.
        let got = dev.to_vec_f32().unwrap();
        let bad = got.iter().zip(&wd).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(bad, 0, "{}: {bad} of {} dequantised values differ from the CPU's", ty.name(), wd.len());

        let bias = randn(&mut r, m, 1.0);
        let bt = Tensor::from_f32(bias.clone(), &[m]).unwrap().to_device(d).unwrap();
        for (precision, big_tol) in [(MatmulPrecision::F32, 1e-10), (MatmulPrecision::Bf16, 1e-4)] {
            cuda::set_matmul_precision(precision);
            for n in [1usize, 3, 8, 9, 64] {
                let x = randn(&mut r, n * k, 1.0);
                let xt = Tensor::from_f32(x.clone(), &[n, k]).unwrap().to_device(d).unwrap();
                let with_bias = n == 3 || n == 64;
                let y = linear(&xt, &dev, with_bias.then_some(&bt)).unwrap();
                assert_eq!(y.shape(), &[n, m]);
                assert!(!y.device().is_cpu());
                let want = reference(&x, &wd, with_bias.then_some(&bias[..]), n, k, m);
                let e = nmse(&y.to_vec_f32().unwrap(), &want);
                // The matvec (n ≤ 8) computes in f32 whatever the precision setting; under mixed
                // precision its result is stored as a bf16 activation (one rounding: NMSE ~2e-6),
                // as a plain `linear` stores it.
                let want_dt = if precision == MatmulPrecision::F32 { DType::F32 } else { DType::BF16 };
                assert_eq!(y.dtype(), want_dt, "{} {precision:?} n={n}: output dtype", ty.name());
                let tol = match (n <= smelt_core::ops::qmatmul::cuda::MATVEC_MAX_N, precision) {
                    (true, MatmulPrecision::F32) => 1e-10,
                    (true, MatmulPrecision::Bf16) => 1e-5,
                    (false, _) => big_tol,
                };
                println!(
                    "  {} {precision:?} n={n:<2}{} nmse {e:.3e} (tol {tol:.0e})",
                    ty.name(),
                    if with_bias { " +bias" } else { "" }
                );
                assert!(
                    e.is_finite() && e <= tol,
                    "{} {precision:?} n={n}: NMSE {e:e} > {tol:e} (or NaN: an element was not written)",
                    ty.name()
                );
            }
        }

        // Embedding rows (repeats, first and last row), host and device ids.
        let ids: Vec<u32> = vec![3, 0, (m - 1) as u32, 5, 3, 17];
        let idt = Tensor::from_u32(ids.clone(), &[2, 3]).unwrap();
        for (label, ids_t) in [("host ids", idt.clone()), ("device ids", idt.to_device(d).unwrap())] {
            let e = embedding(&dev, &ids_t).unwrap();
            assert_eq!(e.shape(), &[2, 3, k]);
            let got = e.to_vec_f32().unwrap();
            let want: Vec<f32> = ids.iter().flat_map(|&i| wd[i as usize * k..(i as usize + 1) * k].to_vec()).collect();
            let bad = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            println!("  {} embedding ({label}): {bad} of {} values differ", ty.name(), want.len());
            assert_eq!(bad, 0);
        }
        // The CPU path still answers for the host tensor (8-bit activations: close, not equal).
        let x = randn(&mut r, 2 * k, 1.0);
        let yc = linear(&Tensor::from_f32(x.clone(), &[2, k]).unwrap(), &host, None).unwrap();
        let e = nmse(yc.as_f32().unwrap(), &reference(&x, &wd, None, 2, k, m));
        println!("  {} CPU kernel (8-bit activations) vs f64 reference nmse {e:.3e}", ty.name());
    }
}

#[test]
fn f16_and_bf16_matrices_become_f32_device_tensors() {
    let Some(d) = gpu() else { return };
    cuda::set_matmul_precision(MatmulPrecision::F32);
    let mut r = Rng::new(seed());
    let (m, k, n) = (33, 64, 5);
    for ty in [GgmlType::F16, GgmlType::BF16] {
        let w = randn(&mut r, m * k, 1.0);
        let q = QTensor::quantize(ty, &w, m, k).unwrap();
        let wd = dequantize(ty, q.bytes(), m * k).unwrap();
        let dev = q.into_tensor().to_device(d).unwrap();
        assert_eq!(dev.dtype(), DType::F32, "{}", ty.name());
        assert_eq!(dev.to_vec_f32().unwrap(), wd);
        let x = randn(&mut r, n * k, 1.0);
        let y = linear(&Tensor::from_f32(x.clone(), &[n, k]).unwrap().to_device(d).unwrap(), &dev, None).unwrap();
        let e = nmse(&y.to_vec_f32().unwrap(), &reference(&x, &wd, None, n, k, m));
        println!("{} as f32 on {d}: linear nmse {e:.3e}", ty.name());
        assert!(e <= 1e-10);
    }
}

#[test]
fn quantised_device_weights_refuse_gradients_and_host_inputs() {
    let Some(d) = gpu() else { return };
    let mut r = Rng::new(seed());
    let (m, k) = (8, 64);
    let dev = QTensor::quantize(GgmlType::Q8_0, &randn(&mut r, m * k, 1.0), m, k)
        .unwrap()
        .into_tensor()
        .to_device(d)
        .unwrap();
    let x = Tensor::from_f32(randn(&mut r, 2 * k, 1.0), &[2, k]).unwrap();
    // The backend seam refuses inputs on two devices, naming both.
    let err = linear(&x, &dev, None).unwrap_err().to_string();
    assert!(err.contains("cpu") && err.contains("cuda:"), "{err}");
    let xd = x.to_device(d).unwrap();
    let dy = Tensor::zeros(&[2, m]).to_device(d).unwrap();
    let err = smelt_core::ops::matmul::linear_backward(&xd, &dev, &dy, true, false).unwrap_err().to_string();
    assert!(err.contains("no gradient"), "{err}");
    let err = dev.to_device(Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("not copied back"), "{err}");
    println!("errors as expected");
}

/// Mixed-precision decode rows (bf16 x, n ≤ 8) take the integer matvecs (`mmvq*`: x quantised
/// to 8 bits once, dp4a dots), as smelt's CPU kernels and llama.cpp do: every format against
/// the f64 product of the dequantised weight and the bf16 input (8-bit activations cost NMSE
/// ~1e-5, as the CPU kernel's, printed beside it); `linear_many` (q, k, v sharing one quantised
/// x, two formats) and `linear_swiglu` equal the separate `linear`s (and `swiglu`) bit for bit.
#[test]
fn integer_matvecs_of_bf16_rows_match_the_reference_and_the_unfused_ops() {
    use smelt_core::ops::matmul::{linear_many, linear_swiglu};
    use smelt_core::ops::swiglu::swiglu;
    let Some(d) = gpu() else { return };
    if std::env::var("SMELT_CUDA_MMVQ").is_ok_and(|v| v == "0") {
        smelt_testing::skip(smelt_testing::Need::Gpu, "SMELT_CUDA_MMVQ=0 turns the integer matvecs off");
        return;
    }
    cuda::set_matmul_precision(MatmulPrecision::Bf16);
    let mut r = Rng::new(seed());
    // Rows of 512, 576 (a 135M model's; not a whole number of K-quant blocks), 2304 and 8192
    // values (a 1B model's).
    for (ty, k) in FORMATS
        .into_iter()
        .flat_map(|ty| [512, 576, 2304, 8192].map(|k| (ty, k)))
        .filter(|&(ty, k)| k % ty.block_size() == 0)
    {
        let m = 70;
        let ws: Vec<(Vec<f32>, Tensor, Tensor)> = (0..2)
            .map(|_| {
                let w = randn(&mut r, m * k, 0.5);
                let q = QTensor::quantize(ty, &w, m, k).unwrap();
                let wd = dequantize(ty, q.bytes(), m * k).unwrap();
                let host = q.into_tensor();
                let dev = host.to_device(d).unwrap();
                (wd, host, dev)
            })
            .collect();
        // A third weight of another format beside them (a Q4_K_M file's Q6_K v; Q8_0 beside
        // Q5_0, the pair a q4_k export of 576-wide rows has, and wherever the rows are not
        // whole 256-blocks): one launch for the three where `mixed_kernel` has the pair, two
        // otherwise, the same values either way.
        let other = match (ty, k % 256 == 0) {
            (GgmlType::Q6_K | GgmlType::Q5_0, true) => GgmlType::Q8_0,
            (_, true) => GgmlType::Q6_K,
            (GgmlType::Q8_0, false) => GgmlType::Q4_0,
            (_, false) => GgmlType::Q8_0,
        };
        let w3 =
            QTensor::quantize(other, &randn(&mut r, 32 * k, 0.5), 32, k).unwrap().into_tensor().to_device(d).unwrap();
        let bias = Tensor::from_f32(randn(&mut r, m, 1.0), &[m]).unwrap().to_device(d).unwrap();
        for n in [1usize, 3, 8] {
            let xb = Tensor::from_f32(randn(&mut r, n * k, 1.0), &[n, k])
                .unwrap()
                .to_device(d)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap();
            let x = xb.to_vec_f32().unwrap(); // the bf16 values, as f32
            let y = linear(&xb, &ws[0].2, None).unwrap();
            // Each row as it comes out alone (n = 1: x quantised inside the matvec, the one-row
            // kernels) equals that row of the batch (x quantised by a launch, the n ≤ 8 kernels),
            // bit for bit: a served sequence's tokens do not depend on what else is in its step.
            if n > 1 {
                let yb = y.to_vec_f32().unwrap();
                for i in 0..n {
                    let xi = Tensor::from_f32(x[i * k..(i + 1) * k].to_vec(), &[1, k])
                        .unwrap()
                        .to_device(d)
                        .unwrap()
                        .to_dtype(DType::BF16)
                        .unwrap();
                    let alone = linear(&xi, &ws[0].2, None).unwrap().to_vec_f32().unwrap();
                    assert_eq!(
                        alone,
                        yb[i * m..(i + 1) * m],
                        "{} k={k}: row {i} alone vs in a batch of {n}",
                        ty.name()
                    );
                }
            }
            assert_eq!(y.dtype(), DType::BF16);
            let want = reference(&x, &ws[0].0, None, n, k, m);
            let e = nmse(&y.to_vec_f32().unwrap(), &want);
            let cpu = linear(&Tensor::from_f32(x.clone(), &[n, k]).unwrap(), &ws[0].1, None).unwrap();
            let ec = nmse(cpu.as_f32().unwrap(), &want);
            println!("  {} k={k} n={n}: integer matvec nmse {e:.3e} (CPU kernel {ec:.3e})", ty.name());
            assert!(e.is_finite() && e <= 1e-4, "{} k={k} n={n}: NMSE {e:e} > 1e-4", ty.name());

            let many = linear_many(&xb, &[(&ws[0].2, Some(&bias)), (&ws[1].2, None), (&w3, None)]).unwrap();
            let alone = [
                linear(&xb, &ws[0].2, Some(&bias)).unwrap(),
                linear(&xb, &ws[1].2, None).unwrap(),
                linear(&xb, &w3, None).unwrap(),
            ];
            for (i, (a, b)) in many.iter().zip(&alone).enumerate() {
                assert_eq!(a.shape(), b.shape());
                assert_eq!(
                    a.to_vec_f32().unwrap(),
                    b.to_vec_f32().unwrap(),
                    "{} n={n}: linear_many output {i}",
                    ty.name()
                );
            }
            if n == 1 {
                // A decode step's residual add and RMSNorm inside the gate/up launch: h and the
                // activation bit for bit what add_rmsnorm then linear_swiglu give (stream f32,
                // branch bf16, as mixed precision has them).
                let stream = Tensor::from_f32(randn(&mut r, k, 2.0), &[1, k]).unwrap().to_device(d).unwrap();
                let norm_w = Tensor::from_f32(randn(&mut r, k, 1.0), &[k]).unwrap().to_device(d).unwrap();
                let eps = 1e-5;
                let (h0, y0, _) = smelt_core::ops::rmsnorm::add_rmsnorm(&stream, &xb, &norm_w, eps).unwrap();
                let act0 = linear_swiglu(&y0, &ws[0].2, &ws[1].2).unwrap();
                let (h1, act1) =
                    smelt_core::ops::qmatmul::add_rmsnorm_swiglu(&stream, &xb, &norm_w, eps, &ws[0].2, &ws[1].2)
                        .unwrap()
                        .expect("the fused add + norm + gate/up applies to one mixed-precision row");
                assert_eq!(h1.to_vec_f32().unwrap(), h0.to_vec_f32().unwrap(), "{} k={k}: fused h", ty.name());
                assert_eq!(act1.to_vec_f32().unwrap(), act0.to_vec_f32().unwrap(), "{} k={k}: fused act", ty.name());
                // The same before q/k/v (two of one format, a third of another, a bias).
                let qkv = [(&ws[0].2, Some(&bias)), (&ws[1].2, None), (&w3, None)];
                let want = linear_many(&y0, &qkv).unwrap();
                if let Some((h2, got)) =
                    smelt_core::ops::qmatmul::add_rmsnorm_linear_many(&stream, &xb, &norm_w, eps, &qkv).unwrap()
                {
                    assert_eq!(
                        h2.to_vec_f32().unwrap(),
                        h0.to_vec_f32().unwrap(),
                        "{} k={k}: fused q/k/v h",
                        ty.name()
                    );
                    for (j, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            a.to_vec_f32().unwrap(),
                            b.to_vec_f32().unwrap(),
                            "{} k={k}: fused q/k/v output {j}",
                            ty.name()
                        );
                    }
                } else {
                    println!("  {} k={k}: q/k/v with {} take two launches, no fused form", ty.name(), other.name());
                }
            }
            let fused = linear_swiglu(&xb, &ws[0].2, &ws[1].2).unwrap();
            let unfused = swiglu(&linear(&xb, &ws[0].2, None).unwrap(), &alone[1]).unwrap();
            assert_eq!(
                fused.to_vec_f32().unwrap(),
                unfused.to_vec_f32().unwrap(),
                "{} n={n}: linear_swiglu",
                ty.name()
            );
        }
    }
    cuda::set_matmul_precision(MatmulPrecision::F32);
}
