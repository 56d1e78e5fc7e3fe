//! CUDA launchers for SwiGLU (kernels in swiglu.cu).

use crate::cuda::{self, DeviceBuf};
use crate::{DType, Tensor};
use anyhow::Result;
use cudarc::driver::PushKernelArg;

pub(crate) const SRC: &str = include_str!("swiglu.cu");

pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    let [gb, ub] = cuda::f32_bufs([g, u], "swiglu")?;
    let gpu = &gb.gpu;
    let n = g.numel();
    let y = DeviceBuf::alloc(gpu, DType::F32, n)?;
    let f = gpu.function("swiglu", SRC, "swiglu_fwd_f32")?;
    let n64 = n as i64;
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&gb.data).arg(&ub.data).arg(&y.data).arg(&n64);
        cuda::launched(unsafe { b.launch(cuda::grid_for(n, 256)) }, "swiglu_fwd_f32")?;
    }
    Tensor::from_device_buf(y, g.shape())
}

pub fn swiglu_backward(g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let [gb, ub, db] = cuda::f32_bufs([g, u, dy], "swiglu_backward")?;
    let gpu = &gb.gpu;
    let n = g.numel();
    let dg = DeviceBuf::alloc(gpu, DType::F32, n)?;
    let du = DeviceBuf::alloc(gpu, DType::F32, n)?;
    let f = gpu.function("swiglu", SRC, "swiglu_bwd_f32")?;
    let n64 = n as i64;
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&gb.data).arg(&ub.data).arg(&db.data).arg(&dg.data).arg(&du.data).arg(&n64);
        cuda::launched(unsafe { b.launch(cuda::grid_for(n, 256)) }, "swiglu_bwd_f32")?;
    }
    Ok((Tensor::from_device_buf(dg, g.shape())?, Tensor::from_device_buf(du, u.shape())?))
}
