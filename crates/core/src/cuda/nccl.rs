//! NCCL, the GPUs' [`Collective`]: one communicator per process over its one GPU, made from a
//! unique id that rank 0 creates and the rendezvous (`dist::rendezvous`) hands to the others.
//!
//! libnccl is loaded at run time, so a machine without it gets an error from `Nccl::connect`,
//! never a failure to start. The types and constants are cudarc's (`cudarc::nccl::sys`), but
//! the library is opened here: cudarc looks only for `libnccl.so`, and what pip's
//! `nvidia-nccl-cu13` and the distributions' runtime packages install is `libnccl.so.2`.
//! `SMELT_NCCL_LIB=/path/to/libnccl.so.2` names the file outright.
//!
//! `all_reduce_mean` runs on the GPU's one stream (`cuda::Gpu::stream`), in order after the
//! kernels that wrote its tensors. `start_mean` runs on the communicator's own stream instead,
//! so the backward of the layers below goes on meanwhile: that stream first waits for what
//! the compute stream has queued (an event), and `Pending::finish` makes the compute stream
//! wait for it in turn. The tensors stay held until then, so their memory (freed in order on
//! the compute stream) cannot be reused under a running all-reduce.

use super::Gpu;
use crate::dist::{rendezvous, Collective, DistEnv, Pending};
use crate::{DType, Tensor};
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::CudaStream;
use cudarc::nccl::sys;
use std::ffi::{c_char, c_int, c_void};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

type NcclResult = c_int;

/// The entry points smelt calls, from one loaded libnccl.
struct Lib {
    _lib: libloading::Library,
    get_unique_id: unsafe extern "C" fn(*mut sys::ncclUniqueId) -> NcclResult,
    comm_init_rank: unsafe extern "C" fn(*mut sys::ncclComm_t, c_int, sys::ncclUniqueId, c_int) -> NcclResult,
    comm_destroy: unsafe extern "C" fn(sys::ncclComm_t) -> NcclResult,
    all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        sys::ncclComm_t,
        *mut c_void,
    ) -> NcclResult,
    reduce_scatter: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        sys::ncclComm_t,
        *mut c_void,
    ) -> NcclResult,
    all_gather:
        unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, sys::ncclComm_t, *mut c_void) -> NcclResult,
    group_start: unsafe extern "C" fn() -> NcclResult,
    group_end: unsafe extern "C" fn() -> NcclResult,
    get_error_string: unsafe extern "C" fn(NcclResult) -> *const c_char,
    get_version: unsafe extern "C" fn(*mut c_int) -> NcclResult,
}

fn load() -> Result<Lib> {
    let names: Vec<String> = match std::env::var("SMELT_NCCL_LIB") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => vec!["libnccl.so.2".into(), "libnccl.so".into()],
    };
    let mut tried = Vec::new();
    for n in &names {
        match unsafe { libloading::Library::new(n) } {
            Ok(lib) => {
                return Ok(Lib {
                    get_unique_id: sym(&lib, n, "ncclGetUniqueId")?,
                    comm_init_rank: sym(&lib, n, "ncclCommInitRank")?,
                    comm_destroy: sym(&lib, n, "ncclCommDestroy")?,
                    all_reduce: sym(&lib, n, "ncclAllReduce")?,
                    reduce_scatter: sym(&lib, n, "ncclReduceScatter")?,
                    all_gather: sym(&lib, n, "ncclAllGather")?,
                    group_start: sym(&lib, n, "ncclGroupStart")?,
                    group_end: sym(&lib, n, "ncclGroupEnd")?,
                    get_error_string: sym(&lib, n, "ncclGetErrorString")?,
                    get_version: sym(&lib, n, "ncclGetVersion")?,
                    _lib: lib,
                });
            }
            Err(e) => tried.push(format!("{n}: {e}")),
        }
    }
    bail!(
        "NCCL could not be loaded ({}). Install it (a distribution's libnccl2, or `pip install nvidia-nccl-cu13` with its nvidia/nccl/lib folder on LD_LIBRARY_PATH) or name the file with SMELT_NCCL_LIB",
        tried.join("; ")
    )
}

/// The function `name` of `lib` (opened as `file`), typed as the field it fills.
fn sym<T: Copy>(lib: &libloading::Library, file: &str, name: &str) -> Result<T> {
    let s: libloading::Symbol<T> =
        unsafe { lib.get(name.as_bytes()) }.map_err(|e| anyhow!("{file}: no {name}: {e}"))?;
    Ok(*s)
}

fn lib() -> Result<&'static Lib> {
    static LIB: OnceLock<std::result::Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(|| load().map_err(|e| format!("{e:#}"))).as_ref().map_err(|e| anyhow!("{e}"))
}

/// `r` as a Result, with NCCL's own words for a failure.
fn check(r: NcclResult, what: &str) -> Result<()> {
    if r == 0 {
        return Ok(());
    }
    let msg = lib()
        .ok()
        .map(|l| unsafe { (l.get_error_string)(r) })
        .filter(|p| !p.is_null())
        .map(|p| unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned())
        .unwrap_or_default();
    bail!("NCCL {what} failed: error {r} ({msg})")
}

/// Whether libnccl can be loaded, or why not.
pub fn available() -> Result<()> {
    lib().map(|_| ())
}

/// The loaded NCCL's version, e.g. 23007 for 2.30.7.
pub fn version() -> Result<i32> {
    let mut v: c_int = 0;
    check(unsafe { (lib()?.get_version)(&mut v) }, "ncclGetVersion")?;
    Ok(v)
}

pub struct Nccl {
    raw: sys::ncclComm_t,
    gpu: Arc<Gpu>,
    /// Where `start_mean`'s messages go.
    comm_stream: Arc<CudaStream>,
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

impl Nccl {
    /// Joins the job `env` on `gpu`: rank 0 makes the id, the rendezvous hands it out
    /// (waiting at most `timeout`), then every rank initialises its communicator (which waits
    /// for all of them).
    pub fn connect(env: &DistEnv, gpu: Arc<Gpu>, timeout: Duration) -> Result<Self> {
        let l = lib()?;
        let id = if env.rank == 0 {
            let mut id = sys::ncclUniqueId { internal: [0; 128] };
            check(unsafe { (l.get_unique_id)(&mut id) }, "ncclGetUniqueId")?;
            let bytes: Vec<u8> = id.internal.iter().map(|&c| c as u8).collect();
            rendezvous::exchange(env, Some(&bytes), timeout)?;
            id
        } else {
            let bytes = rendezvous::exchange(env, None, timeout)?;
            let internal: [std::ffi::c_char; 128] =
                bytes.iter().map(|&b| b as std::ffi::c_char).collect::<Vec<_>>().try_into().map_err(|_| {
                    anyhow!("rendezvous at {}: a {}-byte NCCL id (expected 128)", env.master(), bytes.len())
                })?;
            sys::ncclUniqueId { internal }
        };
        // NCCL finds its device through the runtime's current device: this thread's context.
        gpu.ctx.bind_to_thread().map_err(|e| anyhow!("{gpu:?}: {e:?}"))?;
        let mut raw: sys::ncclComm_t = std::ptr::null_mut();
        check(
            unsafe { (l.comm_init_rank)(&mut raw, env.world_size as c_int, id, env.rank as c_int) },
            "ncclCommInitRank",
        )
        .with_context(|| format!("rank {} of {} on {gpu:?}", env.rank, env.world_size))?;
        let comm_stream = gpu.ctx.new_stream().map_err(|e| anyhow!("{gpu:?}: cannot create a stream: {e:?}"))?;
        Ok(Nccl { raw, gpu, comm_stream, rank: env.rank, world: env.world_size })
    }

    /// The copies of `bucket` in the `wire` dtype that must travel instead of the tensors
    /// themselves (queued on the compute stream), and which tensors travel as they are.
    fn wire_copies(bucket: &[Tensor], wire: DType) -> Result<(Vec<Tensor>, Vec<usize>)> {
        let (mut sent, mut direct) = (Vec::new(), Vec::new());
        for (i, t) in bucket.iter().enumerate() {
            if t.dtype() == wire {
                direct.push(i);
            } else {
                sent.push(t.to_dtype(wire)?);
            }
        }
        Ok((sent, direct))
    }

    /// One NCCL group averaging `bucket[direct]` and `sent` in place, on `stream`.
    fn group(&self, bucket: &mut [Tensor], direct: &[usize], sent: &mut [Tensor], stream: &CudaStream) -> Result<()> {
        in_group(|| {
            for &i in direct {
                self.all_reduce_avg_in_place(&mut bucket[i], stream)?;
            }
            for t in sent.iter_mut() {
                self.all_reduce_avg_in_place(t, stream)?;
            }
            Ok(())
        })
    }

    /// The averaged wire copies back in each tensor's own dtype (on the compute stream).
    fn widen(bucket: &mut [Tensor], sent: Vec<Tensor>, wire: DType) -> Result<()> {
        let mut sent = sent.into_iter();
        for t in bucket.iter_mut() {
            if t.dtype() != wire {
                let back = sent.next().context("all_reduce: internal error")?;
                *t = back.to_dtype(t.dtype())?;
            }
        }
        Ok(())
    }

    fn all_reduce_avg_in_place(&self, t: &mut Tensor, stream: &CudaStream) -> Result<()> {
        let buf = t.cuda_buf_mut()?;
        let dt = self.nccl_dtype(buf, "all_reduce")?;
        let ptr = buf.ptr() as *mut c_void;
        let stream = stream.cu_stream() as *mut c_void;
        let avg = sys::ncclRedOp_t::ncclAvg as c_int;
        check(unsafe { (lib()?.all_reduce)(ptr, ptr, buf.len, dt as c_int, avg, self.raw, stream) }, "ncclAllReduce")
    }

    /// NCCL's name for the dtype of `buf`, which must be on this communicator's GPU.
    fn nccl_dtype(&self, buf: &crate::cuda::DeviceBuf, what: &str) -> Result<sys::ncclDataType_t> {
        if buf.gpu.ordinal != self.gpu.ordinal {
            bail!("{what}: a tensor on cuda:{}, the communicator on cuda:{}", buf.gpu.ordinal, self.gpu.ordinal);
        }
        Ok(match buf.dtype {
            DType::F32 => sys::ncclDataType_t::ncclFloat32,
            DType::BF16 => sys::ncclDataType_t::ncclBfloat16,
            d => bail!("{what}: f32 or bf16 tensors, not {d:?}"),
        })
    }

    /// An uninitialised buffer for this rank's piece of `t` (flat, `world` pieces). Allocated
    /// on the compute stream, before the communication stream waits for it: memory the
    /// compute stream is still to release must not reach the other stream.
    fn piece_buffer(&self, t: &Tensor) -> Result<Tensor> {
        let buf = t.cuda_buf()?;
        if buf.len % self.world != 0 {
            bail!("reduce_scatter: {} elements do not split among {} ranks", buf.len, self.world);
        }
        let c = buf.len / self.world;
        Tensor::from_device_buf(crate::cuda::DeviceBuf::alloc(&self.gpu, buf.dtype, c)?, &[c])
    }

    /// `piece` := this rank's piece of the mean of `t` over the ranks, on `stream`.
    fn reduce_scatter_avg(&self, t: &Tensor, piece: &mut Tensor, stream: &CudaStream) -> Result<()> {
        let buf = t.cuda_buf()?;
        let dt = self.nccl_dtype(buf, "reduce_scatter")?;
        let out = piece.cuda_buf_mut()?;
        if out.len * self.world != buf.len || out.dtype != buf.dtype {
            bail!("reduce_scatter: a piece of {} for {} elements over {} ranks", out.len, buf.len, self.world);
        }
        let (src, dst, c) = (buf.ptr() as *const c_void, out.ptr() as *mut c_void, out.len);
        let avg = sys::ncclRedOp_t::ncclAvg as c_int;
        let s = stream.cu_stream() as *mut c_void;
        check(unsafe { (lib()?.reduce_scatter)(src, dst, c, dt as c_int, avg, self.raw, s) }, "ncclReduceScatter")
    }
}

/// Runs `issue` (NCCL calls) inside one NCCL group, which closes whatever happened inside it.
fn in_group(issue: impl FnOnce() -> Result<()>) -> Result<()> {
    let l = lib()?;
    check(unsafe { (l.group_start)() }, "ncclGroupStart")?;
    let issued = issue();
    check(unsafe { (l.group_end)() }, "ncclGroupEnd")?;
    issued
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_mean(&self, bucket: &mut [Tensor], wire: DType) -> Result<()> {
        let (mut sent, direct) = Self::wire_copies(bucket, wire)?;
        self.group(bucket, &direct, &mut sent, &self.gpu.stream)?;
        Self::widen(bucket, sent, wire)
    }

    fn start_mean(&self, mut bucket: Vec<Tensor>, wire: DType) -> Result<Pending> {
        let (mut sent, direct) = Self::wire_copies(&bucket, wire)?;
        // A tensor sharing its buffer is copied before it is written in place: on the compute
        // stream, so before the join below.
        for &i in &direct {
            bucket[i].cuda_buf_mut()?;
        }
        let stream_err = |e| anyhow!("{:?}: ordering the streams: {e:?}", self.gpu);
        // After everything queued so far (the kernels that wrote the bucket, the casts).
        self.comm_stream.join(&self.gpu.stream).map_err(stream_err)?;
        self.group(&mut bucket, &direct, &mut sent, &self.comm_stream)?;
        let (compute, comm, gpu) = (self.gpu.stream.clone(), self.comm_stream.clone(), self.gpu.clone());
        Ok(Pending::new(move || {
            compute.join(&comm).map_err(|e| anyhow!("{gpu:?}: ordering the streams: {e:?}"))?;
            Self::widen(&mut bucket, sent, wire)?;
            Ok(bucket)
        }))
    }

    /// As `start_mean`, on the communicator's stream: the wire copies and the pieces' buffers
    /// are made on the compute stream first, the pieces come back widened there after
    /// `Pending::finish`. The full tensors are held until then.
    fn start_scatter_mean(&self, bucket: Vec<Tensor>, wire: DType) -> Result<Pending> {
        let sent: Vec<Tensor> = bucket.iter().map(|t| t.to_dtype(wire)).collect::<Result<_>>()?;
        let mut pieces: Vec<Tensor> = sent.iter().map(|t| self.piece_buffer(t)).collect::<Result<_>>()?;
        let stream_err = |e| anyhow!("{:?}: ordering the streams: {e:?}", self.gpu);
        self.comm_stream.join(&self.gpu.stream).map_err(stream_err)?;
        in_group(|| {
            for (t, p) in sent.iter().zip(pieces.iter_mut()) {
                self.reduce_scatter_avg(t, p, &self.comm_stream)?;
            }
            Ok(())
        })?;
        let (compute, comm, gpu) = (self.gpu.stream.clone(), self.comm_stream.clone(), self.gpu.clone());
        Ok(Pending::new(move || {
            compute.join(&comm).map_err(|e| anyhow!("{gpu:?}: ordering the streams: {e:?}"))?;
            let out: Result<Vec<Tensor>> = bucket.iter().zip(pieces).map(|(t, p)| p.to_dtype(t.dtype())).collect();
            drop((bucket, sent));
            out
        }))
    }

    /// On the compute stream, in order with the optimizer step that wrote the pieces.
    fn all_gather_into(&self, pieces: &[Tensor], outs: &mut [Tensor]) -> Result<()> {
        if pieces.len() != outs.len() {
            bail!("all_gather: {} pieces, {} outputs", pieces.len(), outs.len());
        }
        let stream = self.gpu.stream.cu_stream() as *mut c_void;
        in_group(|| {
            for (p, o) in pieces.iter().zip(outs.iter_mut()) {
                let pb = p.cuda_buf()?;
                let dt = self.nccl_dtype(pb, "all_gather")?;
                let (src, n) = (pb.ptr() as *const c_void, pb.len);
                let ob = o.cuda_buf_mut()?;
                if ob.len != n * self.world || ob.dtype != pb.dtype {
                    bail!(
                        "all_gather: a {:?} piece of {n} into a {:?} output of {} ({} ranks)",
                        pb.dtype,
                        ob.dtype,
                        ob.len,
                        self.world
                    );
                }
                let dst = ob.ptr() as *mut c_void;
                check(unsafe { (lib()?.all_gather)(src, dst, n, dt as c_int, self.raw, stream) }, "ncclAllGather")?;
            }
            Ok(())
        })
    }

    fn all_reduce_sum_f64(&self, t: &mut Tensor) -> Result<()> {
        let buf = t.cuda_buf_mut()?;
        if buf.dtype != DType::U32 || buf.len % 2 != 0 || buf.gpu.ordinal != self.gpu.ordinal {
            bail!("all_reduce_sum_f64: expected f64 words (f64_words) on cuda:{}", self.gpu.ordinal);
        }
        let ptr = buf.ptr() as *mut c_void;
        let stream = self.gpu.stream.cu_stream() as *mut c_void;
        let (f64t, sum) = (sys::ncclDataType_t::ncclFloat64 as c_int, sys::ncclRedOp_t::ncclSum as c_int);
        check(unsafe { (lib()?.all_reduce)(ptr, ptr, buf.len / 2, f64t, sum, self.raw, stream) }, "ncclAllReduce")
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // Queued collectives finish first; a failed destroy at exit has no one to tell.
        let _ = self.comm_stream.synchronize();
        let _ = self.gpu.synchronize();
        if let Ok(l) = lib() {
            unsafe { (l.comm_destroy)(self.raw) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libnccl loads by its runtime name and is new enough for `ncclAvg` (2.10).
    #[test]
    fn nccl_loads_and_is_new_enough() {
        if let Err(e) = available() {
            smelt_testing::skip(smelt_testing::Need::Gpu, format!("{e:#}"));
            return;
        }
        let v = version().unwrap();
        println!("NCCL version code {v}");
        assert!(v >= 21000, "NCCL {v}: ncclAvg needs 2.10 or later");
    }
}
