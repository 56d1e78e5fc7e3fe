//! CUDA parity tests: every op's kernels against the CPU reference, forward and backward.
//!
//! Inputs are fresh random each run (the seed is printed; `SMELT_PARITY_SEED` replays one);
//! every device output buffer is poisoned with NaN before its kernel runs, so an element a
//! kernel forgets to write fails the comparison. Comparison: NMSE = ‖gpu − cpu‖² / ‖cpu‖²
//! against a per-precision threshold. Without a GPU each test prints `SKIP: no CUDA device`
//! and passes (CI has none). `kernels_compile` needs only NVRTC, not a GPU.

use crate::cuda;
use crate::ops;
use crate::rng::Rng;
use crate::{Device, Tensor};

/// f32 kernels against the f32 CPU code: only summation order differs.
const F32_NMSE: f64 = 1e-10;
/// bf16 matmul operands (f32 accumulation).
const BF16_NMSE: f64 = 1e-4;

fn dev() -> Option<Device> {
    match cuda::gpu(0) {
        Ok(_) => {
            cuda::set_poison(true);
            cuda::set_matmul_precision(cuda::MatmulPrecision::F32);
            Some(Device::Cuda(0))
        }
        Err(e) => {
            println!("SKIP: no CUDA device ({e:#})");
            None
        }
    }
}

fn seed() -> u64 {
    let s = std::env::var("SMELT_PARITY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    println!("seed {s} (SMELT_PARITY_SEED={s} replays it)");
    s
}

fn randn(r: &mut Rng, shape: &[usize], scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_f32((0..n).map(|_| r.normal() as f32 * scale).collect(), shape).unwrap()
}

fn ids(r: &mut Rng, n: usize, v: usize) -> Tensor {
    Tensor::from_u32((0..n).map(|_| r.below(v as u64) as u32).collect(), &[n]).unwrap()
}

fn up(t: &Tensor, d: Device) -> Tensor { t.to_device(d).unwrap() }

/// Asserts NMSE(gpu, cpu) ≤ tol; NaN (an unwritten or broken element) always fails.
fn close(label: &str, gpu: &Tensor, cpu: &Tensor, tol: f64) {
    assert_eq!(gpu.shape(), cpu.shape(), "{label}: shape");
    let (g, c) = (gpu.try_to_vec_f32().unwrap(), cpu.to_vec_f32());
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in g.iter().zip(&c) {
        num += (*a as f64 - *b as f64).powi(2);
        den += (*b as f64).powi(2);
    }
    let nmse = num / den.max(1e-30);
    println!("{label:<28} nmse {nmse:.3e} (tol {tol:.0e})");
    assert!(nmse.is_finite() && nmse <= tol, "{label}: NMSE {nmse:e} > {tol:e} (or NaN: an element was not written)");
}

#[test]
fn kernels_compile() {
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        println!("SKIP: NVRTC not found");
        return;
    }
    let arch = cuda::gpu(0).map(|g| g.arch).unwrap_or((9, 0));
    for (name, src) in [
        ("adamw", ops::adamw::cuda::SRC),
        ("attention", ops::attention::cuda::SRC),
        ("cross_entropy", ops::cross_entropy::cuda::SRC),
        ("elementwise", ops::elementwise::cuda::SRC),
        ("embedding", ops::embedding::cuda::SRC),
        ("matmul", ops::matmul::cuda::SRC),
        ("rmsnorm", ops::rmsnorm::cuda::SRC),
        ("rope", ops::rope::cuda::SRC),
        ("swiglu", ops::swiglu::cuda::SRC),
    ] {
        if let Err(e) = cuda::compile::compile(name, src, arch) {
            panic!("{e:#}");
        }
    }
}
