//! CUDA launchers for the embedding gather and its scatter-add backward (embedding.cu). The
//! output has the table's dtype (f32 or bf16); the gradient is an f32 table (of an f32 table:
//! tables with gradients are f32 master weights).

use crate::cuda::{self, DeviceBuf};
use crate::{DType, Tensor};
use anyhow::{bail, Result};
use cudarc::driver::PushKernelArg;

pub(crate) const SRC: &str = include_str!("embedding.cu");

/// table: (V, C) on the device; ids: u32 on the host (checked by the caller) or the device.
pub fn embedding(table: &Tensor, ids: &Tensor, v: usize, d: usize) -> Result<Tensor> {
    let [tb] = cuda::float_bufs([table], "embedding")?;
    let gpu = &tb.gpu;
    let idt = cuda::ids_on(ids, gpu)?;
    let ib = idt.cuda_buf()?;
    let n = ids.numel();
    let out = DeviceBuf::alloc(gpu, tb.dtype, n * d)?;
    let name = cuda::kname("embedding_fwd", &[tb.dtype], "embedding")?;
    let f = gpu.function("embedding", SRC, &name)?;
    let (n64, d32, v32) = (n as i64, d as i32, v as u32);
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&tb.data).arg(&ib.data).arg(&out.data).arg(&n64).arg(&d32).arg(&v32);
        cuda::launched(unsafe { b.launch(cuda::grid_for(n * d, 256)) }, &name)?;
    }
    let mut shape = ids.shape().to_vec();
    shape.push(d);
    Tensor::from_device_buf(out, &shape)
}

pub fn embedding_backward(table: &Tensor, ids: &Tensor, dout: &Tensor, v: usize, d: usize) -> Result<Tensor> {
    let [db] = cuda::float_bufs([dout], "embedding_backward")?;
    if table.dtype() != DType::F32 {
        bail!(
            "embedding_backward: no gradient into a {:?} table {:?} (tables that learn are f32 master weights)",
            table.dtype(),
            table.shape()
        );
    }
    let gpu = &db.gpu;
    if ids.device().is_cpu() {
        return sorted_backward(table, ids.as_u32()?, db, v, d);
    }
    let idt = cuda::ids_on(ids, gpu)?;
    let ib = idt.cuda_buf()?;
    let n = ids.numel();
    let dt = DeviceBuf::zeros(gpu, DType::F32, v * d)?;
    let name = cuda::kname("embedding_bwd", &[db.dtype], "embedding_backward")?;
    let f = gpu.function("embedding", SRC, &name)?;
    let (n64, d32, v32) = (n as i64, d as i32, v as u32);
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&db.data).arg(&ib.data).arg(&dt.data).arg(&n64).arg(&d32).arg(&v32);
        cuda::launched(unsafe { b.launch(cuda::grid_for(n * d, 256)) }, &name)?;
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
    let up = |x: &[u32]| {
        DeviceBuf::from_bytes(gpu, DType::U32, x.len(), &x.iter().flat_map(|y| y.to_le_bytes()).collect::<Vec<u8>>())
    };
    let (ob, ub, sb) = (up(&order)?, up(&uid)?, up(&seg)?);
    let name = cuda::kname("embedding_bwd_sorted", &[db.dtype], "embedding_backward")?;
    let f = gpu.function("embedding", SRC, &name)?;
    let d32 = d as i32;
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&db.data).arg(&ob.data).arg(&ub.data).arg(&sb.data).arg(&dt.data).arg(&d32);
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: (uid.len() as u32, d.div_ceil(256) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        cuda::launched(unsafe { b.launch(cfg) }, &name)?;
    }
    Tensor::from_device_buf(dt, table.shape())
}

impl super::EmbeddingKernels for crate::backend::Cuda {
    fn embedding(&self, table: &Tensor, ids: &Tensor, v: usize, d: usize) -> Result<Tensor> {
        embedding(table, ids, v, d)
    }
    fn embedding_backward(&self, table: &Tensor, ids: &Tensor, dout: &Tensor, v: usize, d: usize) -> Result<Tensor> {
        embedding_backward(table, ids, dout, v, d)
    }
}
