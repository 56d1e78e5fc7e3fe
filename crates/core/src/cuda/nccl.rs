//! NCCL, the GPUs' [`Collective`]: one communicator per process over its one GPU, made from a
//! unique id that rank 0 creates and the rendezvous (`dist::rendezvous`) hands to the others.
//! libnccl is loaded at run time (cudarc's dynamic loading), so a machine without it gets an
//! error from `Nccl::connect`, never a failure to start.
//!
//! Collectives run on the GPU's one stream (`cuda::Gpu::stream`), in order after the backward
//! kernels that wrote the gradients: nothing else orders them.

use super::Gpu;
use crate::dist::{rendezvous, Collective, DistEnv};
use crate::{DType, Tensor};
use anyhow::{anyhow, bail, Context, Result};
use cudarc::nccl::{result, sys};
use std::sync::Arc;
use std::time::Duration;

pub struct Nccl {
    raw: sys::ncclComm_t,
    gpu: Arc<Gpu>,
    rank: usize,
    world: usize,
}

// The communicator is used by one thread at a time (the trainer's); NCCL's handle may move.
unsafe impl Send for Nccl {}
unsafe impl Sync for Nccl {}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NCCL rank {} of {} on {:?}", self.rank, self.world, self.gpu)
    }
}

fn nccl_err(what: &str, e: result::NcclError) -> anyhow::Error {
    anyhow!("NCCL {what}: {e:?}")
}

/// Whether libnccl can be loaded, or why not.
pub fn available() -> Result<()> {
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        bail!("libnccl.so.2 could not be loaded: install NCCL (e.g. `pip install nvidia-nccl-cu13` and put its lib folder on LD_LIBRARY_PATH) to train on several GPUs")
    }
}

impl Nccl {
    /// Joins the job `env` on `gpu`: rank 0 makes the id, the rendezvous hands it out
    /// (waiting at most `timeout`), then every rank initialises its communicator (which waits
    /// for all of them).
    pub fn connect(env: &DistEnv, gpu: Arc<Gpu>, timeout: Duration) -> Result<Self> {
        available()?;
        let id = if env.rank == 0 {
            let id = result::get_uniqueid().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
            let bytes: Vec<u8> = id.internal.iter().map(|&c| c as u8).collect();
            rendezvous::exchange(env, Some(&bytes), timeout)?;
            id
        } else {
            let bytes = rendezvous::exchange(env, None, timeout)?;
            let internal: [std::ffi::c_char; 128] = bytes
                .iter()
                .map(|&b| b as std::ffi::c_char)
                .collect::<Vec<_>>()
                .try_into()
                .map_err(|_| anyhow!("rendezvous at {}: a {}-byte NCCL id (expected 128)", env.master(), bytes.len()))?;
            sys::ncclUniqueId { internal }
        };
        // NCCL finds its device through the runtime's current device: this thread's context.
        gpu.ctx.bind_to_thread().map_err(|e| anyhow!("{gpu:?}: {e:?}"))?;
        let mut raw: sys::ncclComm_t = std::ptr::null_mut();
        unsafe { result::comm_init_rank(&mut raw, env.world_size as i32, id, env.rank as i32) }
            .map_err(|e| nccl_err("ncclCommInitRank", e))
            .with_context(|| format!("rank {} of {} on {gpu:?}", env.rank, env.world_size))?;
        Ok(Nccl { raw, gpu, rank: env.rank, world: env.world_size })
    }

    fn all_reduce_avg_in_place(&self, t: &mut Tensor) -> Result<()> {
        let buf = t.cuda_buf_mut()?;
        if buf.gpu.ordinal != self.gpu.ordinal {
            bail!("all_reduce: a tensor on cuda:{}, the communicator on cuda:{}", buf.gpu.ordinal, self.gpu.ordinal);
        }
        let dt = match buf.dtype {
            DType::F32 => sys::ncclDataType_t::ncclFloat32,
            DType::BF16 => sys::ncclDataType_t::ncclBfloat16,
            d => bail!("all_reduce: f32 or bf16 tensors, not {d:?}"),
        };
        let ptr = buf.ptr() as *mut std::ffi::c_void;
        unsafe {
            result::all_reduce(
                ptr,
                ptr,
                buf.len,
                dt,
                sys::ncclRedOp_t::ncclAvg,
                self.raw,
                self.gpu.stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|e| nccl_err("ncclAllReduce", e))?;
        Ok(())
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_mean(&self, bucket: &mut [Tensor], wire: DType) -> Result<()> {
        // Tensors not already in the wire dtype travel as a copy in it (bf16 for f32 gradients).
        let mut sent: Vec<Tensor> = Vec::new();
        let mut direct = Vec::new();
        for (i, t) in bucket.iter().enumerate() {
            if t.dtype() == wire {
                direct.push(i);
            } else {
                sent.push(t.to_dtype(wire)?);
            }
        }
        // One group: NCCL fuses the bucket's tensors into one round of messages.
        result::group_start().map_err(|e| nccl_err("ncclGroupStart", e))?;
        let mut issued: Result<()> = Ok(());
        for &i in &direct {
            issued = issued.and_then(|_| self.all_reduce_avg_in_place(&mut bucket[i]));
        }
        for s in sent.iter_mut() {
            issued = issued.and_then(|_| self.all_reduce_avg_in_place(s));
        }
        // The group must close whatever happened inside it.
        result::group_end().map_err(|e| nccl_err("ncclGroupEnd", e))?;
        issued?;
        let mut sent = sent.into_iter();
        for t in bucket.iter_mut() {
            if t.dtype() != wire {
                let back = sent.next().context("all_reduce: internal error")?;
                *t = back.to_dtype(t.dtype())?;
            }
        }
        Ok(())
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // Queued collectives finish first; a failed destroy at exit has no one to tell.
        let _ = self.gpu.synchronize();
        unsafe {
            let _ = result::comm_destroy(self.raw);
        }
    }
}
