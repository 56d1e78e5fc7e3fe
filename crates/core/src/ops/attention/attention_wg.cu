// The attention kernels on Hopper's warpgroup products (`wgmma`, sm_90a), head dim 64:
// attention_tc.cu's forward, dq and dk/dv with WG = true (their streamed tiles in core
// matrices, the products issued by the warpgroup; see "Hopper" there). This file is compiled
// after attention_tc.cu in one module, `attention_tc_sm90a`, for compute_90a (cuda.rs).
//
// Rounding: S and dP are exact products summed in f32, P and dS rounded to bf16 as operands,
// as in the mma.sync kernels; the tensor cores may sum inside a k16 step in another order, so
// the bits may differ from attn_tc_*_d64 (the tests bound both against the CPU and each other).
// One 16-row tile a warp (the warpgroup's 64 rows): the forward's two-tile form does not apply.
TC_FWD(attn_wg_fwd_d64, 64, 64, 1, true, TC_LB)
TC_DQ(attn_wg_dq_d64, 64, 64, 1, true, TC_LB)
TC_DKDV(attn_wg_dkdv_d64, 64, 64, 1, true, true, TC_LB)

// The two operand layouts of attention_tc.cu's "Hopper" part on one m64n64k16 product, for the test: a (64 × 16, row-major)
// times B (16 × 64, B[k][n] = bt[n·16 + k]), out 64 × 64 row-major, twice: out[0] with B
// stored K-major as the S products store Q (load_rows_cm), out[1] with B stored N-major as the
// dV/dK products read dO and Q. Both must equal a·B. One block of 128 threads.
extern "C" __global__ void __launch_bounds__(TC_THREADS) attn_wg_probe(const bf16_t* a, const bf16_t* bt, float* out) {
    __shared__ __align__(128) bf16_t As[64 * 24];
    __shared__ __align__(1024) bf16_t Bs[64 * 16];   // K-major: core (n/8, k/8) at (n/8·2 + k/8)·128
    __shared__ __align__(1024) bf16_t Bn[16 * 64];   // N-major source: rows k (16) × cols n (64)
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, tq4 = lane & 3;
    for (int i = threadIdx.x; i < 64 * 16; i += TC_THREADS) As[(i / 16) * 24 + i % 16] = a[i];
    load_rows_cm<64, 16>(Bs, bt, 0, 16, 0, 64);
    // bt as a 16 × 64 matrix M[k][n] = bt[n·16 + k]... stored as 16 rows of 64: core matrices
    // (k/8, n/8) at (k/8 · 8 + n/8) · 128, rows k, 16-byte chunks of n.
    for (int i = threadIdx.x; i < 16 * 64; i += TC_THREADS) {
        int kk = i / 64, n = i % 64;
        Bn[((kk / 8) * 8 + n / 8) * 64 + (kk % 8) * 8 + n % 8] = bt[n * 16 + kk];
    }
    cp_commit();
    cp_wait_all();
    fence_proxy_async();
    __syncthreads();
    unsigned af[4];
    load_a<24>(af, As + warp * 16 * 24, 0, 0, lane);
    float c0[8][4], c1[8][4];
    wg_fence();
    wgmma64<0>(c0, af, wg_desc(Bs, 128, 2 * 128), 0);
    wgmma64<1>(c1, af, wg_desc(Bn, 8 * 128, 128), 0);
    wg_commit();
    wg_wait0();
    wg_keep(c0, 8);
    wg_keep(c1, 8);
    for (int nt = 0; nt < 8; nt++)
        for (int e = 0; e < 4; e++) {
            int r = warp * 16 + gq + (e >> 1) * 8, c = nt * 8 + 2 * tq4 + (e & 1);
            out[r * 64 + c] = c0[nt][e];
            out[4096 + r * 64 + c] = c1[nt][e];
        }
}
