//! What a phase boundary costs on the GPU: a grid-wide barrier inside one persistent kernel
//! against a kernel boundary, the number docs/CUDA.md's design for one persistent kernel a
//! decode token needs first ("Next: one persistent kernel a decode token").
//!
//!     cargo build --release --features cuda -p smelt-core --example grid_barrier
//!     target/release/examples/grid_barrier            # on the GPU machine
//!     target/release/examples/grid_barrier --compile-only   # NVRTC alone, no GPU
//!
//! One block per SM (all resident), 256 threads. Three timings, each the best of several
//! repetitions of PHASES phases:
//! - `barrier`: one kernel, PHASES grid barriers and nothing else;
//! - `barrier+read`: one kernel, each phase every block reads its share of an 8 MiB buffer
//!   (o's weights at 1B in bf16) with 16-byte loads, then the barrier;
//! - `launches+read`: PHASES launches of a kernel that reads its share of the same buffer (the
//!   per-kernel form a decode step has now, launched back to back on one stream);
//! - `mono`, `mono+read`: the same with the persistent decode kernel's barrier (a counter that
//!   only grows within a launch: one atomic a block, no reset round trip).
//!
//! The barrier is a counter and a generation word in global memory: thread 0 of each block
//! arrives (atomicAdd), the last to arrive resets the counter and bumps the generation, the
//! others spin on the generation (bounded: a block that waits too long sets a flag and the run
//! says the barrier hung instead of hanging the machine). A program that prints numbers, not a
//! test.

#[cfg(feature = "cuda")]
const SRC: &str = r#"
__device__ __forceinline__ bool grid_barrier(unsigned int* count, volatile unsigned int* gen, unsigned int blocks,
                                             unsigned int* hung) {
    __shared__ int ok;
    __syncthreads();
    if (threadIdx.x == 0) {
        ok = 1;
        unsigned int g = *gen;
        __threadfence();
        if (atomicAdd(count, 1) == blocks - 1) {
            atomicExch(count, 0);
            __threadfence();
            atomicAdd((unsigned int*)gen, 1);
        } else {
            long long spins = 0;
            while (*gen == g) {
                if (++spins > (1ll << 26)) { atomicExch(hung, 1); ok = 0; break; }
            }
        }
        __threadfence();
    }
    __syncthreads();
    return ok != 0;  // the same answer in every thread of the block
}

// Every block's share of `words` 16-byte words, summed so the loads are not optimised away.
__device__ __forceinline__ float read_share(const uint4* buf, long long words) {
    float acc = 0.f;
    long long per = (words + gridDim.x - 1) / gridDim.x, lo = per * blockIdx.x, hi = min(words, lo + per);
    for (long long i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        uint4 v = ld_stream(buf + i);
        acc += __uint_as_float(v.x ^ v.y ^ v.z ^ v.w);
    }
    return acc;
}

extern "C" __global__ void barriers(unsigned int* count, unsigned int* gen, unsigned int* hung, int phases,
                                    const uint4* buf, long long words, float* sink) {
    float acc = 0.f;
    for (int p = 0; p < phases; p++) {
        if (words > 0) acc += read_share(buf, words);
        // A hung barrier ends this block's loop (every thread of it alike); the others end at
        // their own bound.
        if (!grid_barrier(count, gen, gridDim.x, hung)) break;
    }
    if (acc == 12345.f) sink[0] = acc;
}

// The persistent decode kernel's barrier (ops/decode_layers/decode_layers.cu): a counter that
// only grows (barrier p opens at p·blocks arrivals: one atomic a block, no reset round trip);
// the last block out zeroes it (and `done`) for the next launch.
__device__ __forceinline__ bool mono_barrier(unsigned int* count, unsigned int target, unsigned int* hung) {
    __shared__ int ok;
    __syncthreads();
    if (threadIdx.x == 0) {
        ok = 1;
        __threadfence();
        atomicAdd(count, 1u);
        volatile unsigned int* c = count;
        long long spins = 0;
        while (*c < target) {
            if ((++spins & 1023) == 0 && spins > (1ll << 26)) { atomicExch(hung, 1); ok = 0; break; }
        }
        __threadfence();
    }
    __syncthreads();
    return ok != 0;
}

extern "C" __global__ void barriers_mono(unsigned int* count, unsigned int* done, unsigned int* hung, int phases,
                                         const uint4* buf, long long words, float* sink) {
    float acc = 0.f;
    for (int p = 0; p < phases; p++) {
        if (words > 0) acc += read_share(buf, words);
        if (!mono_barrier(count, (unsigned int)(p + 1) * gridDim.x, hung)) break;
    }
    __shared__ int last;
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(done, 1u) == gridDim.x - 1;
    __syncthreads();
    if (last && threadIdx.x == 0) {
        atomicExch(count, 0u);
        atomicExch(done, 0u);
        __threadfence();
    }
    if (acc == 12345.f) sink[0] = acc;
}

extern "C" __global__ void one_read(const uint4* buf, long long words, float* sink) {
    float acc = read_share(buf, words);
    if (acc == 12345.f) sink[0] = acc;
}
"#;

#[cfg(feature = "cuda")]
fn main() -> anyhow::Result<()> {
    use cudarc::driver::{LaunchConfig, PushKernelArg};
    use smelt_core::cuda::{self, DeviceBuf};
    use smelt_core::DType;
    use std::time::Instant;

    const PHASES: i32 = 1000;
    const REPS: usize = 5;
    if std::env::args().any(|a| a == "--compile-only") {
        // NVRTC only (no GPU needed): the kernels compile for sm_90.
        cuda::compile::compile("grid_barrier", SRC, (9, 0))?;
        println!("grid_barrier: the kernels compile for sm_90");
        return Ok(());
    }
    let gpu = cuda::gpu(0)?;
    let sms = gpu.sm_count as u32;
    println!("{}: {sms} SMs, one block of 256 threads each", gpu.name);
    let bytes = 8usize << 20;
    let buf = DeviceBuf::from_bytes(&gpu, DType::U32, bytes / 4, &vec![1u8; bytes])?;
    let words = (bytes / 16) as i64;
    let state = DeviceBuf::from_bytes(&gpu, DType::U32, 3, &[0u8; 12])?;
    let (count, gen, hung) = (state.data.slice(0..4), state.data.slice(4..8), state.data.slice(8..12));
    let sink = DeviceBuf::alloc(&gpu, DType::F32, 1)?;
    let cfg = LaunchConfig { grid_dim: (sms, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let barriers = gpu.function("grid_barrier", SRC, "barriers")?;
    let barriers_mono = gpu.function("grid_barrier", SRC, "barriers_mono")?;
    let one_read = gpu.function("grid_barrier", SRC, "one_read")?;
    let time = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        f()?;
        gpu.stream.synchronize()?;
        let mut best = f64::INFINITY;
        for _ in 0..REPS {
            let t = Instant::now();
            f()?;
            gpu.stream.synchronize()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(best / PHASES as f64 * 1e6)
    };
    // The reset-each-time barrier (count, gen), then the persistent decode kernel's growing
    // counter (count, done: a state of its own, both zero). 1000 phases × 132 blocks stays far
    // below 2^32 arrivals.
    let mono = DeviceBuf::from_bytes(&gpu, DType::U32, 2, &[0u8; 8])?;
    let (mcount, mdone) = (mono.data.slice(0..4), mono.data.slice(4..8));
    for (kernel, words_of, (c0, c1)) in
        [(&barriers, "barrier", (&count, &gen)), (&barriers_mono, "mono", (&mcount, &mdone))]
    {
        for (label, w) in [(words_of.to_string(), 0i64), (format!("{words_of}+read"), words)] {
            let us = time(&mut || {
                let mut b = gpu.stream.launch_builder(kernel);
                b.arg(c0).arg(c1).arg(&hung).arg(&PHASES).arg(&buf.data).arg(&w).arg(&sink.data);
                unsafe { b.launch(cfg) }?;
                Ok(())
            })?;
            let flag = gpu.stream.clone_dtoh(&hung)?;
            if flag.iter().any(|&x| x != 0) {
                anyhow::bail!("{label}: the grid barrier hung (not every block resident?)");
            }
            println!("{label:<14} {us:7.2} µs a phase");
        }
    }
    let us = time(&mut || {
        for _ in 0..PHASES {
            let mut b = gpu.stream.launch_builder(&one_read);
            b.arg(&buf.data).arg(&words).arg(&sink.data);
            unsafe { b.launch(cfg) }?;
        }
        Ok(())
    })?;
    println!("{:<14} {us:7.2} µs a phase (a launch each)", "launches+read");
    println!("(8 MiB at 3.3 TB/s is {:.2} µs)", bytes as f64 / 3.3e12 * 1e6);
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("grid_barrier times a GPU: build it with --features cuda (see the header)");
    std::process::exit(2);
}
