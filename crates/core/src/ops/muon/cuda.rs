//! Muon on CUDA: `super::muon_update` with every step on the device, in f32. The elementwise
//! parts (momentum, normalisation, the update) are muon.cu's kernels, rounded as the CPU rounds
//! them; each Newton–Schulz step is three cuBLASLt products (f32 operands, whatever the matmul
//! precision, so a step can be held to the CPU's numbers):
//!
//! ```text
//! A  = X·Xᵀ                     (r × r)
//! B  = c·(A·A) + b·A            one product reading A as its C (A is symmetric: A·A = A·Aᵀ)
//! X' = B·X + a·X                one product reading X as its C
//! ```
//!
//! X is (r × c) row-major with r ≤ c (uᵀ for a tall matrix, as the reference transposes). In
//! cuBLASLt's column-major terms a row-major (r × c) buffer is its transpose (c × r), so
//! X·Xᵀ is `linear`'s x·wᵀ pattern and B·X is (Xᵀ·Bᵀ)ᵀ with neither operand transposed.
//! The norm ‖u‖ and the clip state are read on the host (one wait per matrix): Muon's products
//! cost far more than that.

use super::{shape_scale, Muon, NS_COEFFS, NS_STEPS};
use crate::cuda::{self, blas::Gemm, DeviceBuf};
use crate::ops::adamw::GradNorm;
use crate::ops::matmul::cuda::gemm_f32;
use crate::{DType, Tensor};
use anyhow::Result;
use cudarc::driver::{LaunchConfig, PushKernelArg};

const SRC: &str = include_str!("muon.cu");
const SUMSQ_BLOCKS: usize = 256;

impl super::MuonKernels for crate::backend::Cuda {
    fn muon(
        &self,
        o: &Muon,
        decay: &[bool],
        params: &mut [Tensor],
        grads: &[Tensor],
        momentum: &mut [Tensor],
        norm: Option<&GradNorm>,
    ) -> Result<()> {
        let (coef, skip) = match norm {
            Some(n) => {
                let (_, coef, skip) = n.read()?;
                (coef.min(1.0), skip)
            }
            None => (1.0, false),
        };
        if skip {
            return Ok(());
        }
        for i in 0..params.len() {
            update(o, decay[i], &mut params[i], &grads[i], coef, &mut momentum[i])?;
        }
        Ok(())
    }
}

fn update(o: &Muon, decay: bool, p: &mut Tensor, g: &Tensor, coef: f32, m: &mut Tensor) -> Result<()> {
    let (rows, cols) = (p.shape()[0], p.shape()[1]);
    let n = rows * cols;
    if n == 0 {
        return Ok(());
    }
    let [gb] = cuda::f32_bufs([g], "muon gradient")?;
    let gpu = gb.gpu.clone();
    let u = DeviceBuf::alloc(&gpu, DType::F32, n)?;
    {
        let mb = m.cuda_buf_mut()?;
        mb.expect(DType::F32, "muon momentum")?;
        let f = gpu.function("muon", SRC, "muon_momentum")?;
        let (n64, mu) = (n as i64, o.momentum as f32);
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&gb.data).arg(&mb.data).arg(&u.data).arg(&n64).arg(&coef).arg(&mu);
        cuda::launched(unsafe { l.launch(cuda::grid_for(n, 256)) }, "muon_momentum")?;
    }
    // ‖u‖: f64 partials, summed on the host.
    let partial = DeviceBuf::alloc(&gpu, DType::F32, 2 * SUMSQ_BLOCKS)?;
    {
        let f = gpu.function("muon", SRC, "muon_sumsq")?;
        let n64 = n as i64;
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&u.data).arg(&partial.data).arg(&n64);
        let cfg = LaunchConfig { grid_dim: (SUMSQ_BLOCKS as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        cuda::launched(unsafe { l.launch(cfg) }, "muon_sumsq")?;
    }
    let words = Tensor::from_device_buf(partial, &[2 * SUMSQ_BLOCKS])?.to_vec_f32()?;
    let sumsq: f64 =
        words.chunks(2).map(|w| f64::from_bits((w[0].to_bits() as u64) | ((w[1].to_bits() as u64) << 32))).sum();
    let norm = sumsq.sqrt() as f32 + 1e-7f32;
    // X (r × c), r ≤ c.
    let tall = rows > cols;
    let (r, c) = if tall { (cols, rows) } else { (rows, cols) };
    let (rows32, cols32, tall32) = (rows as i32, cols as i32, tall as i32);
    let mut x = DeviceBuf::alloc(&gpu, DType::F32, n)?;
    {
        let f = gpu.function("muon", SRC, "muon_normalise")?;
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&u.data).arg(&x.data).arg(&rows32).arg(&cols32).arg(&tall32).arg(&norm);
        cuda::launched(unsafe { l.launch(cuda::grid_for(n, 256)) }, "muon_normalise")?;
    }
    let (a, b, cc) = (NS_COEFFS.0 as f32, NS_COEFFS.1 as f32, NS_COEFFS.2 as f32);
    let gram = DeviceBuf::alloc(&gpu, DType::F32, r * r)?;
    let gram2 = DeviceBuf::alloc(&gpu, DType::F32, r * r)?;
    let mut next = DeviceBuf::alloc(&gpu, DType::F32, n)?;
    let (r64, c64) = (r as u64, c as u64);
    for _ in 0..NS_STEPS {
        // A = X·Xᵀ
        let g1 = Gemm {
            ta: true,
            tb: false,
            m: r64,
            n: r64,
            k: c64,
            lda: c as i64,
            ldb: c as i64,
            ldc: r as i64,
            alpha: 1.0,
            beta: 0.0,
        };
        gemm_f32(&x, &x, &gram, g1, None)?;
        // B = c·(A·A) + b·A
        let g2 = Gemm {
            ta: true,
            tb: false,
            m: r64,
            n: r64,
            k: r64,
            lda: r as i64,
            ldb: r as i64,
            ldc: r as i64,
            alpha: cc,
            beta: b,
        };
        gemm_f32(&gram, &gram, &gram2, g2, Some(&gram))?;
        // X' = B·X + a·X: column-major (c × r) = Xᵀ (c × r) · Bᵀ (r × r)
        let g3 = Gemm {
            ta: false,
            tb: false,
            m: c64,
            n: r64,
            k: r64,
            lda: c as i64,
            ldb: r as i64,
            ldc: c as i64,
            alpha: 1.0,
            beta: a,
        };
        gemm_f32(&x, &gram2, &next, g3, Some(&x))?;
        std::mem::swap(&mut x, &mut next);
    }
    let scale = shape_scale(rows, cols) as f32;
    let keep = if decay { (1.0 - o.lr * o.weight_decay) as f32 } else { 1.0 };
    let lr = o.lr as f32;
    let pb = p.cuda_buf_mut()?;
    pb.expect(DType::F32, "muon parameter")?;
    let f = gpu.function("muon", SRC, "muon_apply")?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(&pb.data).arg(&x.data).arg(&rows32).arg(&cols32).arg(&tall32).arg(&keep).arg(&lr).arg(&scale);
    cuda::launched(unsafe { l.launch(cuda::grid_for(n, 256)) }, "muon_apply")
}
