//! The CUDA backend's runtime: one context and one stream per GPU, device buffers, the NVRTC
//! kernel cache and the cuBLASLt handle. Ops own their kernels (`ops/<op>/cuda.rs` + `<op>.cu`);
//! this module owns only what they share.
//!
//! Ordering: every launch, copy and free of a device goes to that device's single stream, so
//! work runs in issue order without events and no op waits on the host. Only copies back to the
//! host (`Tensor::to_device(Device::Cpu)`, `to_vec_f32`) synchronise.
//!
//! Everything is loaded at run time (cudarc's dynamic loading): a machine without a driver gets
//! an error from `gpu()`, never a panic, and the CPU path does not touch this module.

pub mod arena;
pub mod blas;
mod buf;
pub mod capture;
pub mod compile;
pub mod launch;
pub mod nccl;
pub mod prefetch;

pub use buf::{mem_stats, reset_mem_peak, DevSlice, DeviceBuf};

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// One GPU: its context, its one stream, and the kernels loaded on it so far.
pub struct Gpu {
    pub ordinal: usize,
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// Compute capability (major, minor); NVRTC compiles for exactly this.
    pub arch: (i32, i32),
    /// Streaming multiprocessors, asked once (grid sizes that count waves: `auto_hsplit`,
    /// the persistent decode kernel).
    pub sm_count: usize,
    pub name: String,
    functions: Mutex<HashMap<(&'static str, String), CudaFunction>>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    blas: Mutex<Option<Arc<blas::Lt>>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cuda:{} ({})", self.ordinal, self.name)
    }
}

static GPUS: OnceLock<Mutex<HashMap<usize, Arc<Gpu>>>> = OnceLock::new();

/// Number of usable CUDA devices, or an error saying why there are none (no driver library,
/// driver too old, no device).
pub fn device_count() -> Result<usize> {
    // cudarc panics when the library is missing; ask first so the user gets an error instead.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        bail!("no CUDA driver: libcuda.so could not be loaded (is this a machine with an NVIDIA GPU and its driver installed?)");
    }
    let n =
        CudaContext::device_count().map_err(|e| anyhow!("the CUDA driver is installed but cannot be used: {e:?}"))?;
    if n <= 0 {
        bail!("the CUDA driver found no GPU");
    }
    Ok(n as usize)
}

/// The GPU `ordinal`, initialised on first use.
pub fn gpu(ordinal: usize) -> Result<Arc<Gpu>> {
    let map = GPUS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().map_err(|_| anyhow!("CUDA device table poisoned"))?;
    if let Some(g) = map.get(&ordinal) {
        return Ok(g.clone());
    }
    let n = device_count()?;
    if ordinal >= n {
        bail!("cuda:{ordinal} does not exist: this machine has {n} CUDA device(s) (cuda:0..cuda:{})", n - 1);
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| anyhow!("cuda:{ordinal}: cannot create a context: {e:?}"))?;
    // One stream per device and nothing else touches our buffers: cudarc's per-buffer event
    // tracking (for multi-stream use) would only add overhead.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().map_err(|e| anyhow!("cuda:{ordinal}: cannot create a stream: {e:?}"))?;
    keep_freed_memory(&ctx);
    let arch = ctx.compute_capability().map_err(|e| anyhow!("cuda:{ordinal}: {e:?}"))?;
    let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
    let sm_count = ctx
        .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(|e| anyhow!("cuda:{ordinal}: no SM count: {e:?}"))?
        .max(1) as usize;
    let g = Arc::new(Gpu {
        ordinal,
        ctx,
        stream,
        arch,
        sm_count,
        name,
        functions: Mutex::new(HashMap::new()),
        modules: Mutex::new(HashMap::new()),
        blas: Mutex::new(None),
    });
    map.insert(ordinal, g.clone());
    Ok(g)
}

/// Stream-ordered allocations come from the device's default pool, which by default hands
/// freed memory back to the driver at every synchronisation, so each training step (one sync)
/// would map its activations afresh. Keep it instead, as PyTorch's caching allocator does.
fn keep_freed_memory(ctx: &Arc<CudaContext>) {
    use cudarc::driver::sys;
    unsafe {
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        if sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) == sys::CUresult::CUDA_SUCCESS {
            let mut threshold = u64::MAX;
            let _ = sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut threshold as *mut u64 as *mut std::ffi::c_void,
            );
        }
    }
}

/// Waits for GPU `ordinal`'s stream, then hands the freed memory its stream-ordered pool keeps
/// (`keep_freed_memory`) back to the driver: before a captured step takes its arena, so that
/// the arena and the pool's leftovers from the uncaptured steps are not both held.
pub fn release_cached_memory(ordinal: usize) -> Result<()> {
    use cudarc::driver::sys;
    let g = gpu(ordinal)?;
    g.synchronize()?;
    unsafe {
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        if sys::cuDeviceGetDefaultMemPool(&mut pool, g.ctx.cu_device()) == sys::CUresult::CUDA_SUCCESS {
            let _ = sys::cuMemPoolTrimTo(pool, 0);
        }
    }
    Ok(())
}

impl Gpu {
    /// Kernel `func` of the module `module` whose CUDA source is `src` (compiled with NVRTC on
    /// first use, then cached on disk and in memory). Names of dtype-generic kernels are built
    /// with `kname`.
    pub fn function(&self, module: &'static str, src: &'static str, func: &str) -> Result<CudaFunction> {
        let mut fns = self.functions.lock().map_err(|_| anyhow!("kernel table poisoned"))?;
        let key = (module, func.to_string());
        if let Some(f) = fns.get(&key) {
            return Ok(f.clone());
        }
        let m = {
            let mut mods = self.modules.lock().map_err(|_| anyhow!("module table poisoned"))?;
            match mods.get(module) {
                Some(m) => m.clone(),
                None => {
                    let ptx = compile::ptx(module, src, self.arch)?;
                    let m = self
                        .ctx
                        .load_module(ptx)
                        .map_err(|e| anyhow!("loading kernels {module} on {self:?}: {e:?}"))?;
                    mods.insert(module, m.clone());
                    m
                }
            }
        };
        let f = m.load_function(func).map_err(|e| anyhow!("kernel {func} not found in {module}: {e:?}"))?;
        fns.insert(key, f.clone());
        Ok(f)
    }

    /// The cuBLASLt handle of this device.
    pub fn blas(&self) -> Result<Arc<blas::Lt>> {
        let mut b = self.blas.lock().map_err(|_| anyhow!("cuBLASLt handle poisoned"))?;
        if let Some(h) = &*b {
            return Ok(h.clone());
        }
        let h = Arc::new(blas::Lt::new(self.stream.clone()).context("creating the cuBLASLt handle")?);
        *b = Some(h.clone());
        Ok(h)
    }

    /// Waits until every queued launch and copy has finished (tests, benchmarks).
    pub fn synchronize(&self) -> Result<()> {
        capture::refuse(self.ordinal, "waiting for the GPU")?;
        self.stream.synchronize().map_err(|e| anyhow!("{self:?}: {e:?}"))
    }
}

/// Launch configuration for `n` independent elements, `threads` per block, grid capped so
/// kernels loop (grid-stride) over the rest.
pub fn grid_for(n: usize, threads: u32) -> LaunchConfig {
    let blocks = n.div_ceil(threads as usize).clamp(1, 65535 * 8) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// Turns a launch error into an error that names the kernel (and feeds the profiler).
pub fn launched<T, E: std::fmt::Debug>(r: std::result::Result<T, E>, what: &str) -> Result<()> {
    r.map(|_| ()).map_err(|e| anyhow!("CUDA launch of {what} failed: {e:?}"))?;
    profile::record(what);
    Ok(())
}

/// `SMELT_CUDA_PROFILE=1`: wait for every kernel and charge the wall time since the previous
/// one to its name (kernel time plus launch overhead; serialises the stream, so for finding
/// where the time goes, not for throughput). `profile::report()` prints the table.
pub mod profile {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::Instant;

    struct State {
        last: Instant,
        by_name: HashMap<String, (f64, u64)>,
    }

    /// Whether kernels are being timed one by one (a stream being waited on after every
    /// launch cannot be captured into a graph: decode runs uncaptured then).
    pub fn enabled() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| std::env::var("SMELT_CUDA_PROFILE").is_ok_and(|v| v != "0"))
    }

    /// `SMELT_CUDA_PROFILE=gemm`: each cuBLASLt product is charged under its shape
    /// (`gemm_label`), and the table shows each shape's TFLOP/s and 40 rows.
    pub fn by_gemm_shape() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| std::env::var("SMELT_CUDA_PROFILE").is_ok_and(|v| v == "gemm"))
    }

    /// A product's row: `base` alone, or with `SMELT_CUDA_PROFILE=gemm` its column-major shape
    /// and transposes, and "+C" when it adds into its output: `cublasLt bf16->f32 [2048,8192,16384] NT +C`.
    pub fn gemm_label(base: &str, m: u64, n: u64, k: u64, ta: bool, tb: bool, adds: bool) -> String {
        if !by_gemm_shape() {
            return base.to_string();
        }
        let t = |x: bool| if x { 'T' } else { 'N' };
        format!("{base} [{m},{n},{k}] {}{}{}", t(ta), t(tb), if adds { " +C" } else { "" })
    }

    /// The FLOP/s of a row whose name holds a product's shape `[m,n,k]`.
    fn tflops(name: &str, secs: f64, calls: u64) -> Option<f64> {
        let shape = name.split('[').nth(1)?.split(']').next()?;
        let d: Vec<f64> = shape.split(',').filter_map(|x| x.parse().ok()).collect();
        (d.len() == 3 && secs > 0.0).then(|| 2.0 * d[0] * d[1] * d[2] * calls as f64 / secs / 1e12)
    }

    static STATE: Mutex<Option<State>> = Mutex::new(None);

    pub fn record(what: &str) {
        if !enabled() {
            return;
        }
        if let Some(gpus) = super::GPUS.get() {
            let gpus: Vec<_> = gpus.lock().map(|m| m.values().cloned().collect()).unwrap_or_default();
            for g in gpus {
                let _ = g.synchronize();
            }
        }
        let now = Instant::now();
        if let Ok(mut st) = STATE.lock() {
            let st = st.get_or_insert_with(|| State { last: now, by_name: HashMap::new() });
            let e = st.by_name.entry(what.to_string()).or_insert((0.0, 0));
            e.0 += (now - st.last).as_secs_f64();
            e.1 += 1;
            st.last = now;
        }
    }

    /// Starts a new measurement window (the time before the next kernel is not charged).
    pub fn reset() {
        if let Ok(mut st) = STATE.lock() {
            *st = Some(State { last: Instant::now(), by_name: HashMap::new() });
        }
    }

    /// The table, largest first, to stderr.
    pub fn report(title: &str) {
        if !enabled() {
            return;
        }
        if let Ok(st) = STATE.lock() {
            if let Some(st) = &*st {
                let total: f64 = st.by_name.values().map(|v| v.0).sum();
                let mut v: Vec<_> = st.by_name.iter().collect();
                v.sort_by(|a, b| b.1 .0.partial_cmp(&a.1 .0).unwrap_or(std::cmp::Ordering::Equal));
                eprintln!("profile {title}: {:.2} ms in {} kernel kinds", total * 1e3, v.len());
                for (name, (t, n)) in v.iter().take(if by_gemm_shape() { 40 } else { 20 }) {
                    let rate = tflops(name, *t, *n).map(|r| format!("  {r:6.0} TFLOP/s")).unwrap_or_default();
                    eprintln!(
                        "  {name:<28} {:>9.3} ms {:>5.1}% {n:>7} calls{rate}",
                        t * 1e3,
                        100.0 * t / total.max(1e-12)
                    );
                }
            }
        }
    }
}

static POISON: AtomicBool = AtomicBool::new(false);

/// When on, every new output buffer is filled with 0xFF bytes (NaN in f32 and bf16) before the
/// kernel that should write it runs, so an element a kernel forgets to write shows up as NaN.
/// Parity tests turn it on; it costs a memset per allocation.
pub fn set_poison(on: bool) {
    POISON.store(on, Ordering::Relaxed)
}
pub fn poison() -> bool {
    POISON.load(Ordering::Relaxed)
}

/// The CUDA precision policy (named for the matmul, which it mostly governs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulPrecision {
    /// Everything f32: the CPU reference's precision (parity tests, exact comparisons).
    F32,
    /// Mixed precision: matmul operands bf16 (a weight's bf16 copy cached on its f32 master),
    /// products accumulated in f32; activations and their gradients stored in bf16 except the
    /// residual stream, which stays f32 (`activation_dtype`); weight gradients, master weights
    /// and AdamW moments f32. Kernels compute in f32 whatever they store.
    Bf16,
}

static MATMUL: AtomicU8 = AtomicU8::new(0);

pub fn set_matmul_precision(p: MatmulPrecision) {
    MATMUL.store(
        match p {
            MatmulPrecision::F32 => 1,
            MatmulPrecision::Bf16 => 2,
        },
        Ordering::Relaxed,
    )
}

/// The matmul precision: set explicitly, else `SMELT_CUDA_MATMUL=f32|bf16`, else bf16.
pub fn matmul_precision() -> MatmulPrecision {
    match MATMUL.load(Ordering::Relaxed) {
        1 => MatmulPrecision::F32,
        2 => MatmulPrecision::Bf16,
        _ => match std::env::var("SMELT_CUDA_MATMUL").as_deref() {
            Ok("f32") => MatmulPrecision::F32,
            _ => MatmulPrecision::Bf16,
        },
    }
}

/// How activations are stored on CUDA: bf16 under mixed precision (the default), f32 when
/// matmuls are f32 (`SMELT_CUDA_MATMUL=f32`), so that f32 runs stay f32 throughout.
pub fn activation_dtype() -> crate::DType {
    match matmul_precision() {
        MatmulPrecision::F32 => crate::DType::F32,
        MatmulPrecision::Bf16 => crate::DType::BF16,
    }
}

/// The name a storage dtype has in kernel names (`f32`, `bf16`); kernels exist for no other.
pub fn dtype_name(d: crate::DType, what: &str) -> Result<&'static str> {
    match d {
        crate::DType::F32 => Ok("f32"),
        crate::DType::BF16 => Ok("bf16"),
        d => bail!("{what}: CUDA kernels store f32 or bf16, not {d:?}"),
    }
}

/// The kernel `base` instantiated for `dtypes`: `kname("rmsnorm_fwd", [F32, BF16, BF16])` is
/// `rmsnorm_fwd_f32_bf16_bf16` (the order is the kernel's template parameters' order).
pub fn kname(base: &str, dtypes: &[crate::DType], what: &str) -> Result<String> {
    let mut s = base.to_string();
    for &d in dtypes {
        s.push('_');
        s.push_str(dtype_name(d, what)?);
    }
    Ok(s)
}

/// `t` as f32: itself if it is f32, else a bf16 → f32 copy. For the kernels that read only f32
/// (the vocabulary-chunked loss, perplexity scoring, sampling) when they are handed logits in the
/// activation dtype of mixed precision.
pub fn as_f32(t: &crate::Tensor) -> Result<crate::Tensor> {
    match t.dtype() {
        crate::DType::F32 => Ok(t.clone()),
        crate::DType::BF16 => crate::ops::elementwise::cuda::cast(t, crate::DType::F32),
        d => bail!("expected f32 or bf16 values, got {d:?} {:?}", t.shape()),
    }
}

/// The device buffers of `ts`, checked to be on one GPU and each f32 or bf16 (the storage
/// dtypes kernels are instantiated for); the caller checks which combination it takes.
pub fn float_bufs<'a, const N: usize>(ts: [&'a crate::Tensor; N], what: &str) -> Result<[&'a DeviceBuf; N]> {
    let mut out: Vec<&DeviceBuf> = Vec::with_capacity(N);
    for t in ts {
        let b = t.cuda_buf().with_context(|| format!("{what}: all inputs must be on the same CUDA device"))?;
        dtype_name(b.dtype, what)?;
        if let Some(first) = out.first() {
            if first.gpu.ordinal != b.gpu.ordinal {
                bail!("{what}: inputs on cuda:{} and cuda:{}", first.gpu.ordinal, b.gpu.ordinal);
            }
        }
        out.push(b);
    }
    out.try_into().map_err(|_| anyhow!("{what}: internal error"))
}

/// The one storage dtype of `bufs` (named `names` in the error when they differ): ops whose
/// inputs must agree (swiglu's gate and up, attention's q, k and v, a gradient and its tensor).
pub fn same_dtype(bufs: &[&DeviceBuf], names: &[&str], what: &str) -> Result<crate::DType> {
    let d = bufs.first().map(|b| b.dtype).ok_or_else(|| anyhow!("{what}: no inputs"))?;
    if bufs.iter().any(|b| b.dtype != d) {
        let got: Vec<String> = bufs.iter().zip(names).map(|(b, n)| format!("{n} {:?}", b.dtype)).collect();
        bail!("{what}: inputs must share one storage dtype, got {}", got.join(", "));
    }
    Ok(d)
}

/// The device buffers of `ts`, checked to be f32 and on one GPU.
pub fn f32_bufs<'a, const N: usize>(ts: [&'a crate::Tensor; N], what: &str) -> Result<[&'a DeviceBuf; N]> {
    let mut out: Vec<&DeviceBuf> = Vec::with_capacity(N);
    for t in ts {
        let b = t.cuda_buf().with_context(|| format!("{what}: all inputs must be on the same CUDA device"))?;
        b.expect(crate::DType::F32, what)?;
        if let Some(first) = out.first() {
            if first.gpu.ordinal != b.gpu.ordinal {
                bail!("{what}: inputs on cuda:{} and cuda:{}", first.gpu.ordinal, b.gpu.ordinal);
            }
        }
        out.push(b);
    }
    out.try_into().map_err(|_| anyhow!("{what}: internal error"))
}

/// Moves an index tensor (token ids, targets) to `gpu` if it is on the host.
pub fn ids_on(ids: &crate::Tensor, gpu: &Arc<Gpu>) -> Result<crate::Tensor> {
    if ids.dtype() != crate::DType::U32 {
        bail!("expected u32 ids, got {:?}", ids.dtype());
    }
    ids.to_device(crate::Device::Cuda(gpu.ordinal))
}
