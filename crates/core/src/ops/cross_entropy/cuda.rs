//! CUDA launchers for cross-entropy (cross_entropy.cu). The loss stays on the device (a
//! one-element tensor): reading it is the caller's choice, and the only sync. Logits are f32
//! or bf16 (dlogits keep their dtype); the loss math is f32.

use crate::cuda::{self, DeviceBuf};
use crate::{DType, Tensor};
use anyhow::{bail, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

pub(crate) const SRC: &str = include_str!("cross_entropy.cu");

/// logits (N, V) on the device, targets (N) u32 (host: validated by the caller) →
/// (loss (1), lse (N)), both on the device.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, count: usize) -> Result<(Tensor, Tensor)> {
    let (nll, lse) = nll_lse(logits, targets)?;
    Ok((mean(&nll, count)?, lse))
}

/// Per-row (nll, lse) on the device.
pub fn nll_lse(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let [zb] = cuda::float_bufs([logits], "cross_entropy")?;
    let gpu = &zb.gpu;
    let tt = cuda::ids_on(targets, gpu)?;
    let tb = tt.cuda_buf()?;
    let (n, v) = (logits.rows(), logits.cols());
    let nll = DeviceBuf::alloc(gpu, DType::F32, n)?;
    let lse = DeviceBuf::alloc(gpu, DType::F32, n)?;
    let v32 = v as i32;
    {
        let name = cuda::kname("ce_fwd", &[zb.dtype], "cross_entropy")?;
        let f = gpu.function("cross_entropy", SRC, &name)?;
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&zb.data).arg(&tb.data).arg(&nll.data).arg(&lse.data).arg(&v32);
        let cfg = LaunchConfig { grid_dim: (n.max(1) as u32, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
        cuda::launched(unsafe { b.launch(cfg) }, &name)?;
    }
    Ok((Tensor::from_device_buf(nll, &[n])?, Tensor::from_device_buf(lse, &[n])?))
}

/// Σ nll / count on the device (one block, fixed order).
pub fn mean(nll: &Tensor, count: usize) -> Result<Tensor> {
    let [nb] = cuda::f32_bufs([nll], "cross_entropy mean")?;
    let gpu = &nb.gpu;
    let n = nll.numel();
    let loss = DeviceBuf::alloc(gpu, DType::F32, 1)?;
    let (n64, inv) = (n as i64, 1.0f32 / count.max(1) as f32);
    {
        let f = gpu.function("cross_entropy", SRC, "ce_mean_f32")?;
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&nb.data).arg(&loss.data).arg(&n64).arg(&inv);
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
        cuda::launched(unsafe { b.launch(cfg) }, "ce_mean_f32")?;
    }
    Tensor::from_device_buf(loss, &[1])
}

/// dloss comes from the host (`dloss_host`) or, when it is a device scalar, from there.
pub fn cross_entropy_backward(
    logits: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    dloss: &Tensor,
    count: usize,
) -> Result<Tensor> {
    let [zb] = cuda::float_bufs([logits], "cross_entropy_backward")?;
    let [lb] = cuda::f32_bufs([lse], "cross_entropy_backward (lse)")?;
    let gpu = &zb.gpu;
    let tt = cuda::ids_on(targets, gpu)?;
    let tb = tt.cuda_buf()?;
    let (n, v) = (logits.rows(), logits.cols());
    let dz = DeviceBuf::alloc(gpu, zb.dtype, n * v)?;
    let (n64, v32, inv, null) = (n as i64, v as i32, 1.0f32 / count.max(1) as f32, 0u64);
    let host_d = if dloss.device().is_cpu() { dloss.as_f32()?[0] } else { 0.0 };
    let name = cuda::kname("ce_bwd", &[zb.dtype], "cross_entropy_backward")?;
    let f = gpu.function("cross_entropy", SRC, &name)?;
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&zb.data).arg(&tb.data).arg(&lb.data).arg(&dz.data).arg(&n64).arg(&v32);
        if dloss.device().is_cpu() {
            b.arg(&null)
        } else {
            b.arg(&dloss.cuda_buf()?.data)
        };
        b.arg(&host_d).arg(&inv);
        cuda::launched(unsafe { b.launch(cuda::grid_for(n * v, 256)) }, &name)?;
    }
    Tensor::from_device_buf(dz, logits.shape())
}

// The vocabulary-chunked loss and f64 scoring (chunks.cu).

pub(crate) const CHUNKS_SRC: &str = include_str!("chunks.cu");

/// Rows r0..r0+m of `state` (n, 3) updated with `z` (m, vc) of vocabulary ids v0..v0+vc.
/// `z` f32 or bf16, read as stored.
pub fn lse_chunk(z: &Tensor, targets: &Tensor, state: &mut Tensor, r0: usize, v0: usize) -> Result<()> {
    let [zb] = cuda::float_bufs([z], "lse_chunk")?;
    let name = cuda::kname("ce_chunk_fwd", &[zb.dtype], "lse_chunk")?;
    let gpu = zb.gpu.clone();
    let tt = cuda::ids_on(targets, &gpu)?;
    let tb = tt.cuda_buf()?;
    let (m, vc) = (z.rows(), z.cols());
    let sb = state.cuda_buf_mut()?;
    sb.expect(DType::F32, "lse_chunk state")?;
    if sb.gpu.ordinal != gpu.ordinal {
        bail!("lse_chunk: logits on cuda:{}, state on cuda:{}", gpu.ordinal, sb.gpu.ordinal);
    }
    let mut st = sb.view_mut(r0 * 3, m * 3);
    let tv = tb.view(r0, m);
    let (vc32, v032) = (vc as i32, v0 as i32);
    let f = gpu.function("cross_entropy_chunks", CHUNKS_SRC, &name)?;
    let mut b = gpu.stream.launch_builder(&f);
    b.arg(&zb.data).arg(&tv).arg(&mut st).arg(&vc32).arg(&v032);
    let cfg = LaunchConfig { grid_dim: (m.max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    cuda::launched(unsafe { b.launch(cfg) }, &name)
}

/// (nll, lse) of a finished (n, 3) state.
pub fn lse_finish(state: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let [sb] = cuda::f32_bufs([state], "lse_finish")?;
    let gpu = &sb.gpu;
    let tt = cuda::ids_on(targets, gpu)?;
    let tb = tt.cuda_buf()?;
    let n = state.rows();
    let nll = DeviceBuf::alloc(gpu, DType::F32, n)?;
    let lse = DeviceBuf::alloc(gpu, DType::F32, n)?;
    let n64 = n as i64;
    let f = gpu.function("cross_entropy_chunks", CHUNKS_SRC, "ce_chunk_finish_f32")?;
    let mut b = gpu.stream.launch_builder(&f);
    b.arg(&sb.data).arg(&tb.data).arg(&nll.data).arg(&lse.data).arg(&n64);
    cuda::launched(unsafe { b.launch(cuda::grid_for(n, 256)) }, "ce_chunk_finish_f32")?;
    Ok((Tensor::from_device_buf(nll, &[n])?, Tensor::from_device_buf(lse, &[n])?))
}

/// dlogits of `z` (m, vc), vocabulary ids v0.., for rows r0.. of `targets` and `lse`.
/// `dloss` (one element) is read where it lives: a device scalar by the kernel, with no sync.
/// `z` f32 or bf16, read as stored; the result has z's dtype (bf16 logits give bf16 dlogits,
/// which the head's backward matmul takes as they are).
pub fn backward_chunk(
    z: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    r0: usize,
    v0: usize,
    dloss: &Tensor,
    count: usize,
) -> Result<Tensor> {
    let [zb] = cuda::float_bufs([z], "cross_entropy_backward_chunk")?;
    let [lb] = cuda::f32_bufs([lse], "cross_entropy_backward_chunk (lse)")?;
    if lb.gpu.ordinal != zb.gpu.ordinal {
        bail!("cross_entropy_backward_chunk: logits on cuda:{}, lse on cuda:{}", zb.gpu.ordinal, lb.gpu.ordinal);
    }
    let name = cuda::kname("ce_chunk_bwd", &[zb.dtype], "cross_entropy_backward_chunk")?;
    let gpu = &zb.gpu;
    let tt = cuda::ids_on(targets, gpu)?;
    let tb = tt.cuda_buf()?;
    let (m, vc) = (z.rows(), z.cols());
    let dz = DeviceBuf::alloc(gpu, zb.dtype, m * vc)?;
    let (m64, vc32, v032, inv) = (m as i64, vc as i32, v0 as i32, 1.0f32 / count.max(1) as f32);
    let (tv, lv) = (tb.view(r0, m), lb.view(r0, m));
    let f = gpu.function("cross_entropy_chunks", CHUNKS_SRC, &name)?;
    let mut b = gpu.stream.launch_builder(&f);
    let (host_d, null) = (if dloss.device().is_cpu() { dloss.as_f32()?[0] } else { 0.0f32 }, 0u64);
    b.arg(&zb.data).arg(&tv).arg(&lv).arg(&dz.data).arg(&m64).arg(&vc32).arg(&v032);
    if dloss.device().is_cpu() {
        b.arg(&null)
    } else {
        b.arg(&dloss.cuda_buf()?.data)
    };
    // One row a grid row; a thread takes 8 columns with 16-byte accesses when it can.
    let vec = vc % 8 == 0 && zb.ptr() % 16 == 0 && dz.ptr() % 16 == 0;
    let per_thread = if vec { 8 } else { 1 };
    let vec32 = vec as i32;
    b.arg(&host_d).arg(&inv).arg(&vec32);
    let cfg = LaunchConfig {
        grid_dim: (m.max(1) as u32, vc.div_ceil(256 * per_thread).max(1) as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    cuda::launched(unsafe { b.launch(cfg) }, &name)?;
    Tensor::from_device_buf(dz, z.shape())
}

/// Per-row nll in f64 (perplexity), scored on the device; only the (N) values come back.
pub fn nll_rows_f64(logits: &Tensor, targets: &Tensor) -> Result<Vec<f64>> {
    let logits = &cuda::as_f32(logits)?;
    let [zb] = cuda::f32_bufs([logits], "nll_rows")?;
    let gpu = &zb.gpu;
    let tt = cuda::ids_on(targets, gpu)?;
    let tb = tt.cuda_buf()?;
    let (n, v) = (logits.rows(), logits.cols());
    // f64 values in a u32 buffer of twice the length (device buffers carry no f64 dtype).
    let out = DeviceBuf::alloc(gpu, DType::U32, 2 * n)?;
    let v32 = v as i32;
    let f = gpu.function("cross_entropy_chunks", CHUNKS_SRC, "ce_nll_f64")?;
    let mut b = gpu.stream.launch_builder(&f);
    b.arg(&zb.data).arg(&tb.data).arg(&out.data).arg(&v32);
    let cfg = LaunchConfig { grid_dim: (n.max(1) as u32, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
    cuda::launched(unsafe { b.launch(cfg) }, "ce_nll_f64")?;
    Ok(out.to_bytes()?.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect())
}

impl super::CrossEntropyKernels for crate::backend::Cuda {
    fn cross_entropy(&self, logits: &Tensor, targets: &Tensor, count: usize) -> Result<(Tensor, Tensor)> {
        cross_entropy(logits, targets, count)
    }
    fn cross_entropy_backward(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        lse: &Tensor,
        dloss: f32,
        count: usize,
    ) -> Result<Tensor> {
        cross_entropy_backward(logits, targets, lse, &Tensor::scalar(dloss), count)
    }
    fn lse_chunk(&self, z: &Tensor, targets: &Tensor, state: &mut Tensor, r0: usize, v0: usize) -> Result<()> {
        lse_chunk(z, targets, state, r0, v0)
    }
    fn lse_finish(&self, state: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
        lse_finish(state, targets)
    }
    fn cross_entropy_backward_chunk(
        &self,
        z: &Tensor,
        targets: &Tensor,
        lse: &Tensor,
        r0: usize,
        v0: usize,
        dloss: &Tensor,
        count: usize,
    ) -> Result<Tensor> {
        backward_chunk(z, targets, lse, r0, v0, dloss, count)
    }
    fn mean_nll(&self, nll: &Tensor, count: usize) -> Result<Tensor> {
        mean(nll, count)
    }
    fn nll_rows(&self, logits: &Tensor, targets: &Tensor) -> Result<Vec<f64>> {
        nll_rows_f64(logits, targets)
    }
}
