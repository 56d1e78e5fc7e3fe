//! CUDA launchers for SwiGLU (kernels in swiglu.cu). Gate, up and output (and, backward, the
//! output gradient and both input gradients) share one dtype, f32 or bf16.

use crate::cuda::{self, DeviceBuf};
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

impl super::SwiGluKernels for crate::backend::Cuda {
    fn swiglu(&self, g: &Tensor, u: &Tensor) -> Result<Tensor> {
        swiglu(g, u)
    }
    fn swiglu_backward(&self, g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        swiglu_backward(g, u, dy)
    }
}
