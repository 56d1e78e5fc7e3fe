//! smelt-core: tensors, the backend ops (forward and backward), and the autograd tape.
//!
//! Layering: `tensor` (data) → `ops` (one folder per fused op, CPU reference kernels) →
//! `autograd` (records ops on a tape, runs their backwards). `quant` holds ggml's block formats
//! (keyed by smelt-gguf's `GgmlType`) with their host kernels; their CUDA kernels are
//! `ops/qmatmul`. Nothing here knows about transformers; `smelt-model` builds the network out
//! of these ops.

pub mod autograd;
pub mod backend;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dist;
pub mod float;
pub mod ggml;
pub mod mem;
pub mod ops;
pub mod par;
pub mod profile;
pub mod quant;
pub mod replay;
pub mod rng;
pub mod tensor;

pub use autograd::{Grads, Graph, Var};
pub use backend::{backend, Backend};
pub use tensor::{DType, Device, Storage, Tensor};
