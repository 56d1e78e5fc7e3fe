//! The backend ops. Each op is one folder: its API and docs in `mod.rs`, the CPU reference
//! kernels (generic over f32/f64 so the f64 gradient checks run the very same code), the
//! backward beside the forward, and the tests. Tensor-level functions dispatch on the device;
//! the CUDA backend adds `cuda.rs` + `<op>.cu` beside each.

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod matmul;
pub mod qmatmul;
pub mod rmsnorm;
pub mod rope;
pub mod sample;
pub mod swiglu;

#[cfg(all(test, feature = "cuda"))]
mod parity_bf16_tests;
#[cfg(all(test, feature = "cuda"))]
mod parity_tests;
#[cfg(test)]
pub(crate) mod testing;
