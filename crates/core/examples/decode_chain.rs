//! What the kernel boundaries of a captured decode step cost, and what would remove them: a
//! CUDA graph of CHAIN small weight-reading kernels (the shape of a decode step: each kernel
//! reads its weights, then the previous kernel's output), timed four ways:
//!
//! - `graph`: the kernels back to back in one captured graph (what smelt replays now);
//! - `graph+alloc`: a stream-ordered allocation and free between kernels, as smelt's ops make
//!   their outputs now (in a graph these become memory nodes between the kernel nodes);
//! - `pdl`: programmatic dependent launch (Hopper): every kernel is launched with
//!   PROGRAMMATIC_STREAM_SERIALIZATION, lets its successor launch at once
//!   (`griddepcontrol.launch_dependents`), issues its first weight loads, and only then waits
//!   for its predecessor (`griddepcontrol.wait`) before reading the activation;
//! - `pdl+alloc`: both (does a memory node between two kernels cost the overlap?).
//!
//! Per kernel µs, best of REPS replays, at three weight sizes a kernel (135M's 0.66 MB o
//! projection, 1B's 8.4 MB o and 33.6 MB down). A program that prints numbers, not a test.
//!
//!     cargo build --release --features cuda -p smelt-core --example decode_chain
//!     target/release/examples/decode_chain                  # on the GPU machine
//!     target/release/examples/decode_chain --compile-only   # NVRTC alone, no GPU

#[cfg(feature = "cuda")]
const SRC: &str = r#"
// Each block reads its share of `words` 16-byte words (8 loads a thread in flight before the
// first is used), then the activation its predecessor wrote, and writes its own.
extern "C" __global__ void chain(const uint4* w, long long words, const float* act_in, float* act_out, int pdl) {
    if (pdl) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    long long per = (words + gridDim.x - 1) / gridDim.x, lo = per * blockIdx.x, hi = min(words, lo + per);
    uint4 first[8];
#pragma unroll
    for (int u = 0; u < 8; u++) {
        long long i = lo + threadIdx.x + (long long)u * blockDim.x;
        first[u] = i < hi ? ld_stream(w + i) : make_uint4(0, 0, 0, 0);
    }
    if (pdl) asm volatile("griddepcontrol.wait;" ::: "memory");
    float acc = act_in[0];
#pragma unroll
    for (int u = 0; u < 8; u++) acc += __uint_as_float(first[u].x ^ first[u].w);
    for (long long i = lo + threadIdx.x + 8ll * blockDim.x; i < hi; i += blockDim.x) {
        uint4 v = ld_stream(w + i);
        acc += __uint_as_float(v.x ^ v.w);
    }
    acc = block_sum(acc);
    if (blockIdx.x == 0 && threadIdx.x == 0) act_out[0] = acc * 1e-30f;
}
"#;

#[cfg(feature = "cuda")]
fn main() -> anyhow::Result<()> {
    use cudarc::driver::{sys, LaunchConfig};
    use smelt_core::cuda::{self, launch::Launch, DeviceBuf};
    use smelt_core::DType;
    use std::time::Instant;

    const CHAIN: usize = 100;
    const REPS: usize = 20;
    if std::env::args().any(|a| a == "--compile-only") {
        cuda::compile::compile("decode_chain", SRC, (9, 0))?;
        println!("decode_chain: the kernel compiles for sm_90");
        return Ok(());
    }
    let gpu = cuda::gpu(0)?;
    let f = gpu.function("decode_chain", SRC, "chain")?;
    println!("{}: {CHAIN} kernels a graph, µs a kernel (best of {REPS} replays)", gpu.name);
    println!(
        "{:>9} {:>8} {:>8} {:>12} {:>8} {:>10} {:>9}",
        "MB/kernel", "ideal", "graph", "graph+alloc", "pdl", "pdl+alloc", "blocks"
    );
    for mb in [0.66f64, 8.4, 33.6] {
        let bytes = (mb * 1e6) as usize / 16 * 16;
        let words = (bytes / 16) as i64;
        // Distinct weights per kernel up to 512 MB (more than L2 holds), then reused.
        let kernels_in_buf = (512e6 / bytes as f64).floor().clamp(1.0, CHAIN as f64) as usize;
        let buf =
            DeviceBuf::from_bytes(&gpu, DType::U32, bytes * kernels_in_buf / 4, &vec![1u8; bytes * kernels_in_buf])?;
        let acts = DeviceBuf::zeros(&gpu, DType::F32, 2 * 64)?;
        // About 8 loads a thread, as smelt's matvecs size their grids.
        let blocks = (words as u64).div_ceil(256 * 8).clamp(1, 4096) as u32;
        let mut row = vec![];
        for (pdl, alloc) in [(false, false), (false, true), (true, false), (true, true)] {
            stream_capture(&gpu)?;
            for i in 0..CHAIN {
                if alloc {
                    // An op's output allocated, and an earlier one freed: two memory nodes.
                    let t = DeviceBuf::alloc(&gpu, DType::F32, 1024)?;
                    drop(t);
                }
                let wp = buf.ptr() + ((i % kernels_in_buf) * bytes) as u64;
                let ain = acts.ptr() + ((i % 2) * 256) as u64;
                let aout = acts.ptr() + (((i + 1) % 2) * 256) as u64;
                let p = pdl as i32;
                let mut l = Launch::new(&gpu, &f, "chain");
                l.arg(&wp).arg(&words).arg(&ain).arg(&aout).arg(&p).programmatic(pdl);
                let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
                if let Err(r) = unsafe { l.launch(cfg) } {
                    let _ = gpu.stream.end_capture(sys::CUgraphInstantiate_flags(0));
                    anyhow::bail!("launch (pdl {pdl}): {r:?}");
                }
            }
            let graph = gpu
                .stream
                .end_capture(sys::CUgraphInstantiate_flags(0))
                .map_err(|e| anyhow::anyhow!("capture: {e:?}"))?
                .ok_or_else(|| anyhow::anyhow!("empty graph"))?;
            graph.launch().map_err(|e| anyhow::anyhow!("{e:?}"))?;
            gpu.stream.synchronize()?;
            let mut best = f64::INFINITY;
            for _ in 0..REPS {
                let t = Instant::now();
                graph.launch().map_err(|e| anyhow::anyhow!("{e:?}"))?;
                gpu.stream.synchronize()?;
                best = best.min(t.elapsed().as_secs_f64());
            }
            row.push(best / CHAIN as f64 * 1e6);
        }
        println!(
            "{mb:>9.2} {:>8.2} {:>8.2} {:>12.2} {:>8.2} {:>10.2} {blocks:>9}",
            bytes as f64 / 3.3e12 * 1e6,
            row[0],
            row[1],
            row[2],
            row[3]
        );
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn stream_capture(gpu: &smelt_core::cuda::Gpu) -> anyhow::Result<()> {
    gpu.stream
        .begin_capture(cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| anyhow::anyhow!("begin capture: {e:?}"))
}

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("decode_chain times a GPU: build it with --features cuda (see the header)");
    std::process::exit(2);
}
