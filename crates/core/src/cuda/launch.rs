//! Launches that may start before the kernel ahead of them has finished: programmatic dependent
//! launch (Hopper and later). Such a kernel begins with `pdl_trigger()` and `pdl_wait()`s
//! (common.cuh) before it reads or writes anything the kernel before it touches, doing only
//! independent work — its weight loads — in between; the decode step's matvecs and attention are
//! written that way. Measured (`examples/decode_chain`, docs/PERF.md): 1.2–1.6 µs saved at each
//! kernel boundary of a replayed graph, when the graph holds no memory nodes (`arena`).
//!
//! `Launch` takes arguments as cudarc's launch builder does (`arg(&value)`, `arg(&buf.data)`)
//! and launches with `cuLaunchKernelEx`, with the programmatic-serialisation attribute where
//! the GPU has it (compute 9.0+) and `SMELT_CUDA_PDL` is not `0`; a plain launch otherwise (the
//! kernels' trigger and wait then do nothing), and for kernels whose names hold a part listed in
//! `SMELT_CUDA_PDL_OFF` (default: the Q5_0 matvecs and the decode attention, `PLAIN_BY_DEFAULT`).

use super::{DevSlice, Gpu};
use cudarc::driver::{sys, CudaFunction, DevicePtr, DeviceRepr, LaunchConfig};
use std::ffi::c_void;
use std::marker::PhantomData;

/// Room for the arguments the kernels above take.
const MAX_ARGS: usize = 32;

/// One argument: the address of a value that outlives the launch, or the index of a device
/// address kept in `Launch::addrs`.
enum Arg {
    Value(*mut c_void),
    Addr(usize),
}

/// One launch's arguments: pointers to values that outlive it (`'a`), and the device
/// addresses of the buffers passed (kept here; their pointers are made at launch).
pub struct Launch<'a> {
    gpu: &'a Gpu,
    f: &'a CudaFunction,
    args: Vec<Arg>,
    addrs: Vec<u64>,
    /// Set by `programmatic` (benchmarks comparing the two) or, plain, for a kernel `named_off`:
    /// overrides `pdl(gpu)`.
    forced: Option<bool>,
    /// `cooperative`: every block resident at once, or the launch fails.
    cooperative: bool,
    /// `cluster`: blocks launched in thread-block clusters of this many (compute 9.0+); 0: no
    /// clusters. A cooperative launch takes none (`cooperative` wins).
    cluster: u32,
    _values: PhantomData<&'a ()>,
}

/// What `Launch::arg` takes: a reference to a plain value, or a device buffer.
pub trait KernelArg<'a> {
    fn push_to(self, l: &mut Launch<'a>);
}

impl<'a, T: DeviceRepr> KernelArg<'a> for &'a T {
    fn push_to(self, l: &mut Launch<'a>) {
        l.args.push(Arg::Value(self as *const T as *mut c_void));
    }
}

impl<'a> KernelArg<'a> for &'a DevSlice {
    fn push_to(self, l: &mut Launch<'a>) {
        // The guard only records events, and smelt's contexts track none (cuda::gpu).
        let (p, _sync) = self.device_ptr(&l.gpu.stream);
        l.args.push(Arg::Addr(l.addrs.len()));
        l.addrs.push(p);
    }
}

thread_local! {
    static PLAIN_NEXT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The next `Launch` on this thread is a plain one: the kernel just queued wrote data (a
/// weight's bf16 copy) that the next kernel reads before its `pdl_wait`, and only a plain
/// launch orders those reads after that write.
pub fn plain_next() {
    PLAIN_NEXT.with(|p| p.set(true));
}

/// Whether launches on `gpu` use programmatic dependent launch.
pub fn pdl(gpu: &Gpu) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    gpu.arch.0 >= 9 && *ON.get_or_init(|| std::env::var("SMELT_CUDA_PDL").map_or(true, |v| v != "0"))
}

/// Kernels launched plainly unless `SMELT_CUDA_PDL_OFF` says otherwise (measured, H200,
/// docs/PERF.md 2026-12-03): the Q5_0 matvecs (135M q4_k decode, whose 576-wide rows are Q5_0:
/// 1,182 tok/s with them launched early, 1,436 without) and the decode attention (+1-12% at
/// every shape but 135M q4_k, level there). The other matvecs gain from early launch.
const PLAIN_BY_DEFAULT: &str = "Q5_0,attn";

/// Whether the kernel `name` is one to launch plainly: it holds a part listed in
/// `SMELT_CUDA_PDL_OFF` (separated by `,` or `+`; `none` for no kernel), or in
/// `PLAIN_BY_DEFAULT` when that is unset (a probe of which kernels gain or lose from early launch).
fn named_off(name: &str) -> bool {
    static OFF: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let off = OFF.get_or_init(|| {
        let v = std::env::var("SMELT_CUDA_PDL_OFF").unwrap_or_else(|_| PLAIN_BY_DEFAULT.to_owned());
        v.split([',', '+']).filter(|p| !p.is_empty() && *p != "none").map(str::to_owned).collect()
    });
    off.iter().any(|p| name.contains(p.as_str()))
}

impl<'a> Launch<'a> {
    /// A launch of `f`, the kernel named `name` (`SMELT_CUDA_PDL_OFF` matches the name).
    pub fn new(gpu: &'a Gpu, f: &'a CudaFunction, name: &str) -> Self {
        Launch {
            gpu,
            f,
            args: Vec::with_capacity(MAX_ARGS),
            addrs: Vec::with_capacity(MAX_ARGS),
            forced: named_off(name).then_some(false),
            cooperative: false,
            cluster: 0,
            _values: PhantomData,
        }
    }

    /// A cooperative launch (never programmatic): the driver starts it only with every block
    /// resident at once, or fails it, so blocks may wait for one another (a grid barrier: the
    /// persistent decode kernel, `ops::decode_layers`).
    pub fn cooperative(&mut self) -> &mut Self {
        self.cooperative = true;
        self.forced = Some(false);
        self
    }

    /// Blocks in clusters of `n` along x (never programmatic; the grid's x a multiple of n): their
    /// shared memory is one address space and `barrier.cluster` syncs them
    /// (`examples/cluster_probe`). Past 8 the kernel must allow a non-portable size.
    pub fn cluster(&mut self, n: u32) -> &mut Self {
        self.cluster = n;
        self.forced = Some(false);
        self
    }

    /// Launch programmatically or not whatever `SMELT_CUDA_PDL` says (`examples/decode_chain`).
    pub fn programmatic(&mut self, on: bool) -> &mut Self {
        self.forced = Some(on);
        self
    }

    /// The L2 prefetch ranges a matvec takes as its last arguments (`cuda::prefetch::take`'s
    /// (address, bytes) pairs).
    pub fn prefetch_args(&mut self, ranges: &'a [(u64, i64); super::prefetch::RANGES]) -> &mut Self {
        for (ptr, bytes) in ranges {
            self.arg(ptr).arg(bytes);
        }
        self
    }

    pub fn arg<A: KernelArg<'a>>(&mut self, a: A) -> &mut Self {
        a.push_to(self);
        self
    }

    /// Launches on the GPU's stream, programmatically serialised when `pdl(gpu)` (and the
    /// thread did not ask for a plain launch next, `plain_next`).
    ///
    /// # Safety
    /// As cudarc's `launch`: the arguments must match the kernel's parameters in number, order
    /// and type, and the buffers must stay alive until the kernel has run. The kernel must wait
    /// (`pdl_wait`) before touching what the kernel before it may still be using.
    pub unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<(), sys::CUresult> {
        debug_assert!(!self.gpu.ctx.is_event_tracking(), "Launch drops cudarc's event guards: tracking must be off");
        self.gpu.ctx.bind_to_thread().map_err(|e| e.0)?;
        let addrs = self.addrs.as_mut_ptr();
        let mut ptrs: Vec<*mut c_void> = self
            .args
            .iter()
            .map(|a| match *a {
                Arg::Value(p) => p,
                Arg::Addr(i) => addrs.add(i) as *mut c_void,
            })
            .collect();
        let plain_next = PLAIN_NEXT.with(|p| p.replace(false));
        let programmatic = self.forced.unwrap_or(pdl(self.gpu) && !plain_next);
        let mut attr: sys::CUlaunchAttribute = std::mem::zeroed();
        if self.cooperative {
            attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
            attr.value.cooperative = 1;
        } else if self.cluster > 0 {
            attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
            attr.value.clusterDim = sys::CUlaunchAttributeValue_union__bindgen_ty_1 { x: self.cluster, y: 1, z: 1 };
        } else {
            attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            attr.value.programmaticStreamSerializationAllowed = 1;
        }
        let c = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.gpu.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: (programmatic || self.cooperative || self.cluster > 0) as u32,
        };
        match sys::cuLaunchKernelEx(&c, self.f.cu_function(), ptrs.as_mut_ptr(), std::ptr::null_mut()) {
            sys::CUresult::CUDA_SUCCESS => Ok(()),
            e => Err(e),
        }
    }
}
