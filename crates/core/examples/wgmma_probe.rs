//! How fast Hopper's `wgmma` runs from shared memory in the layouts smelt's attention kernels
//! use, against the 128-byte swizzled layout FlashAttention-3 and CUTLASS use: the question the
//! pipelined wgmma attention (attention_wg.cu, slower than the mma.sync kernels on an H200,
//! docs/CUDA.md) raises first. If the un-swizzled core-matrix tiles (`load_rows_cm`) cannot feed
//! the tensor cores at full rate, no scheduling of those kernels will.
//!
//! Each block (two warpgroups, one block an SM) fills 32 KiB of shared memory once and then
//! issues `iters` rounds of G independent 64 × N × 64 products (four m64nNk16 wgmmas each, B
//! from shared memory, A from registers), committing each product and waiting for all at the
//! end of the round — the attention's shape: one 64-key tile a product. Variants: the B
//! operand K-major (S = Q·Kᵀ) or N-major (O += P·V), un-swizzled core matrices (the descriptor
//! smelt's kernels build, `wg_desc`) or 128-byte swizzle, N = 64 or 128, G = 1 or 2 products
//! in flight. The values are arbitrary: only the rate is measured.
//!
//!     cargo build --release --features cuda -p smelt-core --example wgmma_probe
//!     target/release/examples/wgmma_probe                   # on an sm_90 GPU
//!     target/release/examples/wgmma_probe --compile-only    # NVRTC alone, no GPU
//!
//! A program that prints numbers, not a test.

/// The wgmma helpers (descriptor, fences, m64n64k16 / m64n128k16) are attention_tc.cu's own:
/// its device functions up to the marker `TO` (no kernel comes before it), so the probe times
/// exactly what the attention kernels issue.
#[cfg(feature = "cuda")]
const TC: &str = include_str!("../src/ops/attention/attention_tc.cu");
#[cfg(feature = "cuda")]
const TO: &str = "// S (64 × BN) = A · Bᵀ";

#[cfg(feature = "cuda")]
const PROBE: &str = r#"
// B's descriptor for k16 step ks. K-major (TB 0): N rows of 64 bf16 (128 bytes). N-major (TB 1):
// 64 k rows of N bf16. SW 0: core matrices of 8 rows × 16 bytes (load_rows_cm's layout); SW 1:
// 128-byte rows, 8-row atoms of 1024 bytes, swizzled (layout type 1 in bits 62-63).
template <int SW, int TB, int N>
__device__ __forceinline__ unsigned long long wr_desc(const bf16_t* b, int ks) {
    if (!TB) {
        if (SW) return wg_desc(b + ks * 16, 16, 1024) | (1ull << 62);
        return wg_desc(b + ks * 2 * 64, 128, 1024);
    }
    if (SW) return wg_desc(b + ks * 16 * 64, 8192, 1024) | (1ull << 62);
    return wg_desc(b + ks * 2 * (N / 8) * 64, (N / 8) * 128, 128);
}

template <int SW, int TB, int N, int G>
__device__ void wr_rate(int iters, float* sink) {
    extern __shared__ __align__(1024) unsigned char wr_sm[];
    unsigned* w = (unsigned*)wr_sm;
    for (int i = threadIdx.x; i < 8192; i += blockDim.x) w[i] = 0x3c003c00u ^ ((i * 2654435761u) & 0x007f007fu);
    fence_proxy_async();
    __syncthreads();
    const bf16_t* b = (const bf16_t*)wr_sm;
    unsigned a[4] = {0x3c003c01u ^ threadIdx.x, 0x3c00bc00u, 0x3c013c00u, 0x3b003b00u ^ threadIdx.x};
    float c[G][N / 8][4];
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int j = 0; j < N / 8; j++) c[g][j][0] = c[g][j][1] = c[g][j][2] = c[g][j][3] = 0.f;
    for (int it = 0; it < iters; it++) {
        wg_fence();
#pragma unroll
        for (int g = 0; g < G; g++) {
#pragma unroll
            for (int ks = 0; ks < 4; ks++) {
                if constexpr (N == 64)
                    wgmma64<TB>(c[g], a, wr_desc<SW, TB, N>(b, ks), 1);
                else
                    wgmma128<TB>(c[g], a, wr_desc<SW, TB, N>(b, ks), 1);
            }
            wg_commit();
        }
        wg_wait0();
#pragma unroll
        for (int g = 0; g < G; g++) wg_keep(c[g], N / 8);
    }
    float s = 0.f;
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int j = 0; j < N / 8; j++) s += c[g][j][0] + c[g][j][1] + c[g][j][2] + c[g][j][3];
    if (s == 1.2345f) sink[0] = s;
}

#define WR(SW, TB, N, G) \
    extern "C" __global__ void __launch_bounds__(256) wr_s##SW##_t##TB##_n##N##_g##G(int iters, float* sink) { \
        wr_rate<SW, TB, N, G>(iters, sink); \
    }
#define WR_G(SW, TB, N) WR(SW, TB, N, 1) WR(SW, TB, N, 2)
#define WR_N(SW, TB) WR_G(SW, TB, 64) WR_G(SW, TB, 128)
WR_N(0, 0)
WR_N(0, 1)
WR_N(1, 0)
WR_N(1, 1)
"#;

#[cfg(feature = "cuda")]
fn source() -> anyhow::Result<&'static str> {
    let Some(b) = TC.find(TO) else {
        anyhow::bail!("wgmma_probe: attention_tc.cu no longer has the marker {TO:?}");
    };
    Ok(Box::leak(format!("{}\n{PROBE}", &TC[..b]).into_boxed_str()))
}

#[cfg(feature = "cuda")]
fn main() -> anyhow::Result<()> {
    use cudarc::driver::{sys, LaunchConfig};
    use smelt_core::cuda::{self, launch::Launch, DeviceBuf};
    use smelt_core::DType;
    use std::time::Instant;

    const MODULE: &str = "wgmma_probe_sm90a";
    let src = source()?;
    if std::env::args().any(|a| a == "--compile-only") {
        let ptx = cuda::compile::compile(MODULE, src, (9, 0))?;
        if let Some(dir) = std::env::var_os("SMELT_DUMP_PTX") {
            std::fs::write(std::path::Path::new(&dir).join("wgmma_probe.ptx"), &ptx)?;
            // for ptxas -v
        }
        println!("wgmma_probe: the kernels compile for sm_90a");
        return Ok(());
    }
    let gpu = cuda::gpu(0)?;
    if gpu.arch != (9, 0) {
        anyhow::bail!("wgmma_probe needs compute capability 9.0 (Hopper); {} is {:?}", gpu.name, gpu.arch);
    }
    let sms = gpu.sm_count;
    println!("{}: {sms} SMs, one block of two warpgroups an SM", gpu.name);
    let sink = DeviceBuf::zeros(&gpu, DType::F32, 1)?;
    let iters = 4096i32;
    println!("{:<10} {:<10} {:>4} {:>3} {:>10}", "B", "layout", "N", "G", "TFLOP/s");
    for tb in [0, 1] {
        for sw in [0, 1] {
            for n in [64usize, 128] {
                for g in [1usize, 2] {
                    let name = format!("wr_s{sw}_t{tb}_n{n}_g{g}");
                    let f = gpu.function(MODULE, src, &name)?;
                    f.set_attribute(
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        33 << 10,
                    )
                    .map_err(|e| anyhow::anyhow!("{name}: shared memory: {e:?}"))?;
                    let run = || -> anyhow::Result<()> {
                        let mut l = Launch::new(&gpu, &f, &name);
                        l.arg(&iters).arg(&sink.data);
                        let cfg = LaunchConfig {
                            grid_dim: (sms as u32, 1, 1),
                            block_dim: (256, 1, 1),
                            shared_mem_bytes: 33 << 10,
                        };
                        unsafe { l.launch(cfg) }.map_err(|e| anyhow::anyhow!("{name}: {e:?}"))
                    };
                    run()?;
                    gpu.stream.synchronize()?;
                    let mut best = f64::MAX;
                    for _ in 0..5 {
                        let t = Instant::now();
                        run()?;
                        gpu.stream.synchronize()?;
                        best = best.min(t.elapsed().as_secs_f64());
                    }
                    // Two warpgroups a block, G products of 64 × N × 64 a round.
                    let flops = 2.0 * 64.0 * n as f64 * 64.0 * g as f64 * iters as f64 * 2.0 * sms as f64;
                    let b = if tb == 0 { "K-major" } else { "N-major" };
                    let lay = if sw == 0 { "core-mat" } else { "swizzle128" };
                    println!("{b:<10} {lay:<10} {n:>4} {g:>3} {:>10.1}", flops / best / 1e12);
                }
            }
        }
    }
    println!("(dense bf16 peak: ~989 TFLOP/s on an H100 SXM at its boost clock; the H200 the same die)");
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("wgmma_probe times a GPU: build it with --features cuda (see the header)");
    std::process::exit(2);
}
