//! CUDA launcher for RoPE (rope.cu). cos/sin for positions 0..P come from the table's host cache
//! (the CPU path's very numbers) and are kept on the device (grown when a later call needs
//! more positions), so a call uploads nothing.

use super::{RopeLayout, RopeTable};
use crate::cuda::{self, DeviceBuf};
use crate::ops::Pos;
use crate::{DType, Tensor};
use anyhow::{anyhow, Result};
use cudarc::driver::PushKernelArg;
use std::sync::{Arc, Mutex};

pub(crate) const SRC: &str = include_str!("rope.cu");

/// Device cos/sin tables, by (GPU, frequencies); a model has one, so a short list suffices.
pub(crate) struct Cached {
    ordinal: usize,
    key: Vec<u64>,
    positions: usize,
    pub(crate) cos: DeviceBuf,
    pub(crate) sin: DeviceBuf,
}

static TABLES: Mutex<Vec<Arc<Cached>>> = Mutex::new(Vec::new());

fn key(table: &RopeTable) -> Vec<u64> {
    let mut k: Vec<u64> = table.inv_freq.iter().map(|f| f.to_bits()).collect();
    k.push(table.attention_factor.to_bits());
    k
}

/// The device cos/sin rows of `table` for positions 0..P, P ≥ `need` (also read by the paged
/// pool's rotary kernel, `attention::cuda::paged_rope_kv`).
pub(crate) fn device_table(gpu: &Arc<cuda::Gpu>, table: &RopeTable, need: usize) -> Result<Arc<Cached>> {
    let k = key(table);
    let mut list = TABLES.lock().map_err(|_| anyhow!("rope table cache poisoned"))?;
    if let Some(c) = list.iter().find(|c| c.ordinal == gpu.ordinal && c.key == k && c.positions >= need) {
        return Ok(c.clone());
    }
    let (c, s) = table.cos_sin_f32(need.max(4096));
    let positions = c.len() / table.inv_freq.len().max(1);
    let up = |v: &[f32]| {
        DeviceBuf::from_bytes(gpu, DType::F32, v.len(), &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    };
    let entry = Arc::new(Cached { ordinal: gpu.ordinal, key: k.clone(), positions, cos: up(&c)?, sin: up(&s)? });
    list.retain(|c| !(c.ordinal == gpu.ordinal && c.key == k));
    list.push(entry.clone());
    Ok(entry)
}

/// x: (B, T, H, D) on the device at positions pos0..pos0+T, f32 or bf16 (the result keeps
/// x's dtype); sign 1 = forward, −1 = backward.
pub fn rope(x: &Tensor, table: &RopeTable, pos: Pos, t: usize, h: usize, sign: f32) -> Result<Tensor> {
    rope_launch(x, table, Some(pos), None, t, h, sign)
}

/// Token r of x (B·T rows) at `positions[r]` (packed rows, each example from 0).
pub fn rope_positions(x: &Tensor, table: &RopeTable, positions: &[u32], h: usize, sign: f32) -> Result<Tensor> {
    let [xb] = cuda::float_bufs([x], "rope")?;
    let bytes: Vec<u8> = positions.iter().flat_map(|p| p.to_le_bytes()).collect();
    let pb = DeviceBuf::from_bytes(&xb.gpu, DType::U32, positions.len(), &bytes)?;
    rope_launch(x, table, None, Some((&pb, positions.iter().max().map_or(1, |&m| m as usize + 1))), 1, h, sign)
}

/// `rope` at a position (host or device) or at per-token `positions` (a device u32 buffer and
/// the table size they need).
fn rope_launch(
    x: &Tensor,
    table: &RopeTable,
    pos: Option<Pos>,
    positions: Option<(&DeviceBuf, usize)>,
    t: usize,
    h: usize,
    sign: f32,
) -> Result<Tensor> {
    let what = if sign > 0.0 { "rope" } else { "rope_backward" };
    let [xb] = cuda::float_bufs([x], what)?;
    let gpu = &xb.gpu;
    let d = x.cols();
    let need = match (&pos, positions) {
        (Some(p), _) => p.bound(t)?,
        (None, Some((_, n))) => n,
        (None, None) => anyhow::bail!("rope: no position"),
    };
    let tab = device_table(gpu, table, need)?;
    let (dpos, pos0) = match pos {
        Some(p) => p.kernel_args("rope position")?,
        None => (0u64, 0),
    };
    let null = 0u64;
    let y = DeviceBuf::alloc(gpu, xb.dtype, x.numel())?; // x rotated into it (every element written)
    let rows = x.rows() / h;
    let name = cuda::kname("rope", &[xb.dtype], what)?;
    let f = gpu.function("rope", SRC, &name)?;
    let (rows64, t32, h32, d32, p32) = (rows as i64, t as i32, h as i32, d as i32, pos0);
    let inter = (table.layout == RopeLayout::Interleaved) as i32;
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&xb.data)
            .arg(&y.data)
            .arg(&tab.cos.data)
            .arg(&tab.sin.data)
            .arg(&rows64)
            .arg(&t32)
            .arg(&h32)
            .arg(&d32)
            .arg(&inter)
            .arg(&sign)
            .arg(&p32)
            .arg(&dpos);
        match positions {
            Some((pb, _)) => b.arg(&pb.data),
            None => b.arg(&null),
        };
        cuda::launched(unsafe { b.launch(cuda::grid_for((rows * h * d / 2).div_ceil(4), 256)) }, &name)?;
    }
    Tensor::from_device_buf(y, x.shape())
}

/// `rope_into_cache` in one launch (rope_kv in rope.cu).
#[allow(clippy::too_many_arguments)]
fn rope_into_cache(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    table: &RopeTable,
    kc: &mut Tensor,
    vc: &mut Tensor,
    pos: Pos,
    t: usize,
) -> Result<Tensor> {
    let [qb, kb, vb] = cuda::float_bufs([q, k, v], "rope_into_cache")?;
    let dt = cuda::same_dtype(&[qb, kb, vb], &["q", "k", "v"], "rope_into_cache")?;
    let gpu = qb.gpu.clone();
    let (qs, ks) = (q.shape().to_vec(), k.shape().to_vec());
    let (nb, h, kvh, d, cap) = (qs[0], qs[2], ks[2], qs[3], kc.shape()[1]);
    let tab = device_table(&gpu, table, pos.bound(t)?)?;
    let (dpos, pos0) = pos.kernel_args("rope position")?;
    let qo = DeviceBuf::alloc(&gpu, dt, q.numel())?;
    let (kcp, vcp) = (kc.cuda_buf_mut()?, vc.cuda_buf_mut()?.ptr());
    if kcp.dtype != dt {
        anyhow::bail!("rope_into_cache: {dt:?} rows into a {:?} cache", kcp.dtype);
    }
    let kcp = kcp.ptr();
    let name = cuda::kname("rope_kv", &[dt], "rope_into_cache")?;
    let f = gpu.function("rope", SRC, &name)?;
    let ints = [
        nb as i32,
        t as i32,
        h as i32,
        kvh as i32,
        d as i32,
        cap as i32,
        (table.layout == RopeLayout::Interleaved) as i32,
        pos0,
    ];
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&qb.data)
            .arg(&kb.data)
            .arg(&vb.data)
            .arg(&qo.data)
            .arg(&kcp)
            .arg(&vcp)
            .arg(&tab.cos.data)
            .arg(&tab.sin.data);
        for x in &ints {
            b.arg(x);
        }
        b.arg(&dpos);
        let n = nb * t * (h * d / 2 + kvh * d / 2 + kvh * d);
        cuda::launched(unsafe { b.launch(cuda::grid_for(n, 256)) }, &name)?;
    }
    Tensor::from_device_buf(qo, q.shape())
}

impl super::RopeKernels for crate::backend::Cuda {
    fn rope(&self, x: &Tensor, table: &RopeTable, pos: Pos, t: usize, h: usize, sign: f32) -> Result<Tensor> {
        rope(x, table, pos, t, h, sign)
    }
    fn rope_positions(&self, x: &Tensor, table: &RopeTable, positions: &[u32], h: usize, sign: f32) -> Result<Tensor> {
        rope_positions(x, table, positions, h, sign)
    }
    fn rope_into_cache(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        table: &RopeTable,
        kc: &mut Tensor,
        vc: &mut Tensor,
        pos: Pos,
        t: usize,
    ) -> Result<Tensor> {
        rope_into_cache(q, k, v, table, kc, vc, pos, t)
    }
}
