//! The launcher of `decode_layers_bf16` (decode_layers.cu): checks that the step fits the
//! kernel, packs the layers' operands into a table (uploaded once per set of weights and caches,
//! so a captured step uploads nothing), sizes the grid to the blocks that are resident at once
//! (a grid barrier with a block waiting to start would never open), and launches.

use super::{Dims, Layer};
use crate::cuda::{self, DeviceBuf, Gpu};
use crate::ops::matmul::cuda::{fused_on, gemv_lanes, operand, precision};
use crate::ops::rope::{RopeLayout, RopeTable};
use crate::ops::Pos;
use crate::{DType, Tensor};
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{sys, LaunchConfig};
use std::sync::{Arc, Mutex};

/// gemv.cu, decode.cu and qmatmul.cu (its device functions only) first: the phases are their
/// device functions.
pub const SRC: &str = concat!(
    include_str!("../matmul/gemv.cu"),
    "\n#line 1 \"decode.cu\"\n",
    include_str!("../attention/decode.cu"),
    "\n#define QMATMUL_NO_KERNELS\n#line 1 \"qmatmul.cu\"\n",
    include_str!("../qmatmul/qmatmul.cu"),
    "\n#line 1 \"decode_layers.cu\"\n",
    include_str!("decode_layers.cu")
);

/// Threads a block (MV_THREADS = DEC_THREADS).
const THREADS: u32 = 256;
/// Barrier words before the heads' counters (DL_HEADS in decode_layers.cu); the sticky failure
/// word is DL_FAILED.
const STATE_HEADS: usize = 4;
const STATE_FAILED: usize = 3;
/// Layer tables kept per GPU: a captured graph holds its table's address, so none is ever freed;
/// past this many (decoders over new caches) steps fall back to the launched kernels.
const MAX_TABLES: usize = 4096;
/// Heads the state has counters for.
const MAX_HEADS: usize = 1024;

/// A layer's scratch bytes: decode_layers.cu's `dl_layer_bytes`, the same sum.
fn layer_bytes(c: usize, h: usize, kvh: usize, d: usize, f: usize, splits: usize) -> usize {
    let al = |n: usize| n.div_ceil(256) * 256;
    2 * al(4 * c)
        + 2 * al(2 * h * d)
        + 2 * al(2 * kvh * d)
        + 2 * al(2 * c)
        + al(2 * f)
        + if splits > 1 { al(4 * h * splits * (d + 2)) } else { 0 }
}

/// Per GPU: the barrier state (zeroed once; every launch leaves it zeroed) and the layer tables
/// uploaded so far, by their bytes (a decoder's weights and caches keep their addresses, so its
/// first, uncaptured step uploads the table and every later step finds it). Kept for the
/// process's life: a captured step may replay with any of them.
struct PerGpu {
    ordinal: usize,
    state: DeviceBuf,
    tables: Vec<(Vec<u8>, DeviceBuf)>,
}

static PER_GPU: Mutex<Vec<PerGpu>> = Mutex::new(Vec::new());

/// Whether `gpu`'s stream is being captured (nothing may be uploaded or read back then).
fn capturing(gpu: &Gpu) -> bool {
    !matches!(gpu.stream.capture_status(), Ok(sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE))
}

/// The device addresses of the weight `w` as the matvecs read it (its bf16 form), or None if it
/// is not a dense (out, in) matrix of `k` columns with 16-byte rows. An f32 weight's bf16 copy
/// lives on the weight's buffer (`operand`) for as long as the weight is not written, as the
/// launched kernels' copies do, so the address stays good for later launches and replays.
fn dense(w: &Tensor, k: usize) -> Result<Option<(u64, usize)>> {
    if w.shape().len() != 2
        || w.shape()[1] != k
        || !matches!(w.dtype(), DType::F32 | DType::BF16)
        || !k.is_multiple_of(8)
    {
        return Ok(None);
    }
    let (op, _) = precision();
    let b = operand(w, op, true, "decode_layers weight")?;
    let p = b.cuda_buf()?.ptr();
    let m = w.shape()[0];
    Ok((p % 16 == 0).then_some((p, m)))
}

pub(crate) fn decode_layers(
    x0: &Tensor,
    h0: &Tensor,
    layers: &mut [Layer],
    rope: &RopeTable,
    pos: Pos,
    dims: Dims,
) -> Result<Option<(Tensor, Tensor)>> {
    let Dims { heads: h, kv_heads: kvh, head_dim: d, eps, scale } = dims;
    let (_, adt) = precision();
    let c = x0.cols();
    let Pos::Device { at, cap } = pos else { return Ok(None) };
    // What the launched step's fused kernels need (`NormArgs`), and this kernel's limits: its
    // shared memory holds the normed row (2·C bytes) beside decode attention's, and the state
    // has a counter a head.
    if adt != DType::BF16
        || !fused_on()
        || x0.dtype() != DType::F32
        || x0.numel() != c
        || h0.dtype() != DType::BF16
        || h0.numel() != c
        || !c.is_multiple_of(32)
        || c > 15360
        || d == 0
        || d > 128
        || !d.is_multiple_of(2)
        || kvh == 0
        || !h.is_multiple_of(kvh)
        || h > MAX_HEADS
        || d != 2 * rope.inv_freq.len()
    {
        return Ok(None);
    }
    let [xb, hb] = cuda::float_bufs([x0, h0], "decode_layers")?;
    if xb.ptr() % 16 != 0 || hb.ptr() % 16 != 0 {
        return Ok(None);
    }
    let gpu = xb.gpu.clone();
    let f_dim = layers[0].gate.shape().first().copied().unwrap_or(0);
    if f_dim == 0 || !f_dim.is_multiple_of(8) {
        return Ok(None);
    }
    let quantised = layers[0].qkv[0].0.as_device_quant().is_some();
    let (table, name, smem) = match quantised {
        true => match quant_table(layers, c, h, kvh, d, f_dim, cap)? {
            Some(t) => t,
            None => return Ok(None),
        },
        false => match bf16_table(layers, c, h, kvh, d, f_dim, cap)? {
            // Two blocks an SM take the instantiation whose registers allow it.
            Some(t) => (t, if per_sm() >= 2 { "decode_layers_b2_bf16" } else { "decode_layers_bf16" }, 2 * c),
            None => return Ok(None),
        },
    };
    launch(&gpu, xb, hb, x0, table, name, smem, layers.len(), [c, h, kvh, d, f_dim, cap], rope, at, eps, scale)
}

/// The bf16 layers' table: 14 addresses, then 8 ints a layer (decode_layers.cu's DlLayer); None
/// where a layer does not fit the kernel.
fn bf16_table(
    layers: &mut [Layer],
    c: usize,
    h: usize,
    kvh: usize,
    d: usize,
    f_dim: usize,
    cap: usize,
) -> Result<Option<Vec<u8>>> {
    let mut table: Vec<u8> = Vec::with_capacity(layers.len() * 144);
    for ly in layers.iter_mut() {
        let mut ptrs = [0u64; 14];
        let mut ints = [0i32; 8];
        let mut ms = [0usize; 3];
        for (j, (w, b)) in ly.qkv.iter().enumerate() {
            let Some((p, m)) = dense(w, c)? else { return Ok(None) };
            ptrs[j] = p;
            ms[j] = m;
            ints[j] = m as i32;
            if let Some(b) = b {
                if b.numel() != m || b.dtype() != DType::F32 {
                    return Ok(None);
                }
                ptrs[3 + j] = cuda::f32_bufs([*b], "decode_layers bias")?[0].ptr();
            }
        }
        if ms[0] != h * d || ms[1] != kvh * d || ms[2] != kvh * d {
            return Ok(None);
        }
        let Some((wo, mo)) = dense(ly.o, h * d)? else { return Ok(None) };
        let Some((wg, mg)) = dense(ly.gate, c)? else { return Ok(None) };
        let Some((wu, mu)) = dense(ly.up, c)? else { return Ok(None) };
        let Some((wd, md)) = dense(ly.down, f_dim)? else { return Ok(None) };
        if mo != c || mg != f_dim || mu != f_dim || md != c {
            return Ok(None);
        }
        let Some([an, fnw, kcp, vcp]) = norms_and_caches(ly, c, kvh, d, cap)? else { return Ok(None) };
        ptrs[6..14].copy_from_slice(&[wo, wg, wu, wd, an, fnw, kcp, vcp]);
        // Lanes a row, as the launchers pick them (gemv3 / gemv_swiglu: a head's rule is for a
        // weight alone, so q/k/v pass no row count; 32 = a warp a row).
        let lanes = |k: usize, rows: usize, ws: &[u64]| gemv_lanes(DType::BF16, k, rows, ws).unwrap_or(32) as i32;
        ints[3] = lanes(c, 0, &ptrs[0..3]);
        ints[4] = lanes(h * d, c, &[wo]);
        ints[5] = lanes(c, 0, &[wg, wu]);
        ints[6] = lanes(f_dim, c, &[wd]);
        ints[7] = ly.window.unwrap_or(0) as i32;
        table.extend(ptrs.iter().flat_map(|p| p.to_le_bytes()));
        table.extend(ints.iter().flat_map(|i| i.to_le_bytes()));
    }
    Ok(Some(table))
}

/// The addresses of a layer's two norm weights (f32, C values, 16-byte aligned) and its caches
/// ((1, cap, KVH, D) bf16), or None where they do not fit.
fn norms_and_caches(ly: &mut Layer, c: usize, kvh: usize, d: usize, cap: usize) -> Result<Option<[u64; 4]>> {
    if ly.attn_norm.dtype() != DType::F32 || ly.ffn_norm.dtype() != DType::F32 {
        return Ok(None);
    }
    let [an, fnw] = cuda::f32_bufs([ly.attn_norm, ly.ffn_norm], "decode_layers norm")?;
    if an.len != c || fnw.len != c || an.ptr() % 16 != 0 || fnw.ptr() % 16 != 0 {
        return Ok(None);
    }
    let (an, fnw) = (an.ptr(), fnw.ptr());
    if ly.k_cache.shape() != [1, cap, kvh, d] || ly.v_cache.shape() != [1, cap, kvh, d] {
        return Ok(None);
    }
    let kc = ly.k_cache.cuda_buf_mut()?;
    kc.expect(DType::BF16, "decode_layers key cache")?;
    let kcp = kc.ptr();
    let vc = ly.v_cache.cuda_buf_mut()?;
    vc.expect(DType::BF16, "decode_layers value cache")?;
    Ok(Some([an, fnw, kcp, vc.ptr()]))
}

/// The quantised layers' table (decode_layers.cu's DlqLayer: 7 weights of (blocks, bytes a row,
/// rows, lanes a row, format index, 0), 3 biases, 2 norms, 2 caches, the window: 288 bytes a
/// layer), the kernel and its dynamic shared memory; None where the layers do not fit: the
/// launched one-row integer matvecs must be what the step would run (mixed precision,
/// `SMELT_CUDA_MMVQ` on, inputs quantised in the block), every matrix in one of
/// `QUANT_FORMATS`, q and k in one format, gate and up in one.
fn quant_table(
    layers: &mut [Layer],
    c: usize,
    h: usize,
    kvh: usize,
    d: usize,
    f_dim: usize,
    cap: usize,
) -> Result<Option<(Vec<u8>, &'static str, usize)>> {
    use crate::ops::qmatmul::cuda::{mmvq_lanes, mmvq_on, FUSED_MAX_K};
    let hd = h * d;
    if !mmvq_on() || ![c, hd, f_dim].iter().all(|k| k.is_multiple_of(32) && *k <= FUSED_MAX_K) {
        return Ok(None);
    }
    // The input row in shared memory: after a norm, y (2 bytes a value), its 8-bit form and a
    // scale a 32 (3 + 1/8 bytes a value); o's and down's inputs, quantised (1 + 1/8).
    let smem = (3 * c + c / 8).max(hd + hd / 8).max(f_dim + f_dim / 8);
    if smem > 48 * 1024 {
        return Ok(None);
    }
    let format_index = |w: &Tensor| w.as_device_quant().and_then(|q| QUANT_FORMATS.iter().position(|f| *f == q.format));
    let mut table: Vec<u8> = Vec::with_capacity(layers.len() * 288);
    for ly in layers.iter_mut() {
        let q = |w: &Tensor| w.as_device_quant().map(|q| (q.format, q.rows, q.cols));
        // Gate and up in one format: the launched step's fused SwiGLU product needs it (each
        // other weight's rows are summed alone, whatever its neighbours' formats).
        if q(ly.gate).map(|f| f.0) != q(ly.up).map(|f| f.0) {
            return Ok(None);
        }
        let shapes = [(hd, c), (kvh * d, c), (kvh * d, c), (c, hd), (f_dim, c), (f_dim, c), (c, f_dim)];
        let ws = [ly.qkv[0].0, ly.qkv[1].0, ly.qkv[2].0, ly.o, ly.gate, ly.up, ly.down];
        for (w, (rows, cols)) in ws.iter().zip(shapes) {
            let Some(dq) = w.as_device_quant() else { return Ok(None) };
            if dq.rows != rows || dq.cols != cols || dq.blocks.gpu.ordinal != layers_gpu(ly)? {
                return Ok(None);
            }
            table.extend(dq.blocks.ptr().to_le_bytes());
            table.extend((dq.row_bytes as i64).to_le_bytes());
            let Some(fmt) = format_index(w) else { return Ok(None) };
            for v in [rows as i32, mmvq_lanes(cols, rows) as i32, fmt as i32, 0] {
                table.extend(v.to_le_bytes());
            }
        }
        for (j, (_, b)) in ly.qkv.iter().enumerate() {
            let p = match b {
                Some(b) if b.numel() == shapes[j].0 && b.dtype() == DType::F32 => {
                    cuda::f32_bufs([*b], "decode_layers bias")?[0].ptr()
                }
                Some(_) => return Ok(None),
                None => 0,
            };
            table.extend(p.to_le_bytes());
        }
        let Some(nc) = norms_and_caches(ly, c, kvh, d, cap)? else { return Ok(None) };
        for p in nc {
            table.extend(p.to_le_bytes());
        }
        table.extend((ly.window.unwrap_or(0) as i64).to_le_bytes());
    }
    Ok(Some((table, "decode_layers_quant", smem)))
}

/// The formats `decode_layers_quant` reads, by the index its table gives each weight: Q4_K_M's
/// pair, its fallback pair for rows that are not whole 256-blocks, and so also plain Q8_0.
const QUANT_FORMATS: [crate::quant::GgmlType; 4] = {
    use crate::quant::GgmlType as T;
    [T::Q4_K, T::Q6_K, T::Q5_0, T::Q8_0]
};

/// The GPU a layer's key cache is on (its weights must be there too).
fn layers_gpu(ly: &Layer) -> Result<usize> {
    Ok(ly.k_cache.cuda_buf()?.gpu.ordinal)
}

/// Launches kernel `name` over the layers whose `table` is packed: finds or uploads the table
/// and the barrier state, sizes the grid from the occupancy, and returns (x, r).
#[allow(clippy::too_many_arguments)]
fn launch(
    gpu: &Arc<Gpu>,
    xb: &DeviceBuf,
    hb: &DeviceBuf,
    x0: &Tensor,
    table: Vec<u8>,
    name: &'static str,
    smem: usize,
    n: usize,
    [c, h, kvh, d, f_dim, cap]: [usize; 6],
    rope: &RopeTable,
    at: &Tensor,
    eps: f64,
    scale: f32,
) -> Result<Option<(Tensor, Tensor)>> {
    let gpu = gpu.clone();
    let splits = cap.div_ceil(crate::ops::attention::cuda::DEC_CHUNK).max(1);
    let tab = crate::ops::rope::cuda::device_table(&gpu, rope, cap)?;
    let pbuf = at.cuda_buf()?;
    pbuf.expect(DType::U32, "decode_layers position")?;
    let f = gpu.function("decode_layers", SRC, name)?;
    // Dynamic shared memory past 48 KiB would need an opt-in; with the kernel's static shared
    // memory (decode attention's) this launch must stay under it, or the layers run one launch
    // at a time.
    let statik = f
        .get_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
        .map_err(|e| anyhow!("decode_layers shared memory on {gpu:?}: {e:?}"))?;
    if smem + statik.max(0) as usize > 48 * 1024 {
        return Ok(None);
    }
    let sms = gpu.sm_count as u32;
    let resident = f
        .occupancy_max_active_blocks_per_multiprocessor(THREADS, smem, None)
        .map_err(|e| anyhow!("decode_layers occupancy on {gpu:?}: {e:?}"))?;
    let per_sm = per_sm().min(resident);
    if per_sm == 0 {
        return Ok(None); // no block of this size fits an SM: the launched kernels it is
    }
    // The table and the state, found or made; a step being captured cannot upload them (its
    // decoder's first, uncaptured step did), so one that would runs the launched kernels.
    let (table_ptr, state_ptr) = {
        let mut all = PER_GPU.lock().map_err(|_| anyhow!("decode_layers tables poisoned"))?;
        if !all.iter().any(|p| p.ordinal == gpu.ordinal) {
            if capturing(&gpu) {
                return Ok(None);
            }
            let words = STATE_HEADS + MAX_HEADS;
            let state = crate::cuda::arena::uncounted(|| {
                DeviceBuf::from_bytes(&gpu, DType::U32, words, &vec![0u8; 4 * words])
            })?;
            all.push(PerGpu { ordinal: gpu.ordinal, state, tables: Vec::new() });
        }
        let Some(pg) = all.iter_mut().find(|p| p.ordinal == gpu.ordinal) else { return Ok(None) };
        if !pg.tables.iter().any(|(b, _)| *b == table) {
            if capturing(&gpu) || pg.tables.len() >= MAX_TABLES {
                return Ok(None);
            }
            let buf =
                crate::cuda::arena::uncounted(|| DeviceBuf::from_bytes(&gpu, DType::U32, table.len() / 4, &table))?;
            pg.tables.push((table.clone(), buf));
        }
        let Some((_, t)) = pg.tables.iter().find(|(b, _)| *b == table) else { return Ok(None) };
        (t.ptr(), pg.state.ptr())
    };
    // Bytes in u32 words (every piece is a multiple of 256 bytes).
    let scratch = DeviceBuf::alloc(&gpu, DType::U32, n * layer_bytes(c, h, kvh, d, f_dim, splits) / 4)?;
    let x_out = DeviceBuf::alloc(&gpu, DType::F32, c)?;
    let r_out = DeviceBuf::alloc(&gpu, DType::BF16, c)?;
    let inter = (rope.layout == RopeLayout::Interleaved) as i32;
    let wpr = c.div_ceil(8 * 32 * 2).clamp(1, 8) as i32;
    let ints = [n, c, h, kvh, d, f_dim, cap].map(|v| v as i32);
    let (eps32, chunk, splits32) = (eps as f32, crate::ops::attention::cuda::DEC_CHUNK as i32, splits as i32);
    {
        // Cooperative: the driver starts every block at once or fails the launch, so the grid
        // barriers cannot wait for a block that is not running (SMELT_CUDA_PERSIST_COOP=0: a
        // plain launch, relying on the occupancy count alone).
        let mut b = cuda::launch::Launch::new(&gpu, &f, name);
        if std::env::var("SMELT_CUDA_PERSIST_COOP").map_or(true, |v| v != "0") {
            b.cooperative();
        } else {
            b.programmatic(false);
        }
        b.arg(&table_ptr);
        for v in &ints {
            b.arg(v);
        }
        b.arg(&eps32).arg(&wpr).arg(&scale).arg(&chunk).arg(&splits32).arg(&inter).arg(&pbuf.data);
        b.arg(&tab.cos.data).arg(&tab.sin.data).arg(&xb.data).arg(&hb.data).arg(&scratch.data);
        let l2 = l2_window();
        b.arg(&x_out.data).arg(&r_out.data).arg(&state_ptr).arg(&l2);
        let cfg =
            LaunchConfig { grid_dim: (sms * per_sm, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: smem as u32 };
        cuda::launched(unsafe { b.launch(cfg) }, name)?;
    }
    super::LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Uncaptured, a barrier that timed out is reported at once; a captured step's is found by the
    // next `check` (the decoder's next prefill), since nothing can be read back inside a graph.
    if !capturing(&gpu) {
        check(&gpu)?;
    }
    Ok(Some((Tensor::from_device_buf(x_out, x0.shape())?, Tensor::from_device_buf(r_out, x0.shape())?)))
}

/// Bytes of each L2 prefetch window (decode_layers.cu's `dl_l2`): `SMELT_CUDA_PERSIST_L2` MiB,
/// 0 (off) by default until a GPU has timed it. Prefetches change no value, only when the
/// DRAM reads happen.
fn l2_window() -> i64 {
    static N: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        let mib = std::env::var("SMELT_CUDA_PERSIST_L2").ok().and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        mib.clamp(0, 1 << 12) << 20
    })
}

/// Blocks an SM (`SMELT_CUDA_PERSIST_BPS`, default 1; 2 takes `decode_layers_b2_bf16`; fewer
/// if fewer fit).
fn per_sm() -> u32 {
    static N: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *N.get_or_init(|| std::env::var("SMELT_CUDA_PERSIST_BPS").ok().and_then(|v| v.parse().ok()).unwrap_or(1).max(1))
}

/// Waits for `gpu`'s stream and fails if a launch since the last check had a barrier time out
/// (and clears the mark). Nothing to do where the kernel never ran.
pub(crate) fn check(gpu: &Arc<Gpu>) -> Result<()> {
    let mut all = PER_GPU.lock().map_err(|_| anyhow!("decode_layers tables poisoned"))?;
    let Some(pg) = all.iter_mut().find(|p| p.ordinal == gpu.ordinal) else { return Ok(()) };
    let words = pg.state.to_bytes()?;
    let at = 4 * STATE_FAILED;
    let failed = u32::from_le_bytes([words[at], words[at + 1], words[at + 2], words[at + 3]]);
    if failed != 0 {
        pg.state.fill_bytes(0)?;
        bail!(
            "decode_layers on {gpu:?}: a grid barrier of the persistent decode kernel timed out (were all of its \
             blocks resident?), so the steps since the last check computed wrong numbers. Unset SMELT_CUDA_PERSIST \
             to decode one launch a kernel"
        );
    }
    Ok(())
}
