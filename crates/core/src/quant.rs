//! Quantised weight matrices as a storage kind: core knows only this interface, the block
//! formats and their kernels live in `smelt-gguf` (which implements it). A quantised tensor is
//! for inference: `linear` multiplies by it, `embedding` gathers its rows, every other op and
//! every backward refuses it with an error.

use std::fmt::Debug;

/// A 2-D weight `[rows, cols]` (Hugging Face `[out, in]` layout) in some block format.
pub trait QuantMatrix: Send + Sync + Debug {
    /// (rows, cols).
    fn dims(&self) -> (usize, usize);
    /// The format's name as llama.cpp spells it (`q4_1`, `q8_0`, …).
    fn type_name(&self) -> &'static str;
    /// Bytes the quantised data takes.
    fn nbytes(&self) -> usize;
    /// y (n × rows) = x (n × cols) · selfᵀ.
    fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]);
    /// Dequantises row `r` into `out` (len cols).
    fn dequantize_row(&self, r: usize, out: &mut [f32]);
    /// For the crate that implements it to get its own type back.
    fn as_any(&self) -> &dyn std::any::Any;
}
