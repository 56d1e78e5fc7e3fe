//! CUDA launchers for SwiGLU (kernels in swiglu.cu). Gate, up and output (and, backward, the
//! output gradient and both input gradients) share one dtype, f32 or bf16.

use crate::cuda::{self, DeviceBuf};
use crate::ops::elementwise::add_into;
use crate::Tensor;
use anyhow::Result;
use cudarc::driver::PushKernelArg;

pub(crate) const SRC: &str = include_str!("swiglu.cu");

pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    let [gb, ub] = cuda::float_bufs([g, u], "swiglu")?;
    let dt = cuda::same_dtype(&[gb, ub], &["gate", "up"], "swiglu")?;
    let gpu = &gb.gpu;
    let n = g.numel();
    let y = DeviceBuf::alloc(gpu, dt, n)?;
    let name = cuda::kname("swiglu_fwd", &[dt], "swiglu")?;
    let f = gpu.function("swiglu", SRC, &name)?;
    let n64 = n as i64;
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&gb.data).arg(&ub.data).arg(&y.data).arg(&n64);
        cuda::launched(unsafe { b.launch(cuda::grid_for(n.div_ceil(8), 256)) }, &name)?;
    }
    Tensor::from_device_buf(y, g.shape())
}

pub fn swiglu_backward(g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let [gb, ub, db] = cuda::float_bufs([g, u, dy], "swiglu_backward")?;
    let dt = cuda::same_dtype(&[gb, ub, db], &["gate", "up", "output gradient"], "swiglu_backward")?;
    let gpu = &gb.gpu;
    let n = g.numel();
    let dg = DeviceBuf::alloc(gpu, dt, n)?;
    let du = DeviceBuf::alloc(gpu, dt, n)?;
    let name = cuda::kname("swiglu_bwd", &[dt], "swiglu_backward")?;
    let f = gpu.function("swiglu", SRC, &name)?;
    let n64 = n as i64;
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&gb.data).arg(&ub.data).arg(&db.data).arg(&dg.data).arg(&du.data).arg(&n64);
        cuda::launched(unsafe { b.launch(cuda::grid_for(n.div_ceil(8), 256)) }, &name)?;
    }
    Ok((Tensor::from_device_buf(dg, g.shape())?, Tensor::from_device_buf(du, u.shape())?))
}

/// Whether the autograd pass's SwiGLU backward adds into the gradient sums in its kernel
/// (`SMELT_CUDA_SWIGLU_ACC=1`). Off by default: written 2026-12-05 after the session's last
/// GPU call, its parity test (`parity_swiglu_backward_accumulated`) not yet run on a GPU.
fn acc_on() -> bool {
    static ACC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ACC.get_or_init(|| std::env::var("SMELT_CUDA_SWIGLU_ACC").is_ok_and(|v| v == "1"))
}

/// `swiglu_backward` adding into the sums `sg`, `su` where they are given. With `in_kernel` (and
/// a sum of the gradients' dtype on this GPU) swiglu_bwd_acc computes each gradient, rounds it
/// to the storage dtype and adds it to the sum read there — add_assign's arithmetic on
/// swiglu_bwd's output, in one pass; otherwise a fresh gradient, then add_assign.
pub fn swiglu_backward_acc_with(
    g: &Tensor,
    u: &Tensor,
    dy: &Tensor,
    sg: &mut Option<Tensor>,
    su: &mut Option<Tensor>,
    in_kernel: bool,
) -> Result<()> {
    let [gb, ub, db] = cuda::float_bufs([g, u, dy], "swiglu_backward")?;
    let dt = cuda::same_dtype(&[gb, ub, db], &["gate", "up", "output gradient"], "swiglu_backward")?;
    let gpu = &gb.gpu;
    let n = g.numel();
    // A sum this kernel can add into: on this GPU, of the gradients' dtype, contiguous.
    let fits = |s: &Option<Tensor>| {
        in_kernel
            && s.as_ref().is_some_and(|t| {
                t.dtype() == dt && t.numel() == n && t.cuda_buf().is_ok_and(|b| b.gpu.ordinal == gpu.ordinal)
            })
    };
    let (acc_g, acc_u) = (fits(sg), fits(su));
    if !acc_g && !acc_u {
        // Nothing to add into in the kernel: swiglu_bwd, then the adds.
        let (dg, du) = swiglu_backward(g, u, dy)?;
        add_into(sg, dg)?;
        return add_into(su, du);
    }
    // Where a sum is not one to add into, a fresh gradient (added to that sum after).
    let fresh = |acc: bool| if acc { Ok(None) } else { DeviceBuf::alloc(gpu, dt, n).map(Some) };
    let (fg, fu) = (fresh(acc_g)?, fresh(acc_u)?);
    {
        // A sum added into is written in place (`cuda_buf_mut`: a shared one is copied first).
        let slot_ptr = |acc: bool, s: &mut Option<Tensor>, f: &Option<DeviceBuf>| -> Result<u64> {
            match (acc, s, f) {
                (true, Some(t), _) => Ok(t.cuda_buf_mut()?.ptr()),
                (false, _, Some(b)) => Ok(b.ptr()),
                _ => anyhow::bail!("swiglu_backward: no buffer for a gradient"),
            }
        };
        let (pg, pu) = (slot_ptr(acc_g, sg, &fg)?, slot_ptr(acc_u, su, &fu)?);
        let name = cuda::kname("swiglu_bwd_acc", &[dt], "swiglu_backward")?;
        let f = gpu.function("swiglu", SRC, &name)?;
        let (n64, ag, au) = (n as i64, acc_g as i32, acc_u as i32);
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&gb.data).arg(&ub.data).arg(&db.data).arg(&pg).arg(&pu).arg(&ag).arg(&au).arg(&n64);
        cuda::launched(unsafe { b.launch(cuda::grid_for(n.div_ceil(8), 256)) }, &name)?;
    }
    for (slot, f) in [(sg, fg), (su, fu)] {
        if let Some(buf) = f {
            add_into(slot, Tensor::from_device_buf(buf, g.shape())?)?;
        }
    }
    Ok(())
}

impl super::SwiGluKernels for crate::backend::Cuda {
    fn swiglu(&self, g: &Tensor, u: &Tensor) -> Result<Tensor> {
        swiglu(g, u)
    }
    fn swiglu_backward(&self, g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        swiglu_backward(g, u, dy)
    }
    fn swiglu_backward_acc(
        &self,
        g: &Tensor,
        u: &Tensor,
        dy: &Tensor,
        sg: &mut Option<Tensor>,
        su: &mut Option<Tensor>,
    ) -> Result<()> {
        swiglu_backward_acc_with(g, u, dy, sg, su, acc_on())
    }
}
