//! CUDA launchers for the multi-tensor AdamW step and the global gradient norm (adamw.cu).
//! One small table per launch (per tensor: addresses, size, decay flag, first block: 56 bytes
//! a tensor, a few KiB for a whole model) is uploaded; each block finds its tensor by a binary
//! search in it. (A table per block was 16 bytes × 270k blocks at 1B, built on the host and
//! uploaded twice a step.) The norm, the clip coefficient and the skip flag stay on the device.

use super::AdamW;
use crate::cuda::{self, DeviceBuf, Gpu};
use crate::{DType, Tensor};
use anyhow::{bail, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use std::sync::Arc;

pub(crate) const SRC: &str = include_str!("adamw.cu");

const CHUNK: usize = 4096;

/// The table holds addresses and sizes only, the same at every replay of a captured step (the
/// step's gradients come from its arena at the same places each time): a constant upload.
fn upload(gpu: &Arc<Gpu>, v: &[i64]) -> Result<DeviceBuf> {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    DeviceBuf::constant(gpu, DType::I32, v.len() * 2, &bytes)
}

/// (meta, number of tensors, number of blocks) for tensors given as [p, g, m, v, bf16 copy of p]
/// addresses, sizes and flags. Tensors of no elements get no blocks (and are never found by the search:
/// a block's tensor is the last one whose first block is ≤ it, which has ≥ 1 block).
fn tables(gpu: &Arc<Gpu>, rows: &[[u64; 5]], sizes: &[usize], decay: &[bool]) -> Result<(DeviceBuf, i32, usize)> {
    let mut meta = Vec::with_capacity(rows.len() * 8);
    let mut nb = 0usize;
    for (i, r) in rows.iter().enumerate() {
        meta.extend(r[..4].iter().map(|&p| p as i64));
        meta.push(sizes[i] as i64);
        meta.push(decay.get(i).copied().unwrap_or(false) as i64);
        meta.push(nb as i64);
        meta.push(r[4] as i64);
        nb += sizes[i].div_ceil(CHUNK);
    }
    Ok((upload(gpu, &meta)?, rows.len() as i32, nb))
}

/// The sums of squares of `grads` by blocks of CHUNK elements (f64 partials), and their count.
fn sumsq_partials(grads: &[&Tensor]) -> Result<(Arc<Gpu>, DeviceBuf, i32)> {
    if grads.is_empty() {
        bail!("grad norm of no tensors");
    }
    let gpu = grads[0].cuda_buf()?.gpu.clone();
    let mut rows = Vec::new();
    for g in grads {
        let [b] = cuda::f32_bufs([*g], "grad norm")?;
        rows.push([0, b.ptr(), 0, 0, 0]);
    }
    let sizes: Vec<usize> = grads.iter().map(|g| g.numel()).collect();
    let (meta, nt, nb) = tables(&gpu, &rows, &sizes, &[])?;
    let partial = DeviceBuf::alloc(&gpu, DType::F32, 2 * nb.max(1))?; // f64 partials
    if nb > 0 {
        let f = gpu.function("adamw", SRC, "sumsq_multi_f32")?;
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&meta.data).arg(&nt).arg(&partial.data);
        let cfg = LaunchConfig { grid_dim: (nb as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        cuda::launched(unsafe { l.launch(cfg) }, "sumsq_multi_f32")?;
    }
    Ok((gpu, partial, nb as i32))
}

const ONE_BLOCK: LaunchConfig = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };

/// [global L2 norm, clip coefficient, skip flag, non-finite flag] of `grads`, on the device.
/// The skip flag is set when the norm or `loss` (if given) is not finite; the non-finite flag
/// starts at 0 and `adamw_multi` given this state raises it when it leaves a parameter NaN or
/// infinite, so the trainer learns it with the loss, without another wait.
pub fn grad_norm_state(grads: &[&Tensor], max_norm: f64, loss: Option<&Tensor>) -> Result<Tensor> {
    let (gpu, partial, nb) = sumsq_partials(grads)?;
    let state = DeviceBuf::alloc(&gpu, DType::F32, 4)?;
    let f = gpu.function("adamw", SRC, "norm_finalize")?;
    let null = 0u64;
    {
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&partial.data).arg(&nb).arg(&state.data).arg(&max_norm);
        match loss {
            Some(t) => l.arg(&cuda::f32_bufs([t], "grad norm loss")?[0].data),
            None => l.arg(&null),
        };
        cuda::launched(unsafe { l.launch(ONE_BLOCK) }, "norm_finalize")?;
    }
    Tensor::from_device_buf(state, &[4])
}

/// The sum of squares of `grads` as one f64 (`dist::f64_words`: a U32 tensor of two words), in
/// `grad_norm_state`'s order: `norm_state_from_sumsq` of it is `grad_norm_state` bit for bit.
pub fn grad_sumsq(grads: &[&Tensor]) -> Result<Tensor> {
    let (gpu, partial, nb) = sumsq_partials(grads)?;
    let out = DeviceBuf::alloc(&gpu, DType::U32, 2)?;
    let f = gpu.function("adamw", SRC, "sumsq_total")?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(&partial.data).arg(&nb).arg(&out.data);
    cuda::launched(unsafe { l.launch(ONE_BLOCK) }, "sumsq_total")?;
    Tensor::from_device_buf(out, &[2])
}

/// `grad_norm_state` from a sum of squares made by `grad_sumsq` (and summed over ranks).
pub fn norm_state_from_sumsq(sumsq: &Tensor, max_norm: f64, loss: Option<&Tensor>) -> Result<Tensor> {
    let sb = sumsq.cuda_buf()?;
    sb.expect(DType::U32, "norm from a sum of squares")?;
    let gpu = sb.gpu.clone();
    let state = DeviceBuf::alloc(&gpu, DType::F32, 4)?;
    let f = gpu.function("adamw", SRC, "norm_from_sumsq")?;
    let null = 0u64;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(&sb.data).arg(&state.data).arg(&max_norm);
    match loss {
        Some(t) => l.arg(&cuda::f32_bufs([t], "grad norm loss")?[0].data),
        None => l.arg(&null),
    };
    let one = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1, 1, 1), shared_mem_bytes: 0 };
    cuda::launched(unsafe { l.launch(one) }, "norm_from_sumsq")?;
    Tensor::from_device_buf(state, &[4])
}

/// One AdamW update of every parameter in one launch. `gstate` (from `grad_norm_state`) scales
/// the gradients by its clip coefficient, skips the update when its flag is set, and gets its
/// non-finite flag raised when an updated parameter is NaN or infinite.
#[allow(clippy::too_many_arguments)]
pub fn adamw_multi(
    o: &AdamW,
    step: u64,
    decay: &[bool],
    params: &mut [Tensor],
    grads: &[Tensor],
    m: &mut [Tensor],
    v: &mut [Tensor],
    gstate: Option<&Tensor>,
) -> Result<()> {
    adamw_multi_at(o, super::Step::Count(step), decay, params, grads, m, v, gstate)
}

/// `adamw_multi` with the step's scalars computed here (`Step::Count`) or read by the kernel
/// from a device tensor (`Step::Scalars`: a captured step).
#[allow(clippy::too_many_arguments)]
pub fn adamw_multi_at(
    o: &AdamW,
    step: super::Step<'_>,
    decay: &[bool],
    params: &mut [Tensor],
    grads: &[Tensor],
    m: &mut [Tensor],
    v: &mut [Tensor],
    gstate: Option<&Tensor>,
) -> Result<()> {
    let n = params.len();
    if grads.len() != n || m.len() != n || v.len() != n || decay.len() != n {
        bail!(
            "adamw: {n} parameters, {} gradients, {} / {} moments, {} decay flags",
            grads.len(),
            m.len(),
            v.len(),
            decay.len()
        );
    }
    if n == 0 {
        return Ok(());
    }
    let mut rows = Vec::with_capacity(n);
    let mut sizes = Vec::with_capacity(n);
    let mut shadows = Vec::with_capacity(n);
    let mut gpu = None;
    for i in 0..n {
        if params[i].shape() != grads[i].shape()
            || params[i].shape() != m[i].shape()
            || params[i].shape() != v[i].shape()
        {
            bail!(
                "adamw: parameter {:?}, gradient {:?} and moments {:?} differ in shape",
                params[i].shape(),
                grads[i].shape(),
                m[i].shape()
            );
        }
        let [gb] = cuda::f32_bufs([&grads[i]], "adamw gradient")?;
        // The parameter's bf16 copy (made by the first mixed-precision matmul that read it):
        // rewritten by the step itself when nothing else holds it, then put back on the buffer
        // (which the write below would otherwise drop, leaving a cast pass to the next use).
        let copy = params[i].cuda_buf()?.bf16_shadow.get().cloned().filter(|t| t.storage_refs() == 2); // the lock's and this clone
        let cp = match &copy {
            Some(t) => t.cuda_buf()?.ptr(),
            None => 0,
        };
        shadows.push(copy);
        let pb = params[i].cuda_buf_mut()?;
        pb.expect(DType::F32, "adamw parameter")?;
        gpu.get_or_insert_with(|| pb.gpu.clone());
        let pp = pb.ptr();
        let mp = m[i].cuda_buf_mut()?.ptr();
        let vp = v[i].cuda_buf_mut()?.ptr();
        rows.push([pp, gb.ptr(), mp, vp, cp]);
        sizes.push(params[i].numel());
    }
    let gpu = gpu.ok_or_else(|| anyhow::anyhow!("adamw: no parameters"))?;
    let (meta, nt, nb) = tables(&gpu, &rows, &sizes, decay)?;
    if nb == 0 {
        return Ok(());
    }
    // Host scalars are used when `scalars` is null (Step::Count); else the kernel reads them.
    let [decay_factor, step_size, bc2_sqrt] = match step {
        super::Step::Count(t) => super::step_scalars(o, t),
        super::Step::Scalars(_) => [0.0; 3],
    };
    let (b1, b2, eps, null) = (o.beta1 as f32, o.beta2 as f32, o.eps as f32, 0u64);
    let f = gpu.function("adamw", SRC, "adamw_multi_f32")?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(&meta.data).arg(&nt);
    match gstate {
        Some(t) => l.arg(&cuda::f32_bufs([t], "adamw clip state")?[0].data),
        None => l.arg(&null),
    };
    match step {
        super::Step::Scalars(t) => {
            let [b] = cuda::f32_bufs([t], "adamw step scalars")?;
            if b.len != 3 {
                bail!("adamw: {} step scalars, expected 3", b.len);
            }
            l.arg(&b.data)
        }
        super::Step::Count(_) => l.arg(&null),
    };
    l.arg(&decay_factor).arg(&b1).arg(&b2).arg(&step_size).arg(&bc2_sqrt).arg(&eps);
    let cfg = LaunchConfig { grid_dim: (nb as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    cuda::launched(unsafe { l.launch(cfg) }, "adamw_multi_f32")?;
    // The copies now hold the updated values (or, for a skipped step, the unchanged ones).
    for (p, copy) in params.iter().zip(shadows) {
        if let Some(t) = copy {
            let _ = p.cuda_buf()?.bf16_shadow.set(t);
        }
    }
    Ok(())
}

impl super::OptimKernels for crate::backend::Cuda {
    fn grad_norm(&self, grads: &[&Tensor], max_norm: f64, loss: Option<&Tensor>) -> Result<super::GradNorm> {
        Ok(super::GradNorm::new(grad_norm_state(grads, max_norm, loss)?, None))
    }
    fn grad_sumsq(&self, grads: &[&Tensor]) -> Result<Tensor> {
        grad_sumsq(grads)
    }
    fn norm_from_sumsq(&self, sumsq: &Tensor, max_norm: f64, loss: Option<&Tensor>) -> Result<super::GradNorm> {
        Ok(super::GradNorm::new(norm_state_from_sumsq(sumsq, max_norm, loss)?, None))
    }
    fn adamw(
        &self,
        o: &AdamW,
        step: super::Step<'_>,
        decay: &[bool],
        params: &mut [Tensor],
        grads: &[Tensor],
        m: &mut [Tensor],
        v: &mut [Tensor],
        norm: Option<&super::GradNorm>,
    ) -> Result<()> {
        adamw_multi_at(o, step, decay, params, grads, m, v, norm.map(|n| &n.state))
    }
    /// Slot 3 of the norm state: raised by `adamw_multi_f32` when an updated value is not finite
    /// (the step's one host copy of the state, shared with `GradNorm::read`).
    fn params_finite(&self, _params: &[Tensor], norm: &super::GradNorm) -> Result<bool> {
        let st = norm.host_state()?;
        Ok(st.get(3).is_none_or(|&f| f == 0.0))
    }
}
