//! Captured steps: the launches of one step (a decode step) recorded once on a device's stream
//! as a CUDA graph and replayed with one call, instead of ~10 launches per layer paid on the
//! host every token. On the CPU there is nothing to capture.
//!
//! What a captured closure may do (else the capture fails with CUDA's error, named): launch
//! kernels and cuBLASLt, allocate and free device memory (stream-ordered: these become graph
//! nodes), copy device to device. What it must not do: copy to or from the host, synchronise,
//! or free a buffer allocated before the capture. Every tensor it allocates must be dropped
//! before it returns (results go into buffers made beforehand), and every value that changes
//! from one replay to the next (a position, a token id) must be read from device memory, not
//! passed as a kernel argument: the arguments are frozen at capture.

use crate::Device;
use anyhow::Result;

/// A captured step (see the module docs). `None` from `capture` on the CPU.
pub struct Replay {
    // Dropped in this order: the graph, then the page-locked constants its copies read and the
    // arena its kernels' pointers point into.
    #[cfg(feature = "cuda")]
    graph: cudarc::driver::CudaGraph,
    #[cfg(feature = "cuda")]
    _pinned: Vec<crate::cuda::capture::Pinned>,
    #[cfg(feature = "cuda")]
    _arena: Option<crate::cuda::DeviceBuf>,
}

impl Replay {
    /// Records what `f` launches on `device`'s stream, without running it; `launch` runs it.
    /// On the CPU returns `Ok(None)` without calling `f`.
    ///
    /// `arena` > 0: the step's allocations come from one buffer of that many bytes made before
    /// the capture and kept with the graph (`cuda::arena`; `measure` gives the size), so the
    /// graph holds kernel nodes only and programmatic launches overlap across every boundary;
    /// 0 (or `SMELT_CUDA_ARENA=0`): they become the graph's memory nodes.
    pub fn capture(device: Device, arena: usize, f: impl FnOnce() -> Result<()>) -> Result<Option<Replay>> {
        match device {
            Device::Cpu => {
                let _ = (f, arena);
                Ok(None)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => capture_cuda(n, arena, f).map(Some),
        }
    }

    /// Runs `f` (a step's uncaptured first run) and returns the bytes it allocated on `device`:
    /// the arena `capture` needs for the same step (0 on the CPU).
    pub fn measure<R>(device: Device, f: impl FnOnce() -> R) -> (R, usize) {
        match device {
            Device::Cpu => (f(), 0),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => crate::cuda::arena::count(n, f),
        }
    }

    /// `measure`, and how many lasting allocations `f` made (a weight's first bf16 copy, a
    /// table kept for later steps): a step to capture must make none, or its replays would
    /// depend on memory the graph does not own. 0 on the CPU.
    pub fn measure_steady<R>(device: Device, f: impl FnOnce() -> R) -> (R, usize, usize) {
        match device {
            Device::Cpu => (f(), 0, 0),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => crate::cuda::arena::count_steady(n, f),
        }
    }

    /// Hands the memory `device`'s allocator keeps from freed buffers back to the driver (waits
    /// for the device first): call it before `capture` takes a large arena. A no-op on the CPU.
    pub fn release_cached_memory(device: Device) -> Result<()> {
        match device {
            Device::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => crate::cuda::release_cached_memory(n),
        }
    }

    /// Whether a profiler that waits for every kernel is on (`SMELT_CUDA_PROFILE`): a capture
    /// cannot hold its waits.
    pub fn profiling() -> bool {
        #[cfg(feature = "cuda")]
        {
            crate::cuda::profile::enabled()
        }
        #[cfg(not(feature = "cuda"))]
        {
            false
        }
    }

    /// Runs the captured step once more (queued on the stream; nothing waits).
    pub fn launch(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        {
            self.graph.launch().map_err(|e| anyhow::anyhow!("launching a captured step: {e:?}"))
        }
        #[cfg(not(feature = "cuda"))]
        {
            Ok(())
        }
    }
}

#[cfg(feature = "cuda")]
fn capture_cuda(ordinal: usize, arena: usize, f: impl FnOnce() -> Result<()>) -> Result<Replay> {
    use anyhow::{anyhow, bail, Context};
    use cudarc::driver::sys;
    let gpu = crate::cuda::gpu(ordinal)?;
    let stream = &gpu.stream;
    let use_arena = arena > 0 && std::env::var("SMELT_CUDA_ARENA").map_or(true, |v| v != "0");
    let arena =
        if use_arena { Some(crate::cuda::DeviceBuf::alloc(&gpu, crate::DType::U32, arena.div_ceil(4))?) } else { None };
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| anyhow!("cuda:{ordinal}: cannot start a capture: {e:?}"))?;
    // Host copies to this GPU are refused inside (`cuda::capture`), except the constants
    // staged in page-locked memory that the graph keeps.
    let (body, pinned) = crate::cuda::capture::during(ordinal, || match &arena {
        // SAFETY: the arena is this GPU's, 256-byte aligned (a driver allocation), used by
        // nothing else, and kept with the graph (dropped after it).
        Some(a) => unsafe { crate::cuda::arena::bump(ordinal, a.ptr(), 4 * a.len, f) }.0,
        None => f(),
    });
    // End the capture whatever happened, so the stream is usable again.
    let ended = stream.end_capture(sys::CUgraphInstantiate_flags(0));
    body.context("capturing a step")?;
    match ended {
        Ok(Some(graph)) => {
            graph.upload().map_err(|e| anyhow!("cuda:{ordinal}: uploading a captured step: {e:?}"))?;
            Ok(Replay { graph, _pinned: pinned, _arena: arena })
        }
        Ok(None) => bail!("cuda:{ordinal}: the captured step launched nothing"),
        Err(e) => {
            bail!("cuda:{ordinal}: the step could not be captured (it did something a CUDA graph cannot hold): {e:?}")
        }
    }
}
