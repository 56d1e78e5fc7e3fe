//! The scalar types CPU reference kernels are written over: f32 for real work, f64 for the
//! finite-difference gradient checks. One kernel body serves both.

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

pub trait Float:
    Copy
    + Send
    + Sync
    + Debug
    + PartialOrd
    + Default
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + Sum
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    /// exp for bulk kernels (softmax, cross-entropy, SiLU): f32 uses a branch-free polynomial
    /// (within ~2 ulp of `exp`) that the compiler vectorises; f64 is the exact `exp`.
    fn exp_fast(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn max(self, o: Self) -> Self;
    fn is_finite(self) -> bool;
    /// a·b + c with one rounding.
    fn mul_add(self, b: Self, c: Self) -> Self;
    /// y = silu(g)·u = g/(1 + e^(−g))·u elementwise: f32 in llama.cpp's arithmetic
    /// (`crate::ggml::swiglu`), f64 with the exact `exp`.
    fn swiglu_into(y: &mut [Self], g: &[Self], u: &[Self]);
    /// y (n×m) = x (n×k) · wᵀ (w: m×k) by register tiles where this type has them on this CPU
    /// (f32 on AVX-512: `quant::float_formats::f32_matmul_tiles`), y resized to n·m and every
    /// element written; false (y untouched, so no output is allocated) where not, for `gemm`.
    fn matmul_tiles(x: &[Self], w: &[Self], n: usize, k: usize, m: usize, y: &mut Vec<Self>) -> bool;
    /// C(m×n) = alpha·A(m×k)·B(k×n) + beta·C with arbitrary strides (row stride, column stride).
    ///
    /// # Safety
    /// The pointers and strides must describe valid, non-overlapping (for C) memory.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

macro_rules! impl_float {
    ($t:ty, $gemm:path, $fast:path, $swiglu:path, $tiles:path) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn exp_fast(self) -> Self {
                $fast(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn max(self, o: Self) -> Self {
                <$t>::max(self, o)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline(always)]
            fn mul_add(self, b: Self, c: Self) -> Self {
                <$t>::mul_add(self, b, c)
            }
            fn swiglu_into(y: &mut [Self], g: &[Self], u: &[Self]) {
                $swiglu(y, g, u)
            }
            fn matmul_tiles(x: &[Self], w: &[Self], n: usize, k: usize, m: usize, y: &mut Vec<Self>) -> bool {
                $tiles(x, w, n, k, m, y)
            }
            unsafe fn gemm(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                $gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
            }
        }
    };
}
impl_float!(f32, matrixmultiply::sgemm, exp_f32, crate::ggml::swiglu, crate::quant::float_formats::f32_matmul_tiles);
impl_float!(f64, matrixmultiply::dgemm, f64::exp, swiglu_f64, no_tiles);

/// f64 has no tiles (the gradient checks' type): `gemm` throughout.
fn no_tiles(_: &[f64], _: &[f64], _: usize, _: usize, _: usize, _: &mut Vec<f64>) -> bool {
    false
}

fn swiglu_f64(y: &mut [f64], g: &[f64], u: &[f64]) {
    for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
        *y = g / (1.0 + (-g).exp()) * u;
    }
}

/// e^x for f32 without a libm call (Cephes' expf: x = n·ln2 + r, a degree-6 polynomial for
/// e^r on |r| ≤ ln2/2, then 2^n by building the exponent bits). Only SSE2 operations, so loops
/// over it vectorise on any x86-64. NaN stays NaN; x < −87.3 gives ~1e-38 rather than 0.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding and subtracting it rounds to an integer
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * C1 - n * C2;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    y * scale
}

/// Runs `f` compiled for AVX-512 (else AVX2) where the CPU has it: loops of plain arithmetic
/// (`exp_f32`, `sum_exp`, `max_of`: no `mul_add`, which Rust never forms by itself) vectorise
/// 16 (8) lanes wide instead of SSE2's 4, with the same operations in the same order, so the
/// same results.
#[inline(always)]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F checked at run time.
            return unsafe { avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 checked at run time.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// Dot product with eight independent accumulators so the compiler can vectorise it
/// (a single running sum is a serial dependency chain).
#[inline]
pub fn dot<F: Float>(a: &[F], b: &[F]) -> F {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [F::ZERO; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// max of a slice (−∞ if empty), eight lanes at a time so it vectorises.
#[inline]
pub fn max_of<F: Float>(x: &[F]) -> F {
    let mut acc = [F::NEG_INFINITY; 8];
    let chunks = x.len() / 8;
    for c in 0..chunks {
        for i in 0..8 {
            acc[i] = acc[i].max(x[c * 8 + i]);
        }
    }
    let mut m = acc.iter().fold(F::NEG_INFINITY, |a, &b| a.max(b));
    for &v in &x[chunks * 8..] {
        m = m.max(v);
    }
    m
}

/// Σ exp(x − m), eight lanes at a time.
#[inline]
pub fn sum_exp<F: Float>(x: &[F], m: F) -> F {
    let mut acc = [F::ZERO; 8];
    let chunks = x.len() / 8;
    for c in 0..chunks {
        for i in 0..8 {
            acc[i] += (x[c * 8 + i] - m).exp_fast();
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for &v in &x[chunks * 8..] {
        s += (v - m).exp_fast();
    }
    s
}

/// y += alpha · x
#[inline]
pub fn axpy<F: Float>(alpha: F, x: &[F], y: &mut [F]) {
    debug_assert_eq!(x.len(), y.len());
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_f32_is_within_a_few_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (super::exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.00731;
        }
        assert!(worst < 3e-7, "max relative error {worst:e}");
        assert!(super::exp_f32(f32::NAN).is_nan());
    }
}
