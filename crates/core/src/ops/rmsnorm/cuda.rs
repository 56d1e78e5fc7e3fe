//! CUDA launchers for RMSNorm and the fused residual add + RMSNorm (rmsnorm.cu).
//!
//! Dtypes: x and h (the residual stream) f32 or bf16, h keeping x's; the branch r f32 or bf16;
//! y, the input of the next matmul, in the activation dtype (`cuda::activation_dtype`: bf16
//! under mixed precision); dx has x's dtype; the weight, rstd and dw are f32.

use crate::cuda::{self, DeviceBuf, Gpu};
use crate::{DType, Tensor};
use anyhow::{bail, Context, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use std::sync::Arc;

pub(crate) const SRC: &str = include_str!("rmsnorm.cu");

/// The row-wise kernels' launch: (config, warps a row). Many rows: one warp a row, four rows a
/// block (no barrier; a 768-wide row is 3 vector accesses a lane). Few rows (decode): enough
/// warps a row for ~2 accesses of 8 elements a thread, so one long row is not one warp's
/// serial loads.
fn per_row(rows: usize, c: usize) -> (LaunchConfig, i32) {
    let rows = rows.max(1);
    let (wpr, rpb) = if rows >= 1024 { (1, 4) } else { (c.div_ceil(8 * 32 * 2).clamp(1, 8), 1) };
    let cfg = LaunchConfig {
        grid_dim: (rows.div_ceil(rpb) as u32, 1, 1),
        block_dim: ((32 * wpr * rpb) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    (cfg, wpr as i32)
}

/// Whether rows of up to 2048 values (at one warp a row) are read once into registers
/// (`fwd_resident`/`bwd_resident` in rmsnorm.cu: the same bits as the two-pass form) and the
/// backward takes dw's partials in the same pass: yes unless `SMELT_CUDA_NORM_RES=0` (the two
/// passes, to compare) or this thread's test said otherwise (`set_resident`).
fn resident() -> bool {
    static RES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    RESIDENT_OVERRIDE
        .with(|o| o.get())
        .unwrap_or_else(|| *RES.get_or_init(|| std::env::var("SMELT_CUDA_NORM_RES").map_or(true, |v| v != "0")))
}

thread_local! {
    static RESIDENT_OVERRIDE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Rows in registers (`Some(true)`), the two-pass kernels (`Some(false)`), or the environment's
/// choice (`None`), on this thread: the parity test compares the two forms bit for bit.
#[cfg(test)]
pub(crate) fn set_resident(on: Option<bool>) {
    RESIDENT_OVERRIDE.with(|o| o.set(on));
}

/// Returns (h if fused, y, rstd).
fn forward(x: &Tensor, r: Option<&Tensor>, w: &Tensor, eps: f64) -> Result<(Option<Tensor>, Tensor, Tensor)> {
    let what = if r.is_some() { "add_rmsnorm" } else { "rmsnorm" };
    let [xb, wb] = cuda::float_bufs([x, w], what)?;
    wb.expect(DType::F32, "rmsnorm weight")?;
    let gpu = &xb.gpu;
    let (n, c) = (x.rows(), x.cols());
    let rb = match r {
        Some(r) => Some(cuda::float_bufs([x, r], what)?[1]),
        None => None,
    };
    let ydt = cuda::activation_dtype();
    let name = cuda::kname("rmsnorm_fwd", &[xb.dtype, rb.map_or(xb.dtype, |b| b.dtype), ydt], what)?;
    let h = match r {
        Some(_) => Some(DeviceBuf::alloc(gpu, xb.dtype, n * c)?),
        None => None,
    };
    let y = DeviceBuf::alloc(gpu, ydt, n * c)?;
    let rstd = DeviceBuf::alloc(gpu, DType::F32, n)?;
    let f = gpu.function("rmsnorm", SRC, &name)?;
    let (c32, eps32, null, n64) = (c as i32, eps as f32, 0u64, n as i64);
    let (cfg, wpr) = per_row(n, c);
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&xb.data);
        match rb {
            Some(rb) => b.arg(&rb.data),
            None => b.arg(&null),
        };
        b.arg(&wb.data);
        match &h {
            Some(h) => b.arg(&h.data),
            None => b.arg(&null),
        };
        let res = i32::from(resident());
        b.arg(&y.data).arg(&rstd.data).arg(&n64).arg(&c32).arg(&eps32).arg(&wpr).arg(&res);
        cuda::launched(unsafe { b.launch(cfg) }, &name)?;
    }
    let h = match h {
        Some(h) => Some(Tensor::from_device_buf(h, x.shape())?),
        None => None,
    };
    Ok((h, Tensor::from_device_buf(y, x.shape())?, Tensor::from_device_buf(rstd, &[n])?))
}

pub fn rmsnorm(x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let (_, y, rstd) = forward(x, None, w, eps)?;
    Ok((y, rstd))
}

pub fn add_rmsnorm(x: &Tensor, r: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let (h, y, rstd) = forward(x, Some(r), w, eps)?;
    Ok((h.context("internal: the fused forward returned no h")?, y, rstd))
}

/// out[j] = Σ_rows of a column-wise partial kernel, in two deterministic passes.
pub(crate) fn column_reduce(
    gpu: &Arc<Gpu>,
    n: usize,
    c: usize,
    launch_part: impl FnOnce(&DeviceBuf, LaunchConfig, i64) -> Result<()>,
) -> Result<DeviceBuf> {
    let chunks = n.div_ceil(64).clamp(1, 256);
    let rows_per_chunk = n.div_ceil(chunks).max(1);
    let part = DeviceBuf::alloc(gpu, DType::F32, chunks * c)?;
    let cfg = LaunchConfig {
        grid_dim: (c.div_ceil(256) as u32, chunks as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    launch_part(&part, cfg, rows_per_chunk as i64)?;
    let out = DeviceBuf::alloc(gpu, DType::F32, c)?;
    let f = gpu.function("rmsnorm", SRC, "sum_partials_f32")?;
    let (ch32, c32) = (chunks as i32, c as i32);
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&part.data).arg(&out.data).arg(&ch32).arg(&c32);
        let cfg =
            LaunchConfig { grid_dim: (c.div_ceil(256) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        cuda::launched(unsafe { b.launch(cfg) }, "sum_partials_f32")?;
    }
    Ok(out)
}

pub fn rmsnorm_backward(x: &Tensor, w: &Tensor, rstd: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let (dx, _, dw) = backward(x, w, rstd, dy, None)?;
    Ok((dx, dw))
}

/// add_rmsnorm's backward: (dh, dr, dw) with dh = dx + gh and dr = dh in `r_dtype`, the add
/// and the cast done by the dx kernel as it stores (one pass instead of three).
pub fn add_rmsnorm_backward(
    h: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
    gh: &Tensor,
    r_dtype: DType,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (dh, dr, dw) = backward(h, w, rstd, dy, Some((gh, r_dtype)))?;
    Ok((dh.clone(), dr.unwrap_or(dh), dw))
}

/// (dx, dr if its dtype differs from dx's, dw); with `add`, dx has the gradient added and dr is
/// dx cast to the dtype given.
#[allow(clippy::type_complexity)]
fn backward(
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
    add: Option<(&Tensor, DType)>,
) -> Result<(Tensor, Option<Tensor>, Tensor)> {
    let [xb, db] = cuda::float_bufs([x, dy], "rmsnorm_backward")?;
    let [wb, rb] = cuda::f32_bufs([w, rstd], "rmsnorm_backward (weight, rstd)")?;
    let gpu = &xb.gpu;
    let (n, c) = (x.rows(), x.cols());
    let (c32, n64) = (c as i32, n as i64);
    let (cfg, wpr) = per_row(n, c);
    let res = i32::from(resident());
    // With `add`: the stream gradient's buffer (checked) and the branch's dtype.
    let add = match add {
        Some((gh, r_dtype)) => {
            let [gb] = cuda::float_bufs([gh], "add_rmsnorm_backward stream gradient")?;
            gb.expect(xb.dtype, "add_rmsnorm_backward stream gradient")?;
            if gh.shape() != x.shape() {
                bail!("add_rmsnorm_backward: stream gradient {:?} for h {:?}", gh.shape(), x.shape());
            }
            Some((gb, r_dtype))
        }
        None => None,
    };
    let r_dtype = add.map_or(xb.dtype, |(_, d)| d);
    let aligned = [xb.ptr(), wb.ptr(), db.ptr()].into_iter().chain(add.map(|(g, _)| g.ptr())).all(|p| p % 16 == 0);
    if res == 1 && n >= 1024 && c % 8 == 0 && c <= 2048 && aligned {
        return backward_rows(xb, wb, rb, db, add.map(|(g, _)| g), r_dtype, n, c, x.shape(), w.shape());
    }
    let dx = DeviceBuf::alloc(gpu, xb.dtype, n * c)?;
    let dts = [xb.dtype, db.dtype];
    let mut dr = None;
    match add {
        None => {
            let name = cuda::kname("rmsnorm_bwd_dx", &dts, "rmsnorm_backward")?;
            let f = gpu.function("rmsnorm", SRC, &name)?;
            let mut b = gpu.stream.launch_builder(&f);
            b.arg(&xb.data)
                .arg(&wb.data)
                .arg(&rb.data)
                .arg(&db.data)
                .arg(&dx.data)
                .arg(&n64)
                .arg(&c32)
                .arg(&wpr)
                .arg(&res);
            cuda::launched(unsafe { b.launch(cfg) }, &name)?;
        }
        Some((gb, r_dtype)) => {
            let drb = if r_dtype == xb.dtype { None } else { Some(DeviceBuf::alloc(gpu, r_dtype, n * c)?) };
            let name = cuda::kname("rmsnorm_bwd_dx_add", &[xb.dtype, db.dtype, r_dtype], "add_rmsnorm_backward")?;
            let f = gpu.function("rmsnorm", SRC, &name)?;
            let null = 0u64;
            {
                let mut b = gpu.stream.launch_builder(&f);
                b.arg(&xb.data).arg(&wb.data).arg(&rb.data).arg(&db.data).arg(&gb.data).arg(&dx.data);
                match &drb {
                    Some(d) => b.arg(&d.data),
                    None => b.arg(&null),
                };
                b.arg(&n64).arg(&c32).arg(&wpr).arg(&res);
                cuda::launched(unsafe { b.launch(cfg) }, &name)?;
            }
            dr = drb.map(|d| Tensor::from_device_buf(d, x.shape())).transpose()?;
        }
    }
    let name = cuda::kname("rmsnorm_bwd_dw_part", &dts, "rmsnorm_backward")?;
    let dw = column_reduce(gpu, n, c, |part, cfg, rpc| {
        let f = gpu.function("rmsnorm", SRC, &name)?;
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&xb.data).arg(&rb.data).arg(&db.data).arg(&part.data).arg(&n64).arg(&c32).arg(&rpc);
        cuda::launched(unsafe { b.launch(cfg) }, &name)
    })?;
    Ok((Tensor::from_device_buf(dx, x.shape())?, dr, Tensor::from_device_buf(dw, w.shape())?))
}

/// Rows of a training backward (n ≥ 1024, c ≤ 2048, 8-aligned): dx (and dh, dr) and dw's
/// column partials in one pass over x and dy (`rmsnorm_bwd_rows`: a warp 16 rows, a chunk of
/// partials each), then `sum_partials_warps_f32`. dx the same bits as `rmsnorm_bwd_dx*`; dw the
/// same sums over other chunks (16 rows, not n/256), so its last bits may differ.
#[allow(clippy::too_many_arguments)]
fn backward_rows(
    xb: &DeviceBuf,
    wb: &DeviceBuf,
    rb: &DeviceBuf,
    db: &DeviceBuf,
    gb: Option<&DeviceBuf>,
    r_dtype: DType,
    n: usize,
    c: usize,
    x_shape: &[usize],
    w_shape: &[usize],
) -> Result<(Tensor, Option<Tensor>, Tensor)> {
    const RPW: usize = 16;
    const WARPS: usize = 4;
    let gpu = &xb.gpu;
    let chunks = n.div_ceil(RPW);
    let dx = DeviceBuf::alloc(gpu, xb.dtype, n * c)?;
    let drb = if gb.is_some() && r_dtype != xb.dtype { Some(DeviceBuf::alloc(gpu, r_dtype, n * c)?) } else { None };
    let part = DeviceBuf::alloc(gpu, DType::F32, chunks * c)?;
    let name = cuda::kname("rmsnorm_bwd_rows", &[xb.dtype, db.dtype, r_dtype], "rmsnorm_backward")?;
    let f = gpu.function("rmsnorm", SRC, &name)?;
    let (null, n64, c32, rpw) = (0u64, n as i64, c as i32, RPW as i32);
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&xb.data).arg(&wb.data).arg(&rb.data).arg(&db.data);
        match gb {
            Some(g) => b.arg(&g.data),
            None => b.arg(&null),
        };
        b.arg(&dx.data);
        match &drb {
            Some(d) => b.arg(&d.data),
            None => b.arg(&null),
        };
        b.arg(&part.data).arg(&n64).arg(&c32).arg(&rpw);
        let cfg = LaunchConfig {
            grid_dim: (chunks.div_ceil(WARPS) as u32, 1, 1),
            block_dim: (32 * WARPS as u32, 1, 1),
            shared_mem_bytes: (WARPS * c.next_multiple_of(256) * 4) as u32,
        };
        cuda::launched(unsafe { b.launch(cfg) }, &name)?;
    }
    let dw = DeviceBuf::alloc(gpu, DType::F32, c)?;
    let f = gpu.function("rmsnorm", SRC, "sum_partials_warps_f32")?;
    let ch32 = chunks as i32;
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&part.data).arg(&dw.data).arg(&ch32).arg(&c32);
        let cfg = LaunchConfig { grid_dim: (c.div_ceil(32) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        cuda::launched(unsafe { b.launch(cfg) }, "sum_partials_warps_f32")?;
    }
    let dr = drb.map(|d| Tensor::from_device_buf(d, x_shape)).transpose()?;
    Ok((Tensor::from_device_buf(dx, x_shape)?, dr, Tensor::from_device_buf(dw, w_shape)?))
}

impl super::RmsNormKernels for crate::backend::Cuda {
    fn rmsnorm(&self, x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
        rmsnorm(x, w, eps)
    }
    fn rmsnorm_backward(&self, x: &Tensor, w: &Tensor, rstd: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        rmsnorm_backward(x, w, rstd, dy)
    }
    fn add_rmsnorm(&self, x: &Tensor, r: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
        add_rmsnorm(x, r, w, eps)
    }
    fn add_rmsnorm_backward(
        &self,
        h: &Tensor,
        w: &Tensor,
        rstd: &Tensor,
        dy: &Tensor,
        gh: &Tensor,
        r_dtype: DType,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        if gh.dtype() != h.dtype() || gh.device() != h.device() {
            return super::unfused_add_backward(self, h, w, rstd, dy, gh, r_dtype);
        }
        add_rmsnorm_backward(h, w, rstd, dy, gh, r_dtype)
    }
}
