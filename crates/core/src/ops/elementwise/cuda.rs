//! CUDA launchers for the elementwise basics and the f32 ↔ bf16 casts (elementwise.cu).

use crate::cuda::{self, DeviceBuf};
use crate::{DType, Tensor};
use anyhow::{bail, Result};
use cudarc::driver::PushKernelArg;

pub(crate) const SRC: &str = include_str!("elementwise.cu");

fn binary(func: &'static str, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let [ab, bb] = cuda::f32_bufs([a, b], func)?;
    let gpu = &ab.gpu;
    let n = a.numel();
    let y = DeviceBuf::alloc(gpu, DType::F32, n)?;
    let f = gpu.function("elementwise", SRC, func)?;
    let n64 = n as i64;
    {
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&ab.data).arg(&bb.data).arg(&y.data).arg(&n64);
        cuda::launched(unsafe { l.launch(cuda::grid_for(n, 256)) }, func)?;
    }
    Tensor::from_device_buf(y, a.shape())
}

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> { binary("add_f32", a, b) }
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> { binary("mul_f32", a, b) }

pub fn add_assign(a: &mut Tensor, b: &Tensor) -> Result<()> {
    let b = if b.is_cuda() { b.clone() } else { b.to_device(a.device())? };
    let n = a.numel();
    let [bb] = cuda::f32_bufs([&b], "add_assign")?;
    let ab = a.cuda_buf_mut()?;
    ab.expect(DType::F32, "add_assign")?;
    let gpu = ab.gpu.clone();
    let f = gpu.function("elementwise", SRC, "add_assign_f32")?;
    let n64 = n as i64;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(&mut ab.data).arg(&bb.data).arg(&n64);
    cuda::launched(unsafe { l.launch(cuda::grid_for(n, 256)) }, "add_assign_f32")?;
    Ok(())
}

pub fn scale(a: &Tensor, s: f32) -> Result<Tensor> {
    let [ab] = cuda::f32_bufs([a], "scale")?;
    let gpu = &ab.gpu;
    let n = a.numel();
    let y = DeviceBuf::alloc(gpu, DType::F32, n)?;
    let f = gpu.function("elementwise", SRC, "scale_f32")?;
    let n64 = n as i64;
    {
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&ab.data).arg(&y.data).arg(&s).arg(&n64);
        cuda::launched(unsafe { l.launch(cuda::grid_for(n, 256)) }, "scale_f32")?;
    }
    Tensor::from_device_buf(y, a.shape())
}

/// f32 → bf16 or bf16 → f32 on the device.
pub fn cast(a: &Tensor, to: DType) -> Result<Tensor> {
    let ab = a.cuda_buf()?;
    let func = match (ab.dtype, to) {
        (DType::F32, DType::BF16) => "f32_to_bf16",
        (DType::BF16, DType::F32) => "bf16_to_f32",
        (x, y) if x == y => return Ok(a.clone()),
        (x, y) => bail!("cast on CUDA: {x:?} → {y:?} is not supported"),
    };
    let gpu = &ab.gpu;
    let n = a.numel();
    let y = DeviceBuf::alloc(gpu, to, n)?;
    let f = gpu.function("elementwise", SRC, func)?;
    let n64 = n as i64;
    {
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&ab.data).arg(&y.data).arg(&n64);
        cuda::launched(unsafe { l.launch(cuda::grid_for(n, 256)) }, func)?;
    }
    Tensor::from_device_buf(y, a.shape())
}
