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
//! kernels' trigger and wait then do nothing).

use super::{DevSlice, Gpu};
use cudarc::driver::{sys, CudaFunction, DevicePtr, DeviceRepr, LaunchConfig};
use std::ffi::c_void;
use std::marker::PhantomData;

/// Kernel arguments the kernels above take: far fewer than this.
const MAX_ARGS: usize = 48;

/// One launch's arguments: pointers to values that outlive it (`'a`), and the device
/// addresses of the buffers passed (kept here, at stable addresses).
pub struct Launch<'a> {
    gpu: &'a Gpu,
    f: &'a CudaFunction,
    args: Vec<*mut c_void>,
    addrs: Box<[u64; MAX_ARGS]>,
    used: usize,
    _values: PhantomData<&'a ()>,
}

/// What `Launch::arg` takes: a reference to a plain value, or a device buffer.
pub trait KernelArg<'a> {
    fn push_to(self, l: &mut Launch<'a>);
}

impl<'a, T: DeviceRepr> KernelArg<'a> for &'a T {
    fn push_to(self, l: &mut Launch<'a>) {
        l.args.push(self as *const T as *mut c_void);
    }
}

impl<'a> KernelArg<'a> for &'a DevSlice {
    fn push_to(self, l: &mut Launch<'a>) {
        let (p, _sync) = self.device_ptr(&l.gpu.stream);
        l.addrs[l.used] = p;
        l.args.push(&mut l.addrs[l.used] as *mut u64 as *mut c_void);
        l.used += 1;
    }
}

/// Whether launches on `gpu` use programmatic dependent launch.
pub fn pdl(gpu: &Gpu) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    gpu.arch.0 >= 9 && *ON.get_or_init(|| std::env::var("SMELT_CUDA_PDL").map_or(true, |v| v != "0"))
}

impl<'a> Launch<'a> {
    pub fn new(gpu: &'a Gpu, f: &'a CudaFunction) -> Self {
        Launch {
            gpu,
            f,
            args: Vec::with_capacity(MAX_ARGS),
            addrs: Box::new([0; MAX_ARGS]),
            used: 0,
            _values: PhantomData,
        }
    }

    pub fn arg<A: KernelArg<'a>>(&mut self, a: A) -> &mut Self {
        assert!(self.args.len() < MAX_ARGS, "more than {MAX_ARGS} kernel arguments");
        a.push_to(self);
        self
    }

    /// Launches on the GPU's stream, programmatically serialised when `pdl(gpu)`.
    ///
    /// # Safety
    /// As cudarc's `launch`: the arguments must match the kernel's parameters in number, order
    /// and type, and the buffers must stay alive until the kernel has run. The kernel must wait
    /// (`pdl_wait`) before touching what the kernel before it may still be using.
    pub unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<(), sys::CUresult> {
        self.gpu.ctx.bind_to_thread().map_err(|e| e.0)?;
        let mut attr: sys::CUlaunchAttribute = std::mem::zeroed();
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
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
            numAttrs: pdl(self.gpu) as u32,
        };
        match sys::cuLaunchKernelEx(&c, self.f.cu_function(), self.args.as_mut_ptr(), std::ptr::null_mut()) {
            sys::CUresult::CUDA_SUCCESS => Ok(()),
            e => Err(e),
        }
    }
}
