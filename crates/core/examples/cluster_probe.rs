//! The two numbers a "cluster a decode layer" design for issue 14's 135M target (≤ 0.25 ms a
//! token) needs first (docs/CUDA.md, "What 135M's ≤ 0.25 ms would take"):
//!
//! - `stream`: how fast B blocks (one an SM, 1 to every SM) stream a 64 MiB buffer with 16-byte
//!   loads, eight in flight a thread: GB/s in all and per block;
//! - `cluster`: what a `barrier.cluster` costs in a 16-block (and 8-block) thread-block cluster,
//!   alone and between phases that each read a 135M layer's 7 MiB in the cluster's blocks: µs a
//!   barrier, µs a phase.
//!
//! Build and run:
//!
//!     cargo build --release --features cuda -p smelt-core --example cluster_probe
//!     target/release/examples/cluster_probe                   # on the GPU machine
//!     target/release/examples/cluster_probe --compile-only    # NVRTC alone, no GPU
//!
//! Each timing is the best of several repetitions. A program that prints numbers, not a test.

#[cfg(feature = "cuda")]
const SRC: &str = r#"
// This block's share of `words` 16-byte words, eight loads in flight a thread, xor-summed so the
// loads stay.
__device__ __forceinline__ unsigned read_share(const uint4* buf, long long words, int part, int parts) {
    long long per = (words + parts - 1) / parts, lo = per * part, hi = min(words, lo + per);
    unsigned acc = 0;
    for (long long i = lo + threadIdx.x; i < hi; i += 8LL * blockDim.x) {
        uint4 v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            long long j = i + (long long)u * blockDim.x;
            v[u] = j < hi ? ld_stream(buf + j) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < 8; u++) acc ^= v[u].x ^ v[u].w;
    }
    return acc;
}

extern "C" __global__ void stream_read(const uint4* buf, long long words, unsigned* sink) {
    unsigned acc = read_share(buf, words, blockIdx.x, gridDim.x);
    if (acc == 0x12345678u) sink[0] = acc;
}

// `phases` cluster barriers; with words > 0 each phase first reads the cluster's share of the
// buffer (this block its part of it).
extern "C" __global__ void cluster_phases(const uint4* buf, long long words, int phases, unsigned* sink) {
    unsigned rank, size;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(size));
    unsigned acc = 0;
    for (int p = 0; p < phases; p++) {
        if (words > 0) acc ^= read_share(buf, words, (int)rank, (int)size);
        asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
    }
    if (acc == 0x12345678u) sink[0] = acc;
}
"#;

#[cfg(feature = "cuda")]
fn main() -> anyhow::Result<()> {
    use cudarc::driver::{sys, LaunchConfig};
    use smelt_core::cuda::{self, launch::Launch, DeviceBuf};
    use smelt_core::DType;
    use std::time::Instant;

    const REPS: usize = 10;
    if std::env::args().any(|a| a == "--compile-only") {
        let ptx = cuda::compile::compile("cluster_probe", SRC, (9, 0))?;
        if let Some(dir) = std::env::var_os("SMELT_DUMP_PTX") {
            std::fs::write(std::path::Path::new(&dir).join("cluster_probe.ptx"), &ptx)?;
            // for ptxas -v
        }
        println!("cluster_probe: the kernels compile for sm_90");
        return Ok(());
    }
    let gpu = cuda::gpu(0)?;
    let sms = gpu.sm_count;
    println!("{}: {sms} SMs", gpu.name);
    let bytes = 64usize << 20;
    let buf = DeviceBuf::from_bytes(&gpu, DType::U32, bytes / 4, &vec![3u8; bytes])?;
    let sink = DeviceBuf::zeros(&gpu, DType::U32, 1)?;
    let words = (bytes / 16) as i64;
    let best = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        f()?;
        gpu.stream.synchronize()?;
        let mut best = f64::MAX;
        for _ in 0..REPS {
            let t = Instant::now();
            f()?;
            gpu.stream.synchronize()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(best)
    };

    let f = gpu.function("cluster_probe", SRC, "stream_read")?;
    println!("stream: 64 MiB, blocks of 512 threads, one an SM");
    for blocks in [1usize, 2, 4, 8, 16, 32, 66, sms] {
        let secs = best(&mut || {
            let mut l = Launch::new(&gpu, &f, "stream_read");
            l.arg(&buf.data).arg(&words).arg(&sink.data);
            let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (512, 1, 1), shared_mem_bytes: 0 };
            unsafe { l.launch(cfg) }.map_err(|e| anyhow::anyhow!("stream_read: {e:?}"))
        })?;
        let gbs = bytes as f64 / secs / 1e9;
        println!("  {blocks:>4} blocks: {gbs:8.1} GB/s, {:6.1} GB/s a block", gbs / blocks as f64);
    }

    let f = gpu.function("cluster_probe", SRC, "cluster_phases")?;
    f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1)
        .map_err(|e| anyhow::anyhow!("non-portable cluster size: {e:?}"))?;
    let layer = (7usize << 20) / 16;
    let phases = 100i32;
    for n in [16u32, 8] {
        for (label, w) in [("barrier", 0i64), ("7 MiB read+barrier", layer as i64)] {
            let r = best(&mut || {
                let mut l = Launch::new(&gpu, &f, "cluster_phases");
                l.cluster(n);
                l.arg(&buf.data).arg(&w).arg(&phases).arg(&sink.data);
                let cfg = LaunchConfig { grid_dim: (n, 1, 1), block_dim: (512, 1, 1), shared_mem_bytes: 0 };
                unsafe { l.launch(cfg) }.map_err(|e| anyhow::anyhow!("cluster of {n}: {e:?}"))
            });
            match r {
                Ok(secs) => println!("cluster {n:>2}: {label:<20} {:7.2} µs a phase", secs / phases as f64 * 1e6),
                Err(e) => println!("cluster {n:>2}: {label:<20} not run: {e:#}"),
            }
        }
    }
    println!("(7 MiB at 1.5 TB/s is {:.2} µs)", (7u64 << 20) as f64 / 1.5e12 * 1e6);
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("cluster_probe times a GPU: build it with --features cuda (see the header)");
    std::process::exit(2);
}
