//! `linear` and its backward on CUDA: cuBLASLt products plus the bias kernels (matmul.cu).
//!
//! Precision (`cuda::matmul_precision`): f32 → every operand and result f32 (inputs must be
//! f32). Mixed (bf16) → operands bf16 (an f32 weight through the bf16 copy cached on its buffer,
//! any other f32 operand cast per use), f32 accumulation; the output y is bf16 (an activation),
//! dx has x's dtype (a gradient has its tensor's dtype), dw and db are f32 (weight gradients).
//!
//! cuBLAS is column-major; a row-major (r × c) buffer read column-major is its (c × r)
//! transpose, so each row-major product below is written as the transposed column-major one.

use crate::cuda::blas::{Gemm, Operand};
use crate::cuda::{self, DeviceBuf, MatmulPrecision};
use crate::{DType, Tensor};
use anyhow::{bail, Result};
use cudarc::driver::PushKernelArg;

pub(crate) const SRC: &str = include_str!("matmul.cu");
pub(crate) const GEMV_SRC: &str = include_str!("gemv.cu");

/// Input rows up to this many (a decode step's) take the GEMV kernels (gemv.cu), not cuBLASLt.
pub const GEMV_MAX_ROWS: usize = 4;
/// Output rows per GEMV block (GEMV_WARPS in gemv.cu).
const GEMV_ROWS: usize = 8;

/// Threads a block of the row-group matvecs (MV_THREADS in common.cuh).
pub(crate) const MV_THREADS: u32 = 256;

/// `SMELT_CUDA_MV=old`: the GEMV's first form, one warp a row (gemv3/gemv_swiglu), for every row
/// length, instead of the row groups where they run (for comparison in benchmarks).
pub(crate) fn mv_old() -> bool {
    static OLD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OLD.get_or_init(|| std::env::var("SMELT_CUDA_MV").is_ok_and(|v| v == "old"))
}

/// Lanes a row for a row-group matvec over rows of `units` 16-byte vectors (dense) or 32-element
/// chunks (quantised): enough that each lane has about `per_lane` of them, so the whole row is
/// requested in one round trip; a power of two from 4 to MV_THREADS. `SMELT_CUDA_MV_U` sets
/// `per_lane` (benchmarks).
pub(crate) fn row_lanes(units: usize, per_lane: usize) -> usize {
    static U: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let per_lane = U
        .get_or_init(|| std::env::var("SMELT_CUDA_MV_U").ok().and_then(|v| v.parse().ok()).filter(|&u| u > 0))
        .unwrap_or(per_lane);
    units.div_ceil(per_lane).next_power_of_two().clamp(4, MV_THREADS as usize)
}

/// The row-group GEMV's lanes a row for x (n × k) of dtype `dt` over `rows` output rows
/// (MV_LOADS vectors a lane; the same for one weight and a gate/up pair, so a row's sums run in
/// one order in both), or None for a warp a row: rows shorter than 512 vectors (4096 bf16
/// values), where a warp a row measured as fast at 1B and faster at 135M (more blocks, more SMs;
/// docs/PERF.md) — except a vocabulary head (one weight, ≥ 16384 rows of ≥ 32 vectors), whose thousands of
/// short rows keep only two or three loads a lane in flight with a warp each (135M's head: 57 MB
/// read at ~1.7 TB/s; `SMELT_CUDA_MV_HEAD=0` keeps a warp a row, to compare) — rows that are not
/// whole 16-byte vectors or not 16-byte aligned, and `SMELT_CUDA_MV=old`.
pub(crate) fn gemv_lanes(dt: DType, k: usize, rows: usize, ptrs: &[u64]) -> Option<usize> {
    static HEAD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let per_vec = 16 / dt.size_in_bytes();
    if mv_old() || !k.is_multiple_of(per_vec) || ptrs.iter().any(|p| p % 16 != 0) {
        return None;
    }
    let vecs = k / per_vec;
    let head = rows >= 16384
        && vecs >= 32
        && *HEAD.get_or_init(|| std::env::var("SMELT_CUDA_MV_HEAD").map_or(true, |v| v != "0"));
    if vecs < 512 && !head {
        return None;
    }
    Some(row_lanes(vecs, 8))
}

/// Whether a decode row's matvec makes its own input: the 8-bit quantisation of x inside the
/// integer matvec (qmatmul's `Q8::xf`), and the residual add + RMSNorm before it (`NormArgs`,
/// dense and quantised). On unless `SMELT_CUDA_MV_FUSE=0` (the separate launches, for comparison
/// in benchmarks).
pub(crate) fn fused_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SMELT_CUDA_MV_FUSE").map(|v| v != "0").unwrap_or(true))
}

/// The residual add and RMSNorm a matvec does first for one row of a decode step (`NormIn`,
/// common.cuh): its inputs checked (mixed precision: x f32, r bf16, w f32, bf16 activations; k a
/// multiple of 32 up to 15360, for shared memory; 16-byte aligned) and h, the new stream,
/// allocated. None where it does not apply.
pub(crate) struct NormArgs<'a> {
    x: &'a DeviceBuf,
    r: &'a DeviceBuf,
    w: &'a DeviceBuf,
    h: DeviceBuf,
    eps: f32,
    /// rmsnorm's warps a row for one row (`rmsnorm::cuda::per_row`): its order of the sums.
    wpr: i32,
    k: usize,
    k32: i32,
}

impl<'a> NormArgs<'a> {
    pub(crate) fn new(x: &'a Tensor, r: &'a Tensor, w: &'a Tensor, eps: f64) -> Result<Option<Self>> {
        let (_, ydt) = precision();
        let (n, k) = (x.rows(), x.cols());
        if n != 1
            || !fused_on()
            || ydt != DType::BF16
            || x.dtype() != DType::F32
            || r.dtype() != DType::BF16
            || w.dtype() != DType::F32
            || r.shape() != x.shape()
            || w.numel() != k
            || !k.is_multiple_of(32)
            || k > 15360
        {
            return Ok(None);
        }
        let [xb, rb, wb] = cuda::float_bufs([x, r, w], "add_rmsnorm (fused)")?;
        if [xb.ptr(), rb.ptr(), wb.ptr()].iter().any(|p| p % 16 != 0) {
            return Ok(None);
        }
        let h = DeviceBuf::alloc(&xb.gpu, DType::F32, k)?;
        let wpr = k.div_ceil(8 * 32 * 2).clamp(1, 8) as i32;
        Ok(Some(NormArgs { x: xb, r: rb, w: wb, h, eps: eps as f32, wpr, k, k32: k as i32 }))
    }

    pub(crate) fn gpu(&self) -> std::sync::Arc<cuda::Gpu> {
        self.x.gpu.clone()
    }

    /// nx, nr, nw, nh, eps, wpr, k: the fused kernels' first arguments (NORM_ARGS, then k).
    pub(crate) fn push<'b>(&'b self, l: &mut cuda::launch::Launch<'b>) {
        l.arg(&self.x.data).arg(&self.r.data).arg(&self.w.data).arg(&self.h.data).arg(&self.eps).arg(&self.wpr);
        l.arg(&self.k32);
    }

    /// Dynamic shared memory before a quantised matvec: y (bf16), then its 8-bit values and
    /// their scales.
    pub(crate) fn smem_quantised(&self) -> u32 {
        (self.k * 2 + self.k + self.k / 32 * 4) as u32
    }

    /// Dynamic shared memory before a bf16 GEMV: y.
    fn smem_dense(&self) -> u32 {
        (self.k * 2) as u32
    }

    /// h, the new residual stream, once the launch is made.
    pub(crate) fn into_h(self, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_device_buf(self.h, shape)
    }
}

/// The weights as GEMV operands, or None where the general path must run: more rows than a
/// decode step's, or an input whose dtype is not the precision's operand type.
fn gemv_weights(x: &Tensor, ws: &[&Tensor], n: usize) -> Result<Option<Vec<Tensor>>> {
    let (op, dt) = precision();
    if n == 0 || n > GEMV_MAX_ROWS || x.dtype() != dt {
        return Ok(None);
    }
    ws.iter().map(|w| operand(w, op, true, "linear weight")).collect::<Result<Vec<_>>>().map(Some)
}

fn out_shape(x: &Tensor, m: usize) -> Vec<usize> {
    let mut shape = x.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = m;
    }
    shape
}

/// [x·w_jᵀ + b_j] for up to three weights in one launch (gemv3): x (n ≤ 4, k), weights already
/// of x's dtype.
/// With `norm` (one row): x is the stream whose add and norm the kernel makes first (its outputs
/// bf16).
fn gemv3(
    x: &Tensor,
    ws: &[Tensor],
    biases: &[Option<&Tensor>],
    n: usize,
    k: usize,
    norm: Option<&NormArgs>,
) -> Result<Vec<Tensor>> {
    if ws.is_empty() || ws.len() > 3 || biases.len() != ws.len() {
        bail!("gemv3: one to three weights, each with its bias slot; got {} and {}", ws.len(), biases.len());
    }
    let xb = x.cuda_buf()?;
    let gpu = xb.gpu.clone();
    let dt = if norm.is_some() { DType::BF16 } else { xb.dtype };
    let ms: Vec<usize> = ws.iter().map(|w| w.shape()[0]).collect();
    let ys = ms.iter().map(|&m| DeviceBuf::alloc(&gpu, dt, n * m)).collect::<Result<Vec<_>>>()?;
    // (weight, bias, output, rows) per slot as raw addresses; unused slots are null with 0 rows.
    let mut slots = [(0u64, 0u64, 0u64, 0i32); 3];
    for (j, w) in ws.iter().enumerate() {
        let bias = match biases[j] {
            Some(b) => cuda::f32_bufs([b], "linear bias")?[0].ptr(),
            None => 0,
        };
        slots[j] = (w.cuda_buf()?.ptr(), bias, ys[j].ptr(), ms[j] as i32);
    }
    let mut ptrs = vec![xb.ptr()];
    ptrs.extend(slots.iter().take(ws.len()).map(|s| s.0));
    // A head's rule applies to a weight alone (a vocabulary head), so that q/k/v in one launch
    // keep what each gives alone.
    let g = gemv_lanes(dt, k, if ws.len() == 1 { ms[0] } else { 0 }, &ptrs);
    let base = match (g.is_some(), norm.is_some()) {
        (true, false) => "gemvg3",
        (false, false) => "gemv3",
        (true, true) => "gemvg3_norm",
        (false, true) => "gemv3_norm",
    };
    let name = cuda::kname(base, &[dt], "linear")?;
    let f = gpu.function("gemv", GEMV_SRC, &name)?;
    let (n32, k32) = (n as i32, k as i32);
    {
        // Programmatic launch: the kernels load their first weights, then wait (gemv.cu).
        let mut b = cuda::launch::Launch::new(&gpu, &f, &name);
        match norm {
            Some(nm) => nm.push(&mut b),
            None => {
                b.arg(&xb.data).arg(&n32).arg(&k32);
            }
        }
        for s in &slots {
            b.arg(&s.0).arg(&s.1).arg(&s.2).arg(&s.3);
        }
        let g32 = g.unwrap_or(32) as i32;
        if g.is_some() {
            b.arg(&g32);
        }
        let pf = cuda::prefetch::take(&gpu, dt == DType::BF16);
        b.prefetch_args(&pf);
        let rows: usize = ms.iter().sum();
        let mut cfg = gemv_config(rows, g);
        cfg.shared_mem_bytes = norm.map_or(0, |nm| nm.smem_dense());
        cuda::launched(unsafe { b.launch(cfg) }, &name)?;
    }
    ys.into_iter().zip(&ms).map(|(y, &m)| Tensor::from_device_buf(y, &out_shape(x, m))).collect()
}

/// silu(x·w_gᵀ)·(x·w_uᵀ) in one launch (gemv_swiglu), weights already of x's dtype; with `norm`
/// as `gemv3`.
fn gemv_swiglu(x: &Tensor, wg: &Tensor, wu: &Tensor, n: usize, k: usize, norm: Option<&NormArgs>) -> Result<Tensor> {
    let xb = x.cuda_buf()?;
    let gpu = xb.gpu.clone();
    let dt = if norm.is_some() { DType::BF16 } else { xb.dtype };
    let m = wg.shape()[0];
    let y = DeviceBuf::alloc(&gpu, dt, n * m)?;
    let (gb, ub) = (wg.cuda_buf()?, wu.cuda_buf()?);
    let g = gemv_lanes(dt, k, 0, &[xb.ptr(), gb.ptr(), ub.ptr()]);
    let base = match (g.is_some(), norm.is_some()) {
        (true, false) => "gemvg_swiglu",
        (false, false) => "gemv_swiglu",
        (true, true) => "gemvg_swiglu_norm",
        (false, true) => "gemv_swiglu_norm",
    };
    let name = cuda::kname(base, &[dt], "linear_swiglu")?;
    let f = gpu.function("gemv", GEMV_SRC, &name)?;
    let (n32, k32, m32) = (n as i32, k as i32, m as i32);
    {
        // Programmatic launch: the kernels load their first weights, then wait (gemv.cu).
        let mut b = cuda::launch::Launch::new(&gpu, &f, &name);
        match norm {
            Some(nm) => nm.push(&mut b),
            None => {
                b.arg(&xb.data).arg(&n32).arg(&k32);
            }
        }
        b.arg(&gb.data).arg(&ub.data).arg(&y.data).arg(&m32);
        let g32 = g.unwrap_or(32) as i32;
        if g.is_some() {
            b.arg(&g32);
        }
        let pf = cuda::prefetch::take(&gpu, dt == DType::BF16);
        b.prefetch_args(&pf);
        let mut cfg = gemv_config(m, g);
        cfg.shared_mem_bytes = norm.map_or(0, |nm| nm.smem_dense());
        cuda::launched(unsafe { b.launch(cfg) }, &name)?;
    }
    Tensor::from_device_buf(y, &out_shape(x, m))
}

/// (h, [y·w_jᵀ + b_j]) with (h, y) = add_rmsnorm(x, r, w_norm) for one row of a decode step and
/// dense weights, in one launch (the GEMV's blocks make the add and the norm first: the bits of
/// `add_rmsnorm` then `linear_many`). None where it does not apply (`NormArgs`, a weight that
/// is not a k-column matrix, more than three).
pub fn add_rmsnorm_linear_many(
    x: &Tensor,
    r: &Tensor,
    w: &Tensor,
    eps: f64,
    ws: &[(&Tensor, Option<&Tensor>)],
) -> Result<Option<(Tensor, Vec<Tensor>)>> {
    let k = x.cols();
    if ws.is_empty() || ws.len() > 3 || ws.iter().any(|(wt, _)| wt.shape().len() != 2 || wt.shape()[1] != k) {
        return Ok(None);
    }
    let Some(nm) = NormArgs::new(x, r, w, eps)? else { return Ok(None) };
    if ws.iter().flat_map(|(wt, b)| std::iter::once(*wt).chain(*b)).any(|t| t.device() != x.device()) {
        return Ok(None);
    }
    let (op, _) = precision();
    let wb = ws.iter().map(|(wt, _)| operand(wt, op, true, "linear weight")).collect::<Result<Vec<_>>>()?;
    let biases: Vec<Option<&Tensor>> = ws.iter().map(|(_, b)| *b).collect();
    let ys = gemv3(x, &wb, &biases, 1, k, Some(&nm))?;
    Ok(Some((nm.into_h(x.shape())?, ys)))
}

/// (h, silu(y·w_gᵀ)·(y·w_uᵀ)) with (h, y) = add_rmsnorm(x, r, w_norm), as
/// `add_rmsnorm_linear_many`.
pub fn add_rmsnorm_swiglu(
    x: &Tensor,
    r: &Tensor,
    w: &Tensor,
    eps: f64,
    wg: &Tensor,
    wu: &Tensor,
) -> Result<Option<(Tensor, Tensor)>> {
    let k = x.cols();
    if wg.shape() != wu.shape() || wg.shape().len() != 2 || wg.shape()[1] != k {
        return Ok(None);
    }
    let Some(nm) = NormArgs::new(x, r, w, eps)? else { return Ok(None) };
    if wg.device() != x.device() || wu.device() != x.device() {
        return Ok(None);
    }
    let (op, _) = precision();
    let (gb, ub) = (operand(wg, op, true, "linear weight")?, operand(wu, op, true, "linear weight")?);
    let y = gemv_swiglu(x, &gb, &ub, 1, k, Some(&nm))?;
    Ok(Some((nm.into_h(x.shape())?, y)))
}

/// A GEMV launch over `rows` output rows: row groups of `g` lanes (Some) or a warp a row.
pub(crate) fn gemv_config(rows: usize, g: Option<usize>) -> cudarc::driver::LaunchConfig {
    let per_block = match g {
        Some(g) => MV_THREADS as usize / g,
        None => GEMV_ROWS,
    };
    cudarc::driver::LaunchConfig {
        grid_dim: (rows.div_ceil(per_block).max(1) as u32, 1, 1),
        block_dim: (if g.is_some() { MV_THREADS } else { 32 * GEMV_ROWS as u32 }, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn operand_type(d: DType) -> Result<Operand> {
    match d {
        DType::F32 => Ok(Operand::F32),
        DType::BF16 => Ok(Operand::Bf16),
        d => bail!("linear on CUDA: no {d:?} matmul"),
    }
}

/// `t` as an operand of type `op`. bf16 tensors are used as they are (never cached on
/// themselves: a buffer holding a copy of itself would never be freed); an f32 weight's bf16
/// copy is made once and kept on its buffer until the buffer is written (AdamW), so the
/// forward, both backward products and every decode step of a step share it.
pub(crate) fn operand(t: &Tensor, op: Operand, weight: bool, what: &str) -> Result<Tensor> {
    match (op, t.dtype()) {
        (Operand::F32, DType::F32) | (Operand::Bf16, DType::BF16) => Ok(t.clone()),
        (Operand::Bf16, DType::F32) if weight => cached_bf16(t),
        (Operand::Bf16, DType::F32) => crate::ops::elementwise::cuda::cast(t, DType::BF16),
        (Operand::F32, d) => bail!(
            "{what}: a {d:?} operand {:?} under f32 matmul precision (f32 runs keep every tensor f32; this one was made under mixed precision)",
            t.shape()
        ),
        (Operand::Bf16, d) => bail!("{what}: a {d:?} operand {:?}: matmuls take f32 or bf16", t.shape()),
    }
}

/// `ops::matmul::weight_operand` on CUDA.
pub(crate) fn weight_operand(w: &Tensor) -> Result<Tensor> {
    let (op, _) = precision();
    operand(w, op, true, "linear weight")
}

fn cached_bf16(w: &Tensor) -> Result<Tensor> {
    let b = w.cuda_buf()?;
    if let Some(t) = b.bf16_shadow.get() {
        return t.reshape(w.shape()); // the buffer may be shared by views of other shapes
    }
    // A weight's copy outlives the step making it: never a capture arena's piece, nor counted
    // in one. A copy of the step's own tensor (a slice of the head the chunked loss cut) dies
    // with it: counted and served like the step's other buffers.
    let cast = || crate::ops::elementwise::cuda::cast(w, DType::BF16);
    let t = if b.is_steps_own() { cast()? } else { crate::cuda::arena::uncounted(cast)? };
    // The matvec that reads it issues its weight loads before its pdl_wait: launch it plainly.
    cuda::launch::plain_next();
    let _ = b.bf16_shadow.set(t.clone());
    Ok(t)
}

fn gemm(a: &Tensor, b: &Tensor, c: &DeviceBuf, g: Gemm, op: Operand) -> Result<()> {
    let lt = c.gpu.blas()?;
    let out = operand_type(c.dtype)?;
    unsafe { lt.gemm(g, op, out, a.cuda_buf()?.ptr(), b.cuda_buf()?.ptr(), c.ptr(), None) }
}

/// D = alpha·op(A)·op(B) + beta·C on f32 device buffers, column-major as `Gemm` says, C being
/// `c_in` (else D): the products of ops that are not a layer's `linear` (Muon's Newton–Schulz).
pub(crate) fn gemm_f32(a: &DeviceBuf, b: &DeviceBuf, d: &DeviceBuf, g: Gemm, c_in: Option<&DeviceBuf>) -> Result<()> {
    for (x, what) in [(a, "A"), (b, "B"), (d, "D")].into_iter().chain(c_in.map(|c| (c, "C"))) {
        x.expect(DType::F32, &format!("gemm_f32 {what}"))?;
    }
    let lt = d.gpu.blas()?;
    unsafe { lt.gemm(g, Operand::F32, Operand::F32, a.ptr(), b.ptr(), d.ptr(), c_in.map(|c| c.ptr())) }
}

/// y (n×m) = c + x (n×k) · wᵀ + bias, c (n×m) of the result's dtype read by the product
/// itself (cuBLASLt's beta = 1 with C ≠ D): no pass for the sum. A LoRA projection's
/// W·x + B·(A·x) with c = the adapter's side.
pub fn linear_add(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
    n: usize,
    k: usize,
    m: usize,
) -> Result<Tensor> {
    let [xb, _, cb] = cuda::float_bufs([x, w, c], "linear_add")?;
    let gpu = xb.gpu.clone();
    let (op, ydt) = precision();
    let c = if cb.dtype == ydt { c.clone() } else { crate::ops::elementwise::cuda::cast(c, ydt)? };
    let y = DeviceBuf::alloc(&gpu, ydt, n * m)?;
    if n > 0 && m > 0 {
        let (wo, xo) = (operand(w, op, true, "linear_add weight")?, operand(x, op, false, "linear_add input")?);
        let g = Gemm {
            ta: true,
            tb: false,
            m: m as u64,
            n: n as u64,
            k: k as u64,
            lda: k as i64,
            ldb: k as i64,
            ldc: m as i64,
            alpha: 1.0,
            beta: 1.0,
        };
        let lt = gpu.blas()?;
        let out = operand_type(ydt)?;
        unsafe { lt.gemm(g, op, out, wo.cuda_buf()?.ptr(), xo.cuda_buf()?.ptr(), y.ptr(), Some(c.cuda_buf()?.ptr()))? };
    }
    if let Some(bias) = bias {
        add_bias(&y, bias, n, m)?;
    }
    Tensor::from_device_buf(y, &out_shape(x, m))
}

/// The operand type and activation dtype of the current precision.
pub(crate) fn precision() -> (Operand, DType) {
    match cuda::matmul_precision() {
        MatmulPrecision::F32 => (Operand::F32, DType::F32),
        MatmulPrecision::Bf16 => (Operand::Bf16, DType::BF16),
    }
}

/// y (n×m) = x (n×k) · wᵀ (w: m×k) + bias.  Column-major: yᵀ (m×n) = w (m×k) · xᵀ (k×n), where
/// w is the row-major buffer read transposed. y is f32 or bf16 as the precision says.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, n: usize, k: usize, m: usize) -> Result<Tensor> {
    let [xb, _] = cuda::float_bufs([x, w], "linear")?;
    if let Some(ws) = gemv_weights(x, &[w], n)? {
        return gemv3(x, &ws, &[bias], n, k, None)?.pop().ok_or_else(|| anyhow::anyhow!("gemv3 returned nothing"));
    }
    let gpu = xb.gpu.clone();
    let (op, ydt) = precision();
    let y = DeviceBuf::alloc(&gpu, ydt, n * m)?;
    if n > 0 && m > 0 {
        let (wo, xo) = (operand(w, op, true, "linear weight")?, operand(x, op, false, "linear input")?);
        xwt(&xo, &wo, &y, op, n, k, m)?;
    }
    if let Some(bias) = bias {
        add_bias(&y, bias, n, m)?;
    }
    Tensor::from_device_buf(y, &out_shape(x, m))
}

/// y (n×m) = x (n×k) · wᵀ with both operands already of type `op`; y's dtype is the result's
/// (also the quantised path's product, on its dequantised scratch weight).
pub(crate) fn xwt(x: &Tensor, w: &Tensor, y: &DeviceBuf, op: Operand, n: usize, k: usize, m: usize) -> Result<()> {
    let g = Gemm {
        ta: true,
        tb: false,
        m: m as u64,
        n: n as u64,
        k: k as u64,
        lda: k as i64,
        ldb: k as i64,
        ldc: m as i64,
        alpha: 1.0,
        beta: 0.0,
    };
    gemm(w, x, y, g, op)
}

/// y (n×m) += bias (m, f32) per row, y f32 or bf16.
pub(crate) fn add_bias(y: &DeviceBuf, bias: &Tensor, n: usize, m: usize) -> Result<()> {
    let [bb] = cuda::f32_bufs([bias], "linear bias")?;
    let gpu = &y.gpu;
    let name = cuda::kname("add_bias", &[y.dtype], "linear bias")?;
    let f = gpu.function("matmul", SRC, &name)?;
    let (n64, m32) = (n as i64, m as i32);
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(&y.data).arg(&bb.data).arg(&n64).arg(&m32);
    cuda::launched(unsafe { l.launch(cuda::grid_for(n * m, 256)) }, &name)
}

/// Returns (dx, dw, db); dx has x's dtype, dw and db are f32.
///   dx (n×k) = dy (n×m) · w (m×k):   column-major dxᵀ (k×n) = wᵀ (k×m) · dyᵀ (m×n)
///   dw (m×k) = dyᵀ (m×n) · x (n×k):  column-major dwᵀ (k×m) = xᵀ (k×n) · dy (n×m)
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    n: usize,
    k: usize,
    m: usize,
    want_dx: bool,
    has_bias: bool,
) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
    let (dx, dw, db) = linear_backward_into(x, w, dy, n, k, m, want_dx, has_bias, None)?;
    Ok((dx, dw.ok_or_else(|| anyhow::anyhow!("linear_backward: no dW"))?, db))
}

/// dx = dy·w (operands as `operand` made them), `dtype` and `shape` the input's.
#[allow(clippy::too_many_arguments)]
fn dx_product(
    wo: &Tensor,
    dyo: &Tensor,
    dtype: DType,
    shape: &[usize],
    n: usize,
    k: usize,
    m: usize,
    op: Operand,
) -> Result<Tensor> {
    let dx = DeviceBuf::alloc(&dyo.cuda_buf()?.gpu, dtype, n * k)?;
    if n > 0 && k > 0 {
        gemm(wo, dyo, &dx, dx_gemm(n, k, m, 0.0), op)?;
    }
    Tensor::from_device_buf(dx, shape)
}

/// dx (n×k) = dy (n×m) · w (m×k), + beta·dx: column-major dxᵀ = wᵀ·dyᵀ with w and dy read as
/// they are.
fn dx_gemm(n: usize, k: usize, m: usize, beta: f32) -> Gemm {
    Gemm {
        ta: false,
        tb: false,
        m: k as u64,
        n: n as u64,
        k: m as u64,
        lda: k as i64,
        ldb: m as i64,
        ldc: k as i64,
        alpha: 1.0,
        beta,
    }
}

/// The input's gradient alone (a frozen weight): `linear_backward`'s dx, in dy's dtype (the
/// activations').
pub fn linear_dx(dy: &Tensor, w: &Tensor, x_shape: &[usize], n: usize, k: usize, m: usize) -> Result<Tensor> {
    let [_, dyb] = cuda::float_bufs([w, dy], "linear_dx")?;
    let (op, _) = precision();
    let wo = operand(w, op, true, "linear_dx weight")?;
    let dyo = operand(dy, op, false, "linear_dx output gradient")?;
    dx_product(&wo, &dyo, dyb.dtype, x_shape, n, k, m, op)
}

/// dx = dy·w added into `acc` (x's shape, of the dtype a fresh dx would have) by the product
/// itself: cuBLASLt's beta = 1 with C = D = acc, one rounding of the sum where a separate add
/// rounded twice.
fn linear_dx_into(dy: &Tensor, w: &Tensor, acc: &mut Tensor, n: usize, k: usize, m: usize) -> Result<()> {
    let (op, _) = precision();
    let wo = operand(w, op, true, "linear_dx weight")?;
    let dyo = operand(dy, op, false, "linear_dx output gradient")?;
    let ab = acc.cuda_buf_mut()?;
    if n > 0 && k > 0 && m > 0 {
        gemm(&wo, &dyo, ab, dx_gemm(n, k, m, 1.0), op)?;
    }
    Ok(())
}

/// Whether `acc` can take a dx product of dtype `dt` by accumulation (else: product, then add).
fn dx_accumulates(acc: &Tensor, dt: DType, n: usize, k: usize) -> bool {
    acc.dtype() == dt && acc.numel() == n * k && !acc.device().is_cpu() && accumulate_dx_on()
}

/// `SMELT_CUDA_DX_ACC=0`: every dx a fresh product and an add, as before (for comparison).
fn accumulate_dx_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SMELT_CUDA_DX_ACC").map_or(true, |v| v != "0"))
}

/// `linear_backward`, with dW either a new f32 tensor (`acc` None) or added into `acc` (an f32
/// tensor of w's shape) by the product itself (cuBLASLt's beta = 1): no separate pass over dW,
/// which the chunked loss would otherwise make once per row chunk. Returns dW only when new.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_into(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    n: usize,
    k: usize,
    m: usize,
    want_dx: bool,
    has_bias: bool,
    acc: Option<&mut Tensor>,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let [xb, _, dyb] = cuda::float_bufs([x, w, dy], "linear_backward")?;
    let gpu = xb.gpu.clone();
    let (op, _) = precision();
    let xo = operand(x, op, false, "linear_backward input")?;
    let wo = operand(w, op, true, "linear_backward weight")?;
    let dyo = operand(dy, op, false, "linear_backward output gradient")?;
    let dx = if want_dx { Some(dx_product(&wo, &dyo, xb.dtype, x.shape(), n, k, m, op)?) } else { None };
    let g = Gemm {
        ta: false,
        tb: true,
        m: k as u64,
        n: m as u64,
        k: n as u64,
        lda: k as i64,
        ldb: m as i64,
        ldc: k as i64,
        alpha: 1.0,
        beta: 0.0,
    };
    let dw = match acc {
        Some(acc) => {
            if acc.shape() != w.shape() {
                bail!("linear_backward: dW accumulator {:?} for weight {:?}", acc.shape(), w.shape());
            }
            let ab = acc.cuda_buf_mut()?;
            ab.expect(DType::F32, "linear_backward dW accumulator")?;
            if m > 0 && k > 0 && n > 0 {
                gemm(&xo, &dyo, ab, Gemm { beta: 1.0, ..g }, op)?;
            }
            None
        }
        None => {
            let dw = DeviceBuf::alloc(&gpu, DType::F32, m * k)?;
            if m > 0 && k > 0 {
                gemm(&xo, &dyo, &dw, g, op)?;
            }
            Some(Tensor::from_device_buf(dw, w.shape())?)
        }
    };
    let db = if has_bias {
        let (n64, m32) = (n as i64, m as i32);
        let name = cuda::kname("col_sum_part", &[dyb.dtype], "linear bias gradient")?;
        let out = crate::ops::rmsnorm::cuda::column_reduce(&gpu, n, m, |part, cfg, rpc| {
            let f = gpu.function("matmul", SRC, &name)?;
            let mut l = gpu.stream.launch_builder(&f);
            l.arg(&dyb.data).arg(&part.data).arg(&n64).arg(&m32).arg(&rpc);
            cuda::launched(unsafe { l.launch(cfg) }, &name)
        })?;
        Some(Tensor::from_device_buf(out, &[m])?)
    } else {
        None
    };
    Ok((dx, dw, db))
}

impl super::LinearKernels for crate::backend::Cuda {
    fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, n: usize, k: usize, m: usize) -> Result<Tensor> {
        linear(x, w, bias, n, k, m)
    }
    #[allow(clippy::too_many_arguments)]
    fn linear_add(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        c: &Tensor,
        n: usize,
        k: usize,
        m: usize,
    ) -> Result<Tensor> {
        if gemv_weights(x, &[w], n)?.is_some() {
            // A decode step's few rows: the matvec kernel, then the sum (c in the product's
            // dtype first, as the cuBLASLt path reads it).
            let y = linear(x, w, bias, n, k, m)?;
            let c = if c.dtype() == y.dtype() { c.clone() } else { crate::ops::elementwise::cuda::cast(c, y.dtype())? };
            return crate::ops::elementwise::add(&y, &c);
        }
        linear_add(x, w, bias, c, n, k, m)
    }
    fn linear_many(&self, x: &Tensor, ws: &[(&Tensor, Option<&Tensor>)], n: usize, k: usize) -> Result<Vec<Tensor>> {
        let plain: Vec<&Tensor> = ws.iter().map(|(w, _)| *w).collect();
        match gemv_weights(x, &plain, n)? {
            Some(wb) if ws.len() <= 3 => gemv3(x, &wb, &ws.iter().map(|(_, b)| *b).collect::<Vec<_>>(), n, k, None),
            _ => ws.iter().map(|(w, b)| linear(x, w, *b, n, k, w.shape()[0])).collect(),
        }
    }
    fn linear_swiglu(&self, x: &Tensor, wg: &Tensor, wu: &Tensor, n: usize, k: usize) -> Result<Tensor> {
        match gemv_weights(x, &[wg, wu], n)? {
            Some(wb) => gemv_swiglu(x, &wb[0], &wb[1], n, k, None),
            None => {
                let m = wg.shape()[0];
                crate::ops::swiglu::swiglu(&linear(x, wg, None, n, k, m)?, &linear(x, wu, None, n, k, m)?)
            }
        }
    }
    fn linear_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        n: usize,
        k: usize,
        m: usize,
        want_dx: bool,
        has_bias: bool,
    ) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
        linear_backward(x, w, dy, n, k, m, want_dx, has_bias)
    }
    fn linear_dx(&self, dy: &Tensor, w: &Tensor, x_shape: &[usize], n: usize, k: usize, m: usize) -> Result<Tensor> {
        linear_dx(dy, w, x_shape, n, k, m)
    }
    fn linear_dx_acc(
        &self,
        dy: &Tensor,
        w: &Tensor,
        x_shape: &[usize],
        n: usize,
        k: usize,
        m: usize,
        dx: &mut Option<Tensor>,
    ) -> Result<()> {
        match dx {
            Some(acc) if dx_accumulates(acc, dy.dtype(), n, k) => linear_dx_into(dy, w, acc, n, k, m),
            _ => crate::ops::elementwise::add_into(dx, linear_dx(dy, w, x_shape, n, k, m)?),
        }
    }
    fn linear_backward_acc_dx(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        n: usize,
        k: usize,
        m: usize,
        has_bias: bool,
        dx: Option<&mut Option<Tensor>>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        match dx {
            Some(Some(acc)) if dx_accumulates(acc, x.dtype(), n, k) => {
                let (_, dw, db) = linear_backward_into(x, w, dy, n, k, m, false, has_bias, None)?;
                linear_dx_into(dy, w, acc, n, k, m)?;
                Ok((dw.ok_or_else(|| anyhow::anyhow!("linear_backward: no dW"))?, db))
            }
            dx => super::backward_adding_dx(self, x, w, dy, n, k, m, has_bias, dx),
        }
    }
    fn linear_backward_acc(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        n: usize,
        k: usize,
        m: usize,
        want_dx: bool,
        dw: &mut Option<Tensor>,
    ) -> Result<Option<Tensor>> {
        match dw {
            Some(acc) if acc.dtype() == DType::F32 && !acc.device().is_cpu() => {
                Ok(linear_backward_into(x, w, dy, n, k, m, want_dx, false, Some(acc))?.0)
            }
            _ => super::accumulate_dw(self, x, w, dy, n, k, m, want_dx, dw),
        }
    }
}
