//! CUDA launchers for cross-entropy (cross_entropy.cu). The loss stays on the device (a
//! one-element tensor): reading it is the caller's choice, and the only sync. Logits are f32
//! or bf16 (dlogits keep their dtype); the loss math is f32.

use crate::cuda::{self, DeviceBuf};
use crate::{DType, Tensor};
use anyhow::Result;
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
pub fn cross_entropy_backward(logits: &Tensor, targets: &Tensor, lse: &Tensor, dloss: &Tensor, count: usize) -> Result<Tensor> {
    let [zb] = cuda::float_bufs([logits], "cross_entropy_backward")?;
    let [lb] = cuda::f32_bufs([lse], "cross_entropy_backward (lse)")?;
    let gpu = &zb.gpu;
    let tt = cuda::ids_on(targets, gpu)?;
    let tb = tt.cuda_buf()?;
    let (n, v) = (logits.rows(), logits.cols());
    let dz = DeviceBuf::alloc(gpu, zb.dtype, n * v)?;
    let (n64, v32, inv, null) = (n as i64, v as i32, 1.0f32 / count.max(1) as f32, 0u64);
    let host_d = if dloss.is_cuda() { 0.0 } else { dloss.as_f32()?[0] };
    let name = cuda::kname("ce_bwd", &[zb.dtype], "cross_entropy_backward")?;
    let f = gpu.function("cross_entropy", SRC, &name)?;
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&zb.data).arg(&tb.data).arg(&lb.data).arg(&dz.data).arg(&n64).arg(&v32);
        if dloss.is_cuda() { b.arg(&dloss.cuda_buf()?.data) } else { b.arg(&null) };
        b.arg(&host_d).arg(&inv);
        cuda::launched(unsafe { b.launch(cuda::grid_for(n * v, 256)) }, &name)?;
    }
    Tensor::from_device_buf(dz, logits.shape())
}
