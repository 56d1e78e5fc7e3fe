//! Device storage: an untyped allocation on one GPU plus the dtype it holds. Kernels receive
//! the raw pointer; the dtype travels beside it so host copies can rebuild typed vectors.

use super::Gpu;
use crate::DType;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, LaunchArgs, PushKernelArg};
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

pub struct DeviceBuf {
    pub gpu: Arc<Gpu>,
    pub dtype: DType,
    /// Elements (not bytes).
    pub len: usize,
    /// The allocation (dropped by hand: an arena piece is leaked, not freed, see `arena`).
    pub data: DevSlice,
    /// Its place in a capture arena (`super::arena`), if it has one: with a pointer, the memory
    /// is the arena's piece (leaked, never freed, here); without, only counted.
    arena: Option<super::arena::Taken>,
    /// Allocated while a step was being captured on this thread (`super::capture`): the step's
    /// own, which it may copy before writing.
    captured: bool,
    /// A bf16 copy of this f32 buffer, made by the first bf16 matmul that reads it as a weight
    /// and reused until the buffer is written (`Tensor::cuda_buf_mut` drops it). Never set on
    /// a bf16 buffer (a copy of itself would keep it alive forever).
    pub bf16_shadow: OnceLock<crate::Tensor>,
}

/// A `CudaSlice<u8>` that `DeviceBuf`'s drop releases itself (freed, or leaked when it is an
/// arena's piece). Derefs to the slice, and passes as a kernel argument like one.
pub struct DevSlice(ManuallyDrop<CudaSlice<u8>>);

impl std::ops::Deref for DevSlice {
    type Target = CudaSlice<u8>;
    fn deref(&self) -> &CudaSlice<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for DevSlice {
    fn deref_mut(&mut self) -> &mut CudaSlice<u8> {
        &mut self.0
    }
}

unsafe impl<'a, 'b: 'a> PushKernelArg<&'b DevSlice> for LaunchArgs<'a> {
    #[inline(always)]
    fn arg(&mut self, arg: &'b DevSlice) -> &mut Self {
        <Self as PushKernelArg<&'b CudaSlice<u8>>>::arg(self, &arg.0)
    }
}

unsafe impl<'a, 'b: 'a> PushKernelArg<&'b mut DevSlice> for LaunchArgs<'a> {
    #[inline(always)]
    fn arg(&mut self, arg: &'b mut DevSlice) -> &mut Self {
        <Self as PushKernelArg<&'b mut CudaSlice<u8>>>::arg(self, &mut arg.0)
    }
}

impl std::fmt::Debug for DeviceBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuf({:?}, {:?} × {})", self.gpu, self.dtype, self.len)
    }
}

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn track(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

/// (bytes held in tensors now, the most held at once) over all GPUs. The cuBLASLt workspace
/// and the driver's own memory are not counted.
pub fn mem_stats() -> (usize, usize) {
    (LIVE.load(Ordering::Relaxed), PEAK.load(Ordering::Relaxed))
}

/// Starts a new peak: from now `mem_stats().1` is the most held since this call.
pub fn reset_mem_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed)
}

impl Drop for DeviceBuf {
    fn drop(&mut self) {
        if !self.is_arena_piece() {
            LIVE.fetch_sub(self.data.len(), Ordering::Relaxed);
        }
        // SAFETY: `data` is not used after this.
        let data = unsafe { ManuallyDrop::take(&mut self.data.0) };
        match self.arena {
            Some(t) if t.ptr.is_some() => {
                data.leak();
            }
            _ => drop(data),
        }
        if let Some(t) = self.arena {
            super::arena::give(t);
        }
    }
}

impl Clone for DeviceBuf {
    /// A device-to-device copy, queued on the stream. `Clone` cannot fail, so a copy that
    /// cannot be allocated panics here; copies only happen through `Arc::make_mut` on a shared
    /// buffer, which the device code paths avoid.
    fn clone(&self) -> Self {
        track(self.data.len());
        DeviceBuf {
            gpu: self.gpu.clone(),
            dtype: self.dtype,
            len: self.len,
            data: DevSlice(ManuallyDrop::new((*self.data).clone())),
            arena: None,
            captured: super::capture::active(self.gpu.ordinal),
            bf16_shadow: OnceLock::new(),
        }
    }
}

impl DeviceBuf {
    /// An uninitialised buffer of `len` elements (poisoned with NaN bytes when `poison()` is on).
    pub fn alloc(gpu: &Arc<Gpu>, dtype: DType, len: usize) -> Result<Self> {
        let bytes = (len * dtype.size_in_bytes()).max(1);
        let arena = super::arena::take(gpu.ordinal, bytes);
        let data = match arena.and_then(|t| t.ptr) {
            // SAFETY: the arena's piece is at least `bytes` long, lives as long as the graph
            // that uses it, and is leaked (not freed) when this buffer drops.
            Some(p) => unsafe { gpu.stream.upgrade_device_ptr::<u8>(p, bytes) },
            None => unsafe { gpu.stream.alloc::<u8>(bytes) }
                .map_err(|e| anyhow!("{gpu:?}: cannot allocate {bytes} bytes: {e:?}"))?,
        };
        // An arena's piece is memory the arena's own buffer already counts.
        if arena.and_then(|t| t.ptr).is_none() {
            track(data.len());
        }
        let mut b = DeviceBuf {
            gpu: gpu.clone(),
            dtype,
            len,
            data: DevSlice(ManuallyDrop::new(data)),
            arena,
            captured: super::capture::active(gpu.ordinal),
            bf16_shadow: OnceLock::new(),
        };
        if super::poison() {
            b.fill_bytes(0xFF)?;
        }
        Ok(b)
    }

    pub fn zeros(gpu: &Arc<Gpu>, dtype: DType, len: usize) -> Result<Self> {
        let mut b = Self::alloc(gpu, dtype, len)?;
        b.fill_bytes(0)?;
        Ok(b)
    }

    pub fn fill_bytes(&mut self, v: u8) -> Result<()> {
        let n = self.data.len();
        let (ptr, _g) = self.data.device_ptr(&self.gpu.stream);
        unsafe { cudarc::driver::result::memset_d8_async(ptr, v, n, self.gpu.stream.cu_stream()) }
            .map_err(|e| anyhow!("memset on {:?}: {e:?}", self.gpu))
    }

    pub fn from_bytes(gpu: &Arc<Gpu>, dtype: DType, len: usize, bytes: &[u8]) -> Result<Self> {
        if bytes.len() != len * dtype.size_in_bytes() {
            bail!("{} bytes for {len} elements of {dtype:?}", bytes.len());
        }
        super::capture::refuse(gpu.ordinal, &format!("a copy of {len} {dtype:?} from the host"))?;
        let data = gpu.stream.clone_htod(bytes).map_err(|e| anyhow!("copy to {gpu:?}: {e:?}"))?;
        track(data.len());
        Ok(DeviceBuf {
            gpu: gpu.clone(),
            dtype,
            len,
            data: DevSlice(ManuallyDrop::new(data)),
            arena: None,
            captured: false,
            bf16_shadow: OnceLock::new(),
        })
    }

    /// `from_bytes` for bytes that are the same at every replay of a captured step (device
    /// addresses and sizes, never a batch's data): inside a capture they are staged in
    /// page-locked memory the graph keeps (`capture::stage`); elsewhere a plain upload.
    pub fn constant(gpu: &Arc<Gpu>, dtype: DType, len: usize, bytes: &[u8]) -> Result<Self> {
        if bytes.len() != len * dtype.size_in_bytes() {
            bail!("{} bytes for {len} elements of {dtype:?}", bytes.len());
        }
        // Allocated as the step's other buffers are (so a measured step counts it in the arena
        // the capture takes it from), then filled: from page-locked memory the graph keeps
        // inside a capture, by a plain upload elsewhere.
        let mut b = Self::alloc(gpu, dtype, len)?;
        if bytes.is_empty() {
            return Ok(b);
        }
        match super::capture::stage(gpu.ordinal, bytes, b.ptr(), &gpu.stream) {
            Some(r) => r?,
            None => gpu
                .stream
                .memcpy_htod(bytes, &mut *b.data)
                .map_err(|e| anyhow!("copy of {len} {dtype:?} to {gpu:?}: {e:?}"))?,
        }
        Ok(b)
    }

    /// A device-to-device copy (the fallible form of `clone`).
    pub fn try_copy(&self) -> Result<Self> {
        let mut c = Self::alloc(&self.gpu, self.dtype, self.len)?;
        self.gpu.stream.memcpy_dtod(&*self.data, &mut *c.data).map_err(|e| anyhow!("copy on {:?}: {e:?}", self.gpu))?;
        Ok(c)
    }

    /// Copies the buffer back (waits for the stream).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        super::capture::refuse(self.gpu.ordinal, &format!("a copy of {} {:?} to the host", self.len, self.dtype))?;
        let mut v = self.gpu.stream.clone_dtoh(&*self.data).map_err(|e| anyhow!("copy from {:?}: {e:?}", self.gpu))?;
        v.truncate(self.len * self.dtype.size_in_bytes());
        Ok(v)
    }

    /// Elements `start..start+n` as a view (a kernel argument at an offset).
    pub fn view(&self, start: usize, n: usize) -> CudaView<'_, u8> {
        let s = self.dtype.size_in_bytes();
        self.data.slice(start * s..(start + n) * s)
    }

    pub fn view_mut(&mut self, start: usize, n: usize) -> CudaViewMut<'_, u8> {
        let s = self.dtype.size_in_bytes();
        self.data.slice_mut(start * s..(start + n) * s)
    }

    /// Whether this buffer's memory is a piece of a capture arena (counted as the arena's).
    fn is_arena_piece(&self) -> bool {
        self.arena.is_some_and(|t| t.ptr.is_some())
    }

    /// Whether this buffer is a step's own while an arena counts or serves the step, or while a
    /// capture runs: an intermediate, not a lasting buffer (a weight, a moment, a cache).
    pub(crate) fn is_steps_own(&self) -> bool {
        self.arena.is_some() || (self.captured && super::capture::active(self.gpu.ordinal))
    }

    /// Whether this buffer was allocated before the capture running on this thread (a weight,
    /// a moment, an input buffer): see `Tensor::cuda_buf_mut`.
    pub(crate) fn outlives_capture(&self) -> bool {
        !self.captured && super::capture::active(self.gpu.ordinal)
    }

    /// The raw device address (for cuBLASLt and pointer tables).
    pub fn ptr(&self) -> u64 {
        let (p, _g) = self.data.device_ptr(&self.gpu.stream);
        p
    }

    pub fn expect(&self, dtype: DType, what: &str) -> Result<()> {
        if self.dtype != dtype {
            bail!("{what}: expected a {dtype:?} tensor on {:?}, got {:?}", self.gpu, self.dtype);
        }
        Ok(())
    }
}
