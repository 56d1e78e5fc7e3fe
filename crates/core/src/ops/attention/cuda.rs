//! CUDA launchers for flash-style attention: forward with logsumexp, backward as three
//! launches (delta = rowsum(dO∘O), dq, then dk/dv), no T×T buffer. q, k, v (a KV cache
//! included), the output and every gradient share one dtype, f32 or bf16; lse is f32.
//!
//! Two kernel families: bf16 at head dim 64 or 128 runs on tensor cores (attention_tc.cu,
//! FlashAttention-2 tiling with mma.sync); f32 (the exactness mode) and other head dims (80,
//! 96, …) run the scalar kernels of attention.cu. `SMELT_CUDA_ATTN=scalar` forces the scalar
//! kernels for bf16 too (to measure one against the other).

use super::AttnDims;
use crate::cuda::{self, DeviceBuf};
use crate::{DType, Tensor};
use anyhow::{bail, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

pub(crate) const SRC: &str = include_str!("attention.cu");
pub(crate) const TC_SRC: &str = include_str!("attention_tc.cu");

const ROWS: usize = 8;
const TILE: usize = 32;

/// Rows per block of the tensor-core kernels (4 warps × 16).
const TC_ROWS: usize = 64;

/// Tensor-core tiles per head dim: (forward key tile, dq key tile, dk/dv query tile), as
/// instantiated at the end of attention_tc.cu.
fn tc_tiles(d: usize) -> (usize, usize, usize) {
    if d == 64 {
        (64, 64, 64)
    } else {
        (64, 32, 32)
    }
}

/// Which kernels run on `gpu`: the tensor-core ones for bf16 at head dim 64 or 128 on compute
/// capability 8.0 or later (bf16 `mma.sync` and `cp.async` need it; unless
/// `SMELT_CUDA_ATTN=scalar`), the scalar ones otherwise.
pub fn uses_tensor_cores(gpu: &cuda::Gpu, dt: DType, d: usize) -> bool {
    static SCALAR: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let scalar = *SCALAR.get_or_init(|| std::env::var("SMELT_CUDA_ATTN").is_ok_and(|v| v == "scalar"));
    dt == DType::BF16 && (d == 64 || d == 128) && gpu.arch.0 >= 8 && !scalar
}

/// A tensor-core kernel with its dynamic shared memory allowed past the 48 KiB default.
fn tc_function(gpu: &cuda::Gpu, name: &str, smem: usize) -> Result<cudarc::driver::CudaFunction> {
    let f = gpu.function("attention_tc", TC_SRC, name)?;
    f.set_attribute(
        cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        smem as i32,
    )
    .map_err(|e| anyhow::anyhow!("{name}: shared memory of {smem} bytes: {e:?}"))?;
    Ok(f)
}

fn tc_cfg(grid: (usize, usize, usize), smem: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0.max(1) as u32, grid.1 as u32, grid.2 as u32),
        block_dim: (128, 1, 1),
        shared_mem_bytes: smem as u32,
    }
}

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
    if uses_tensor_cores(gpu, dt, d) {
        let (bn, _, _) = tc_tiles(d);
        let name = format!("attn_tc_fwd_d{d}");
        let smem = (TC_ROWS + 4 * bn) * (d + 8) * 2;
        let f = tc_function(gpu, &name, smem)?;
        let a = [dm.tq as i32, dm.tk as i32, dm.s as i32, dm.h as i32, dm.kvh as i32, dm.window.unwrap_or(0) as i32];
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&qb.data).arg(&kb.data).arg(&vb.data).arg(&out.data).arg(&lse.data);
        for x in &a {
            b.arg(x);
        }
        b.arg(&scale);
        cuda::launched(unsafe { b.launch(tc_cfg((dm.tq.div_ceil(TC_ROWS), dm.h, dm.b), smem)) }, &name)?;
        return Ok((Tensor::from_device_buf(out, q.shape())?, Tensor::from_device_buf(lse, &[dm.b, dm.h, dm.tq])?));
    }
    let a =
        [dm.tq as i32, dm.tk as i32, dm.s as i32, dm.h as i32, dm.kvh as i32, d as i32, dm.window.unwrap_or(0) as i32];
    {
        let name = cuda::kname("attn_fwd", &[dt], "attention")?;
        let f = gpu.function("attention", SRC, &name)?;
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&qb.data).arg(&kb.data).arg(&vb.data).arg(&out.data).arg(&lse.data);
        for x in &a {
            b.arg(x);
        }
        b.arg(&scale);
        let c = cfg((dm.tq.div_ceil(ROWS), dm.h, dm.b), 2 * TILE * (d + 1) + ROWS * d);
        cuda::launched(unsafe { b.launch(c) }, &name)?;
    }
    Ok((Tensor::from_device_buf(out, q.shape())?, Tensor::from_device_buf(lse, &[dm.b, dm.h, dm.tq])?))
}

#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    dm: AttnDims,
    scale: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
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
        let c = LaunchConfig {
            grid_dim: ((rows * 32).div_ceil(256).max(1) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        cuda::launched(unsafe { b.launch(c) }, &name)?;
    }
    if uses_tensor_cores(gpu, dt, d) {
        let (_, bnq, bq) = tc_tiles(d);
        let a = [dm.tq as i32, dm.tk as i32, dm.s as i32, dm.h as i32, dm.kvh as i32, dm.window.unwrap_or(0) as i32];
        let dq = DeviceBuf::alloc(gpu, dt, q.numel())?;
        {
            let name = format!("attn_tc_dq_d{d}");
            let smem = (2 * TC_ROWS + 4 * bnq) * (d + 8) * 2;
            let f = tc_function(gpu, &name, smem)?;
            let mut b = gpu.stream.launch_builder(&f);
            b.arg(&qb.data).arg(&kb.data).arg(&vb.data).arg(&db.data).arg(&lb.data).arg(&delta.data).arg(&dq.data);
            for x in &a {
                b.arg(x);
            }
            b.arg(&scale);
            cuda::launched(unsafe { b.launch(tc_cfg((dm.tq.div_ceil(TC_ROWS), dm.h, dm.b), smem)) }, &name)?;
        }
        let dk = DeviceBuf::alloc(gpu, dt, k.numel())?;
        let dv = DeviceBuf::alloc(gpu, dt, v.numel())?;
        {
            let name = format!("attn_tc_dkdv_d{d}");
            let smem = (2 * TC_ROWS + 4 * bq) * (d + 8) * 2 + 4 * bq * 4;
            let f = tc_function(gpu, &name, smem)?;
            let mut b = gpu.stream.launch_builder(&f);
            b.arg(&qb.data)
                .arg(&kb.data)
                .arg(&vb.data)
                .arg(&db.data)
                .arg(&lb.data)
                .arg(&delta.data)
                .arg(&dk.data)
                .arg(&dv.data);
            for x in &a {
                b.arg(x);
            }
            b.arg(&scale);
            cuda::launched(unsafe { b.launch(tc_cfg((dm.s.div_ceil(TC_ROWS), dm.kvh, dm.b), smem)) }, &name)?;
        }
        return Ok((
            Tensor::from_device_buf(dq, q.shape())?,
            Tensor::from_device_buf(dk, k.shape())?,
            Tensor::from_device_buf(dv, v.shape())?,
        ));
    }
    let a =
        [dm.tq as i32, dm.tk as i32, dm.s as i32, dm.h as i32, dm.kvh as i32, d as i32, dm.window.unwrap_or(0) as i32];
    let dq = DeviceBuf::alloc(gpu, dt, q.numel())?;
    {
        let name = kn("attn_bwd_dq")?;
        let f = gpu.function("attention", SRC, &name)?;
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&qb.data).arg(&kb.data).arg(&vb.data).arg(&db.data).arg(&lb.data).arg(&delta.data).arg(&dq.data);
        for x in &a {
            b.arg(x);
        }
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
        b.arg(&qb.data)
            .arg(&kb.data)
            .arg(&vb.data)
            .arg(&db.data)
            .arg(&lb.data)
            .arg(&delta.data)
            .arg(&dk.data)
            .arg(&dv.data);
        for x in &a {
            b.arg(x);
        }
        b.arg(&scale);
        let c = cfg((dm.s.div_ceil(ROWS), dm.kvh, dm.b), 2 * TILE * (d + 1) + 2 * TILE + 2 * ROWS * d);
        cuda::launched(unsafe { b.launch(c) }, &name)?;
    }
    Ok((
        Tensor::from_device_buf(dq, q.shape())?,
        Tensor::from_device_buf(dk, k.shape())?,
        Tensor::from_device_buf(dv, v.shape())?,
    ))
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
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
        dm: AttnDims,
        scale: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        attention_backward(q, k, v, out, lse, dout, dm, scale)
    }
}
