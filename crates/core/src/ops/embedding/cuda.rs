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
    if ids.device().is_cpu() {
        return sorted_backward(table, ids.as_u32()?, db, v, d);
    }
    device_ids_backward(table, ids.cuda_buf()?, db, v, d)
}

/// The backward for ids already on the device (a captured step's batch): each row's place in
/// the rows stably sorted by id, found on the device (`embedding_sort_pos`), then each id's rows
/// summed in row order from the group's first place: `sorted_backward`'s sums bit for bit, with
/// nothing read back or uploaded.
fn device_ids_backward(table: &Tensor, ib: &DeviceBuf, db: &DeviceBuf, v: usize, d: usize) -> Result<Tensor> {
    let gpu = &db.gpu;
    ib.expect(DType::U32, "embedding_backward ids")?;
    if ib.gpu.ordinal != gpu.ordinal {
        bail!("embedding_backward: ids on cuda:{}, gradient on cuda:{}", ib.gpu.ordinal, gpu.ordinal);
    }
    let n = ib.len;
    let dt = DeviceBuf::zeros(gpu, DType::F32, v * d)?;
    if n == 0 {
        return Tensor::from_device_buf(dt, table.shape());
    }
    if n > i32::MAX as usize {
        bail!("embedding_backward: {n} device ids is more than one launch takes");
    }
    let order = DeviceBuf::alloc(gpu, DType::U32, n)?;
    let n32 = n as i32;
    {
        let f = gpu.function("embedding", SRC, "embedding_sort_pos")?;
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&ib.data).arg(&order.data).arg(&n32);
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: (n.div_ceil(32) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        cuda::launched(unsafe { b.launch(cfg) }, "embedding_sort_pos")?;
    }
    let name = cuda::kname("embedding_bwd_grouped", &[db.dtype], "embedding_backward")?;
    let f = gpu.function("embedding", SRC, &name)?;
    let (d32, v32) = (d as i32, v as u32);
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&db.data).arg(&ib.data).arg(&order.data).arg(&dt.data).arg(&n32).arg(&d32).arg(&v32);
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: (n as u32, d.div_ceil(256) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        cuda::launched(unsafe { b.launch(cfg) }, &name)?;
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
