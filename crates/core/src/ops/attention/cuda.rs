//! CUDA launchers for flash-style attention (attention.cu): forward with logsumexp, backward
//! as three launches (delta = rowsum(dO∘O), dq, then dk/dv), no T×T buffer. q, k, v (a KV
//! cache included), the output and every gradient share one dtype, f32 or bf16; lse is f32.

use super::AttnDims;
use crate::cuda::{self, DeviceBuf};
use crate::{DType, Tensor};
use anyhow::{bail, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

pub(crate) const SRC: &str = include_str!("attention.cu");

const ROWS: usize = 8;
const TILE: usize = 32;

fn check(dm: &AttnDims) -> Result<()> {
    if dm.d > 128 || dm.d == 0 {
        bail!("attention on CUDA supports head_dim up to 128, got {}", dm.d);
    }
    Ok(())
}

fn cfg(grid: (usize, usize, usize), smem_floats: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0.max(1) as u32, grid.1 as u32, grid.2 as u32),
        block_dim: (32 * ROWS as u32, 1, 1),
        shared_mem_bytes: (smem_floats * 4) as u32,
    }
}

pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, dm: AttnDims, scale: f32) -> Result<(Tensor, Tensor)> {
    check(&dm)?;
    let [qb, kb, vb] = cuda::float_bufs([q, k, v], "attention")?;
    let dt = cuda::same_dtype(&[qb, kb, vb], &["q", "k", "v"], "attention")?;
    let gpu = &qb.gpu;
    let out = DeviceBuf::alloc(gpu, dt, q.numel())?;
    let lse = DeviceBuf::alloc(gpu, DType::F32, dm.b * dm.h * dm.tq)?;
    let d = dm.d;
    let a = [dm.tq as i32, dm.tk as i32, dm.s as i32, dm.h as i32, dm.kvh as i32, d as i32, dm.window.unwrap_or(0) as i32];
    {
        let name = cuda::kname("attn_fwd", &[dt], "attention")?;
        let f = gpu.function("attention", SRC, &name)?;
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&qb.data).arg(&kb.data).arg(&vb.data).arg(&out.data).arg(&lse.data);
        for x in &a { b.arg(x); }
        b.arg(&scale);
        let c = cfg((dm.tq.div_ceil(ROWS), dm.h, dm.b), 2 * TILE * (d + 1) + ROWS * d);
        cuda::launched(unsafe { b.launch(c) }, &name)?;
    }
    Ok((Tensor::from_device_buf(out, q.shape())?, Tensor::from_device_buf(lse, &[dm.b, dm.h, dm.tq])?))
}

#[allow(clippy::too_many_arguments)]
pub fn attention_backward(q: &Tensor, k: &Tensor, v: &Tensor, out: &Tensor, lse: &Tensor, dout: &Tensor, dm: AttnDims, scale: f32) -> Result<(Tensor, Tensor, Tensor)> {
    check(&dm)?;
    let [qb, kb, vb, ob, db] = cuda::float_bufs([q, k, v, out, dout], "attention_backward")?;
    let dt = cuda::same_dtype(&[qb, kb, vb, ob, db], &["q", "k", "v", "out", "output gradient"], "attention_backward")?;
    let [lb] = cuda::f32_bufs([lse], "attention_backward (lse)")?;
    let gpu = &qb.gpu;
    let kn = |base: &str| cuda::kname(base, &[dt], "attention_backward");
    let d = dm.d;
    let delta = DeviceBuf::alloc(gpu, DType::F32, dm.b * dm.h * dm.tq)?;
    {
        let rows = dm.b * dm.tq * dm.h;
        let name = kn("attn_bwd_delta")?;
        let f = gpu.function("attention", SRC, &name)?;
        let (tq, h, d32, rows64) = (dm.tq as i32, dm.h as i32, d as i32, rows as i64);
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&ob.data).arg(&db.data).arg(&delta.data).arg(&tq).arg(&h).arg(&d32).arg(&rows64);
        let c = LaunchConfig { grid_dim: ((rows * 32).div_ceil(256).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        cuda::launched(unsafe { b.launch(c) }, &name)?;
    }
    let a = [dm.tq as i32, dm.tk as i32, dm.s as i32, dm.h as i32, dm.kvh as i32, d as i32, dm.window.unwrap_or(0) as i32];
    let dq = DeviceBuf::alloc(gpu, dt, q.numel())?;
    {
        let name = kn("attn_bwd_dq")?;
        let f = gpu.function("attention", SRC, &name)?;
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&qb.data).arg(&kb.data).arg(&vb.data).arg(&db.data).arg(&lb.data).arg(&delta.data).arg(&dq.data);
        for x in &a { b.arg(x); }
        b.arg(&scale);
        let c = cfg((dm.tq.div_ceil(ROWS), dm.h, dm.b), 2 * TILE * (d + 1) + 2 * ROWS * d);
        cuda::launched(unsafe { b.launch(c) }, &name)?;
    }
    let dk = DeviceBuf::alloc(gpu, dt, k.numel())?;
    let dv = DeviceBuf::alloc(gpu, dt, v.numel())?;
    {
        let name = kn("attn_bwd_dkdv")?;
        let f = gpu.function("attention", SRC, &name)?;
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&qb.data).arg(&kb.data).arg(&vb.data).arg(&db.data).arg(&lb.data).arg(&delta.data).arg(&dk.data).arg(&dv.data);
        for x in &a { b.arg(x); }
        b.arg(&scale);
        let c = cfg((dm.s.div_ceil(ROWS), dm.kvh, dm.b), 2 * TILE * (d + 1) + 2 * TILE + 2 * ROWS * d);
        cuda::launched(unsafe { b.launch(c) }, &name)?;
    }
    Ok((Tensor::from_device_buf(dq, q.shape())?, Tensor::from_device_buf(dk, k.shape())?, Tensor::from_device_buf(dv, v.shape())?))
}

impl super::AttentionKernels for crate::backend::Cuda {
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, dm: AttnDims, scale: f32) -> Result<(Tensor, Tensor)> {
        attention(q, k, v, dm, scale)
    }
    /// The training kernel's forward; the lse it also writes is dropped.
    fn attention_infer(&self, q: &Tensor, k: &Tensor, v: &Tensor, dm: AttnDims, scale: f32) -> Result<Tensor> {
        Ok(attention(q, k, v, dm, scale)?.0)
    }
    fn attention_backward(
        &self, q: &Tensor, k: &Tensor, v: &Tensor, out: &Tensor, lse: &Tensor, dout: &Tensor, dm: AttnDims, scale: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        attention_backward(q, k, v, out, lse, dout, dm, scale)
    }
}
