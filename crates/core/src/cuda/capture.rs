//! What a step captured as a CUDA graph (`crate::replay`) may copy between the host and a GPU.
//!
//! A capture records launches and device-to-device copies; their arguments are frozen, so a
//! copy from the host inside it would replay the first step's bytes forever (a batch, a
//! grouping of its ids), and a copy back to the host, or a wait, cannot be recorded at all.
//! While `during` runs on this thread for a GPU, the host copies of `DeviceBuf` and `Tensor`
//! on that GPU fail with an error that names them (`refuse`), instead of CUDA's unnamed capture
//! error or, worse, a silently frozen value.
//!
//! The one exception is `DeviceBuf::constant`: bytes the caller promises are the same at every
//! replay (device addresses of a step's own tensors, which an arena makes the same each replay,
//! and sizes: AdamW's and the norm's per-tensor tables). Inside a capture they are staged in
//! page-locked host memory that the captured graph keeps (a copy node reads it at each replay);
//! outside one they are a plain upload.

use anyhow::{anyhow, bail, Result};
use std::cell::RefCell;

/// Page-locked host bytes a captured graph's copy node reads; freed when the graph is dropped.
pub(crate) struct Pinned {
    ptr: *mut std::ffi::c_void,
}

// The pointer is only freed (by its owner) and read by the device.
unsafe impl Send for Pinned {}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `malloc_host` and nothing reads it once the graph is gone.
        let _ = unsafe { cudarc::driver::result::free_host(self.ptr) };
    }
}

struct Active {
    ordinal: usize,
    pinned: Vec<Pinned>,
}

thread_local! {
    static ACTIVE: RefCell<Option<Active>> = const { RefCell::new(None) };
}

/// Runs `f` (a capture's body on GPU `ordinal`) with host copies to that GPU refused, and
/// returns the page-locked buffers its constant uploads staged (keep them as long as the graph).
pub(crate) fn during<R>(ordinal: usize, f: impl FnOnce() -> R) -> (R, Vec<Pinned>) {
    struct End(Option<Active>);
    impl Drop for End {
        fn drop(&mut self) {
            let prev = self.0.take();
            ACTIVE.with(|a| *a.borrow_mut() = prev);
        }
    }
    let prev = ACTIVE.with(|a| a.borrow_mut().replace(Active { ordinal, pinned: Vec::new() }));
    let end = End(prev);
    let r = f();
    let pinned = ACTIVE.with(|a| a.borrow_mut().as_mut().map(|a| std::mem::take(&mut a.pinned)).unwrap_or_default());
    drop(end);
    (r, pinned)
}

/// Whether a capture on GPU `ordinal` is running on this thread.
pub fn active(ordinal: usize) -> bool {
    ACTIVE.with(|a| a.borrow().as_ref().is_some_and(|a| a.ordinal == ordinal))
}

/// An error when a capture on GPU `ordinal` is running on this thread: `what` (a copy between
/// the host and the GPU, or a wait) cannot be part of a captured step.
pub(crate) fn refuse(ordinal: usize, what: &str) -> Result<()> {
    if active(ordinal) {
        bail!(
            "cuda:{ordinal}: {what} inside a captured step (a CUDA graph replays its arguments frozen: \
             data that changes per step must be written into a buffer made before the capture, \
             and results read after the replay)"
        );
    }
    Ok(())
}

/// Inside a capture on GPU `ordinal`: copies `bytes` into page-locked memory the capture keeps
/// and queues the copy from there to `dst` on `stream` (a copy node of the graph). None outside
/// a capture (the caller uploads as usual).
pub(crate) fn stage(ordinal: usize, bytes: &[u8], dst: u64, stream: &cudarc::driver::CudaStream) -> Option<Result<()>> {
    if !active(ordinal) {
        return None;
    }
    let go = || -> Result<()> {
        let n = bytes.len().max(1);
        // Allocating page-locked memory is one of the calls a thread-local capture refuses (it
        // would invalidate the capture): this thread's mode is relaxed around it, then restored.
        let ptr = relaxed(|| {
            // SAFETY: a fresh allocation of n bytes, written in full below before any read.
            unsafe { cudarc::driver::result::malloc_host(n, 0) }
        })
        .map_err(|e| anyhow!("cuda:{ordinal}: cannot allocate {n} page-locked bytes: {e:?}"))?;
        let pinned = Pinned { ptr };
        // SAFETY: ptr holds n ≥ bytes.len() bytes and does not overlap `bytes`.
        let host = unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr as *mut u8, bytes.len());
            std::slice::from_raw_parts(ptr as *const u8, bytes.len())
        };
        // SAFETY: dst holds bytes.len() bytes (the caller's fresh buffer); the source lives as
        // long as the graph (kept with it).
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, host, stream.cu_stream()) }
            .map_err(|e| anyhow!("cuda:{ordinal}: staging {} constant bytes in a captured step: {e:?}", bytes.len()))?;
        ACTIVE.with(|a| {
            if let Some(a) = a.borrow_mut().as_mut() {
                a.pinned.push(pinned);
            }
        });
        Ok(())
    };
    Some(go())
}

/// Runs `f` with this thread's stream-capture mode relaxed (calls a capture would otherwise
/// refuse are allowed), restoring the previous mode after.
fn relaxed<R>(f: impl FnOnce() -> R) -> R {
    use cudarc::driver::sys::{cuThreadExchangeStreamCaptureMode, CUstreamCaptureMode};
    let mut mode = CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
    // SAFETY: exchanges this thread's mode with a valid enum value; swapped back below.
    let swapped =
        unsafe { cuThreadExchangeStreamCaptureMode(&mut mode) } == cudarc::driver::sys::CUresult::CUDA_SUCCESS;
    let r = f();
    if swapped {
        // SAFETY: `mode` now holds the previous mode, put back.
        let _ = unsafe { cuThreadExchangeStreamCaptureMode(&mut mode) };
    }
    r
}
