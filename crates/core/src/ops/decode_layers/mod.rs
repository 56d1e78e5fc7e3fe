//! Every layer of a decode step in one launch: a persistent CUDA kernel (`decode_layers.cu`)
//! for one row (batch 1) under mixed precision, dense bf16 matrices (`decode_layers_bf16`) or
//! block-quantised ones (`decode_layers_quant`: Q4_K, Q6_K, Q5_0 and Q8_0, in any mix, as
//! GGUF files of those types hold them), Llama-family layers (RMSNorm, SwiGLU, RoPE, optional
//! q/k/v biases, GQA, sliding windows; no q/k norms), the position on the device. docs/CUDA.md,
//! "One persistent kernel a decode token", has the design and the budget.
//!
//! It is a fusion of ops that live elsewhere, not an op of its own: its phases call the device
//! functions of the launched decode step's kernels (gemv.cu's row sums, qmatmul.cu's integer row
//! sums and in-block 8-bit quantisation of the input row, common.cuh's add + RMSNorm, decode.cu's
//! attention and merge) with the arguments their launchers pick (lanes a row, warps a norm row,
//! key splits), so it computes the launched step's numbers bit for bit.
//! The reference is therefore that step, not a CPU kernel: `gpu_infer::
//! persistent_decode_steps_equal_the_launched_ones` compares the two over hundreds of steps.
//!
//! Experimental and opt-in: `SMELT_CUDA_PERSIST=1` (written 2026-12-04 without a GPU; see
//! docs/CUDA.md for what has and has not run). Where anything does not fit (another precision,
//! another quantised format, an adapter, a shape past the kernel's limits) `decode_layers`
//! returns None before launching anything, and the model runs its layers one launch at a time.

use crate::ops::rope::RopeTable;
use crate::ops::Pos;
use crate::Tensor;
use anyhow::Result;

#[cfg(feature = "cuda")]
pub mod cuda;

/// One layer's operands. Matrices are (out, in) as `linear` takes them (f32 or bf16: the bf16
/// copy of an f32 weight is the one every matvec reads); norms and biases f32; the caches
/// (1, S, KVH, D) of the activations' dtype, written at the position.
pub struct Layer<'a> {
    pub qkv: [(&'a Tensor, Option<&'a Tensor>); 3],
    pub o: &'a Tensor,
    pub gate: &'a Tensor,
    pub up: &'a Tensor,
    pub down: &'a Tensor,
    /// The norm before q/k/v (unused for layer 0, whose input arrives normed).
    pub attn_norm: &'a Tensor,
    pub ffn_norm: &'a Tensor,
    pub k_cache: &'a mut Tensor,
    pub v_cache: &'a mut Tensor,
    /// Sliding window of this layer (None: all keys).
    pub window: Option<usize>,
}

/// Heads and norm of the model.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f64,
    pub scale: f32,
}

/// Launches of the kernel so far (`launches`).
pub(crate) static LAUNCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many times the persistent kernel has been launched in this process (replays of a captured
/// step not counted): a test's proof that the kernel ran rather than the launched path.
pub fn launches() -> u64 {
    LAUNCHES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Fails if a persistent launch on `device` since the last check had a grid barrier time out
/// (waits for the device). A captured step cannot report it; `Decoder::prefill` calls this.
pub fn check(device: crate::Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(n) = device {
        if enabled() {
            return cuda::check(&crate::cuda::gpu(n)?);
        }
    }
    let _ = device;
    Ok(())
}

/// 0: as `SMELT_CUDA_PERSIST` says; 1: on; 2: off (`set_enabled`).
static FORCED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether decode steps may take the persistent kernel (`SMELT_CUDA_PERSIST=1`; off by default).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    match FORCED.load(std::sync::atomic::Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => *ON.get_or_init(|| std::env::var("SMELT_CUDA_PERSIST").is_ok_and(|v| v == "1")),
    }
}

/// Overrides `SMELT_CUDA_PERSIST` for the whole process (Some), or goes back to it (None): the
/// tests that compare the two paths in one process.
pub fn set_enabled(on: Option<bool>) {
    let v = match on {
        None => 0,
        Some(true) => 1,
        Some(false) => 2,
    };
    FORCED.store(v, std::sync::atomic::Ordering::Relaxed);
}

/// Runs `layers` for one decode row: x0 (1, C) f32 is the stream entering layer 0 and h0 (1, C)
/// bf16 its normed input; each layer's new key and value go into its caches at `pos` (on the
/// device). Returns (x, r): the stream before the last layer's feed-forward add and that
/// add's bf16 input (the down product), for the caller's final add + norm. Ok(None), with
/// nothing launched, where the kernel does not apply.
pub fn decode_layers(
    x0: &Tensor,
    h0: &Tensor,
    layers: &mut [Layer],
    rope: &RopeTable,
    pos: Pos,
    dims: Dims,
) -> Result<Option<(Tensor, Tensor)>> {
    if x0.device().is_cpu() || layers.is_empty() {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    return cuda::decode_layers(x0, h0, layers, rope, pos, dims);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (h0, rope, pos, dims);
        Ok(None)
    }
}
