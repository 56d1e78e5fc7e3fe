//! The distillation loss on CUDA (distill.cu): the forward's per-row reductions on the device,
//! the (N) KL and CE values summed on the host in f64 as the CPU sums them; the backward's dz in
//! f32, cast to the logits' dtype (bf16 under mixed precision) at the end.

use super::{DistillLoss, DistillSaved, TeacherLogits};
use crate::cuda::{self, DeviceBuf};
use crate::{DType, Tensor};
use anyhow::Result;
use cudarc::driver::{LaunchConfig, PushKernelArg};

const SRC: &str = include_str!("distill.cu");
const THREADS: u32 = 256;

impl super::DistillKernels for crate::backend::Cuda {
    fn distill(
        &self,
        z: &Tensor,
        teacher: &TeacherLogits,
        targets: &Tensor,
        o: &DistillLoss,
        k: usize,
        count: usize,
    ) -> Result<(Tensor, [f64; 2], DistillSaved)> {
        let [zb] = cuda::float_bufs([z], "distill logits")?;
        let [tb] = cuda::f32_bufs([&teacher.logits], "distill teacher logits")?;
        let gpu = zb.gpu.clone();
        let (n, v) = (z.rows(), z.cols());
        let rows = DeviceBuf::alloc(&gpu, DType::F32, 4 * n)?;
        let klce = DeviceBuf::alloc(&gpu, DType::F32, 2 * n)?;
        let yb = targets.cuda_buf()?;
        let name = cuda::kname("distill_fwd", &[zb.dtype], "distill")?;
        let f = gpu.function("distill", SRC, &name)?;
        let (v32, k32, inv_tau, null) = (v as i32, k as i32, (1.0 / o.temperature) as f32, 0u64);
        if n > 0 {
            let mut l = gpu.stream.launch_builder(&f);
            l.arg(&zb.data).arg(&v32);
            match &teacher.ids {
                Some(ids) => l.arg(&ids.cuda_buf()?.data),
                None => l.arg(&null),
            };
            l.arg(&tb.data).arg(&k32).arg(&yb.data).arg(&inv_tau).arg(&rows.data).arg(&klce.data);
            let cfg = LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
            cuda::launched(unsafe { l.launch(cfg) }, &name)?;
        }
        let per_row = Tensor::from_device_buf(klce, &[n, 2])?.to_vec_f32()?;
        let m = count.max(1) as f64;
        let (kl, ce) = per_row.chunks(2).fold((0f64, 0f64), |(a, b), r| (a + r[0] as f64, b + r[1] as f64));
        let (kl, ce) = (kl / m, ce / m);
        let loss = o.temperature * o.temperature * kl + o.alpha * ce;
        let loss = Tensor::scalar(loss as f32).to_device(z.device())?;
        Ok((loss, [kl, ce], DistillSaved::Device { rows: Tensor::from_device_buf(rows, &[n, 4])?, count }))
    }

    fn distill_backward(
        &self,
        z: &Tensor,
        teacher: &TeacherLogits,
        targets: &Tensor,
        o: &DistillLoss,
        k: usize,
        saved: &DistillSaved,
        dloss: f32,
    ) -> Result<Tensor> {
        let DistillSaved::Device { rows, count } = saved else {
            anyhow::bail!("distill backward: the forward ran on the CPU")
        };
        let [zb] = cuda::float_bufs([z], "distill logits")?;
        let [tb, rb] = cuda::f32_bufs([&teacher.logits, rows], "distill teacher logits")?;
        let gpu = zb.gpu.clone();
        let (n, v) = (z.rows(), z.cols());
        let dz = DeviceBuf::alloc(&gpu, DType::F32, n * v)?;
        let yb = targets.cuda_buf()?;
        let m = (*count).max(1) as f64;
        // As the CPU: soft = τ · dloss / count, hard = α · dloss / count (f32 products).
        let inv_tau = (1.0 / o.temperature) as f32;
        let mf = m as f32;
        let soft = o.temperature as f32 * dloss / mf;
        let hard = o.alpha as f32 * dloss / mf;
        let (v32, k32, null) = (v as i32, k as i32, 0u64);
        if n > 0 && v > 0 {
            let name = cuda::kname("distill_bwd_dense", &[zb.dtype], "distill backward")?;
            let f = gpu.function("distill", SRC, &name)?;
            let mut l = gpu.stream.launch_builder(&f);
            l.arg(&zb.data).arg(&v32);
            match &teacher.ids {
                None => l.arg(&tb.data),
                Some(_) => l.arg(&null),
            };
            l.arg(&yb.data).arg(&rb.data).arg(&inv_tau).arg(&soft).arg(&hard).arg(&dz.data);
            let cfg = LaunchConfig {
                grid_dim: (v.div_ceil(THREADS as usize) as u32, n as u32, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            cuda::launched(unsafe { l.launch(cfg) }, &name)?;
            if let Some(ids) = &teacher.ids {
                let f = gpu.function("distill", SRC, "distill_bwd_scatter")?;
                let mut l = gpu.stream.launch_builder(&f);
                l.arg(&dz.data).arg(&v32).arg(&ids.cuda_buf()?.data).arg(&tb.data).arg(&k32).arg(&yb.data);
                l.arg(&rb.data).arg(&inv_tau).arg(&soft).arg(&hard);
                let cfg = LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
                cuda::launched(unsafe { l.launch(cfg) }, "distill_bwd_scatter")?;
            }
        }
        let dz = Tensor::from_device_buf(dz, z.shape())?;
        match zb.dtype {
            DType::F32 => Ok(dz),
            d => crate::ops::elementwise::cuda::cast(&dz, d),
        }
    }
}
