//! CUDA launchers for the embedding gather and its scatter-add backward (embedding.cu).

use crate::cuda::{self, DeviceBuf};
use crate::{DType, Tensor};
use anyhow::Result;
use cudarc::driver::PushKernelArg;

pub(crate) const SRC: &str = include_str!("embedding.cu");

/// table: (V, C) on the device; ids: u32 on the host (checked by the caller) or the device.
pub fn embedding(table: &Tensor, ids: &Tensor, v: usize, d: usize) -> Result<Tensor> {
    let [tb] = cuda::f32_bufs([table], "embedding")?;
    let gpu = &tb.gpu;
    let idt = cuda::ids_on(ids, gpu)?;
    let ib = idt.cuda_buf()?;
    let n = ids.numel();
    let out = DeviceBuf::alloc(gpu, DType::F32, n * d)?;
    let f = gpu.function("embedding", SRC, "embedding_fwd_f32")?;
    let (n64, d32, v32) = (n as i64, d as i32, v as u32);
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&tb.data).arg(&ib.data).arg(&out.data).arg(&n64).arg(&d32).arg(&v32);
        cuda::launched(unsafe { b.launch(cuda::grid_for(n * d, 256)) }, "embedding_fwd_f32")?;
    }
    let mut shape = ids.shape().to_vec();
    shape.push(d);
    Tensor::from_device_buf(out, &shape)
}

pub fn embedding_backward(table: &Tensor, ids: &Tensor, dout: &Tensor, v: usize, d: usize) -> Result<Tensor> {
    let [db] = cuda::f32_bufs([dout], "embedding_backward")?;
    let gpu = &db.gpu;
    let idt = cuda::ids_on(ids, gpu)?;
    let ib = idt.cuda_buf()?;
    let n = ids.numel();
    let dt = DeviceBuf::zeros(gpu, DType::F32, v * d)?;
    let f = gpu.function("embedding", SRC, "embedding_bwd_f32")?;
    let (n64, d32, v32) = (n as i64, d as i32, v as u32);
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&db.data).arg(&ib.data).arg(&dt.data).arg(&n64).arg(&d32).arg(&v32);
        cuda::launched(unsafe { b.launch(cuda::grid_for(n * d, 256)) }, "embedding_bwd_f32")?;
    }
    Tensor::from_device_buf(dt, table.shape())
}
