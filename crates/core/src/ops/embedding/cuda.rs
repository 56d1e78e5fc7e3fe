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
    if !ids.is_cuda() {
        return sorted_backward(table, ids.as_u32()?, db, v, d);
    }
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

/// Deterministic backward for host ids: rows grouped by id on the host (a stable sort), then
/// one kernel sums each group in row order.
fn sorted_backward(table: &Tensor, ids: &[u32], db: &DeviceBuf, v: usize, d: usize) -> Result<Tensor> {
    let gpu = &db.gpu;
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_by_key(|&r| ids[r as usize]); // stable: rows of one id stay ascending
    let (mut uid, mut seg) = (Vec::new(), Vec::new());
    for (k, &r) in order.iter().enumerate() {
        let id = ids[r as usize];
        if uid.last() != Some(&id) {
            uid.push(id);
            seg.push(k as u32);
        }
    }
    seg.push(order.len() as u32);
    let dt = DeviceBuf::zeros(gpu, DType::F32, v * d)?;
    if uid.is_empty() {
        return Tensor::from_device_buf(dt, table.shape());
    }
    let up = |x: &[u32]| DeviceBuf::from_bytes(gpu, DType::U32, x.len(), &x.iter().flat_map(|y| y.to_le_bytes()).collect::<Vec<u8>>());
    let (ob, ub, sb) = (up(&order)?, up(&uid)?, up(&seg)?);
    let f = gpu.function("embedding", SRC, "embedding_bwd_sorted_f32")?;
    let d32 = d as i32;
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&db.data).arg(&ob.data).arg(&ub.data).arg(&sb.data).arg(&dt.data).arg(&d32);
        let cfg = cudarc::driver::LaunchConfig { grid_dim: (uid.len() as u32, d.div_ceil(256) as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        cuda::launched(unsafe { b.launch(cfg) }, "embedding_bwd_sorted_f32")?;
    }
    Tensor::from_device_buf(dt, table.shape())
}
