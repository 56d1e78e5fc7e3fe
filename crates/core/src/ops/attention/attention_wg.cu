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

// ---- The forward with its two products overlapped (FlashAttention-3's intra-warpgroup
// pipeline), head dim 64, 64-key tiles.
//
// NW warpgroups a block (128·NW threads; warpgroup w owns query rows i0 + 64w …, 16 a warp)
// share the streamed K and V tiles, so a tile read from L2 feeds 64·NW rows. Per key tile t a
// warpgroup issues S(t+1) = Q·K(t+1)ᵀ and O' = P(t)·V(t) back to back, computes the softmax of
// S(t+1) while the tensor cores work on P(t)·V(t), then folds O' in: o = o·c(t) + O', c(t) the
// rescale its own softmax found. Each product writes a fresh accumulator (scale-d 0 on its first
// k step), so between a product's issue and its wait no other instruction touches the registers
// it writes or reads; wg_keep pins them on both sides, as CUTLASS's warpgroup_fence_operand does.
//
// K runs one tile ahead of V, in rings of NS slots each: at the top of iteration t, K(t+1) and
// V(t) are in shared memory, and K(t+NS) and V(t+NS−1) load into the slots K(t) and V(t−1) left
// (both waited for before the barrier that opens iteration t); NS = 3 gives the copies two
// iterations to land, NS = 2 one.
//
// Rounding: as attn_wg_fwd_d64 except that O' is summed apart and added to the rescaled o (one
// f32 addition per element and tile), so within ATTN_TC of the mma.sync kernels, not their bits.
// Shared memory: Q [64·NW][D+8] (padded rows for ldmatrix), K NS × [BN][D] and V NS × [BN][D] in
// core matrices: (64·NW·(D+8) + 2·NS·BN·D) bf16 and wg_pin's 8 bytes a thread, the launcher's
// formula with NS buffers.

// o = o·c + O' (rows gq: c0, gq+8: c1).
template <int D>
__device__ __forceinline__ void wgp_fold(float (*o)[4], const float (*pv)[4], float c0, float c1) {
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++) {
        o[nt][0] = o[nt][0] * c0 + pv[nt][0];
        o[nt][1] = o[nt][1] * c0 + pv[nt][1];
        o[nt][2] = o[nt][2] * c1 + pv[nt][2];
        o[nt][3] = o[nt][3] * c1 + pv[nt][3];
    }
}

// o = o·c (rows gq: c0, gq+8: c1): the rescale before P·V accumulates onto o (wgw_fwd's IP).
template <int D>
__device__ __forceinline__ void wgp_scale(float (*o)[4], float c0, float c1) {
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++) {
        o[nt][0] *= c0;
        o[nt][1] *= c0;
        o[nt][2] *= c1;
        o[nt][3] *= c1;
    }
}

template <int NW, int NS, int BN = 64, bool SW = false>
__device__ void wgp_fwd(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* out, float* lse, int tq, int tk, int s,
                        int H, int KVH, int window, float scale, const unsigned int* starts, int pc) {
    static_assert(NS >= 2, "K(t+1) and V(t) are read while K(t+NS) and V(t+NS-1) load");
    static_assert(BN == 64 || BN == 128, "key tiles of 64 or 128");
    constexpr int D = 64, NT = 128 * NW, LD = D + 8, KS = D / 16, ROWS = 64 * NW, TS = BN * D;
    extern __shared__ __align__(1024) unsigned char tc_sm[];
    bf16_t* Qs = (bf16_t*)tc_sm;
    bf16_t* Ks = Qs + ROWS * LD;  // NS tiles of K (TS elements each), then NS of V
    bf16_t* Vs = Ks + NS * TS;
    float* Pin = (float*)(Vs + NS * TS);  // 2 floats a thread: wg_pin's slots
    const QTile qt = q_tile<BN>(pc, ROWS, tq, tk, H, KVH, window, starts);
    const int b = qt.b, h = qt.h, g = qt.g, off = qt.off, i0 = qt.i0, ilast = qt.ilast, blo = qt.blo, bhi = qt.bhi;
    const int ntiles = qt.ntiles;
    const long long srow0 = qt.srow0;
    int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, gq = lane >> 2, tq4 = lane & 3;
    int iw = i0 + 64 * wg, wlast = min(tq - 1, iw + 63);  // this warpgroup's rows (maybe all past the end)
    const bf16_t* qh = q + (long long)h * D;
    const bf16_t* kh = k + (long long)g * D;
    const bf16_t* vh = v + (long long)g * D;
    long long qbase = (long long)b * tq, kbase = (long long)b * s;
    // K(t) and V(t) in slot t % NS of their rings.
    // SW: the tiles in the 128-byte swizzled layout (load_rows_sw; Qs' (64·NW)·(D+8) bf16 and
    // the TS-element slots keep every slot 1024-byte aligned), else in core matrices.
    auto load_k = [&](int t) {
        if (t < ntiles) load_rows_l<SW, BN, D, NT>(Ks + (t % NS) * TS, kh, kbase, KVH * D, blo + t * BN, bhi);
    };
    auto load_v = [&](int t) {
        if (t < ntiles) load_rows_l<SW, BN, D, NT>(Vs + (t % NS) * TS, vh, kbase, KVH * D, blo + t * BN, bhi);
    };

    // Every key of the tile at j0 visible to every row of this warpgroup: no masks.
    auto full = [&](int j0) { return q_unmasked<BN, 64>(j0, off, iw, wlast, bhi, window, starts, srow0); };
    load_rows<ROWS, D, NT>(Qs, qh, qbase, H * D, i0, tq);
    // Copy groups, in commit order: {Q, K(0), V(0), K(1)}, then {K(j+1), V(j)} for j = 1 … NS−2,
    // then one a loop iteration t: {K(t+NS), V(t+NS−1)}. So group m holds K(m+1) and V(m) (and
    // group 0 K(0) too): K(m) is in group m−1, V(m) in group m, and waiting for all but the
    // newest NS−2 groups at the top of iteration t finds K(t+1) and V(t) in (the loads get NS−1
    // iterations to land).
    load_k(0);
    load_v(0);
    load_k(1);
    cp_commit();
#pragma unroll
    for (int j = 1; j <= NS - 2; j++) {
        load_k(j + 1);
        load_v(j);
        cp_commit();
    }
    tiles_ready<NS - 2>();
    unsigned qf[KS][4];
#pragma unroll
    for (int ks = 0; ks < KS; ks++) load_a<LD>(qf[ks], Qs, 64 * wg + warp * 16, ks * 16, lane);
    float o[D / 8][4], pv[D / 8][4], sc[BN / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[nt][e] = pv[nt][e] = 0.f;
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) sc[nt][e] = 0.f;
    float m[2], l[2];
    int pos[2], lo[2];
    fwd_rows_init(m, l, pos, lo, iw + warp * 16 + gq, off, window, starts, srow0, tq);
    const float sl2 = scale * LOG2E;
    // S(0) and its softmax.
    wg_keep(sc, BN / 8);
    wg_fence();
    wg_abt_l<SW, D, BN>(sc, qf, Ks);
    wg_commit();
    wg_wait0();
    wg_keep(sc, BN / 8);
    float c0, c1;
    tc_softmax<BN>(sc, m, l, pos, lo, blo, full(blo), sl2, tq4, c0, c1);
    // Every tile but the last: S(t+1) and P(t)·V(t) in flight together. (The last tile is
    // peeled off below: issuing S under a condition made ptxas serialize every wgmma, C7514.)
    for (int t = 0; t + 1 < ntiles; t++) {
        // K(t+1) and V(t) are in; every warpgroup is done with K(t) (S(t) waited for) and
        // V(t−1) (P(t−1)·V(t−1) waited for), whose buffers take K(t+2) and V(t+1).
        tiles_ready<NS - 2>();
        load_k(t + NS);      // into K(t)'s slot: S(t) was waited for in iteration t−1
        load_v(t + NS - 1);  // into V(t−1)'s slot: P(t−1)·V(t−1) was waited for there
        cp_commit();
        unsigned pa[BN / 16][4];
        wg_pack<BN>(sc, pa);
        wg_keep_a(pa, BN / 16);
        wg_keep(sc, BN / 8);
        wg_keep(pv, D / 8);
        wg_fence();
        wg_abt_l<SW, D, BN>(sc, qf, Ks + ((t + 1) % NS) * TS);
        wg_commit();
        wg_pm_l<SW, D, BN>(pv, pa, Vs + (t % NS) * TS, true);
        wg_commit();
        wg_wait1();  // S(t+1) is done; P(t)·V(t) may still run
        wg_keep(sc, BN / 8);
        float n0, n1;
        int j1 = blo + (t + 1) * BN;
        tc_softmax<BN>(sc, m, l, pos, lo, j1, full(j1), sl2, tq4, n0, n1);
        wg_pin(Pin, l[0], l[1]);  // the row sums need every exp2 of the softmax: all of it before the wait
        wg_wait0();
        wg_keep(pv, D / 8);
        wg_keep_a(pa, BN / 16);
        wgp_fold<D>(o, pv, c0, c1);
        c0 = n0;
        c1 = n1;
    }
    {  // the last tile: P·V alone
        tiles_ready<NS - 2>();
        int t = ntiles - 1;
        unsigned pa[BN / 16][4];
        wg_pack<BN>(sc, pa);
        wg_keep_a(pa, BN / 16);
        wg_keep(pv, D / 8);
        wg_fence();
        wg_pm_l<SW, D, BN>(pv, pa, Vs + (t % NS) * TS, true);
        wg_commit();
        wg_wait0();
        wg_keep(pv, D / 8);
        wg_keep_a(pa, BN / 16);
        wgp_fold<D>(o, pv, c0, c1);
    }
    fwd_store<D>(out, lse, o, m, l, b, h, H, tq, qbase, iw + warp * 16 + gq, lane, tq);
}
// MB: at least MB blocks resident an SM (registers capped at 65536 / (128·NW·MB)). BN: keys a
// streamed tile (128: one m64n128 wgmma a k16 step for S, the `wgpn` forms).
#define WGP_FWD_SW(NAME, NW, NS, MB, BN, SW)                                                                               \
    extern "C" __global__ void __launch_bounds__(128 * NW, MB) NAME(const bf16_t* q, const bf16_t* k, const bf16_t* v, \
                                                                    bf16_t* out, float* lse, int tq, int tk, int s,    \
                                                                    int H, int KVH, int window, float scale,           \
                                                                    const unsigned int* starts, int pc) {              \
        wgp_fwd<NW, NS, BN, SW>(q, k, v, out, lse, tq, tk, s, H, KVH, window, scale, starts, pc);                     \
    }
#define WGP_FWD(NAME, NW, NS, MB, BN) WGP_FWD_SW(NAME, NW, NS, MB, BN, false)
// NS: K/V ring slots (3: loads issued two iterations ahead; the `s` forms keep 2, one ahead).
WGP_FWD(attn_wgp_fwd_d64, 2, 3, 1, 64)
WGP_FWD(attn_wgps_fwd_d64, 2, 2, 1, 64)
WGP_FWD(attn_wgp3_fwd_d64, 3, 3, 1, 64)
WGP_FWD(attn_wgp1_fwd_d64, 1, 3, 1, 64)
WGP_FWD(attn_wgp1b3_fwd_d64, 1, 3, 3, 64)
WGP_FWD(attn_wgpn_fwd_d64, 2, 3, 1, 128)
WGP_FWD(attn_wgpn1_fwd_d64, 1, 3, 1, 128)
// The K and V tiles in the 128-byte swizzled layout instead of core matrices (`wgpz`): whether
// the un-swizzled tiles hold wgmma back (examples/wgmma_probe times the layouts alone).
WGP_FWD_SW(attn_wgpz_fwd_d64, 2, 3, 1, 64, true)
WGP_FWD_SW(attn_wgpzn_fwd_d64, 2, 3, 1, 128, true)

// ---- The forward with a copying warp (FlashAttention-3's warp specialisation, without TMA),
// head dim 64. Warpgroups 0 and 1 compute exactly as wgp_fwd with swizzled tiles (rows i0 + 64w …,
// S(t+1) and P(t)·V(t) in flight together); warp 8 only copies K(t) and V(t) into ring slot
// t mod NS. Each slot has two mbarriers in shared memory: `full` (count 32: the copying warp's
// lanes arrive through cp.async.mbarrier.arrive.noinc, each when its own copies of the tile have
// landed) and `empty` (count 8: lane 0 of each computing warp, once its products on the slot are
// waited for). So the computing warps issue no copies and meet no block barrier inside the loop
// (ncu, 2026-12-05: the pipelined forward's copies and per-tile barrier cost it ~15% of its
// stalls). The consumers fence the async proxy after each wait (the copies are generic-proxy
// writes the tensor cores read through the async proxy). No deadlock for NS ≥ 2: the copier
// waits for tile t − NS's slot, which the computing warps free in iteration t − NS, before they
// ever wait for tile t − NS + 2. Without IP, the same bits as attn_wgpz_fwd_d64 at the same
// BN (the same products and softmax in the same order); with IP (below) o·c is rounded before
// the tensor cores add P·V, where wgp_fold takes one fused o·c + pv: within ATTN_TC, not the
// same bits.
// Shared memory: wgp_fwd's (Q, NS slots of K and of V, wg_pin's 8 bytes a thread for 288
// threads) with the 2·NS mbarriers in the scratch's last 256 bytes (only the 256 computing
// threads pin).
__device__ __forceinline__ void mbar_init(unsigned long long* b, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(b)), "r"(count) : "memory");
}
// After the initialising thread's last mbar_init: the inits visible to the async proxy (TMA's
// complete_tx) and to other threads' waits, as CUTLASS's fence_barrier_init.
__device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_arrive(unsigned long long* b) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(b)) : "memory");
}
// Waits until the phase of parity `parity` of barrier b has completed. A wait that never ends (a
// count or parity wrong) traps after 2 s by the global timer (each try_wait may suspend for a
// time the hardware picks, so tries are no clock), so a mistake fails the launch instead of
// hanging the process.
__device__ __forceinline__ void mbar_wait(unsigned long long* b, unsigned parity) {
    unsigned long long t0 = 0;
    for (;;) {
        unsigned done;
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(smem_u32(b)), "r"(parity)
                     : "memory");
        if (done) return;
        unsigned long long now;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
        if (t0 == 0)
            t0 = now;
        else if (now - t0 > 2000000000ull)
            __trap();
    }
}
// An arrival on b once every cp.async this thread issued before it has landed (the count at init
// includes it: .noinc).
__device__ __forceinline__ void cp_async_arrive(unsigned long long* b) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_u32(b)) : "memory");
}
// load_rows_sw's layout for one warp: rows [r0, r0+R) → dst, lane l copying chunks l, l + 32, ….
template <int R>
__device__ __forceinline__ void load_rows_sw_warp(bf16_t* dst, const bf16_t* src, long long base, int stride, int r0,
                                                  int rend, int lane) {
    const int ch = lane & 7;
    const bf16_t* g = src + (base + r0 + (lane >> 3)) * (long long)stride + ch * 8;
    const long long step = 4LL * stride;  // 4 rows a pass
#pragma unroll 8
    for (int i = 0; i < R / 4; i++) {
        int row = (lane >> 3) + 4 * i;
        bool ok = r0 + row < rend;
        cp_async16(dst + row * 64 + ((ch ^ (row & 7)) << 3), ok ? g + i * step : src, ok);
    }
}

// A TMA tensor map (CUtensorMap: 128 opaque bytes the host encodes, cuTensorMapEncodeTiled),
// passed by value as a __grid_constant__ kernel parameter.
struct __align__(64) TmaMap {
    unsigned long long v[16];
};
// The phase of b also waits for `bytes` more bytes of asynchronous copies (this thread's arrival
// counted now).
__device__ __forceinline__ void mbar_expect_tx(unsigned long long* b, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(b)), "r"(bytes) : "memory");
}
// One box of a rank-3 tensor map at (x, y, z) into shared memory at dst, counted on barrier b
// when it lands (the tensor map's swizzle lays it out; dst 1024-byte aligned for the 128-byte one).
__device__ __forceinline__ void tma_load_3d(void* dst, const TmaMap* m, int x, int y, int z, unsigned long long* b) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(
            smem_u32(dst)),
        "l"((unsigned long long)m), "r"(x), "r"(y), "r"(z), "r"(smem_u32(b))
        : "memory");
}

// TMA (km, vm set; the `wgwt` forms): one lane of the copying warp loads each K and V tile with
// the tensor memory accelerator, (KVH·D, Tk, B) maps with 64 × BN boxes in the 128-byte swizzle,
// so the copies are two instructions a tile, land in the layout load_rows_sw makes and need no
// proxy fence (TMA writes through the async proxy); keys past Tk come back as zeros, those past
// the block's last visible key as they are (masked: P = 0 there). The `full` barrier's phase is
// the one arrival with its byte count.
// NW: computing warpgroups (64 query rows each; 2, or 3 as FlashAttention-3 at head dim 64);
// the turns (PP) take two.
// PS (persistent, TMA only; the `wgwq` forms): a grid of about one block an SM, each taking the
// work items blockIdx.x, blockIdx.x + gridDim.x, … of the (nx, H, nz) grid the other forms
// launch (tc_tile_at's order), so the copier streams the next item's K and V while the
// computing warps finish an item, and the computing warps copy the next item's Q (two Q
// buffers) before they start on this one's: short items (T = 1024: ~4.5 key tiles a 128-row
// block) no longer pay a block's start and end at one block an SM. The ring's slots and phases
// run on across items (u: the tiles consumed before).
// EA (not with PS): end-aligned query blocks (q_tile_of's EA), for 192-row blocks at lengths
// 192 does not divide.
template <int NS, int BN, bool PP = false, bool IP = false, int NW = 2, bool PS = false, bool EA = false>
__device__ void wgw_fwd(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* out, float* lse, int tq, int tk, int s,
                        int H, int KVH, int window, float scale, const unsigned int* starts, int pc,
                        const TmaMap* km = nullptr, const TmaMap* vm = nullptr, int nx = 0, int nz = 0) {
    static_assert(NS >= 2, "the copier refills a slot the computing warps freed an iteration before");
    static_assert(BN == 64 || BN == 128, "key tiles of 64 or 128");
    static_assert(!PP || NW == 2, "the turns are between two warpgroups");
    static_assert(!(EA && PS), "end-aligned blocks are the grid's, not the persistent items'");
    constexpr int D = 64, NT = 128 * NW, LD = D + 8, KS = D / 16, ROWS = 64 * NW, TS = BN * D, QB = PS ? 2 : 1;
    extern __shared__ __align__(1024) unsigned char tc_sm[];
    bf16_t* Qs = (bf16_t*)tc_sm;  // QB buffers of ROWS·LD
    bf16_t* Ks = Qs + QB * ROWS * LD;  // NS slots of K (TS elements each), then NS of V
    bf16_t* Vs = Ks + NS * TS;
    float* Pin = (float*)(Vs + NS * TS);  // 2 floats a computing thread: wg_pin's slots
    unsigned long long* full = (unsigned long long*)(Pin + 2 * NT);
    unsigned long long* empty = full + NS;
    // The work items: this block's one, or with PS every gridDim.x-th of nitems.
    const long long nitems = PS ? (long long)nx * H * nz : 1, first = PS ? blockIdx.x : 0, step = PS ? gridDim.x : 1;
    auto item = [&](long long w) {
        return PS ? q_tile_of<BN>(tc_tile_at(w, nx, H, nz, pc), nx, ROWS, tq, tk, H, KVH, window, starts)
                  : q_tile<BN, EA>(pc, ROWS, tq, tk, H, KVH, window, starts);
    };
    const QTile qt = item(first);  // the non-persistent forms' one item
    const int b = qt.b, g = qt.g, blo = qt.blo, bhi = qt.bhi;
    const int ntiles = qt.ntiles;
    const bf16_t* kh = k + (long long)g * D;
    const bf16_t* vh = v + (long long)g * D;
    long long kbase = (long long)b * s;
    if (threadIdx.x == 0) {
        for (int i = 0; i < NS; i++) {
            mbar_init(full + i, km ? 1 : 32);
            mbar_init(empty + i, NT / 32);
        }
        mbar_init_fence();
    }
    __syncthreads();  // the only block-wide barrier: the mbarriers are initialised
    if (threadIdx.x >= NT && km) {
        if (threadIdx.x == NT) {
            int u = 0;  // tiles loaded before
            for (long long w = first; w < nitems; w += step) {
                const QTile it = PS ? item(w) : qt;
                for (int t = 0; t < it.ntiles; t++, u++) {
                    int slot = u % NS;
                    if (u >= NS) mbar_wait(empty + slot, (u / NS - 1) & 1);
                    mbar_expect_tx(full + slot, 2 * TS * 2);
                    tma_load_3d(Ks + slot * TS, km, it.g * D, it.blo + t * BN, it.b, full + slot);
                    tma_load_3d(Vs + slot * TS, vm, it.g * D, it.blo + t * BN, it.b, full + slot);
                }
            }
            // Nothing in flight when the thread ends: the last tile has landed.
            if (u > 0) mbar_wait(full + (u - 1) % NS, ((u - 1) / NS) & 1);
        }
        return;
    }
    if (threadIdx.x >= NT) {
        // The copying warp.
        int lane = threadIdx.x - NT;
        // Each lane's arrival rides on its copies (.noinc); the computing warps fence after their
        // wait. (The copier waiting for its own copies and fencing them itself, `wgwf`, measured
        // slower still on 2026-12-05 and is gone: the consumers' fence was not the cost.)
        for (int t = 0; t < ntiles; t++) {
            int slot = t % NS;
            if (t >= NS) mbar_wait(empty + slot, (t / NS - 1) & 1);  // tile t − NS's products are done
            load_rows_sw_warp<BN>(Ks + slot * TS, kh, kbase, KVH * D, blo + t * BN, bhi, lane);
            load_rows_sw_warp<BN>(Vs + slot * TS, vh, kbase, KVH * D, blo + t * BN, bhi, lane);
            cp_async_arrive(full + slot);
        }
        cp_commit();  // wait_group counts committed groups only
        cp_wait_all();  // nothing in flight when the warp ends
        return;
    }
    int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, gq = lane >> 2, tq4 = lane & 3;
    auto load_q = [&](const QTile& it, int buf) {
        load_rows<ROWS, D, NT>(Qs + buf * ROWS * LD, q + (long long)it.h * D, it.srow0, H * D, it.i0, it.ilast + 1);
        cp_commit();
    };
    if (PS) load_q(qt, 0);
    int u = 0;  // tiles consumed before this item (the ring's position)
    for (long long w = first, n = 0; w < nitems; w += step, n++) {
        const QTile it = PS ? item(w) : qt;
        const int h = it.h, off = it.off, i0 = it.i0, blo = it.blo, bhi = it.bhi, ntiles = it.ntiles;
        const long long srow0 = it.srow0, qbase = it.srow0;
        const int b = it.b;
        const int iend = it.ilast + 1;  // the block's rows end here (Tq, or an end-aligned block's end)
        int iw = i0 + 64 * wg, wlast = min(iend - 1, iw + 63);  // this warpgroup's rows (maybe all past the end)
        auto full_ok = [&](int j0) { return q_unmasked<BN, 64>(j0, off, iw, wlast, bhi, window, starts, srow0); };
        // Tile t's K and V have landed (and are visible to the tensor cores).
        auto landed = [&](int t) {
            mbar_wait(full + (u + t) % NS, ((u + t) / NS) & 1);
            if (!km) fence_proxy_async();
        };
        if (!PS) load_q(it, 0);
        cp_wait_all();
        // Q in (every computing thread's copies); with PS also: every warp has read the previous
        // item's Q, whose buffer takes the next item's now.
        asm volatile("bar.sync 1, %0;\n" ::"n"(NT) : "memory");
        const bf16_t* Qt = Qs + (PS ? (int)(n & 1) * ROWS * LD : 0);
        if (PS && w + step < nitems) load_q(item(w + step), (int)((n + 1) & 1));
        unsigned qf[KS][4];
#pragma unroll
        for (int ks = 0; ks < KS; ks++) load_a<LD>(qf[ks], Qt, 64 * wg + warp * 16, ks * 16, lane);
        // IP: P(t)·V(t) accumulates onto o itself, rescaled by c(t) just before the product is
        // issued (FlashAttention-3's order), instead of into a fresh pv folded in afterwards: 32
        // registers fewer, which 128-key tiles need at 168 registers. (The first, synchronous wgmma
        // forward went wrong accumulating onto a rescaled o, cause unknown; the parity test decides.)
        float o[D / 8][4], pv[IP ? 1 : D / 8][4], sc[BN / 8][4];
#pragma unroll
        for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) o[nt][e] = 0.f;
        if constexpr (!IP) {
#pragma unroll
            for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) pv[nt][e] = 0.f;
        }
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) sc[nt][e] = 0.f;
        float m[2], l[2];
        int pos[2], lo[2];
        fwd_rows_init(m, l, pos, lo, iw + warp * 16 + gq, off, window, starts, srow0, tq);
        const float sl2 = scale * LOG2E;
        landed(0);
        wg_keep(sc, BN / 8);
        wg_fence();
        wg_abt_sw<D, BN>(sc, qf, Ks + (u % NS) * TS);
        wg_commit();
        wg_wait0();
        wg_keep(sc, BN / 8);
        float c0, c1;
        tc_softmax<BN>(sc, m, l, pos, lo, blo, full_ok(blo), sl2, tq4, c0, c1);
        // PP: the two warpgroups take turns issuing their products (FlashAttention-3's ping-pong):
        // warpgroup w waits at named barrier 2 + w for the other's arrival before issuing, then
        // arrives at the other's, so one's softmax runs under the other's products. Warpgroup 1
        // arrives once first (warpgroup 0 goes first) and warpgroup 0 takes that extra arrival back
        // after the loop, so every barrier ends complete.
        if (PP && wg == 1) asm volatile("bar.arrive 2, %0;\n" ::"n"(NT) : "memory");
        for (int t = 0; t + 1 < ntiles; t++) {
            landed(t + 1);
            unsigned pa[BN / 16][4];
            wg_pack<BN>(sc, pa);
            wg_keep_a(pa, BN / 16);
            wg_keep(sc, BN / 8);
            if constexpr (IP) {
                wgp_scale<D>(o, c0, c1);
                wg_keep(o, D / 8);
            } else {
                wg_keep(pv, D / 8);
            }
            if (PP) asm volatile("bar.sync %0, %1;\n" ::"r"(2 + wg), "n"(NT) : "memory");
            wg_fence();
            wg_abt_sw<D, BN>(sc, qf, Ks + ((u + t + 1) % NS) * TS);
            wg_commit();
            if constexpr (IP)
                wg_pm_sw<D, BN>(o, pa, Vs + ((u + t) % NS) * TS, false);
            else
                wg_pm_sw<D, BN>(pv, pa, Vs + ((u + t) % NS) * TS, true);
            wg_commit();
            if (PP) asm volatile("bar.arrive %0, %1;\n" ::"r"(3 - wg), "n"(NT) : "memory");
            wg_wait1();  // S(t+1) is done; P(t)·V(t) may still run
            wg_keep(sc, BN / 8);
            float n0, n1;
            int j1 = blo + (t + 1) * BN;
            tc_softmax<BN>(sc, m, l, pos, lo, j1, full_ok(j1), sl2, tq4, n0, n1);
            wg_pin(Pin, l[0], l[1]);  // the row sums need every exp2 of the softmax: all of it before the wait
            wg_wait0();
            if constexpr (IP)
                wg_keep(o, D / 8);
            else
                wg_keep(pv, D / 8);
            wg_keep_a(pa, BN / 16);
            if (lane == 0) mbar_arrive(empty + (u + t) % NS);  // K(t) and V(t) are read: the slot is free
            if constexpr (!IP) wgp_fold<D>(o, pv, c0, c1);
            c0 = n0;
            c1 = n1;
        }
        if (PP && wg == 0) asm volatile("bar.sync 2, %0;\n" ::"n"(NT) : "memory");  // warpgroup 1's first arrival
        {  // the last tile: P·V alone
            int t = ntiles - 1;
            unsigned pa[BN / 16][4];
            wg_pack<BN>(sc, pa);
            wg_keep_a(pa, BN / 16);
            if constexpr (IP) {
                wgp_scale<D>(o, c0, c1);
                wg_keep(o, D / 8);
                wg_fence();
                wg_pm_sw<D, BN>(o, pa, Vs + ((u + t) % NS) * TS, false);
                wg_commit();
                wg_wait0();
                wg_keep(o, D / 8);
                wg_keep_a(pa, BN / 16);
            } else {
                wg_keep(pv, D / 8);
                wg_fence();
                wg_pm_sw<D, BN>(pv, pa, Vs + ((u + t) % NS) * TS, true);
                wg_commit();
                wg_wait0();
                wg_keep(pv, D / 8);
                wg_keep_a(pa, BN / 16);
                wgp_fold<D>(o, pv, c0, c1);
            }
            // The last slot freed too: with PS the copier refills it for a later item.
            if (PS && lane == 0) mbar_arrive(empty + (u + t) % NS);
        }
        fwd_store<D>(out, lse, o, m, l, b, h, H, tq, qbase, iw + warp * 16 + gq, lane, iend);
        u += ntiles;
    }
}
#define WGW_FWD(NAME, NS, BN, PP, IP)                                                                                        \
    extern "C" __global__ void __launch_bounds__(288, 1) NAME(const bf16_t* q, const bf16_t* k, const bf16_t* v,          \
                                                              bf16_t* out, float* lse, int tq, int tk, int s, int H,        \
                                                              int KVH, int window, float scale,                             \
                                                              const unsigned int* starts, int pc) {                         \
        wgw_fwd<NS, BN, PP, IP>(q, k, v, out, lse, tq, tk, s, H, KVH, window, scale, starts, pc);                          \
    }
// 64-key tiles: at 128 (one m64n128 S product a k16 step, the fastest pipelined form) with a
// separate pv ptxas spilled 188 bytes inside the loop: it gives the 288 threads 168 registers
// each, as if the copying warp were a whole warpgroup (12 warps: 65,536 / 384).
WGW_FWD(attn_wgw_fwd_d64, 4, 64, false, false)
// The two warpgroups taking turns (PP above).
WGW_FWD(attn_wgwp_fwd_d64, 4, 64, true, false)
// The copies by TMA (km, vm above), alone and with the turns. The maps follow the parameters
// the other forms take, so the launcher passes the same arguments and then the two maps.
#define WGWT_FWD(NAME, NS, BN, PP, IP, NW)                                                                                   \
    extern "C" __global__ void __launch_bounds__(128 * NW + 32, 1)                                                      \
        NAME(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* out, float* lse, int tq, int tk, int s, int H,   \
             int KVH, int window, float scale, const unsigned int* starts, int pc, const __grid_constant__ TmaMap km,    \
             const __grid_constant__ TmaMap vm) {                                                                        \
        wgw_fwd<NS, BN, PP, IP, NW>(q, k, v, out, lse, tq, tk, s, H, KVH, window, scale, starts, pc, &km, &vm);           \
    }
WGWT_FWD(attn_wgwt_fwd_d64, 4, 64, false, false, 2)
WGWT_FWD(attn_wgwtp_fwd_d64, 4, 64, true, false, 2)
// (128-key TMA tiles, `wgwtn`, measured slower on 2026-12-05 — ptxas serialised their wgmmas
// for want of registers — and are gone.)
// Three computing warpgroups (192 query rows a block, 416 threads: ~152 registers each), P·V
// onto o (IP) for the registers, 64-key tiles.
WGWT_FWD(attn_wgwt3_fwd_d64, 4, 64, false, true, 3)
// The same with end-aligned blocks (EA above): at T 1024 its short block (64 rows) is the first,
// one key tile long, instead of the last, sixteen (counted: 16% less SM time at T 1024, 5% at
// 2048). Written 2026-12-05 evening, not yet run on a GPU.
#define WGWT_FWD_EA(NAME, NS, NW)                                                                                          \
    extern "C" __global__ void __launch_bounds__(128 * NW + 32, 1)                                                      \
        NAME(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* out, float* lse, int tq, int tk, int s, int H,   \
             int KVH, int window, float scale, const unsigned int* starts, int pc, const __grid_constant__ TmaMap km,    \
             const __grid_constant__ TmaMap vm) {                                                                        \
        wgw_fwd<NS, 64, false, true, NW, false, true>(q, k, v, out, lse, tq, tk, s, H, KVH, window, scale, starts, pc,   \
                                                      &km, &vm);                                                         \
    }
WGWT_FWD_EA(attn_wgwt3e_fwd_d64, 4, 3)
// One computing warpgroup (64 rows) and the copying warp a block, three blocks an SM (registers
// capped at 136, P·V onto o; 3 slots: ~60 KiB a block): the same warps an SM as wgwt3, but a
// block's start (Q's copy, the first S alone) and end (the last P·V alone, the store) run beside
// two other blocks' loops instead of idling the SM — the short blocks at T 1024 (nine 64-key
// tiles on average) are where the one-block forms lose to mma.sync. Written 2026-12-05 evening,
// not yet run.
#define WGWT_FWD_MB(NAME, NS, NW, MB)                                                                                      \
    extern "C" __global__ void __launch_bounds__(128 * NW + 32, MB)                                                     \
        NAME(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* out, float* lse, int tq, int tk, int s, int H,   \
             int KVH, int window, float scale, const unsigned int* starts, int pc, const __grid_constant__ TmaMap km,    \
             const __grid_constant__ TmaMap vm) {                                                                        \
        wgw_fwd<NS, 64, false, true, NW>(q, k, v, out, lse, tq, tk, s, H, KVH, window, scale, starts, pc, &km, &vm);     \
    }
WGWT_FWD_MB(attn_wgwt1_fwd_d64, 3, 1, 3)
// Persistent (PS above): the launcher gives about one block an SM and passes the grid's query
// tiles nx and batches nz after pc, then the two maps.
#define WGWQ_FWD(NAME, NS, IP, NW)                                                                                         \
    extern "C" __global__ void __launch_bounds__(128 * NW + 32, 1)                                                      \
        NAME(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* out, float* lse, int tq, int tk, int s, int H,   \
             int KVH, int window, float scale, const unsigned int* starts, int pc, int nx, int nz,                       \
             const __grid_constant__ TmaMap km, const __grid_constant__ TmaMap vm) {                                     \
        wgw_fwd<NS, 64, false, IP, NW, true>(q, k, v, out, lse, tq, tk, s, H, KVH, window, scale, starts, pc, &km, \
                                                    &vm, nx, nz);                                                        \
    }
WGWQ_FWD(attn_wgwq_fwd_d64, 4, false, 2)
WGWQ_FWD(attn_wgwq3_fwd_d64, 4, true, 3)
// 128-key tiles, P·V accumulating onto o (IP above), with and without the turns.
WGW_FWD(attn_wgwn_fwd_d64, 3, 128, false, true)
WGW_FWD(attn_wgwnp_fwd_d64, 3, 128, true, true)

// A tile walk's position: tile t of a block's (query head, query tile) list and its t / nq, t % nq,
// carried from one tile to the next instead of divided out each tile.
struct WgTile {
    int t, th, tqi;
    __device__ __forceinline__ void next(int nq) {
        t++;
        if (++tqi == nq) {
            tqi = 0;
            th++;
        }
    }
};
// wgp_dkdv's Sᵀ, dPᵀ → Pᵀ, dSᵀ/scale of one tile in place (tc_dkdv's masks and arithmetic),
// MASKED or not: a function of its own so that a tile no mask touches runs a copy without the
// per-element tests. (A generic lambda would do, but the device's NVRTC, CUDA 13, takes one in a
// device function for a host function and refuses it in JIT mode, where the local one did not.)
template <bool MASKED, int BQ>
__device__ __forceinline__ void wgp_grads(float (*sc)[4], float (*dp)[4], const float* Lt, const float* Dt, int i0,
                                          int qhi, int off, int jr, int window, const unsigned int* starts,
                                          long long qbase, int tq4, float sl2) {
#pragma unroll
    for (int nt = 0; nt < BQ / 8; nt++) {
        const float2 l2 = *(const float2*)(Lt + nt * 8 + 2 * tq4);
        const float2 d2 = *(const float2*)(Dt + nt * 8 + 2 * tq4);
        const float lg[2] = {__fmul_rn(l2.x, LOG2E), __fmul_rn(l2.y, LOG2E)}, dl[2] = {d2.x, d2.y};
#pragma unroll
        for (int e = 0; e < 4; e++) {
            bool vis = true;
            if constexpr (MASKED) {
                int i = i0 + nt * 8 + 2 * tq4 + (e & 1), pos = off + i, j = jr + (e < 2 ? 0 : 8);
                vis = i < qhi && j <= pos && j >= tc_key_lo(pos, window) && (!starts || j >= (int)starts[qbase + i]);
            }
            float p = vis ? ex2f(sc[nt][e] * sl2 - lg[e & 1]) : 0.f;
            sc[nt][e] = p;                             // Pᵀ
            dp[nt][e] = p * (dp[nt][e] - dl[e & 1]);  // dSᵀ / scale
        }
    }
}

// ---- dk/dv with its products overlapped, head dim 64, 64-query tiles.
//
// NW warpgroups a block (warpgroup w owns keys j0 + 64w …, 16 a warp, their K and V fragments in
// registers) share the streamed Q, dO, lse and delta tiles. Tile t = (query head, query tile), as
// tc_dkdv orders them. Per tile a warpgroup issues Sᵀ(t+1) = K·Q(t+1)ᵀ and dPᵀ(t+1) = V·dO(t+1)ᵀ
// (fresh accumulators), then dV += Pᵀ(t)·dO(t) and dK += dSᵀ(t)·Q(t) (accumulated in place:
// nothing else touches dV and dK until the end), computes Pᵀ(t+1) and dSᵀ(t+1) while the second
// pair runs, and waits. Tiles t and t+1 are both read during iteration t, so the streamed tiles
// have NB ≥ 3 buffers: tile t+NB−1 loads into the one tile t−1 left (NB = 4: two iterations
// for the copies to land).
//
// Rounding: Pᵀ and dSᵀ as tc_dkdv's; the tensor cores sum each k16 step in their own order, so
// within ATTN_TC of the mma.sync kernels. Shared memory: K and V [64·NW][D+8] (ldmatrix), then
// Q and dO NB × [BQ][D] in core matrices, lse and delta NB × BQ f32:
// (2·64·NW·(D+8) + 2·NB·BQ·D)·2 + 2·NB·BQ·4 bytes (+ wg_pin's scratch), the launcher's formula.
//
// TMA (qm, om set; the `wgt` forms): thread 0 loads each Q and dO tile by TMA ((H·D, Tq, B) maps,
// 64 × 64 boxes in the 128-byte swizzle: SW's layout), counted on the tile's `landed` barrier;
// lse and delta stay cp.async copies; the block barrier a tile stays (it frees the slot the next
// copy takes) but no proxy fence. DS (the dS path, with dst): every tile's dSᵀ/scale as tc_dkdv
// stores it (ds_store_staged; a warpgroup's 64 keys against the 64 queries, skipped where the
// key tile lies past the query tile: no such pair in the triangle), for attn_tc_dqdsz_d64.
template <int NW, int NB, bool SW = false, bool TMA = false, bool DS = false>
__device__ void wgp_dkdv(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse,
                         const float* delta, bf16_t* dk, bf16_t* dv, int tq, int tk, int s, int H, int KVH, int window,
                         float scale, const unsigned int* starts, const unsigned int* ends, int pc, bf16_t* dst = nullptr,
                         const TmaMap* qm = nullptr, const TmaMap* om = nullptr, int hsplit = 1, float* part = nullptr) {
    static_assert(NB >= 3, "tiles t and t+1 are read while t+NB-1 loads");
    static_assert(!TMA || SW, "TMA lays the tiles out in the 128-byte swizzle");
    constexpr int D = 64, BQ = 64, NT = 128 * NW, LD = D + 8, KS = D / 16, ROWS = 64 * NW, TS = BQ * D;
    extern __shared__ __align__(1024) unsigned char tc_sm[];
    bf16_t* Ks = (bf16_t*)tc_sm;
    bf16_t* Vs = Ks + ROWS * LD;
    bf16_t* Qs = Vs + ROWS * LD;         // NB buffers (TS elements each)
    bf16_t* Os = Qs + NB * TS;           // NB buffers
    float* Ls = (float*)(Os + NB * TS);  // NB × BQ: lse
    float* Ds = Ls + NB * BQ;            // NB × BQ: delta
    bf16_t* stage = (bf16_t*)(Ds + NB * BQ);  // DS: 2 KiB a warp
    unsigned long long* landed = (unsigned long long*)(stage + (DS ? NW * 4 * 16 * DS_T : 0));  // TMA: NB barriers
    if constexpr (TMA) {
        if (threadIdx.x == 0) {
            for (int i = 0; i < NB; i++) mbar_init(landed + i, 1);
            mbar_init_fence();
        }
        __syncthreads();  // initialised before any copy counts on them or any thread waits
    }
    TcTile tt = tc_tile(pc);
    // With hsplit > 1 (part set), as tc_dkdv: the grid's y is (KV head, part of its query heads),
    // this block takes heads h0 … h0 + gh − 1 of the group and stores its f32 sums as part hp.
    int b = tt.z, g = tt.y / hsplit, hp = tt.y % hsplit, grp = H / KVH;
    int gp = (grp + hsplit - 1) / hsplit, h0 = hp * gp, gh = max(0, min(gp, grp - h0));
    int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, gq = lane >> 2, tq4 = lane & 3;
    int off = tk - tq;
    int j0 = tt.rank * ROWS, jw = j0 + 64 * wg;  // the block's keys, this warpgroup's
    long long kbase = (long long)b * s, qbase = (long long)b * tq;
    float ak[D / 8][4], av[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) ak[nt][e] = av[nt][e] = 0.f;
    int jr = jw + warp * 16 + gq;  // this lane's key rows: jr, jr + 8
    if (j0 < tk) {
        int jlast = min(tk - 1, j0 + ROWS - 1);
        int qlo = max(0, j0 - off);
        int qhi = window > 0 ? min(tq, jlast + window - off) : tq;
        if (ends) qhi = min(qhi, (int)ends[qbase + jlast]);  // packed: no query after the key's example
        int nq = qhi > qlo ? (qhi - qlo + BQ - 1) / BQ : 0;
        int ntiles = gh * nq;
        load_rows<ROWS, D, NT>(Ks, k + (long long)g * D, kbase, KVH * D, j0, tk);
        load_rows<ROWS, D, NT>(Vs, v + (long long)g * D, kbase, KVH * D, j0, tk);
        // Tile t: query head g·grp + t / nq, queries qlo + (t % nq)·BQ …, buffer t % NB. Both
        // walks over the tiles (the copies' and the products') take them in order, so each
        // carries its (t, t / nq, t % nq) from tile to tile (`WgTile`): two integer divisions a
        // tile were ~25 issued instructions of a loop that is issue-bound.
        WgTile ic{0, 0, 0}, cc{0, 0, 0};  // the next tile to issue; the next to compute
        auto issue = [&]() {
            int t = ic.t, h = g * grp + h0 + ic.th, i0 = qlo + ic.tqi * BQ;
            ic.next(nq);
            if (t >= ntiles) return;
            int nb = t % NB;
            if constexpr (TMA) {
                if (threadIdx.x == 0) {
                    mbar_expect_tx(landed + nb, 2 * TS * 2);
                    tma_load_3d(Qs + nb * TS, qm, h * D, i0, b, landed + nb);
                    tma_load_3d(Os + nb * TS, om, h * D, i0, b, landed + nb);
                }
            } else {
                load_rows_l<SW, BQ, D, NT>(Qs + nb * TS, q + (long long)h * D, qbase, H * D, i0, qhi);
                load_rows_l<SW, BQ, D, NT>(Os + nb * TS, dout + (long long)h * D, qbase, H * D, i0, qhi);
            }
            if (threadIdx.x < BQ) {
                int i = i0 + threadIdx.x;
                long long at = ((long long)b * H + h) * tq + i;
                cp_async4(Ls + nb * BQ + threadIdx.x, lse + (i < qhi ? at : 0), i < qhi);
                cp_async4(Ds + nb * BQ + threadIdx.x, delta + (i < qhi ? at : 0), i < qhi);
            }
        };
        // Copy groups, in commit order: {K, V, tiles 0 and 1}, {tile j+1} for j = 1 … NB−3, then
        // one a loop iteration t: {tile t+NB−1}. So tile m is in group m−1 (tile 0 in group 0),
        // and waiting for all but the newest NB−3 groups at the top of iteration t finds tile
        // t+1 in (the copies get NB−2 iterations to land).
        // Tile m is in (its lse and delta: this block's copies; with TMA its Q and dO: the
        // tile's barrier); every warpgroup is done with the tile before it.
        auto ready = [&](int m) {
            if constexpr (TMA) {
                cp_wait_n<NB - 3>();
                __syncthreads();
                if (m < ntiles) mbar_wait(landed + m % NB, (m / NB) & 1);
            } else {
                tiles_ready<NB - 3>();
            }
        };
        // DS: the computed tile's dSᵀ/scale (dp, after grads) to its place in the triangle.
        auto store_ds = [&](const float (&dsc)[BQ / 8][4]) {
            if constexpr (DS) {
                int h = g * grp + h0 + cc.th, i0 = qlo + cc.tqi * BQ;
                if ((i0 >> 6) >= (jw >> 6))
                    ds_store_staged(dsc, dst + ds_tile(b, h, H, tq, i0 >> 6, jw >> 6) + warp * 16 * DS_T,
                                    stage + (wg * 4 + warp) * 16 * DS_T, lane);
            }
        };
        issue();  // tile 0
        issue();  // tile 1
        cp_commit();
#pragma unroll
        for (int j = 1; j <= NB - 3; j++) {
            issue();  // tile j + 1
            cp_commit();
        }
        ready(0);
        if (ntiles > 0) {
            unsigned kf[KS][4], vf[KS][4];
#pragma unroll
            for (int ks = 0; ks < KS; ks++) {
                load_a<LD>(kf[ks], Ks + (64 * wg + warp * 16) * LD, 0, ks * 16, lane);
                load_a<LD>(vf[ks], Vs + (64 * wg + warp * 16) * LD, 0, ks * 16, lane);
            }
            float sc[BQ / 8][4], dp[BQ / 8][4];
#pragma unroll
            for (int nt = 0; nt < BQ / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) sc[nt][e] = dp[nt][e] = 0.f;
            const float sl2 = scale * LOG2E;
            // Sᵀ(t), dPᵀ(t) → Pᵀ(t), dSᵀ(t)/scale in place (tc_dkdv's masks and arithmetic) for
            // the tile `cc` names. A tile no mask touches takes a path with no per-element test:
            // written as one loop with `if (!full)` inside, ptxas predicated the masks' ~150
            // compares and selects into every tile (ncu, large shape, 2026-12-05). lse and delta
            // are read two columns at a time (columns c and c + 1 of a quad's lane).
            auto grads = [&]() {
                int nb = cc.t % NB, i0 = qlo + cc.tqi * BQ;
                const float* Lt = Ls + nb * BQ;
                const float* Dt = Ds + nb * BQ;
                bool full = i0 + BQ <= qhi && jw + 63 <= off + i0 && jw + 64 <= tk &&
                            (window == 0 || jw >= tc_key_lo(off + i0 + BQ - 1, window)) &&
                            (!starts || jw >= (int)starts[qbase + i0 + BQ - 1]);
                if (full)
                    wgp_grads<false, BQ>(sc, dp, Lt, Dt, i0, qhi, off, jr, window, starts, qbase, tq4, sl2);
                else
                    wgp_grads<true, BQ>(sc, dp, Lt, Dt, i0, qhi, off, jr, window, starts, qbase, tq4, sl2);
            };
            wg_keep(sc, BQ / 8);
            wg_keep(dp, BQ / 8);
            wg_keep(av, D / 8);  // their zeros written before the first fence (PTX's rule)
            wg_keep(ak, D / 8);
            wg_fence();
            wg_abt_l<SW, D, BQ>(sc, kf, Qs);
            wg_abt_l<SW, D, BQ>(dp, vf, Os);
            wg_commit();
            wg_wait0();
            wg_keep(sc, BQ / 8);
            wg_keep(dp, BQ / 8);
            grads();  // tile 0
            store_ds(dp);
            cc.next(nq);
            // Every tile but the last (peeled below, so that no wgmma is issued under a condition).
            for (int t = 0; t + 1 < ntiles; t++) {
                // Tile t+1 is in; every warpgroup is done with tile t−1, whose buffer takes t+NB−1.
                ready(t + 1);
                issue();  // tile t + NB − 1
                cp_commit();
                unsigned pa[BQ / 16][4], sa[BQ / 16][4];
                wg_pack<BQ>(sc, pa);
                wg_pack<BQ>(dp, sa);
                wg_keep_a(pa, BQ / 16);
                wg_keep_a(sa, BQ / 16);
                wg_keep(sc, BQ / 8);
                wg_keep(dp, BQ / 8);
                wg_fence();
                int n0 = (t % NB) * TS, n1 = ((t + 1) % NB) * TS;
                wg_abt_l<SW, D, BQ>(sc, kf, Qs + n1);
                wg_abt_l<SW, D, BQ>(dp, vf, Os + n1);
                wg_commit();
                wg_pm_l<SW, D, BQ>(av, pa, Os + n0, false);
                wg_pm_l<SW, D, BQ>(ak, sa, Qs + n0, false);
                wg_commit();
                wg_wait1();  // Sᵀ(t+1) and dPᵀ(t+1) are done; dV and dK may still run
                wg_keep(sc, BQ / 8);
                wg_keep(dp, BQ / 8);
                grads();  // tile t + 1
                store_ds(dp);
                cc.next(nq);
                wg_wait0();
                wg_keep(av, D / 8);
                wg_keep(ak, D / 8);
                wg_keep_a(pa, BQ / 16);
                wg_keep_a(sa, BQ / 16);
            }
            {
                int n0 = ((ntiles - 1) % NB) * TS;
                unsigned pa[BQ / 16][4], sa[BQ / 16][4];
                wg_pack<BQ>(sc, pa);
                wg_pack<BQ>(dp, sa);
                wg_keep_a(pa, BQ / 16);
                wg_keep_a(sa, BQ / 16);
                wg_fence();
                wg_pm_l<SW, D, BQ>(av, pa, Os + n0, false);
                wg_pm_l<SW, D, BQ>(ak, sa, Qs + n0, false);
                wg_commit();
                wg_wait0();
                wg_keep(av, D / 8);
                wg_keep(ak, D / 8);
                wg_keep_a(pa, BQ / 16);
                wg_keep_a(sa, BQ / 16);
            }
        }
    }
#if DS_BULK
    if (DS && lane == 0) bulk_wait_all();  // the stage is read and every dS tile written
#endif
    int kvs = KVH * D;
    if (part) {
        store_part<D>(part, ak, av, hp, g, kbase, kvs, jr, s, tq4);
        return;
    }
    // Rows past tk (cache rows, or the block entirely past tk) store zeros: the accumulators
    // are zero there (every Pᵀ entry of such a key is masked), and rows ≥ s are skipped.
    store_rows<D>(dk + (long long)g * D, ak, kbase, kvs, jr, s, scale, scale, lane);
    store_rows<D>(dv + (long long)g * D, av, kbase, kvs, jr, s, 1.f, 1.f, lane);
}
#define WGP_DKDV_SW(NAME, NW, NB, MB, SW)                                                                                   \
    extern "C" __global__ void __launch_bounds__(128 * NW, MB) NAME(                                                    \
        const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse, const float* delta,   \
        bf16_t* dk, bf16_t* dv, int tq, int tk, int s, int H, int KVH, int window, float scale,                        \
        const unsigned int* starts, const unsigned int* ends, int pc) {                                                \
        wgp_dkdv<NW, NB, SW>(q, k, v, dout, lse, delta, dk, dv, tq, tk, s, H, KVH, window, scale, starts, ends, pc);  \
    }
#define WGP_DKDV(NAME, NW, NB, MB) WGP_DKDV_SW(NAME, NW, NB, MB, false)
// NB: streamed-tile buffers (4: loads issued two iterations ahead; the `s` form keeps 3, one ahead).
WGP_DKDV(attn_wgp_dkdv_d64, 2, 4, 1)
WGP_DKDV(attn_wgps_dkdv_d64, 2, 3, 1)
WGP_DKDV(attn_wgp1_dkdv_d64, 1, 4, 1)
// Q and dO in the 128-byte swizzled layout (`wgpz`, as the forward's).
WGP_DKDV_SW(attn_wgpz_dkdv_d64, 2, 4, 1, true)
// Q and dO by TMA, storing dS for the dS path's dq (`attn_tc_dqdsz_d64`): the launcher passes
// the dS path's arguments (ds, hsplit, part), then the maps of Q and dO. NW warpgroups (64 keys
// each) a block, MB blocks an SM.
#define WGT_DKDV_DS(NAME, NW, NB, MB)                                                                                      \
    extern "C" __global__ void __launch_bounds__(128 * NW, MB) NAME(                                                     \
        const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse, const float* delta,   \
        bf16_t* dk, bf16_t* dv, int tq, int tk, int s, int H, int KVH, int window, float scale,                        \
        const unsigned int* starts, const unsigned int* ends, int pc, bf16_t* ds, int hsplit, float* part,            \
        const __grid_constant__ TmaMap qm, const __grid_constant__ TmaMap om) {                                        \
        wgp_dkdv<NW, NB, true, true, true>(q, k, v, dout, lse, delta, dk, dv, tq, tk, s, H, KVH, window, scale, starts, \
                                           ends, pc, ds, &qm, &om, hsplit, part);                                      \
    }
// The Hopper default (cuda.rs WG_DS_DKDV): two warpgroups, one block an SM (255 registers).
WGT_DKDV_DS(attn_wgtds_dkdv_d64, 2, 4, 1)
// One warpgroup a block, two blocks an SM (written 2026-12-05 evening, not yet run): the same
// warps an SM, but two blocks whose tiles, barriers, starts and ends do not wait on each other
// (the default's two warpgroups meet at a block barrier every tile, and an SM idles through its
// block's start and end: ncu, 2026-12-05), for twice the Q and dO tile loads a key.
WGT_DKDV_DS(attn_wgtds1_dkdv_d64, 1, 4, 2)

// ---- dq with its products overlapped (and delta, as tc_dq computes it), head dim 64, 64-key
// tiles. NW warpgroups a block (warpgroup w owns query rows i0 + 64w …; Q and dO fragments in
// registers) share the streamed K and V tiles. Per key tile a warpgroup issues S(t+1) = Q·K(t+1)ᵀ
// and dP(t+1) = dO·V(t+1)ᵀ (fresh accumulators), then dQ += dS(t)·K(t) (in place: nothing else
// touches dQ until the store), computes dS(t+1) while that runs, and waits. K(t) and K(t+1),
// V(t+1) are read during iteration t: NB ≥ 3 buffers, tile t+NB−1 loads into tile t−1's.
// Shared memory: Q, dO and out [64·NW][D+8], K and V NB × [BN][D] in core matrices, delta 64·NW
// f32: (3·64·NW·(D+8) + 2·NB·BN·D)·2 + 64·NW·4 bytes (+ wg_pin's scratch), the launcher's formula.
template <int NW, int NB, bool SW = false>
__device__ void wgp_dq(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const bf16_t* out,
                       const float* lse, float* delta, bf16_t* dq, int tq, int tk, int s, int H, int KVH, int window,
                       float scale, const unsigned int* starts, int pc) {
    static_assert(NB >= 3, "tiles t and t+1 are read while t+NB-1 loads");
    constexpr int D = 64, BN = 64, NT = 128 * NW, LD = D + 8, KS = D / 16, ROWS = 64 * NW, TS = BN * D;
    extern __shared__ __align__(1024) unsigned char tc_sm[];
    bf16_t* Qs = (bf16_t*)tc_sm;
    bf16_t* Os = Qs + ROWS * LD;
    bf16_t* Zs = Os + ROWS * LD;            // the block's rows of out, for delta
    bf16_t* Ks = Zs + ROWS * LD;            // NB tiles (TS elements each) of K, then NB of V
    bf16_t* Vs = Ks + NB * TS;
    float* Dsm = (float*)(Vs + NB * TS);    // delta of the block's rows
    float* Pin = Dsm + ROWS;                // 2 floats a thread: wg_pin's slots
    const QTile qt = q_tile<BN>(pc, ROWS, tq, tk, H, KVH, window, starts);
    const int b = qt.b, h = qt.h, g = qt.g, off = qt.off, i0 = qt.i0, ilast = qt.ilast, blo = qt.blo, bhi = qt.bhi;
    const int ntiles = qt.ntiles;
    const long long srow0 = qt.srow0;
    int wg = threadIdx.x >> 7, gw = threadIdx.x >> 5, warp = gw & 3, lane = threadIdx.x & 31, gq = lane >> 2, tq4 = lane & 3;
    int iw = i0 + 64 * wg, wlast = min(tq - 1, iw + 63);
    const bf16_t* kh = k + (long long)g * D;
    const bf16_t* vh = v + (long long)g * D;
    long long qbase = (long long)b * tq, kbase = (long long)b * s;
    auto issue = [&](int t) {
        if (t >= ntiles) return;
        int nb = (t % NB) * TS, j = blo + t * BN;
        load_rows_l<SW, BN, D, NT>(Ks + nb, kh, kbase, KVH * D, j, bhi);
        load_rows_l<SW, BN, D, NT>(Vs + nb, vh, kbase, KVH * D, j, bhi);
    };
    auto full = [&](int j0) { return q_unmasked<BN, 64>(j0, off, iw, wlast, bhi, window, starts, srow0); };
    load_rows<ROWS, D, NT>(Qs, q + (long long)h * D, qbase, H * D, i0, tq);
    load_rows<ROWS, D, NT>(Os, dout + (long long)h * D, qbase, H * D, i0, tq);
    load_rows<ROWS, D, NT>(Zs, out + (long long)h * D, qbase, H * D, i0, tq);
    // Copy groups as wgp_dkdv's: {Q, dO, out, tiles 0 and 1}, {tile j+1} for j = 1 … NB−3, then
    // {tile t+NB−1} a loop iteration; tile m in group m−1.
    issue(0);
    issue(1);
    cp_commit();
#pragma unroll
    for (int j = 1; j <= NB - 3; j++) {
        issue(j + 1);
        cp_commit();
    }
    const float* lh = lse + ((long long)b * H + h) * tq;
    float* dh = delta + ((long long)b * H + h) * tq;
    float L[2], Dl[2];
    int pos[2], lo[2];
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        int r = iw + warp * 16 + gq + 8 * hf;
        L[hf] = r < tq ? lh[r] * LOG2E : 0.f;
        pos[hf] = off + r;
        lo[hf] = tc_row_lo(off + r, window, starts, srow0 + min(r, tq - 1));
    }
    tiles_ready<NB - 3>();
    tc_delta_rows<D, LD>(Zs, Os, Dsm, dh, i0, tq, gw * 16, (gw + 1) * 16, lane);
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        int rr = gw * 16 + gq + 8 * hf;
        Dl[hf] = i0 + rr < tq ? Dsm[rr] : 0.f;
    }
    unsigned qf[KS][4], of[KS][4];
#pragma unroll
    for (int ks = 0; ks < KS; ks++) {
        load_a<LD>(qf[ks], Qs, gw * 16, ks * 16, lane);
        load_a<LD>(of[ks], Os, gw * 16, ks * 16, lane);
    }
    float acc[D / 8][4], sc[BN / 8][4], dp[BN / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[nt][e] = 0.f;
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) sc[nt][e] = dp[nt][e] = 0.f;
    const float sl2 = scale * LOG2E;
    // S(t), dP(t) → dS(t)/scale in sc (tc_dq's masks and arithmetic).
    auto grads = [&](int t) {
        int j0 = blo + t * BN;
        bool f = full(j0);
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int hf = e >> 1;
                bool vis = true;
                if (!f) {
                    int j = j0 + nt * 8 + 2 * tq4 + (e & 1);
                    vis = j >= lo[hf] && j <= pos[hf];
                }
                float p = vis ? ex2f(sc[nt][e] * sl2 - L[hf]) : 0.f;
                sc[nt][e] = p * (dp[nt][e] - Dl[hf]);  // dS / scale
            }
        }
    };
    wg_keep(sc, BN / 8);
    wg_keep(dp, BN / 8);
    wg_keep(acc, D / 8);  // its zeros written before the first fence (PTX's rule)
    wg_fence();
    wg_abt_l<SW, D, BN>(sc, qf, Ks);
    wg_abt_l<SW, D, BN>(dp, of, Vs);
    wg_commit();
    wg_wait0();
    wg_keep(sc, BN / 8);
    wg_keep(dp, BN / 8);
    grads(0);
    for (int t = 0; t + 1 < ntiles; t++) {
        tiles_ready<NB - 3>();  // tile t+1 in; every warpgroup is done with tile t−1, whose buffers take t+NB−1
        issue(t + NB - 1);
        cp_commit();
        unsigned pa[BN / 16][4];
        wg_pack<BN>(sc, pa);
        wg_keep_a(pa, BN / 16);
        wg_keep(sc, BN / 8);
        wg_keep(dp, BN / 8);
        wg_fence();
        int n0 = (t % NB) * TS, n1 = ((t + 1) % NB) * TS;
        wg_abt_l<SW, D, BN>(sc, qf, Ks + n1);
        wg_abt_l<SW, D, BN>(dp, of, Vs + n1);
        wg_commit();
        wg_pm_l<SW, D, BN>(acc, pa, Ks + n0, false);
        wg_commit();
        wg_wait1();  // S(t+1) and dP(t+1) are done; dQ may still run
        wg_keep(sc, BN / 8);
        wg_keep(dp, BN / 8);
        grads(t + 1);
        {
            // every dS value folded into one word for wg_pin: all of grads before the wait
            unsigned x = 0;
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++) x ^= __float_as_uint(sc[nt][0]) ^ __float_as_uint(sc[nt][1]) ^ __float_as_uint(sc[nt][2]) ^ __float_as_uint(sc[nt][3]);
            wg_pin(Pin, __uint_as_float(x), 0.f);
        }
        wg_wait0();
        wg_keep(acc, D / 8);
        wg_keep_a(pa, BN / 16);
    }
    {
        unsigned pa[BN / 16][4];
        wg_pack<BN>(sc, pa);
        wg_keep_a(pa, BN / 16);
        wg_fence();
        wg_pm_l<SW, D, BN>(acc, pa, Ks + ((ntiles - 1) % NB) * TS, false);
        wg_commit();
        wg_wait0();
        wg_keep(acc, D / 8);
        wg_keep_a(pa, BN / 16);
    }
    store_rows<D>(dq + (long long)h * D, acc, qbase, H * D, iw + warp * 16 + gq, tq, scale, scale, lane);
}
#define WGP_DQ_SW(NAME, NW, NB, MB, SW)                                                                                     \
    extern "C" __global__ void __launch_bounds__(128 * NW, MB) NAME(                                                    \
        const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const bf16_t* out, const float* lse,    \
        float* delta, bf16_t* dq, int tq, int tk, int s, int H, int KVH, int window, float scale,                      \
        const unsigned int* starts, int pc) {                                                                          \
        wgp_dq<NW, NB, SW>(q, k, v, dout, out, lse, delta, dq, tq, tk, s, H, KVH, window, scale, starts, pc);         \
    }
#define WGP_DQ(NAME, NW, NB, MB) WGP_DQ_SW(NAME, NW, NB, MB, false)
// NB as wgp_dkdv's (the `s` form keeps 3 buffers).
WGP_DQ(attn_wgp_dq_d64, 2, 4, 1)
WGP_DQ(attn_wgps_dq_d64, 2, 3, 1)
WGP_DQ(attn_wgp1_dq_d64, 1, 4, 1)
// K and V in the 128-byte swizzled layout (`wgpz`, as the forward's).
WGP_DQ_SW(attn_wgpz_dq_d64, 2, 4, 1, true)
