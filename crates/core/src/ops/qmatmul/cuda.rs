//! CUDA launchers for quantised weights (qmatmul.cu): the decode matvec, dequantisation to a
//! scratch weight for cuBLASLt (prefill, perplexity), and the embedding gather.

use crate::cuda::blas::Operand;
use crate::cuda::{self, DeviceBuf};
use crate::ops::matmul::cuda::NormArgs;
use crate::quant::{DeviceQuant, GgmlType};
use crate::{DType, Tensor};
use anyhow::{bail, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

pub(crate) const SRC: &str = include_str!("qmatmul.cu");

/// Up to this many input rows the matvec kernel runs (decode, small batches); above it the
/// weight is dequantised once and multiplied by cuBLASLt, whose cost no longer grows with
/// every row (as llama.cpp's CUDA backend does for batches).
pub const MATVEC_MAX_N: usize = 8;
/// Warps (output rows) per matvec block; must match QMV_WARPS in qmatmul.cu.
const WARPS: u32 = 4;

/// Kernel names of one format: [matvec, dequant f32, dequant bf16, gather f32, matvec bf16,
/// integer matvec (up to three weights), integer gate/up + SwiGLU, the last two for one input
/// row, gate/up + SwiGLU of one row after its residual add and RMSNorm, the integer matvec of
/// one row after them].
fn names(f: GgmlType) -> Result<[&'static str; 11]> {
    macro_rules! n {
        ($f:ident) => {
            [
                concat!("qmatvec_", stringify!($f)),
                concat!("qdequant_f32_", stringify!($f)),
                concat!("qdequant_bf16_", stringify!($f)),
                concat!("qgather_f32_", stringify!($f)),
                concat!("qmatvec_bf16_", stringify!($f)),
                concat!("mmvqg3_bf16_", stringify!($f)),
                concat!("mmvqg_swiglu_bf16_", stringify!($f)),
                concat!("mmvqg3_n1_bf16_", stringify!($f)),
                concat!("mmvqg_swiglu_n1_bf16_", stringify!($f)),
                concat!("mmvqg_swiglu_norm_n1_bf16_", stringify!($f)),
                concat!("mmvqg3_norm_n1_bf16_", stringify!($f)),
            ]
        };
    }
    Ok(match f {
        GgmlType::Q4_0 => n!(Q4_0),
        GgmlType::Q4_1 => n!(Q4_1),
        GgmlType::Q5_0 => n!(Q5_0),
        GgmlType::Q8_0 => n!(Q8_0),
        GgmlType::Q4_K => n!(Q4_K),
        GgmlType::Q6_K => n!(Q6_K),
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            bail!("{}: not a block format the CUDA kernels read", f.name())
        }
    })
}

/// Whether mixed-precision decode multiplies quantised weights in integer arithmetic (x quantised
/// to 8 bits once, dp4a; the `mmvq*` kernels): on unless `SMELT_CUDA_MMVQ=0`, which keeps the
/// f32 dequantising matvec (as f32 precision always does).
pub(crate) fn mmvq_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SMELT_CUDA_MMVQ").map(|v| v != "0").unwrap_or(true))
}

/// x (n × k, bf16) made ready for the integer matvecs: quantised to 8 bits by a launch (`q`:
/// xq, n·k bytes, and xd, one f32 scale per 32 values), or, for one input row on the chunked
/// kernels, left to them (`xf`: every block quantises it into its shared memory, the same bytes,
/// while its first weight loads are in flight: no launch and no round trip before the product).
struct Q8 {
    gpu: std::sync::Arc<cuda::Gpu>,
    xf: u64,
    q: Option<(DeviceBuf, DeviceBuf)>,
    /// Dynamic shared memory a chunked block takes (xf: k bytes + k/32 scales).
    smem: u32,
}

impl Q8 {
    /// (xf, xq, xd) as kernel arguments (0 for the absent ones).
    fn ptrs(&self) -> (u64, u64, u64) {
        match &self.q {
            Some((xq, xd)) => (0, xq.ptr(), xd.ptr()),
            None => (self.xf, 0, 0),
        }
    }
}

/// Largest k whose in-kernel quantisation fits the default 48 KiB of shared memory (k·9/8 bytes).
pub(crate) const FUSED_MAX_K: usize = 40 * 1024;

/// x ready for the integer path (mixed precision, bf16 x, n ≤ MATVEC_MAX_N, k a multiple of
/// 32), else None.
fn quantize_q8(x: &Tensor, n: usize, k: usize) -> Result<Option<Q8>> {
    let (_, ydt) = crate::ops::matmul::cuda::precision();
    if !mmvq_on()
        || x.dtype() != DType::BF16
        || ydt != DType::BF16
        || n == 0
        || n > MATVEC_MAX_N
        || !k.is_multiple_of(32)
    {
        return Ok(None);
    }
    let xb = x.cuda_buf()?;
    let gpu = xb.gpu.clone();
    if n == 1 && k <= FUSED_MAX_K && crate::ops::matmul::cuda::fused_on() {
        return Ok(Some(Q8 { gpu, xf: xb.ptr(), q: None, smem: (k + k / 32 * 4) as u32 }));
    }
    let xq = DeviceBuf::alloc(&gpu, DType::I32, n * k / 4)?;
    let xd = DeviceBuf::alloc(&gpu, DType::F32, n * k / 32)?;
    let f = gpu.function("qmatmul", SRC, "quantize_q8_bf16")?;
    let blocks = (n * k / 32) as i64;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(&xb.data).arg(&xq.data).arg(&xd.data).arg(&blocks);
    cuda::launched(unsafe { l.launch(cuda::grid_for(n * k, 256)) }, "quantize_q8_bf16")?;
    Ok(Some(Q8 { gpu, xf: 0, q: Some((xq, xd)), smem: 0 }))
}

/// The kernel for q and k of one format with v of another in one launch (`mmvqg3_mixed`), for
/// the pairs that quantised files hold: Q4_K with Q6_K (llama.cpp's Q4_K_M), Q5_0 with Q8_0
/// (its fallback for rows that are not whole 256-blocks).
fn mixed_kernel(a: GgmlType, b: GgmlType, n: usize) -> Option<&'static str> {
    Some(match (a, b, n == 1) {
        (GgmlType::Q4_K, GgmlType::Q6_K, true) => "mmvqg3_n1_bf16_Q4_K_Q6_K",
        (GgmlType::Q4_K, GgmlType::Q6_K, false) => "mmvqg3_bf16_Q4_K_Q6_K",
        (GgmlType::Q5_0, GgmlType::Q8_0, true) => "mmvqg3_n1_bf16_Q5_0_Q8_0",
        (GgmlType::Q5_0, GgmlType::Q8_0, false) => "mmvqg3_bf16_Q5_0_Q8_0",
        _ => return None,
    })
}

/// `mixed_kernel`'s pair after one row's residual add and RMSNorm (`mmvqg3_norm_n1_*`).
fn mixed_norm_kernel(a: GgmlType, b: GgmlType) -> Option<&'static str> {
    Some(match (a, b) {
        (GgmlType::Q4_K, GgmlType::Q6_K) => "mmvqg3_norm_n1_bf16_Q4_K_Q6_K",
        (GgmlType::Q5_0, GgmlType::Q8_0) => "mmvqg3_norm_n1_bf16_Q5_0_Q8_0",
        _ => return None,
    })
}

/// [x·w_jᵀ] (bf16) for up to three weights of one format, or three whose first two share a
/// format that `mixed_kernel` pairs with the third's, from x as `quantize_q8` left it, in one
/// launch.
fn mmvq3(q: &Q8, ws: &[&DeviceQuant], n: usize, k: usize) -> Result<Vec<DeviceBuf>> {
    let Some(first) = ws.first() else { bail!("mmvq3: no weight") };
    let mixed = match ws {
        [a, b, c] if a.format == b.format && c.format != a.format => mixed_kernel(a.format, c.format, n),
        _ => None,
    };
    if ws.len() > 3
        || ws.iter().any(|w| w.cols != k)
        || (mixed.is_none() && ws.iter().any(|w| w.format != first.format))
    {
        bail!("mmvq3: one to three weights of one format (or a mixed pair) with {k} columns");
    }
    let gpu = q.gpu.clone();
    let ys = ws.iter().map(|w| DeviceBuf::alloc(&gpu, DType::BF16, n * w.rows)).collect::<Result<Vec<_>>>()?;
    let mut slots = [(0u64, 0u64, 0i32, 0i64); 3];
    for (j, w) in ws.iter().enumerate() {
        slots[j] = (w.blocks.ptr(), ys[j].ptr(), w.rows as i32, w.row_bytes as i64);
    }
    let (n32, k32) = (n as i32, k as i32);
    let (gs, cfg) = slot_launch(k, &ws.iter().map(|w| w.rows).collect::<Vec<_>>(), q.smem);
    let func = match mixed {
        Some(f) => f,
        None => names(first.format)?[if n == 1 { 7 } else { 5 }],
    };
    let f = gpu.function("qmatmul", SRC, func)?;
    let mut l = cuda::launch::Launch::new(&gpu, &f, func); // programmatic: qmatmul.cu waits after its first loads
    let (xf, xq, xd) = q.ptrs();
    l.arg(&xf).arg(&xq).arg(&xd).arg(&n32).arg(&k32);
    for s in &slots {
        l.arg(&s.0).arg(&s.1).arg(&s.2).arg(&s.3);
    }
    l.arg(&gs);
    let pf = cuda::prefetch::take(&gpu, true);
    l.prefetch_args(&pf);
    cuda::launched(unsafe { l.launch(cfg) }, func)?;
    Ok(ys)
}

/// Lanes a row of the integer matvecs for a weight of `rows` rows of k values: eight chunks a
/// lane (MMVQ_LOADS) for rows of 2048 values and more, four below, where rows are short and a
/// product has few (a 135M model's: more lanes, more SMs at work; measured in docs/PERF.md) —
/// and, for rows of ≥ 2048 values, twice as many lanes (down to four chunks a lane) while the
/// weight alone would fill fewer blocks than the H200 has SMs (1B q/k/v and o: 64-96 blocks of
/// eight lanes; measured, docs/PERF.md; `SMELT_CUDA_MMVQ_FILL=0` to compare). A function of the
/// weight's shape only (never of n, nor of the weights launched beside it), so a row's sums run
/// in one order alone, in a q/k/v launch, beside its gate/up pair, and in any batch.
pub(crate) fn mmvq_lanes(k: usize, rows: usize) -> usize {
    let chunks = k / 32;
    let mut g = crate::ops::matmul::cuda::row_lanes(chunks, if chunks >= 64 { 8 } else { 4 });
    static FILL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if chunks >= 64 && *FILL.get_or_init(|| std::env::var("SMELT_CUDA_MMVQ_FILL").map_or(true, |v| v != "0")) {
        let per_block = |g: usize| crate::ops::matmul::cuda::MV_THREADS as usize / g;
        while 8 * g <= chunks && rows.div_ceil(per_block(g)) < 132 {
            g *= 2;
        }
    }
    g
}

/// The lanes a row of each of up to three weights (`rows`, of k values each; slot j's G_j in
/// bits 10j.. of the packed argument, `mmvqg3_mixed`) and their launch: each slot's rows on
/// blocks of their own, blocks of MV_THREADS lanes, `smem` bytes of dynamic shared memory.
fn slot_launch(k: usize, rows: &[usize], smem: u32) -> (i32, LaunchConfig) {
    let mut packed = 0i32;
    let mut blocks = 0usize;
    for j in 0..3 {
        let m = rows.get(j).copied().unwrap_or(0);
        let g = mmvq_lanes(k, m.max(1));
        packed |= (g as i32) << (10 * j);
        blocks += m.div_ceil(crate::ops::matmul::cuda::MV_THREADS as usize / g);
    }
    let cfg = LaunchConfig {
        grid_dim: (blocks.max(1) as u32, 1, 1),
        block_dim: (crate::ops::matmul::cuda::MV_THREADS, 1, 1),
        shared_mem_bytes: smem,
    };
    (packed, cfg)
}

/// The launch of an integer matvec over `rows` output rows: blocks of MV_THREADS lanes, `g` a
/// row, `smem` bytes of dynamic shared memory (x quantised in the block).
fn mv_config(rows: usize, g: usize, smem: u32) -> LaunchConfig {
    LaunchConfig { shared_mem_bytes: smem, ..crate::ops::matmul::cuda::gemv_config(rows, Some(g)) }
}

fn shaped(x: &Tensor, y: DeviceBuf, m: usize) -> Result<Tensor> {
    let mut shape = x.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = m;
    }
    Tensor::from_device_buf(y, &shape)
}

/// `[linear(x, w_j, b_j)]` by quantised weights sharing one input, x quantised to 8 bits once
/// (the integer path; weights of one format in one launch). None where that path does not
/// apply (the caller runs each `linear`).
pub fn linear_many(
    x: &Tensor,
    ws: &[(&DeviceQuant, Option<&Tensor>)],
    n: usize,
    k: usize,
) -> Result<Option<Vec<Tensor>>> {
    let Some(q) = quantize_q8(x, n, k)? else { return Ok(None) };
    let mut out = Vec::with_capacity(ws.len());
    let mut i = 0;
    while i < ws.len() {
        // The run of weights from i that share i's format (at most three), or two of one format
        // and a third that `mixed_kernel` pairs with it: one launch.
        let mut j = i + 1;
        while j < ws.len() && j < i + 3 && ws[j].0.format == ws[i].0.format {
            j += 1;
        }
        if j == i + 2 && j < ws.len() && mixed_kernel(ws[i].0.format, ws[j].0.format, n).is_some() {
            j += 1;
        }
        let group: Vec<&DeviceQuant> = ws[i..j].iter().map(|(w, _)| *w).collect();
        for (y, (w, bias)) in mmvq3(&q, &group, n, k)?.into_iter().zip(&ws[i..j]) {
            if let Some(b) = bias {
                crate::ops::matmul::cuda::add_bias(&y, b, n, w.rows)?;
            }
            out.push(shaped(x, y, w.rows)?);
        }
        i = j;
    }
    Ok(Some(out))
}

/// silu(x·w_gᵀ)·(x·w_uᵀ) by quantised gate and up weights of one format, in the integer path
/// (one launch; two when x is quantised by a launch of its own). None where it does not apply.
pub fn linear_swiglu(x: &Tensor, wg: &DeviceQuant, wu: &DeviceQuant, n: usize, k: usize) -> Result<Option<Tensor>> {
    if wg.format != wu.format || wg.rows != wu.rows || wg.cols != k || wu.cols != k {
        return Ok(None);
    }
    let Some(q) = quantize_q8(x, n, k)? else { return Ok(None) };
    let gpu = q.gpu.clone();
    let m = wg.rows;
    let y = DeviceBuf::alloc(&gpu, DType::BF16, n * m)?;
    let g = mmvq_lanes(k, m);
    let func = names(wg.format)?[if n == 1 { 8 } else { 6 }];
    let f = gpu.function("qmatmul", SRC, func)?;
    let (n32, k32, m32, rb, g32) = (n as i32, k as i32, m as i32, wg.row_bytes as i64, g as i32);
    let mut l = cuda::launch::Launch::new(&gpu, &f, func); // programmatic: qmatmul.cu waits after its first loads
    let (xf, xq, xd) = q.ptrs();
    l.arg(&xf).arg(&xq).arg(&xd).arg(&n32).arg(&k32);
    l.arg(&wg.blocks.data).arg(&wu.blocks.data).arg(&y.data).arg(&m32).arg(&rb).arg(&g32);
    let pf = cuda::prefetch::take(&gpu, true);
    l.prefetch_args(&pf);
    let cfg = mv_config(m, g, q.smem);
    cuda::launched(unsafe { l.launch(cfg) }, func)?;
    Ok(Some(shaped(x, y, m)?))
}

/// (h, silu(y·w_gᵀ)·(y·w_uᵀ)) with (h, y) = add_rmsnorm(x, r, w_norm) for one row, in one launch:
/// the gate/up matvec's blocks each do the add and the norm (rmsnorm.cu's arithmetic, so the
/// bits of `add_rmsnorm` then `linear_swiglu`) and quantise y in their shared memory; block 0
/// stores h. A decode step's layer saves the add_rmsnorm launch. None where it does not apply:
/// more than one row, not mixed precision (x f32, r bf16, bf16 activations), the formats differ,
/// k not a multiple of 32 or over 15360 (shared memory), a pointer not 16-byte aligned.
pub fn add_rmsnorm_swiglu(
    x: &Tensor,
    r: &Tensor,
    w: &Tensor,
    eps: f64,
    wg: &DeviceQuant,
    wu: &DeviceQuant,
) -> Result<Option<(Tensor, Tensor)>> {
    if wg.format != wu.format || wg.rows != wu.rows || wu.cols != x.cols() {
        return Ok(None);
    }
    let Some(nm) = norm_args(x, r, w, eps, &[wg, wu])? else { return Ok(None) };
    let (k, m) = (x.cols(), wg.rows);
    let gpu = nm.gpu();
    let y = DeviceBuf::alloc(&gpu, DType::BF16, m)?;
    let g = mmvq_lanes(k, m);
    let func = names(wg.format)?[9];
    let f = gpu.function("qmatmul", SRC, func)?;
    let (m32, rb64, g32) = (m as i32, wg.row_bytes as i64, g as i32);
    let mut l = cuda::launch::Launch::new(&gpu, &f, func); // programmatic: qmatmul.cu waits after its first loads
    nm.push(&mut l);
    l.arg(&wg.blocks.data).arg(&wu.blocks.data).arg(&y.data).arg(&m32).arg(&rb64).arg(&g32);
    let pf = cuda::prefetch::take(&gpu, true);
    l.prefetch_args(&pf);
    cuda::launched(unsafe { l.launch(mv_config(m, g, nm.smem_quantised())) }, func)?;
    Ok(Some((nm.into_h(x.shape())?, shaped(x, y, m)?)))
}

/// (h, [y·w_jᵀ + b_j]) with (h, y) = add_rmsnorm(x, r, w_norm) for one row: q, k and v after a
/// block's residual add and the next block's norm, in one launch (one format, or `mixed_kernel`'s
/// pairs), as `add_rmsnorm_swiglu` does it for gate/up. None where it does not apply (as there,
/// or the weights need more than one launch).
pub fn add_rmsnorm_linear_many(
    x: &Tensor,
    r: &Tensor,
    w: &Tensor,
    eps: f64,
    ws: &[(&DeviceQuant, Option<&Tensor>)],
) -> Result<Option<(Tensor, Vec<Tensor>)>> {
    let k = x.cols();
    let func = match ws {
        [] => return Ok(None),
        [(a, _), (b, _), (c, _)] if a.format == b.format && c.format != a.format => {
            match mixed_norm_kernel(a.format, c.format) {
                Some(f) => f,
                None => return Ok(None),
            }
        }
        _ if ws.len() <= 3 && ws.iter().all(|(q, _)| q.format == ws[0].0.format) => names(ws[0].0.format)?[10],
        _ => return Ok(None),
    };
    if ws.iter().any(|(q, _)| q.cols != k) {
        return Ok(None);
    }
    let qs: Vec<&DeviceQuant> = ws.iter().map(|(q, _)| *q).collect();
    let Some(nm) = norm_args(x, r, w, eps, &qs)? else { return Ok(None) };
    let gpu = nm.gpu();
    let ys = ws.iter().map(|(q, _)| DeviceBuf::alloc(&gpu, DType::BF16, q.rows)).collect::<Result<Vec<_>>>()?;
    let mut slots = [(0u64, 0u64, 0i32, 0i64); 3];
    for (j, (q, _)) in ws.iter().enumerate() {
        slots[j] = (q.blocks.ptr(), ys[j].ptr(), q.rows as i32, q.row_bytes as i64);
    }
    let (gs, cfg) = slot_launch(k, &ws.iter().map(|(q, _)| q.rows).collect::<Vec<_>>(), nm.smem_quantised());
    let f = gpu.function("qmatmul", SRC, func)?;
    let mut l = cuda::launch::Launch::new(&gpu, &f, func); // programmatic: qmatmul.cu waits after its first loads
    nm.push(&mut l);
    for s in &slots {
        l.arg(&s.0).arg(&s.1).arg(&s.2).arg(&s.3);
    }
    l.arg(&gs);
    let pf = cuda::prefetch::take(&gpu, true);
    l.prefetch_args(&pf);
    cuda::launched(unsafe { l.launch(cfg) }, func)?;
    let mut out = Vec::with_capacity(ws.len());
    for (y, (q, bias)) in ys.into_iter().zip(ws) {
        if let Some(b) = bias {
            crate::ops::matmul::cuda::add_bias(&y, b, 1, q.rows)?;
        }
        out.push(shaped(x, y, q.rows)?);
    }
    Ok(Some((nm.into_h(x.shape())?, out)))
}

/// `NormArgs` for one row before quantised weights: as `NormArgs::new`, and the weights on x's
/// device with k columns.
fn norm_args<'a>(
    x: &'a Tensor,
    r: &'a Tensor,
    w: &'a Tensor,
    eps: f64,
    ws: &[&DeviceQuant],
) -> Result<Option<NormArgs<'a>>> {
    if !mmvq_on() || !crate::ops::matmul::cuda::fused_on() || ws.iter().any(|q| q.cols != x.cols()) {
        return Ok(None);
    }
    let Some(nm) = NormArgs::new(x, r, w, eps)? else { return Ok(None) };
    if ws.iter().any(|q| q.blocks.gpu.ordinal != nm.gpu().ordinal) {
        return Ok(None);
    }
    Ok(Some(nm))
}

/// y (n × m) = x (n × k) · wᵀ (+ bias), w quantised (m × k) on x's device. x is f32 or bf16;
/// y has the activation dtype of the matmul precision (bf16 under mixed precision), as a plain
/// `linear` would give.
pub fn linear(x: &Tensor, w: &DeviceQuant, bias: Option<&Tensor>, n: usize, k: usize, m: usize) -> Result<Tensor> {
    let [xb] = cuda::float_bufs([x], "linear (quantised weight)")?;
    let gpu = xb.gpu.clone();
    if w.blocks.gpu.ordinal != gpu.ordinal {
        bail!("linear: input on cuda:{}, quantised weight on cuda:{}", gpu.ordinal, w.blocks.gpu.ordinal);
    }
    if let Some(ys) = linear_many(x, &[(w, bias)], n, k)? {
        return ys.into_iter().next().ok_or_else(|| anyhow::anyhow!("linear (quantised weight): no output"));
    }
    let (op, ydt) = crate::ops::matmul::cuda::precision();
    let y = if n > 0 && m > 0 && n <= MATVEC_MAX_N {
        // The matvec computes in f32 and reads/writes f32, or bf16 when both the input and the
        // activation dtype are bf16 (mixed precision: no cast launches in decode); any other
        // combination goes through casts (n ≤ 8 rows: tiny).
        let bf = x.dtype() == DType::BF16 && ydt == DType::BF16;
        let xk =
            if bf || x.dtype() == DType::F32 { x.clone() } else { crate::ops::elementwise::cuda::cast(x, DType::F32)? };
        let yk = DeviceBuf::alloc(&gpu, if bf { DType::BF16 } else { DType::F32 }, n * m)?;
        let func = names(w.format)?[if bf { 4 } else { 0 }];
        let f = gpu.function("qmatmul", SRC, func)?;
        let (rows, cols, rb, n32) = (m as i32, k as i32, w.row_bytes as i64, n as i32);
        let cfg = LaunchConfig {
            grid_dim: ((m as u32).div_ceil(WARPS), 1, 1),
            block_dim: (32, WARPS, 1),
            shared_mem_bytes: 0,
        };
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&w.blocks.data).arg(&xk.cuda_buf()?.data).arg(&yk.data).arg(&rows).arg(&cols).arg(&rb).arg(&n32);
        cuda::launched(unsafe { l.launch(cfg) }, func)?;
        let y = Tensor::from_device_buf(yk, &[n * m])?;
        if y.dtype() == ydt {
            y
        } else {
            crate::ops::elementwise::cuda::cast(&y, ydt)?
        }
    } else {
        let y = DeviceBuf::alloc(&gpu, ydt, n * m)?;
        if n > 0 && m > 0 {
            // The weight in the product's precision, for this product only (memory stays at the
            // quantised size between products).
            let wd = dequantize(w, if op == Operand::F32 { DType::F32 } else { DType::BF16 })?;
            let xo = crate::ops::matmul::cuda::operand(x, op, false, "linear input (quantised weight)")?;
            crate::ops::matmul::cuda::xwt(&xo, &wd, &y, op, n, k, m)?;
        }
        Tensor::from_device_buf(y, &[n * m])?
    };
    if let Some(bias) = bias {
        crate::ops::matmul::cuda::add_bias(y.cuda_buf()?, bias, n, m)?;
    }
    let mut shape = x.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = m;
    }
    y.reshape(&shape)
}

/// The whole matrix dequantised on its device, as an f32 or bf16 (rows, cols) tensor.
pub fn dequantize(w: &DeviceQuant, dtype: DType) -> Result<Tensor> {
    let gpu = &w.blocks.gpu;
    let func = match dtype {
        DType::F32 => names(w.format)?[1],
        DType::BF16 => names(w.format)?[2],
        d => bail!("dequantize: {} to {d:?} is not supported (f32 or bf16)", w.format.name()),
    };
    let out = DeviceBuf::alloc(gpu, dtype, w.rows * w.cols)?;
    if w.rows * w.cols > 0 {
        let f = gpu.function("qmatmul", SRC, func)?;
        let (rows, cols, rb) = (w.rows as i64, w.cols as i32, w.row_bytes as i64);
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&w.blocks.data).arg(&out.data).arg(&rows).arg(&cols).arg(&rb);
        cuda::launched(unsafe { l.launch(cuda::grid_for(w.rows * w.cols / 8, 256)) }, func)?;
    }
    Tensor::from_device_buf(out, &[w.rows, w.cols])
}

/// out (…, cols) = rows `ids` of the quantised table, dequantised (ids on the host, checked by
/// the caller, or on the device: an out-of-range id gives a NaN row).
pub fn embedding(table: &DeviceQuant, ids: &Tensor) -> Result<Tensor> {
    let gpu = &table.blocks.gpu;
    let idt = cuda::ids_on(ids, gpu)?;
    let ib = idt.cuda_buf()?;
    let (n, d) = (ids.numel(), table.cols);
    let out = DeviceBuf::alloc(gpu, DType::F32, n * d)?;
    if n * d > 0 {
        let func = names(table.format)?[3];
        let f = gpu.function("qmatmul", SRC, func)?;
        let (n64, d32, rb, v32) = (n as i64, d as i32, table.row_bytes as i64, table.rows as u32);
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&table.blocks.data).arg(&ib.data).arg(&out.data).arg(&n64).arg(&d32).arg(&rb).arg(&v32);
        cuda::launched(unsafe { l.launch(cuda::grid_for(n * d / 8, 256)) }, func)?;
    }
    let mut shape = ids.shape().to_vec();
    shape.push(d);
    Tensor::from_device_buf(out, &shape)
}

impl super::QuantKernels for crate::backend::Cuda {
    fn linear_quant(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        n: usize,
        k: usize,
        m: usize,
    ) -> Result<Tensor> {
        let Some(q) = w.as_device_quant() else {
            bail!("linear: expected a quantised weight on {}, got {:?} {:?}", w.device(), w.dtype(), w.shape())
        };
        linear(x, q, bias, n, k, m)
    }
    fn embedding_quant(&self, table: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let Some(q) = table.as_device_quant() else {
            bail!(
                "embedding: expected a quantised table on {}, got {:?} {:?}",
                table.device(),
                table.dtype(),
                table.shape()
            )
        };
        embedding(q, ids)
    }
    fn dequantize_quant(&self, w: &Tensor, dtype: DType) -> Result<Tensor> {
        let Some(q) = w.as_device_quant() else {
            bail!("dequantize: expected a quantised matrix on {}, got {:?} {:?}", w.device(), w.dtype(), w.shape())
        };
        dequantize(q, dtype)?.reshape(w.shape())
    }
}
