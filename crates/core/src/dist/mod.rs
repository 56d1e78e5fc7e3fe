//! Data-parallel communication: several processes (one per GPU) that each hold the whole model
//! and average their gradients. This module owns the job's description ([`DistEnv`], read from
//! the torchrun/Slurm environment), the rendezvous that hands NCCL's id to every rank, and the
//! one seam the trainer talks to, [`Collective`]: NCCL on GPUs (`cuda::nccl`, loaded at run
//! time like the other CUDA libraries), and [`ThreadGroup`], threads of one process on the CPU,
//! the readable reference the trainer's data-parallel logic is tested against.
//!
//! What is reduced when (gradient buckets, the last micro-step only) is the trainer's policy
//! (`smelt_train::dist`), not this module's.

mod env;
pub mod rendezvous;
mod threads;

pub use env::{DistEnv, DEFAULT_PORT};
pub use threads::ThreadGroup;

use crate::{DType, Device, Tensor};
use anyhow::Result;
use std::sync::Arc;

/// A group of ranks that average tensors. Every rank calls the same methods in the same order
/// with tensors of the same shapes; a call returns once this rank's result is queued (on a GPU)
/// or written (on the CPU).
pub trait Collective: Send + Sync + std::fmt::Debug {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Replaces each tensor of `bucket` by its mean over the ranks, sent as `wire` (F32, or
    /// BF16 for half the traffic: the values are rounded to bf16 before the sum and the mean
    /// comes back in the tensor's own dtype). One call is one bucket: one round of messages.
    fn all_reduce_mean(&self, bucket: &mut [Tensor], wire: DType) -> Result<()>;

    /// Starts `all_reduce_mean` of `bucket` and returns at once where the device allows: on a
    /// GPU the messages go on a stream of their own, after the work queued so far (the
    /// backward kernels that wrote the bucket), while the caller queues more; [`Pending::finish`]
    /// makes later work wait for them and hands the averaged tensors back. By default (the
    /// CPU) it averages before returning.
    fn start_mean(&self, mut bucket: Vec<Tensor>, wire: DType) -> Result<Pending> {
        self.all_reduce_mean(&mut bucket, wire)?;
        Ok(Pending::done(bucket))
    }

    /// ZeRO-1's reduce-scatter, begun as `start_mean` is: each tensor of `bucket` (flat, its
    /// length a multiple of the world size) is averaged over the ranks, and this rank gets back
    /// only its piece of the mean: elements `rank·n/world .. (rank + 1)·n/world`, in the
    /// tensor's own dtype (sent as `wire`, as `all_reduce_mean`).
    fn start_scatter_mean(&self, bucket: Vec<Tensor>, wire: DType) -> Result<Pending>;

    /// ZeRO-1's all-gather: `outs[i]` (flat, `world` times as long as `pieces[i]`, same dtype)
    /// is overwritten with every rank's `pieces[i]`, in rank order. One call is one round of
    /// messages, after the work queued so far.
    fn all_gather_into(&self, pieces: &[Tensor], outs: &mut [Tensor]) -> Result<()>;

    /// Replaces the f64 values held in `t` (as [`f64_words`] writes them) by their sums over the ranks, in f64. One rank leaves them as they are.
    fn all_reduce_sum_f64(&self, t: &mut Tensor) -> Result<()>;
}

/// f64 values as the tensor [`Collective::all_reduce_sum_f64`] sums (tensors have no f64
/// dtype): each value's eight bytes as two u32 words, low word first (the device's
/// little-endian layout of an f64), on `device`.
pub fn f64_words(values: &[f64], device: Device) -> Result<Tensor> {
    let words: Vec<u32> = values.iter().flat_map(|v| [v.to_bits() as u32, (v.to_bits() >> 32) as u32]).collect();
    Tensor::from_u32(words, &[2 * values.len()])?.to_device(device)
}

/// The f64 values of a tensor `f64_words` made (read back to the host).
pub fn f64_values(t: &Tensor) -> Result<Vec<f64>> {
    let host = t.to_device(Device::Cpu)?;
    let w = host.as_u32()?;
    if w.len() % 2 != 0 {
        anyhow::bail!("f64 words: an odd count of words ({})", w.len());
    }
    Ok(w.chunks_exact(2).map(|c| f64::from_bits(c[0] as u64 | ((c[1] as u64) << 32))).collect())
}
/// An average begun by [`Collective::start_mean`]; it holds the tensors until `finish`.
pub struct Pending(Box<dyn FnOnce() -> Result<Vec<Tensor>> + Send>);

impl Pending {
    pub fn new(finish: impl FnOnce() -> Result<Vec<Tensor>> + Send + 'static) -> Self {
        Pending(Box::new(finish))
    }
    /// Already averaged.
    pub fn done(bucket: Vec<Tensor>) -> Self {
        Pending::new(move || Ok(bucket))
    }
    /// The averaged tensors, in the order given; work queued after this sees them averaged.
    pub fn finish(self) -> Result<Vec<Tensor>> {
        (self.0)()
    }
}

/// This process's communicator for the job `env`, on `device`: NCCL over the GPU
/// `cuda:LOCAL_RANK` (the rendezvous at MASTER_ADDR:MASTER_PORT first). Fails on a build
/// without CUDA and on the CPU: several processes train on GPUs only.
pub fn connect(env: &DistEnv, device: Device) -> Result<Arc<dyn Collective>> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(n) => {
            let gpu = crate::cuda::gpu(n)?;
            Ok(Arc::new(crate::cuda::nccl::Nccl::connect(env, gpu, rendezvous::default_timeout())?))
        }
        Device::Cpu => anyhow::bail!(
            "rank {} of {}: data-parallel training runs on GPUs over NCCL, not on the CPU{}",
            env.rank,
            env.world_size,
            if cfg!(feature = "cuda") {
                ""
            } else {
                " (this smelt was built without CUDA: build with --features cuda)"
            }
        ),
    }
}
