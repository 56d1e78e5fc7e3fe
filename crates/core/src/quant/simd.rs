//! Which CPU kernels the block formats run: [`Level`], detected once at run time (AVX2/AVX-512
//! on x86-64, NEON/dotprod on aarch64, scalar elsewhere or when `SMELT_NO_SIMD=1`). Every kernel
//! file (`act`, `float_formats`, `qtensor`) asks here, so the choice has one home below them.

/// Which kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Scalar,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// x86-64 with AVX2/FMA/F16C and AVX-512 F, BW, VL and VNNI (`SMELT_NO_AVX512=1` keeps `Avx2`).
    Avx512,
    /// aarch64, plain NEON (baseline on every aarch64 CPU).
    Neon,
    /// aarch64 NEON with the dotprod extension (`sdot`).
    NeonDotprod,
}

impl Level {
    pub fn detect() -> Level {
        #[cfg(target_arch = "x86_64")]
        {
            use std::sync::OnceLock;
            static L: OnceLock<Level> = OnceLock::new();
            return *L.get_or_init(|| {
                let simd = std::env::var_os("SMELT_NO_SIMD").is_none()
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c");
                if !simd {
                    Level::Scalar
                } else if std::env::var_os("SMELT_NO_AVX512").is_none() && avx512_detected() {
                    Level::Avx512
                } else {
                    Level::Avx2
                }
            });
        }
        #[cfg(target_arch = "aarch64")]
        {
            use std::sync::OnceLock;
            static L: OnceLock<Level> = OnceLock::new();
            return *L.get_or_init(|| {
                if std::env::var_os("SMELT_NO_SIMD").is_some() {
                    Level::Scalar
                } else if std::env::var_os("SMELT_NO_DOTPROD").is_none()
                    && std::arch::is_aarch64_feature_detected!("dotprod")
                {
                    Level::NeonDotprod
                } else {
                    Level::Neon
                }
            });
        }
        #[allow(unreachable_code)]
        Level::Scalar
    }
}

/// The AVX-512 features `avx512.rs` uses (with AVX2, FMA and F16C).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512_detected() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}
