//! CUDA launchers for sampling (sample.cu): the whole step on the device, one block per row;
//! only the chosen ids (4 bytes a row) are left for the host to read.

use super::SampleParams;
use crate::cuda::{self, DeviceBuf};
use crate::{DType, Tensor};
use anyhow::{bail, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

pub(crate) const SRC: &str = include_str!("sample.cu");

/// `n` zero u32 words on GPU `ordinal` (a seen-ids bit set).
pub fn zeros_u32(ordinal: usize, n: usize) -> Result<Tensor> {
    let buf = DeviceBuf::zeros(&cuda::gpu(ordinal)?, DType::U32, n)?;
    Tensor::from_device_buf(buf, &[n])
}

/// Sets the bits of `ids` (checked by the caller) in the words from `word0` on.
pub fn mark(bits: &mut Tensor, word0: usize, ids: &[u32]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let idt = Tensor::from_u32(ids.to_vec(), &[ids.len()])?.to_device(bits.device())?;
    let ib = idt.cuda_buf()?;
    let gpu = ib.gpu.clone();
    let sb = bits.cuda_buf_mut()?;
    let n = sb.len - word0;
    let mut dst = sb.view_mut(word0, n);
    let f = gpu.function("sample", SRC, "sample_mark")?;
    let mut b = gpu.stream.launch_builder(&f);
    let count = ids.len() as i32;
    b.arg(&mut dst).arg(&ib.data).arg(&count);
    cuda::launched(unsafe { b.launch(cuda::grid_for(ids.len(), 256)) }, "sample_mark")
}

/// logits (R, V) f32 on the device; `seen` (R · ⌈V/32⌉ words) on the same device or none;
/// one uniform per row → (R) u32 ids on the device.
pub fn sample(logits: &Tensor, seen: Option<&mut Tensor>, p: &SampleParams, uniforms: &[f64]) -> Result<Tensor> {
    let logits = &cuda::as_f32(logits)?;
    let [zb] = cuda::f32_bufs([logits], "sample")?;
    let gpu = zb.gpu.clone();
    let (r, v) = (logits.rows(), logits.cols());
    let words = v.div_ceil(32);
    // One row (generation) takes its uniform as an argument; more rows upload theirs.
    let ub = if r > 1 {
        let bytes: Vec<u8> = uniforms.iter().flat_map(|u| u.to_le_bytes()).collect();
        Some(DeviceBuf::from_bytes(&gpu, DType::U32, 2 * r, &bytes)?)
    } else {
        None
    };
    let u0 = uniforms.first().copied().unwrap_or(0.0);
    let out = DeviceBuf::alloc(&gpu, DType::U32, r)?;
    let sb = match seen {
        Some(t) => {
            let b = t.cuda_buf_mut()?;
            if b.gpu.ordinal != gpu.ordinal || b.len != r * words {
                bail!(
                    "sample: seen ids ({} words on cuda:{}) do not fit logits ({r}, {v}) on cuda:{}",
                    b.len,
                    b.gpu.ordinal,
                    gpu.ordinal
                );
            }
            Some(b)
        }
        None => None,
    };
    let (v32, w32, null) = (v as i32, words as i32, 0u64);
    let greedy = (p.temperature.is_nan() || p.temperature <= 0.0) as i32;
    let top_k = if p.top_k < v { p.top_k as u32 } else { 0 };
    let (use_top_p, top_p) = ((p.top_p < 1.0) as i32, p.top_p.max(0.0));
    let (use_min_p, min_p) = ((p.min_p > 0.0) as i32, p.min_p.min(1.0));
    let f = gpu.function("sample", SRC, "sample_f32")?;
    let mut b = gpu.stream.launch_builder(&f);
    b.arg(&zb.data);
    match &sb {
        Some(s) => b.arg(&s.data),
        None => b.arg(&null),
    };
    match &ub {
        Some(u) => b.arg(&u.data),
        None => b.arg(&null),
    };
    b.arg(&u0).arg(&out.data).arg(&v32).arg(&w32).arg(&p.repetition_penalty).arg(&p.temperature);
    b.arg(&greedy).arg(&top_k).arg(&use_top_p).arg(&top_p).arg(&use_min_p).arg(&min_p);
    let cfg = LaunchConfig { grid_dim: (r.max(1) as u32, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
    cuda::launched(unsafe { b.launch(cfg) }, "sample_f32")?;
    Tensor::from_device_buf(out, &[r])
}

impl super::SampleKernels for crate::backend::Cuda {
    fn sample(
        &self,
        logits: &Tensor,
        seen: Option<&mut super::Seen>,
        p: &SampleParams,
        uniforms: &[f64],
    ) -> Result<Tensor> {
        let bits = match seen {
            Some(super::Seen { bits: super::Bits::Device(t), .. }) => Some(t),
            Some(_) => bail!("sample: the seen ids are on the CPU, the logits on {}", logits.device()),
            None => None,
        };
        sample(logits, bits, p, uniforms)
    }
    fn mark_seen(&self, bits: &mut Tensor, word0: usize, ids: &[u32]) -> Result<()> {
        mark(bits, word0, ids)
    }
}
