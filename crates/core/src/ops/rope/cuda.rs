//! CUDA launcher for RoPE (rope.cu). The cos/sin table for the positions in use is computed on
//! the host, exactly as the CPU path does, and uploaded (T·D/2 floats per call).

use super::{RopeLayout, RopeTable};
use crate::cuda::{self, DeviceBuf};
use crate::{DType, Tensor};
use anyhow::Result;
use cudarc::driver::PushKernelArg;

pub(crate) const SRC: &str = include_str!("rope.cu");

/// x: (B, T, H, D) on the device; sign 1 = forward, −1 = backward.
pub fn rope(x: &Tensor, table: &RopeTable, pos0: usize, t: usize, h: usize, sign: f32) -> Result<Tensor> {
    let [xb] = cuda::f32_bufs([x], "rope")?;
    let gpu = &xb.gpu;
    let d = x.cols();
    let (c, s) = table.cos_sin::<f32>(pos0, t);
    let to_dev = |v: &[f32]| DeviceBuf::from_bytes(gpu, DType::F32, v.len(), &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
    let (cb, sb) = (to_dev(&c)?, to_dev(&s)?);
    let mut y = xb.try_copy()?; // rotated in place on the copy
    let rows = x.rows() / h;
    let f = gpu.function("rope", SRC, "rope_f32")?;
    let (rows64, t32, h32, d32) = (rows as i64, t as i32, h as i32, d as i32);
    let inter = (table.layout == RopeLayout::Interleaved) as i32;
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&mut y.data).arg(&cb.data).arg(&sb.data).arg(&rows64).arg(&t32).arg(&h32).arg(&d32).arg(&inter).arg(&sign);
        cuda::launched(unsafe { b.launch(cuda::grid_for(rows * h * d / 2, 256)) }, "rope_f32")?;
    }
    Tensor::from_device_buf(y, x.shape())
}
