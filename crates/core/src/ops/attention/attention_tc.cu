// Attention on tensor cores (FlashAttention-2 scheme), bf16 q/k/v/out/dout/dq/dk/dv, f32
// accumulation, f32 lse and delta; head dim 64 or 128. Same layout and semantics as
// attention.cu (whose delta kernel the backward shares): q (B, Tq, H, D); k, v (B, S, KVH, D),
// first Tk rows valid; query i at position Tk − Tq + i sees keys [lo(i), pos(i)].
//
// Every product is `mma.sync.m16n8k16` (bf16 × bf16 → f32). A block is 4 warps; each warp owns
// 16 rows of the block's 64 (queries in the forward and dq, keys in dk/dv), so a row's softmax
// statistics live in the 4 lanes of one quad and never need shared memory. Tiles of the other
// side stream through shared memory with cp.async, double-buffered: tile t+1 loads while tile t
// is multiplied. Shared tiles are row-major with rows padded by 16 bytes (LD = D + 8), so the
// 8 row addresses of an ldmatrix fall in 8 distinct 16-byte bank groups.
//
// Fragments (PTX ISA, m16n8k16): lane = 4·gq + tq4; an accumulator holds rows gq and gq+8,
// columns 2·tq4 and 2·tq4+1 of an 8-wide n tile. Two adjacent accumulator n tiles, rounded to
// bf16, are exactly the A operand of the next product over those 16 columns (FA2's trick: P and
// dS never touch shared memory).
//
// Rounding: S = Q·Kᵀ and dP = dO·Vᵀ are exact products of the bf16 inputs summed in f32; P and
// dS are rounded to bf16 as operands of P·V, Pᵀ·dO, dS·K and dSᵀ·Q (the f32 kernels keep them
// f32): one more rounding than the scalar bf16 kernels, measured in parity_bf16.rs.
//
// Determinism: no atomics. dq has its own kernel (one block per query tile, loops over keys;
// it also computes delta = rowsum(dO ∘ out) for its rows and stores it); dk/dv another, launched
// after it (one block per key tile, loops over the group's query heads and queries).

#define TC_THREADS 128
#define TC_ROWS 64  // rows a block owns: 4 warps × 16
#define LOG2E 1.4426950408889634f

__device__ __forceinline__ int tc_key_lo(int pos, int window) { return window > 0 ? max(0, pos + 1 - window) : 0; }

// Packed rows (`--packing`, training: Tq = Tk): `starts` (B × T, or null) is each position's
// example start, `ends` the end (exclusive) of its example; a query sees no key before its
// start. `srow` = b·T + i.
__device__ __forceinline__ int tc_row_lo(int pos, int window, const unsigned int* starts, long long srow) {
    int lo = tc_key_lo(pos, window);
    return starts ? max(lo, (int)starts[srow]) : lo;
}

__device__ __forceinline__ unsigned smem_u32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// Which tile a block takes. A grid is (tiles, heads, batch); tiles of one (head, batch) pair
// differ in work (causal: the last query tile of the forward and dq sees every key, the first
// key tile of dk/dv is seen by every query), and blocks start in linear order, so a heavy tile
// started last leaves the GPU idle behind it. Blocks are handed out in chunks of `pc` pairs;
// within a chunk every pair's heaviest tile (rank 0) comes first, then every pair's next one,
// and so on. pc = 1: one pair's tiles after another (its heaviest first); pc = heads · batch:
// the heaviest tiles of the whole grid first (the longest-processing-time order). Only the
// order changes: a block computes what it computed before, so every pc gives the same bits.
struct TcTile {
    int rank, y, z;  // rank 0 = the most work; y, z: the pair (head, batch)
};
// Block L (linear, x fastest) of an (nt, ny, nz) grid: the persistent kernels' work item L.
__device__ __forceinline__ TcTile tc_tile_at(long long L, int nt, int ny, int nz, int pc) {
    int np = ny * nz;
    pc = max(1, min(pc, np));
    int first = (int)(L / ((long long)pc * nt)) * pc, n = min(pc, np - first);
    int w = (int)(L - (long long)first * nt), pair = first + w % n;
    return {w / n, pair % ny, pair / ny};
}
__device__ __forceinline__ TcTile tc_tile(int pc) {
    long long L = blockIdx.x + (long long)gridDim.x * (blockIdx.y + (long long)gridDim.y * blockIdx.z);
    return tc_tile_at(L, gridDim.x, gridDim.y, gridDim.z, pc);
}

// The dS path (training, Tq = Tk): dk/dv stores each (query tile, key tile) pair's dSᵀ/scale as
// a DS_T × DS_T bf16 tile (rows keys, columns queries), and dq is then one product per tile
// (tc_dq_ds) instead of recomputing S and dP. Causal, so key tile kt ≤ query tile qt: the
// tiles of one (batch, head) pair are packed as a triangle, pair (qt, kt) at qt(qt+1)/2 + kt.
#define DS_T 64
__device__ __forceinline__ long long ds_tile(int b, int h, int H, int tq, int qt, int kt) {
    long long nt = (tq + DS_T - 1) / DS_T, tri = nt * (nt + 1) / 2;
    return (((long long)b * H + h) * tri + (long long)qt * (qt + 1) / 2 + kt) * (DS_T * DS_T);
}
// Within a tile, row r's 16-byte chunk c (queries 8c … 8c+7) is stored at chunk c, or with
// SW at chunk c ^ (r & 7): the staged form (DS = 2) writes the warp's 16 rows to shared memory
// with stmatrix, whose 8 row addresses then fall in 8 distinct bank groups, and copies them out
// as they are (one bulk copy), so the tile in memory keeps the swizzle and dq undoes it.
__device__ __forceinline__ int ds_chunk(int r, int c, bool sw) { return sw ? c ^ (r & 7) : c; }
#if __CUDA_ARCH__ >= 900
#define DS_BULK 1
// stmatrix: 4 8×8 bf16 matrices from their mma fragments (lane l: row l/4, columns 2(l%4), +1;
// register i: matrix i) to shared memory, lanes 8i … 8i+7 giving matrix i's row addresses.
__device__ __forceinline__ void stsm_x4(bf16_t* p, const unsigned* r) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(smem_u32(p)), "r"(r[0]),
                 "r"(r[1]), "r"(r[2]), "r"(r[3])
                 : "memory");
}
// Shared-memory writes of this thread (generic proxy) made visible to the bulk copy (async proxy).
__device__ __forceinline__ void ds_fence() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// `bytes` (a multiple of 16) shared → global by the bulk-copy engine, in this thread's bulk group.
__device__ __forceinline__ void bulk_store(void* g, const void* sm, int bytes) {
    asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(g), "r"(smem_u32(sm)), "r"(bytes)
                 : "memory");
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
// This thread's bulk copies have read their shared memory (it may be written again) / are done.
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }
#else
#define DS_BULK 0
#endif

// 16 bytes global → shared, asynchronously; zero-filled when !ok (src is then not read).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool ok) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(ok ? 16 : 0));
}
// 4 bytes global → shared, asynchronously; zero-filled when !ok.
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool ok) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(ok ? 4 : 0));
}
// 2^x as the MUFU computes it, results below 2^-126 flushed to zero (ex2.approx.ftz). exp2f
// without -ftz is the same MUFU.EX2 wrapped in a range test and two multiplies (for denormal
// results), three instructions more an element in kernels whose softmax is ~40% of what they
// issue (SASS, 2026-12-05); a weight below 2^-126 of its row's largest changes no sum.
__device__ __forceinline__ float ex2f(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

__device__ __forceinline__ void ldsm_x4(unsigned* r, const bf16_t* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(unsigned* r, const bf16_t* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

// c += a · b (16×16 · 16×8), bf16 operands, f32 accumulators.
__device__ __forceinline__ void mma16816(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats → bf16x2 (round to nearest even), lo in the low half.
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
#if DS_BULK
// The staged dS store: this warp's 16 × DS_T block of dSᵀ/scale (accumulator fragments dp: rows
// gq and gq + 8 of DS_T / 8 n-tiles, the mma and wgmma layouts alike) rounded to bf16 into its
// 2 KiB stage (stmatrix, swizzled: ds_chunk) and out to `tile` in one bulk copy, once the last
// copy has read the stage. The caller waits for every copy (bulk_wait_all) before it ends.
// attention_wg.cu's dS-path dk/dv; tc_dkdv has the same steps written out (see there).
__device__ __forceinline__ void ds_store_staged(const float (&dp)[DS_T / 8][4], bf16_t* tile, bf16_t* stage, int lane) {
    if (lane == 0) bulk_wait_read();  // the last tile's copy has read the stage
    __syncwarp();
    int m = lane >> 3, row = (lane & 7) + ((m & 1) << 3);
#pragma unroll
    for (int np = 0; np < DS_T / 16; np++) {
        unsigned r4[4] = {pack_bf16(dp[2 * np][0], dp[2 * np][1]), pack_bf16(dp[2 * np][2], dp[2 * np][3]),
                          pack_bf16(dp[2 * np + 1][0], dp[2 * np + 1][1]),
                          pack_bf16(dp[2 * np + 1][2], dp[2 * np + 1][3])};
        stsm_x4(stage + row * DS_T + ds_chunk(row, 2 * np + (m >> 1), true) * 8, r4);
    }
    ds_fence();
    __syncwarp();
    if (lane == 0) bulk_store(tile, stage, 16 * DS_T * 2);
}
#endif

// A fragment (16×16, rows r0.., cols k0..) of a row-major shared tile.
template <int LD>
__device__ __forceinline__ void load_a(unsigned* a, const bf16_t* t, int r0, int k0, int lane) {
    ldsm_x4(a, t + (r0 + (lane & 15)) * LD + k0 + (lane >> 4) * 8);
}
// B fragments of two n tiles (n0.., n0+8..) × k16 (k0..) from a tile stored [n][k] (key rows
// for S = Q·Kᵀ): b[0], b[1] for tile n0, b[2], b[3] for tile n0+8.
template <int LD>
__device__ __forceinline__ void load_b_nk(unsigned* b, const bf16_t* t, int n0, int k0, int lane) {
    ldsm_x4(b, t + (n0 + (lane & 7) + ((lane >> 4) << 3)) * LD + k0 + ((lane >> 3) & 1) * 8);
}
// An A fragment (16 × 16, rows m0.., cols k0..) of a tile stored transposed, [k][m] (the dSᵀ
// tiles for dq_ds): matrix i of the x4 load is (rows m0 + 8·(i & 1), cols k0 + 8·(i >> 1)).
template <int LD>
__device__ __forceinline__ void load_a_t(unsigned* a, const bf16_t* t, int m0, int k0, int lane) {
    ldsm_x4_t(a, t + (k0 + (lane & 7) + ((lane >> 4) << 3)) * LD + m0 + ((lane >> 3) & 1) * 8);
}
// The same from a tile stored [k][n] (V rows for P·V): transposed on load.
template <int LD>
__device__ __forceinline__ void load_b_kn(unsigned* b, const bf16_t* t, int k0, int n0, int lane) {
    ldsm_x4_t(b, t + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + n0 + (lane >> 4) * 8);
}

// Rows [r0, r0+R) of a (…, rows, heads, D) tensor, already offset to its head, → shared
// [R][D+8]; rows at or past rend are zeros. `base` = batch · rows, `stride` = heads · D.
// NT: the block's thread count (every caller's), all sharing the copy. Thread x copies 16-byte
// chunk x % CH of rows x / CH + i·NT/CH: one 64-bit address a call and a fixed step between its
// rows (the generic chunk loop spent ~55 instructions a 16-byte copy on 64-bit index
// arithmetic: a third of what the forward issued a key tile, SASS 2026-12-05).
template <int R, int D, int NT = TC_THREADS>
__device__ __forceinline__ void load_rows(bf16_t* dst, const bf16_t* src, long long base, int stride, int r0, int rend) {
    constexpr int CH = D / 8, LD = D + 8;
    if constexpr (NT % CH == 0 && (R * CH) % NT == 0) {
        constexpr int RS = NT / CH, N = R * CH / NT;
        const int cc = threadIdx.x % CH, rr = threadIdx.x / CH, r = r0 + rr;
        const long long step = (long long)RS * stride;
        const bf16_t* g = src + (base + r) * (long long)stride + cc * 8;
        bf16_t* d = dst + rr * LD + cc * 8;
#pragma unroll
        for (int i = 0; i < N; i++) {
            bool ok = r + i * RS < rend;
            cp_async16(d + i * RS * LD, ok ? g + i * step : src, ok);
        }
    } else {
        for (int c = threadIdx.x; c < R * CH; c += NT) {
            int rr = c / CH, cc = c - rr * CH, r = r0 + rr;
            bool ok = r < rend;
            const bf16_t* g = src + (ok ? (base + r) * (long long)stride : 0) + cc * 8;
            cp_async16(dst + rr * LD + cc * 8, g, ok);
        }
    }
}

// The same two products for MT 16-row tiles of one warp: each B fragment read from shared
// memory feeds MT products (with MT = 2 a warp's ldmatrix traffic per product halves, which is
// what bounds the MT = 1 kernels: 4 warps each reading whole K and V tiles for 16 rows).
template <int D, int BN, int MT>
__device__ __forceinline__ void mm_abt_m(float (*s)[BN / 8][4], const unsigned (*a)[D / 16][4], const bf16_t* bt, int lane) {
    constexpr int LD = D + 8;
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++) {
#pragma unroll
        for (int nn = 0; nn < BN / 16; nn++) {
            unsigned b[4];
            load_b_nk<LD>(b, bt, nn * 16, ks * 16, lane);
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                mma16816(s[mt][2 * nn], a[mt][ks], b[0], b[1]);
                mma16816(s[mt][2 * nn + 1], a[mt][ks], b[2], b[3]);
            }
        }
    }
}
// mm_abt_m with A read from shared memory: MT 16-row slices of a [rows][D] tile starting at `at`
// (dk/dv: the warp's K and V rows; dq: its dO rows, which do not fit the registers at MT = 2).
template <int D, int BN, int MT>
__device__ __forceinline__ void mm_abt_sm(float (*s)[BN / 8][4], const bf16_t* at, const bf16_t* bt, int lane) {
    constexpr int LD = D + 8;
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++) {
        unsigned a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) load_a<LD>(a[mt], at, mt * 16, ks * 16, lane);
#pragma unroll
        for (int nn = 0; nn < BN / 16; nn++) {
            unsigned b[4];
            load_b_nk<LD>(b, bt, nn * 16, ks * 16, lane);
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                mma16816(s[mt][2 * nn], a[mt], b[0], b[1]);
                mma16816(s[mt][2 * nn + 1], a[mt], b[2], b[3]);
            }
        }
    }
}
template <int D, int BN, int MT>
__device__ __forceinline__ void mm_pm_m(float (*o)[D / 8][4], const float (*p)[BN / 8][4], const bf16_t* m, int lane) {
    constexpr int LD = D + 8;
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) {
        unsigned a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            a[mt][0] = pack_bf16(p[mt][2 * kk][0], p[mt][2 * kk][1]);
            a[mt][1] = pack_bf16(p[mt][2 * kk][2], p[mt][2 * kk][3]);
            a[mt][2] = pack_bf16(p[mt][2 * kk + 1][0], p[mt][2 * kk + 1][1]);
            a[mt][3] = pack_bf16(p[mt][2 * kk + 1][2], p[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dn = 0; dn < D / 16; dn++) {
            unsigned b[4];
            load_b_kn<LD>(b, m, kk * 16, dn * 16, lane);
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                mma16816(o[mt][2 * dn], a[mt], b[0], b[1]);
                mma16816(o[mt][2 * dn + 1], a[mt], b[2], b[3]);
            }
        }
    }
}


// ---- Hopper: warpgroup products (`wgmma`, sm_90a only; the WG = true kernels, instantiated in
// attention_wg.cu, whose module is compiled for compute_90a). Elsewhere these bodies are empty:
// nothing outside that module calls them.
//
// A wgmma is issued by the block's 4 warps together (a warpgroup, 64 rows) and the tensor cores
// read its B operand from shared memory once, where mma.sync has each warp read the whole B
// tile through ldmatrix for its own 16 rows (4× the shared-memory bytes: what bounds the
// mma.sync kernels). A stays in registers: the A fragment of m64nNk16 is, warp by warp, the
// A fragment of mma.m16n8k16, and the f32 accumulator of m64nN is, warp by warp, N/8
// accumulators of m16n8, so the softmax and mask code is the same for both.
//
// B tiles (the streamed side: R rows × D columns, bf16) are stored as "core matrices" of 8 rows
// × 16 bytes, 128 contiguous bytes each: core (row group rg, 16-byte column chunk cg) at
// (rg · D/8 + cg) · 128 (load_rows_cm). The same bytes serve both uses:
//   S = A·Bᵀ (B[k = d][n = row]): K-major; descriptor leading byte offset (the two core
//     matrices of a k16 step, along K) 128, stride byte offset (8-row groups, along N) D/8·128.
//   O += P·M (B[k = row][n = d]): N-major ("transposed", d contiguous): leading byte offset
//     (8-row groups, along K) D/8·128, stride byte offset (16-byte d chunks, along N) 128
//     (cute's GmmaDescriptor: for this layout the leading offset is "from the first 8 rows to
//     the next 8 rows", the stride offset "from the first 8 cols to the next 8 cols").
// Every kernel checks both on one product against the f64 one (attn_wg_probe, the test
// `parity_wgmma_attention_layouts_and_dkdv`).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WG_ON 1
#else
#define WG_ON 0
#endif
__device__ __forceinline__ unsigned long long wg_desc(const void* p, unsigned lbo, unsigned sbo) {
    unsigned long long a = (smem_u32(p) & 0x3FFFF) >> 4;
    return a | ((unsigned long long)((lbo >> 4) & 0x3FFF) << 16) | ((unsigned long long)((sbo >> 4) & 0x3FFF) << 32);
}
__device__ __forceinline__ void wg_fence() {
#if WG_ON
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wg_commit() {
#if WG_ON
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wg_wait0() {
#if WG_ON
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#endif
}
// Keeps the work that computed `a` and `b` ahead of the next wgmma.wait_group: a store of them
// to this thread's word of `slot` (shared memory nothing reads). ptxas moves register-only work
// across a wait (and across bar.sync) freely, and sank the softmax under a running P·V below
// the wait that ends it, which is the overlap the pipelined kernels are for; a shared-memory
// store it keeps in order.
__device__ __forceinline__ void wg_pin(float* slot, float a, float b) {
    asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(smem_u32(slot + 2 * threadIdx.x)), "f"(a), "f"(b) : "memory");
}
// Waits until at most one committed group is still running (groups finish in order).
__device__ __forceinline__ void wg_wait1() {
#if WG_ON
    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
#endif
}
// Shared memory written through the generic proxy (cp.async, st.shared) made visible to the
// async proxy wgmma reads through: each writing thread, after its writes, before the barrier.
__device__ __forceinline__ void fence_proxy_async() {
#if WG_ON
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// After a wait: the accumulators and A registers a wgmma used are pinned until here, so the
// compiler neither reads an accumulator early nor reuses an A register while the tensor cores
// may still read it.
__device__ __forceinline__ void wg_keep(float (*c)[4], int n8) {
    for (int j = 0; j < n8; j++)
        asm volatile("" : "+f"(c[j][0]), "+f"(c[j][1]), "+f"(c[j][2]), "+f"(c[j][3])::"memory");
}
__device__ __forceinline__ void wg_keep_a(unsigned (*a)[4], int n) {
    for (int j = 0; j < n; j++) asm volatile("" : "+r"(a[j][0]), "+r"(a[j][1]), "+r"(a[j][2]), "+r"(a[j][3])::"memory");
}
// c (64 × 64 f32; this thread's 8 × 4) = [c +] a · B: a this warp's A fragment (16 × 16), B
// described by `desc`; TB: B N-major. acc = 0: c = a·B.
template <int TB>
__device__ __forceinline__ void wgmma64(float (*c)[4], const unsigned* a, unsigned long long desc, int acc) {
#if WG_ON
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, "
        "{%32,%33,%34,%35}, %36, p, 1, 1, %38;\n}\n"
        : "+f"(c[0][0]), "+f"(c[0][1]), "+f"(c[0][2]), "+f"(c[0][3]), "+f"(c[1][0]), "+f"(c[1][1]), "+f"(c[1][2]),
          "+f"(c[1][3]), "+f"(c[2][0]), "+f"(c[2][1]), "+f"(c[2][2]), "+f"(c[2][3]), "+f"(c[3][0]), "+f"(c[3][1]),
          "+f"(c[3][2]), "+f"(c[3][3]), "+f"(c[4][0]), "+f"(c[4][1]), "+f"(c[4][2]), "+f"(c[4][3]), "+f"(c[5][0]),
          "+f"(c[5][1]), "+f"(c[5][2]), "+f"(c[5][3]), "+f"(c[6][0]), "+f"(c[6][1]), "+f"(c[6][2]), "+f"(c[6][3]),
          "+f"(c[7][0]), "+f"(c[7][1]), "+f"(c[7][2]), "+f"(c[7][3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(acc), "n"(TB));
#endif
}
// The same with N = 128: c (64 × 128 f32; this thread's 16 × 4). One instruction for twice the
// product: a 64-key tile's wgmma is small enough that its fixed costs show (the pipelined forward
// with 128-key tiles, `attn_wgpn*`, times it).
template <int TB>
__device__ __forceinline__ void wgmma128(float (*c)[4], const unsigned* a, unsigned long long desc, int acc) {
#if WG_ON
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
        "{%64,%65,%66,%67}, %68, p, 1, 1, %70;\n}\n"
        : "+f"(c[0][0]), "+f"(c[0][1]), "+f"(c[0][2]), "+f"(c[0][3]), "+f"(c[1][0]), "+f"(c[1][1]),
          "+f"(c[1][2]), "+f"(c[1][3]), "+f"(c[2][0]), "+f"(c[2][1]), "+f"(c[2][2]), "+f"(c[2][3]),
          "+f"(c[3][0]), "+f"(c[3][1]), "+f"(c[3][2]), "+f"(c[3][3]), "+f"(c[4][0]), "+f"(c[4][1]),
          "+f"(c[4][2]), "+f"(c[4][3]), "+f"(c[5][0]), "+f"(c[5][1]), "+f"(c[5][2]), "+f"(c[5][3]),
          "+f"(c[6][0]), "+f"(c[6][1]), "+f"(c[6][2]), "+f"(c[6][3]), "+f"(c[7][0]), "+f"(c[7][1]),
          "+f"(c[7][2]), "+f"(c[7][3]), "+f"(c[8][0]), "+f"(c[8][1]), "+f"(c[8][2]), "+f"(c[8][3]),
          "+f"(c[9][0]), "+f"(c[9][1]), "+f"(c[9][2]), "+f"(c[9][3]), "+f"(c[10][0]), "+f"(c[10][1]),
          "+f"(c[10][2]), "+f"(c[10][3]), "+f"(c[11][0]), "+f"(c[11][1]), "+f"(c[11][2]), "+f"(c[11][3]),
          "+f"(c[12][0]), "+f"(c[12][1]), "+f"(c[12][2]), "+f"(c[12][3]), "+f"(c[13][0]), "+f"(c[13][1]),
          "+f"(c[13][2]), "+f"(c[13][3]), "+f"(c[14][0]), "+f"(c[14][1]), "+f"(c[14][2]), "+f"(c[14][3]),
          "+f"(c[15][0]), "+f"(c[15][1]), "+f"(c[15][2]), "+f"(c[15][3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(acc), "n"(TB));
#endif
}
// S (64 × BN) = A · Bᵀ: A this warp's D/16 fragments, B a [BN][D] tile in core matrices.
// Issued only: the caller fences before and commits, waits and keeps after.
template <int D, int BN>
__device__ __forceinline__ void wg_abt(float (*s)[4], const unsigned (*a)[4], const bf16_t* bt) {
    static_assert(BN == 64 || BN == 128, "one m64n64 or m64n128 product per k16 step");
    // The same descriptor for both: N walks BN/8 row groups SBO apart.
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++) {
        if constexpr (BN == 64)
            wgmma64<0>(s, a[ks], wg_desc(bt + ks * 2 * 64, 128, (D / 8) * 128), ks);
        else
            wgmma128<0>(s, a[ks], wg_desc(bt + ks * 2 * 64, 128, (D / 8) * 128), ks);
    }
}
// P (this warp's f32 accumulators of a 64 × BN product) rounded to bf16 A fragments, as
// mm_pm_m forms them.
template <int BN>
__device__ __forceinline__ void wg_pack(const float (*p)[4], unsigned (*pa)[4]) {
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) {
        pa[kk][0] = pack_bf16(p[2 * kk][0], p[2 * kk][1]);
        pa[kk][1] = pack_bf16(p[2 * kk][2], p[2 * kk][3]);
        pa[kk][2] = pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]);
        pa[kk][3] = pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3]);
    }
}
// O (64 × D) += P · M: `pa` P's fragments (wg_pack; kept by the caller until the wait), M a
// [BN][D] tile in core matrices. Issued only, as wg_abt. The caller pins every register the
// product reads (pa, and o after a rescale) with wg_keep/wg_keep_a before its wg_fence: the
// fence orders only the register writes the compiler has placed before it.
template <int D, int BN>
__device__ __forceinline__ void wg_pm(float (*o)[4], unsigned (*pa)[4], const bf16_t* m, bool fresh = false) {
    static_assert(D == 64, "one m64n64 product per k16 step");
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++)
        wgmma64<1>(o, pa[kk], wg_desc(m + kk * 2 * (D / 8) * 64, (D / 8) * 128, 128), fresh && kk == 0 ? 0 : 1);
}
// The same two products over tiles in the 128-byte swizzled layout (load_rows_sw), layout type
// 1 in the descriptor's bits 62-63. S = A·Bᵀ, B K-major: a k16 step is 32 bytes into each
// 128-byte row, the 8-row atoms 1024 bytes apart (stride byte offset; the leading one unused).
// O += P·M, M N-major (d contiguous, D = 64 one swizzle width): a k16 step is 16 rows, 2048
// bytes, the 8-row atoms along K 1024 apart.
// Each k16 step's descriptor is the tile's plus its byte offset / 16 (the address field holds
// bits 4-17 of a shared address below 256 KiB, so the sum never carries out of it): one add a
// product instead of the address masked, shifted and merged again (wg_desc's ~6 uniform
// instructions, 16 wgmmas a tile in dk/dv).
#define WG_SW128 (1ull << 62)
template <int D, int BN>
__device__ __forceinline__ void wg_abt_sw(float (*s)[4], const unsigned (*a)[4], const bf16_t* bt) {
    static_assert(D == 64 && (BN == 64 || BN == 128), "128-byte rows; one m64n64 or m64n128 product a k16 step");
    const unsigned long long d0 = wg_desc(bt, 16, 1024) | WG_SW128;
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++) {
        // k16 step ks: 32 bytes along each 128-byte row.
        if constexpr (BN == 64)
            wgmma64<0>(s, a[ks], d0 + 2ull * ks, ks);
        else
            wgmma128<0>(s, a[ks], d0 + 2ull * ks, ks);
    }
}
template <int D, int BN>
__device__ __forceinline__ void wg_pm_sw(float (*o)[4], unsigned (*pa)[4], const bf16_t* m, bool fresh = false) {
    static_assert(D == 64, "one m64n64 product per k16 step, d one swizzle width");
    const unsigned long long d0 = wg_desc(m, 16, 1024) | WG_SW128;
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++)  // k16 step kk: 16 rows of 128 bytes
        wgmma64<1>(o, pa[kk], d0 + (unsigned long long)(kk * 16 * D * 2 / 16), fresh && kk == 0 ? 0 : 1);
}
// Either layout's products, by the kernel's choice (SW: swizzled).
template <bool SW, int D, int BN>
__device__ __forceinline__ void wg_abt_l(float (*s)[4], const unsigned (*a)[4], const bf16_t* bt) {
    if constexpr (SW)
        wg_abt_sw<D, BN>(s, a, bt);
    else
        wg_abt<D, BN>(s, a, bt);
}
template <bool SW, int D, int BN>
__device__ __forceinline__ void wg_pm_l(float (*o)[4], unsigned (*pa)[4], const bf16_t* m, bool fresh) {
    if constexpr (SW)
        wg_pm_sw<D, BN>(o, pa, m, fresh);
    else
        wg_pm<D, BN>(o, pa, m, fresh);
}
// Rows [r0, r0+R) of a (…, rows, heads, D) tensor → shared memory as core matrices; rows at or
// past rend are zeros. A warp writes 4 whole core matrices (512 contiguous bytes) a pass; its
// reads are 8 rows × 64 bytes.
template <int R, int D, int NT = TC_THREADS>
__device__ __forceinline__ void load_rows_cm(bf16_t* dst, const bf16_t* src, long long base, int stride, int r0, int rend) {
    constexpr int CH = D / 8;
    if constexpr ((NT / 8) % CH == 0 && (R * CH) % NT == 0) {
        // As load_rows (NT the block's threads): chunk c = x + i·NT keeps its column group and
        // row within the core matrix, its row group advancing NT/8/CH a step (rows 8× that).
        constexpr int RS = NT / CH, N = R * CH / NT;
        const int core = threadIdx.x >> 3, rg = core / CH, cg = core - rg * CH, r = r0 + rg * 8 + (threadIdx.x & 7);
        const long long step = (long long)RS * stride;
        const bf16_t* g = src + (base + r) * (long long)stride + cg * 8;
#pragma unroll
        for (int i = 0; i < N; i++) {
            bool ok = r + i * RS < rend;
            cp_async16(dst + (threadIdx.x + i * NT) * 8, ok ? g + i * step : src, ok);
        }
    } else {
        for (int c = threadIdx.x; c < R * CH; c += NT) {
            int core = c >> 3, rin = c & 7, rg = core / CH, cg = core - rg * CH, r = r0 + rg * 8 + rin;
            bool ok = r < rend;
            const bf16_t* g = src + (ok ? (base + r) * (long long)stride : 0) + cg * 8;
            cp_async16(dst + c * 8, g, ok);
        }
    }
}
// Rows [r0, r0+R) of a (…, rows, heads, 64) tensor → shared memory in the 128-byte swizzled
// layout (wgmma's layout type 1; FlashAttention-3's and CUTLASS's): row r's 16-byte chunk c at
// byte r·128 + ((c ^ (r mod 8))·16), 8-row atoms of 1024 bytes; `dst` 1024-byte aligned (the
// hardware swizzles the address bits). Rows at or past rend are zeros. Thread x copies chunk x
// mod 8 of rows x/8 + i·NT/8: NT/8 a multiple of 8 keeps r mod 8, and so the swizzle, fixed, one
// 64-bit address a call (load_rows' form). The `wgpz` forwards' K and V tiles (`wg_abt_sw`,
// `wg_pm_sw` read them).
template <int R, int D, int NT>
__device__ __forceinline__ void load_rows_sw(bf16_t* dst, const bf16_t* src, long long base, int stride, int r0, int rend) {
    static_assert(D == 64, "one 128-byte row a tile row");
    static_assert((NT / 8) % 8 == 0 && (R * 8) % NT == 0, "whole passes of 8-row groups");
    constexpr int RS = NT / 8, N = R * 8 / NT;
    const int row = threadIdx.x >> 3, ch = threadIdx.x & 7, r = r0 + row;
    bf16_t* d = dst + row * 64 + ((ch ^ (row & 7)) << 3);
    const bf16_t* g = src + (base + r) * (long long)stride + ch * 8;
    const long long step = (long long)RS * stride;
#pragma unroll
    for (int i = 0; i < N; i++) {
        bool ok = r + i * RS < rend;
        cp_async16(d + i * RS * 64, ok ? g + i * step : src, ok);
    }
}
// Either layout's tile copy (SW: load_rows_sw, else core matrices).
template <bool SW, int R, int D, int NT>
__device__ __forceinline__ void load_rows_l(bf16_t* dst, const bf16_t* src, long long base, int stride, int r0, int rend) {
    if constexpr (SW)
        load_rows_sw<R, D, NT>(dst, src, base, stride, r0, rend);
    else
        load_rows_cm<R, D, NT>(dst, src, base, stride, r0, rend);
}
// A streamed tile: core matrices for the wgmma kernels, padded rows for mma.sync.
template <bool WG, int R, int D>
__device__ __forceinline__ void load_tile(bf16_t* dst, const bf16_t* src, long long base, int stride, int r0, int rend) {
    if constexpr (WG)
        load_rows_cm<R, D>(dst, src, base, stride, r0, rend);
    else
        load_rows<R, D>(dst, src, base, stride, r0, rend);
}
// All but the newest N committed groups of this thread's cp.async copies are done.
template <int N>
__device__ __forceinline__ void cp_wait_n() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
// tile_ready for a deeper pipeline: the copies of all but the newest N groups are in, made
// visible to wgmma (the proxy fence), and every thread of the block is past the barrier.
template <int N>
__device__ __forceinline__ void tiles_ready() {
    cp_wait_n<N>();
    fence_proxy_async();
    __syncthreads();
}
// The shared-memory barrier after a tile's copies: the proxy fence first for wgmma.
template <bool WG>
__device__ __forceinline__ void tile_ready() {
    cp_wait_all();
    if constexpr (WG) fence_proxy_async();
    __syncthreads();
}

__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Stores a 16 × D accumulator (rows r, r+8 of this lane) × mul[row] as bf16 rows of a
// (…, rows, heads, D) tensor offset to its head; rows at or past rend are skipped.
template <int D>
__device__ __forceinline__ void store_rows(bf16_t* dst, const float (*o)[4], long long base, int stride, int r, int rend,
                                           float mul0, float mul1, int lane) {
    int tq4 = lane & 3;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        int rr = r + 8 * half;
        if (rr >= rend) continue;
        float mul = half ? mul1 : mul0;
        unsigned* row = (unsigned*)(dst + (base + rr) * (long long)stride);
#pragma unroll
        for (int nt = 0; nt < D / 8; nt++) row[(nt * 8 + 2 * tq4) >> 1] = pack_bf16(o[nt][2 * half] * mul, o[nt][2 * half + 1] * mul);
    }
}

// The online softmax of one key tile (keys j0 …) of a 16-row tile, this lane's two rows (pos, lo:
// their last and first visible key; full: no masks): masks, new maxima m, P = exp2(S·scale·log2e
// − m) in place, the row sums l; c0, c1: what o must be scaled by. tc_fwd's and wgp_fwd's.
template <int BN>
__device__ __forceinline__ void tc_softmax(float (*sc)[4], float* m, float* l, const int* pos, const int* lo, int j0,
                                            bool full, float sl2, int tq4, float& c0, float& c1) {
    // Masks and maxima on the raw scores; the maxima scaled once: sl2 > 0 and rounding is
    // monotonic, so the largest score scaled is the largest scaled score (m is in the scaled
    // domain). Each weight is then 2^(s·sl2 − m) from one fused multiply-add (one rounding, as
    // the backward's P = 2^(s·sl2 − lse·log2e)), not a rounded product and a subtraction.
    float mx0 = -SM_INF, mx1 = -SM_INF;
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt++) {
        if (!full) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int j = j0 + nt * 8 + 2 * tq4 + (e & 1), hf = e >> 1;
                if (!(j >= lo[hf] && j <= pos[hf])) sc[nt][e] = -SM_INF;
            }
        }
        mx0 = fmaxf(mx0, fmaxf(sc[nt][0], sc[nt][1]));
        mx1 = fmaxf(mx1, fmaxf(sc[nt][2], sc[nt][3]));
    }
    float mn0 = fmaxf(m[0], quad_max(mx0) * sl2), mn1 = fmaxf(m[1], quad_max(mx1) * sl2);
    float base0 = mn0 == -SM_INF ? 0.f : mn0, base1 = mn1 == -SM_INF ? 0.f : mn1;
    c0 = ex2f(m[0] - base0);
    c1 = ex2f(m[1] - base1);
    m[0] = mn0;
    m[1] = mn1;
    float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt++) {
        sc[nt][0] = ex2f(fmaf(sc[nt][0], sl2, -base0));
        sc[nt][1] = ex2f(fmaf(sc[nt][1], sl2, -base0));
        sc[nt][2] = ex2f(fmaf(sc[nt][2], sl2, -base1));
        sc[nt][3] = ex2f(fmaf(sc[nt][3], sl2, -base1));
        rs0 += sc[nt][0] + sc[nt][1];
        rs1 += sc[nt][2] + sc[nt][3];
    }
    l[0] = l[0] * c0 + rs0;  // this lane's share of the row sum; the quad adds them at the end
    l[1] = l[1] * c1 + rs1;
}

// delta = rowsum(dO ∘ out) of block rows [r0, r1) (this warp's), from the padded shared rows
// of out (Zs) and dO (Os), in attn_bwd_delta's order (lane l sums columns l, l + 32, …; then
// warp_sum), so the same bits as that kernel: into Dsm and, for rows before tq, into dh (for
// dk/dv, which runs after the dq kernel). tc_dq's and wgp_dq's.
template <int D, int LD>
__device__ __forceinline__ void tc_delta_rows(const bf16_t* Zs, const bf16_t* Os, float* Dsm, float* dh, int i0, int tq,
                                              int r0, int r1, int lane) {
    for (int rr = r0; rr < r1; rr++) {
        float acc = 0.f;
        for (int d = lane; d < D; d += 32) acc += to_f(Zs[rr * LD + d]) * to_f(Os[rr * LD + d]);
        acc = warp_sum(acc);
        if (lane == 0) {
            Dsm[rr] = acc;
            if (i0 + rr < tq) dh[i0 + rr] = acc;
        }
    }
    __syncwarp();
}

// A query-tile block's place (the forwards' and the dq kernels'): batch b, query head h and its
// KV head g, the queries' offset off in the keys, the block's first and last query rows i0 and
// ilast (the longest, last query tiles first), its first and past-last visible keys blo and bhi,
// and the BN-key tiles between them.
struct QTile {
    int b, h, g, off, i0, ilast, blo, bhi, ntiles;
    long long srow0;
};
// tt: the block's tile of a grid nx query tiles wide. EA (end-aligned): the tiles are laid from
// the last query back, so when `rows` does not divide Tq the short tile is the first (rows 0 …,
// the fewest keys to see) rather than the last (the most): a 192-row forward at T 1024 otherwise
// runs its longest block with one warpgroup of three. Its rows end at ilast either way.
template <int BN, bool EA = false>
__device__ __forceinline__ QTile q_tile_of(TcTile tt, int nx, int rows, int tq, int tk, int H, int KVH, int window,
                                           const unsigned int* starts) {
    QTile t;
    t.b = tt.z, t.h = tt.y, t.g = t.h / (H / KVH);
    t.off = tk - tq;
    if constexpr (EA) {
        int end = tq - tt.rank * rows;
        t.i0 = max(0, end - rows);
        t.ilast = end - 1;
    } else {
        t.i0 = (nx - 1 - tt.rank) * rows;
        t.ilast = min(tq - 1, t.i0 + rows - 1);
    }
    t.srow0 = (long long)t.b * tq;
    t.blo = tc_row_lo(t.off + t.i0, window, starts, t.srow0 + t.i0), t.bhi = t.off + t.ilast + 1;
    t.ntiles = (t.bhi - t.blo + BN - 1) / BN;
    return t;
}
template <int BN, bool EA = false>
__device__ __forceinline__ QTile q_tile(int pc, int rows, int tq, int tk, int H, int KVH, int window,
                                        const unsigned int* starts) {
    return q_tile_of<BN, EA>(tc_tile(pc), gridDim.x, rows, tq, tk, H, KVH, window, starts);
}

// Every key of the BN-key tile at j0 visible to every query row first … first + R − 1 (last: the
// last of them before the end, whose example start bounds a packed batch): no masks needed. The
// forwards' and dq's test of a key tile.
template <int BN, int R>
__device__ __forceinline__ bool q_unmasked(int j0, int off, int first, int last, int bhi, int window,
                                           const unsigned int* starts, long long srow0) {
    return j0 + BN - 1 <= off + first && j0 + BN <= bhi &&
           (window == 0 || j0 >= tc_key_lo(off + first + R - 1, window)) && (!starts || j0 >= (int)starts[srow0 + last]);
}

// A forward's running state for this lane's two rows i and i + 8: maxima m = −∞, sums l = 0,
// positions pos = off + row in the keys, first visible keys lo.
__device__ __forceinline__ void fwd_rows_init(float* m, float* l, int* pos, int* lo, int i, int off, int window,
                                              const unsigned int* starts, long long srow0, int tq) {
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        m[hf] = -SM_INF;
        l[hf] = 0.f;
        pos[hf] = off + i + 8 * hf;
        lo[hf] = tc_row_lo(pos[hf], window, starts, srow0 + min(pos[hf] - off, tq - 1));
    }
}

// A forward's end for one warp's 16-row tile (rows r0 and r0 + 8 of this lane): out = o / l,
// lse = (m + log2 l)·ln 2; l is this lane's share of the row sums (the quad adds them).
// Rows at or past rend (Tq, or the end of an end-aligned block's rows) are not stored.
template <int D>
__device__ __forceinline__ void fwd_store(bf16_t* out, float* lse, const float (*o)[4], const float* m, const float* l,
                                          int b, int h, int H, int tq, long long qbase, int r0, int lane, int rend) {
    float l0 = quad_sum(l[0]), l1 = quad_sum(l[1]);
    float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
    store_rows<D>(out + (long long)h * D, o, qbase, H * D, r0, rend, inv0, inv1, lane);
    if ((lane & 3) == 0) {
        const float ln2 = 0.6931471805599453f;
        float* lh = lse + ((long long)b * H + h) * tq;
        if (r0 < rend) lh[r0] = (m[0] + log2f(l0)) * ln2;
        if (r0 + 8 < rend) lh[r0 + 8] = (m[1] + log2f(l1)) * ln2;
    }
}

// Forward. grid (ceil(Tq/(64·MT)), H, B), block 128, shared (64·MT + 4·BN)·(D+8) bf16. Each
// warp owns MT tiles of 16 query rows (rows warp·16·MT + 16·mt + gq, +8); per row the order of
// every operation is the same whatever MT, so MT = 1 and 2 give identical bits.
template <int D, int BN, int MT, bool WG>
__device__ void tc_fwd(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* out, float* lse, int tq, int tk, int s,
                       int H, int KVH, int window, float scale, const unsigned int* starts, int pc) {
    static_assert(!WG || MT == 1, "wgmma: the warpgroup's 64 rows, 16 a warp");
    constexpr int LD = D + 8, KS = D / 16, ROWS = TC_ROWS * MT, TS = WG ? BN * D : BN * LD;
    extern __shared__ __align__(1024) unsigned char tc_sm[];
    bf16_t* Qs = (bf16_t*)tc_sm;
    bf16_t* Ks = Qs + ROWS * LD;  // 2 tiles (TS elements each) of K, then of V
    bf16_t* Vs = Ks + 2 * TS;
    const QTile qt = q_tile<BN>(pc, ROWS, tq, tk, H, KVH, window, starts);
    const int b = qt.b, h = qt.h, g = qt.g, off = qt.off, i0 = qt.i0, ilast = qt.ilast, blo = qt.blo, bhi = qt.bhi;
    const int ntiles = qt.ntiles;
    const long long srow0 = qt.srow0;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, tq4 = lane & 3;
    const bf16_t* qh = q + (long long)h * D;
    const bf16_t* kh = k + (long long)g * D;
    const bf16_t* vh = v + (long long)g * D;
    long long qbase = (long long)b * tq, kbase = (long long)b * s;
    load_rows<ROWS, D>(Qs, qh, qbase, H * D, i0, tq);
    load_tile<WG, BN, D>(Ks, kh, kbase, KVH * D, blo, bhi);
    load_tile<WG, BN, D>(Vs, vh, kbase, KVH * D, blo, bhi);
    cp_commit();
    tile_ready<WG>();
    unsigned qf[MT][KS][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int ks = 0; ks < KS; ks++) load_a<LD>(qf[mt][ks], Qs, warp * 16 * MT + mt * 16, ks * 16, lane);
    float o[MT][D / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < D / 8; nt++) o[mt][nt][0] = o[mt][nt][1] = o[mt][nt][2] = o[mt][nt][3] = 0.f;
    float m[MT][2], l[MT][2];
    int pos[MT][2], lo[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
        fwd_rows_init(m[mt], l[mt], pos[mt], lo[mt], i0 + warp * 16 * MT + mt * 16 + gq, off, window, starts, srow0,
                      tq);
    const float sl2 = scale * LOG2E;
    for (int t = 0; t < ntiles; t++) {
        int j0 = blo + t * BN;
        if (t > 0) {
            tile_ready<WG>();  // tile t is in; every warp is done with tile t−1 (the buffer refilled next)
        }
        if (t + 1 < ntiles) {
            int nb = (t + 1) & 1;
            load_tile<WG, BN, D>(Ks + nb * TS, kh, kbase, KVH * D, j0 + BN, bhi);
            load_tile<WG, BN, D>(Vs + nb * TS, vh, kbase, KVH * D, j0 + BN, bhi);
        }
        cp_commit();
        const bf16_t* Kt = Ks + (t & 1) * TS;
        const bf16_t* Vt = Vs + (t & 1) * TS;
        float sc[MT][BN / 8][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++) sc[mt][nt][0] = sc[mt][nt][1] = sc[mt][nt][2] = sc[mt][nt][3] = 0.f;
        if constexpr (WG) {
            wg_fence();
            wg_abt<D, BN>(sc[0], qf[0], Kt);
            wg_commit();
            wg_wait0();
            wg_keep(sc[0], BN / 8);
        } else {
            mm_abt_m<D, BN, MT>(sc, qf, Kt, lane);
        }
        // Masks only where the tile crosses the diagonal, the window's edge or the end.
        bool full = q_unmasked<BN, ROWS>(j0, off, i0, ilast, bhi, window, starts, srow0);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            float c0, c1;
            tc_softmax<BN>(sc[mt], m[mt], l[mt], pos[mt], lo[mt], j0, full, sl2, tq4, c0, c1);
#pragma unroll
            for (int nt = 0; nt < D / 8; nt++) {
                o[mt][nt][0] *= c0;
                o[mt][nt][1] *= c0;
                o[mt][nt][2] *= c1;
                o[mt][nt][3] *= c1;
            }
        }
        if constexpr (WG) {
            unsigned pa[BN / 16][4];
            wg_pack<BN>(sc[0], pa);
            wg_keep_a(pa, BN / 16);
            // P·V into a fresh accumulator, then added to the rescaled o: accumulating onto o
            // in place after the rescale gave rows with several key tiles slightly wrong (as if
            // the product read o before the rescale; 2026-12-04, H200), so o is left to the
            // ordinary registers here. (Hypothesis under test; see the branch's commit.)
            float pv[D / 8][4];
            wg_fence();
            wg_pm<D, BN>(pv, pa, Vt, true);
            wg_commit();
            wg_wait0();
            wg_keep(pv, D / 8);
            wg_keep_a(pa, BN / 16);
#pragma unroll
            for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) o[0][nt][e] += pv[nt][e];
        } else {
            mm_pm_m<D, BN, MT>(o, sc, Vt, lane);
        }
    }
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
        fwd_store<D>(out, lse, o[mt], m[mt], l[mt], b, h, H, tq, qbase, i0 + warp * 16 * MT + mt * 16 + gq, lane, tq);
}

// dq = scale · Σ_j dS_ij k_j, dS = P ∘ (dO·Vᵀ − delta). grid (ceil(Tq/(64·MT)), H, B), block
// 128, shared (2·64·MT + 4·BN)·(D+8) bf16. Each warp owns MT tiles of 16 query rows; Q's
// fragments stay in registers, dO's too at MT = 1 (at MT = 2 they are read from shared memory
// each key tile: the registers hold the two tiles' dq instead). Per row the operations and
// their order are the same for every MT and BN (a key tile is summed 16 keys at a time, in key
// order), so all instantiations give identical bits.
template <int D, int BN, int MT, bool WG>
__device__ void tc_dq(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const bf16_t* out,
                      const float* lse, float* delta, bf16_t* dq, int tq, int tk, int s, int H, int KVH, int window,
                      float scale, const unsigned int* starts, int pc) {
    static_assert(!WG || MT == 1, "wgmma: the warpgroup's 64 rows, 16 a warp");
    constexpr int LD = D + 8, KS = D / 16, ROWS = TC_ROWS * MT, TS = WG ? BN * D : BN * LD;
    extern __shared__ __align__(1024) unsigned char tc_sm[];
    bf16_t* Qs = (bf16_t*)tc_sm;
    bf16_t* Os = Qs + ROWS * LD;
    bf16_t* Ks = Os + ROWS * LD;  // 2 tiles (TS elements each) of K, then of V
    bf16_t* Vs = Ks + 2 * TS;
    bf16_t* Zs = Vs + 2 * TS;          // the block's rows of out, for delta
    float* Dsm = (float*)(Zs + ROWS * LD);  // delta of the block's rows
    const QTile qt = q_tile<BN>(pc, ROWS, tq, tk, H, KVH, window, starts);
    const int b = qt.b, h = qt.h, g = qt.g, off = qt.off, i0 = qt.i0, ilast = qt.ilast, blo = qt.blo, bhi = qt.bhi;
    const int ntiles = qt.ntiles;
    const long long srow0 = qt.srow0;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, tq4 = lane & 3;
    const bf16_t* kh = k + (long long)g * D;
    const bf16_t* vh = v + (long long)g * D;
    long long qbase = (long long)b * tq, kbase = (long long)b * s;
    load_rows<ROWS, D>(Qs, q + (long long)h * D, qbase, H * D, i0, tq);
    load_rows<ROWS, D>(Os, dout + (long long)h * D, qbase, H * D, i0, tq);
    load_rows<ROWS, D>(Zs, out + (long long)h * D, qbase, H * D, i0, tq);
    load_tile<WG, BN, D>(Ks, kh, kbase, KVH * D, blo, bhi);
    load_tile<WG, BN, D>(Vs, vh, kbase, KVH * D, blo, bhi);
    cp_commit();
    const float* lh = lse + ((long long)b * H + h) * tq;
    float* dh = delta + ((long long)b * H + h) * tq;
    float L[MT][2], Dl[MT][2];
    int pos[MT][2], lo[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            int r = i0 + warp * 16 * MT + mt * 16 + gq + 8 * hf;
            L[mt][hf] = r < tq ? lh[r] * LOG2E : 0.f;
            pos[mt][hf] = off + r;
            lo[mt][hf] = tc_row_lo(off + r, window, starts, srow0 + min(r, tq - 1));
        }
    tile_ready<WG>();
    tc_delta_rows<D, LD>(Zs, Os, Dsm, dh, i0, tq, warp * 16 * MT, (warp + 1) * 16 * MT, lane);
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            int rr = warp * 16 * MT + mt * 16 + gq + 8 * hf;
            Dl[mt][hf] = i0 + rr < tq ? Dsm[rr] : 0.f;
        }
    const bf16_t* Ow = Os + warp * 16 * MT * LD;
    unsigned qf[MT][KS][4], of[MT == 1 ? KS : 1][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int ks = 0; ks < KS; ks++) load_a<LD>(qf[mt][ks], Qs, warp * 16 * MT + mt * 16, ks * 16, lane);
    if constexpr (MT == 1) {
#pragma unroll
        for (int ks = 0; ks < KS; ks++) load_a<LD>(of[ks], Ow, 0, ks * 16, lane);
    }
    float acc[MT][D / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < D / 8; nt++) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.f;
    const float sl2 = scale * LOG2E;
    for (int t = 0; t < ntiles; t++) {
        int j0 = blo + t * BN;
        if (t > 0) {
            tile_ready<WG>();
        }
        if (t + 1 < ntiles) {
            int nb = (t + 1) & 1;
            load_tile<WG, BN, D>(Ks + nb * TS, kh, kbase, KVH * D, j0 + BN, bhi);
            load_tile<WG, BN, D>(Vs + nb * TS, vh, kbase, KVH * D, j0 + BN, bhi);
        }
        cp_commit();
        const bf16_t* Kt = Ks + (t & 1) * TS;
        const bf16_t* Vt = Vs + (t & 1) * TS;
        float sc[MT][BN / 8][4], dp[MT][BN / 8][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) sc[mt][nt][e] = dp[mt][nt][e] = 0.f;
        if constexpr (WG) {
            wg_fence();
            wg_abt<D, BN>(sc[0], qf[0], Kt);
            wg_abt<D, BN>(dp[0], of, Vt);
            wg_commit();
            wg_wait0();
            wg_keep(sc[0], BN / 8);
            wg_keep(dp[0], BN / 8);
        } else if constexpr (MT == 1) {
            mm_abt_m<D, BN, MT>(sc, qf, Kt, lane);
            mm_abt_m<D, BN, 1>(dp, (const unsigned (*)[KS][4])of, Vt, lane);
        } else {
            mm_abt_m<D, BN, MT>(sc, qf, Kt, lane);
            mm_abt_sm<D, BN, MT>(dp, Ow, Vt, lane);
        }
        bool full = q_unmasked<BN, ROWS>(j0, off, i0, ilast, bhi, window, starts, srow0);
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int hf = e >> 1;
                    bool vis = true;
                    if (!full) {
                        int j = j0 + nt * 8 + 2 * tq4 + (e & 1);
                        vis = j >= lo[mt][hf] && j <= pos[mt][hf];
                    }
                    float p = vis ? ex2f(sc[mt][nt][e] * sl2 - L[mt][hf]) : 0.f;
                    sc[mt][nt][e] = p * (dp[mt][nt][e] - Dl[mt][hf]);  // dS / scale
                }
            }
        if constexpr (WG) {
            unsigned pa[BN / 16][4];
            wg_pack<BN>(sc[0], pa);
            wg_keep_a(pa, BN / 16);
            wg_fence();
            wg_pm<D, BN>(acc[0], pa, Kt);
            wg_commit();
            wg_wait0();
            wg_keep(acc[0], D / 8);
            wg_keep_a(pa, BN / 16);
        } else {
            mm_pm_m<D, BN, MT>(acc, sc, Kt, lane);
        }
    }
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
        store_rows<D>(dq + (long long)h * D, acc[mt], qbase, H * D, i0 + warp * 16 * MT + mt * 16 + gq, tq, scale, scale, lane);
}

// Part hp of a head-split dk/dv (hsplit > 1): this warp's unscaled f32 sums ak and av of rows r
// and r + 8 (rows ≥ s skipped) into part hp's dk, then its dv, each (B·S, KVH, D), which
// attn_tc_dkdv_sum adds in part order.
template <int D>
__device__ __forceinline__ void store_part(float* part, const float (&ak)[D / 8][4], const float (&av)[D / 8][4], int hp,
                                           int g, long long kbase, int kvs, int r, int s, int tq4) {
    long long n = (long long)gridDim.z * s * kvs;
    float* pk = part + (2LL * hp) * n + (long long)g * D;
    float* pv = pk + n;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        int rr = r + 8 * half;
        if (rr >= s) continue;
        long long at = (kbase + rr) * (long long)kvs;
#pragma unroll
        for (int nt = 0; nt < D / 8; nt++) {
            int c = nt * 8 + 2 * tq4;
            *(float2*)(pk + at + c) = make_float2(ak[nt][2 * half], ak[nt][2 * half + 1]);
            *(float2*)(pv + at + c) = make_float2(av[nt][2 * half], av[nt][2 * half + 1]);
        }
    }
}

// dk = scale · Σ_i dS_ij q_i, dv = Σ_i P_ij dO_i over every query head of the group and every
// query that sees key j; rows Tk ≤ j < S (unused cache rows) get zeros. One block per 64·MT
// keys; each warp computes Sᵀ = K_w·Qᵀ and dPᵀ = V_w·dOᵀ for its MT tiles of 16 keys against a
// tile of BQ queries (each Q and dO fragment read from shared memory feeds MT products). grid
// (ceil(S/(64·MT)), KVH, B), block 128, shared (2·64·MT + 4·BQ)·(D+8) bf16 + 4·BQ f32. As in dq,
// every (MT, BQ) gives identical bits (queries summed 16 at a time, in order).
//
// KR (MT = 1 only): the warp's K and V rows are read into registers once as A fragments (32
// registers) instead of from shared memory for every query tile, one eighth less shared-memory
// traffic a tile; the same products in the same order.
//
// DS (the dS path, dq_ds below): every tile's dSᵀ/scale, rounded to bf16 as the dK product
// takes it, is also stored to `dst` (ds_tile's layout), for a dq kernel that is then one
// product instead of three. Needs Tq = Tk and 64 × 64 tiles (MT = 1, BQ = 64). DS = 1: each
// lane stores its words (4 bytes, 8 rows × 16 bytes an instruction); DS = 2: the warp's 16 × 64
// block through shared memory (stmatrix, swizzled: ds_chunk) and out in one 2 KiB bulk copy
// (compute capability 9.0; before it, the words go straight to the swizzled places). The
// launcher gives DS = 2 8 KiB more shared memory: a 2 KiB stage a warp after delta's rows.
template <int D, int BQ, int MT, bool KR, bool WG, int DS = 0>
__device__ void tc_dkdv(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse,
                        const float* delta, bf16_t* dk, bf16_t* dv, int tq, int tk, int s, int H, int KVH, int window,
                        float scale, const unsigned int* starts, const unsigned int* ends, int pc, bf16_t* dst = nullptr,
                        int hsplit = 1, float* part = nullptr) {
    static_assert(!KR || MT == 1, "K and V fragments in registers: one 16-row tile a warp");
    static_assert(!WG || KR, "wgmma takes K and V from registers");
    static_assert(!DS || (MT == 1 && BQ == DS_T && !WG), "dS tiles: 64 keys × 64 queries, mma.sync");
    constexpr int LD = D + 8, ROWS = TC_ROWS * MT, TS = WG ? BQ * D : BQ * LD;
    extern __shared__ __align__(1024) unsigned char tc_sm[];
    bf16_t* Ks = (bf16_t*)tc_sm;
    bf16_t* Vs = Ks + ROWS * LD;
    bf16_t* Qs = Vs + ROWS * LD;  // 2 buffers (TS elements each)
    bf16_t* Os = Qs + 2 * TS;     // 2 buffers
    float* Ls = (float*)(Os + 2 * TS);  // 2 × BQ: lse
    float* Ds = Ls + 2 * BQ;                 // 2 × BQ: delta
    TcTile tt = tc_tile(pc);
    // With hsplit > 1 (part set) the grid's y is (KV head, part of its query heads): this block
    // takes query heads h0 … h0 + gh − 1 of the group and stores its unscaled f32 sums as part
    // hp, which attn_tc_dkdv_sum adds in part order (a GQA group of many heads over few key
    // tiles is otherwise a few long blocks the rest of the grid waits for).
    int b = tt.z, g = tt.y / hsplit, hp = tt.y % hsplit, grp = H / KVH;
    int gp = (grp + hsplit - 1) / hsplit, h0 = hp * gp, gh = max(0, min(gp, grp - h0));
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, tq4 = lane & 3;
    int off = tk - tq;
    int j0 = tt.rank * ROWS;  // the first key tiles (seen by the most queries) first
    long long kbase = (long long)b * s, qbase = (long long)b * tq;
    float ak[MT][D / 8][4], av[MT][D / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) ak[mt][nt][e] = av[mt][nt][e] = 0.f;
    int jr = j0 + warp * 16 * MT + gq;  // this lane's key rows: jr + 16·mt, + 8
    if (j0 < tk) {
        int jlast = min(tk - 1, j0 + ROWS - 1);
        int qlo = max(0, j0 - off);
        int qhi = window > 0 ? min(tq, jlast + window - off) : tq;
        if (ends) qhi = min(qhi, (int)ends[qbase + jlast]);  // packed: no query after the key's example
        int nq = qhi > qlo ? (qhi - qlo + BQ - 1) / BQ : 0;
        int ntiles = gh * nq;
        load_rows<ROWS, D>(Ks, k + (long long)g * D, kbase, KVH * D, j0, tk);
        load_rows<ROWS, D>(Vs, v + (long long)g * D, kbase, KVH * D, j0, tk);
        // Tile t: query head g·grp + h0 + t / nq, queries qlo + (t % nq)·BQ …; (th, tqi) = (t / nq,
        // t % nq) are carried from tile to tile (two integer divisions a tile cost ~40 issued
        // instructions of ~830). issue(t, th, tqi) loads tile t.
        auto issue = [&](int t, int th, int tqi) {
            int nb = t & 1, h = g * grp + h0 + th, i0 = qlo + tqi * BQ;
            load_tile<WG, BQ, D>(Qs + nb * TS, q + (long long)h * D, qbase, H * D, i0, qhi);
            load_tile<WG, BQ, D>(Os + nb * TS, dout + (long long)h * D, qbase, H * D, i0, qhi);
            if (threadIdx.x < BQ) {
                int i = i0 + threadIdx.x;
                long long at = ((long long)b * H + h) * tq + i;
                // cp.async too: a plain load here would hold warps 0 and 1 (and the
                // barrier after them) for a global round trip every tile.
                cp_async4(Ls + nb * BQ + threadIdx.x, lse + (i < qhi ? at : 0), i < qhi);
                cp_async4(Ds + nb * BQ + threadIdx.x, delta + (i < qhi ? at : 0), i < qhi);
            }
        };
        if (ntiles > 0) issue(0, 0, 0);
        int th = 0, tqi = 0;  // tile t's t / nq and t % nq
        cp_commit();
        const float sl2 = scale * LOG2E;
        const bf16_t* Kw = Ks + warp * 16 * MT * LD;
        const bf16_t* Vw = Vs + warp * 16 * MT * LD;
        constexpr int KS = D / 16;
        unsigned kf[KR ? KS : 1][4], vf[KR ? KS : 1][4];
        for (int t = 0; t < ntiles; t++) {
            tile_ready<WG>();  // tile t (and K, V) in; every warp is done with tile t−1
            if constexpr (KR) {
                if (t == 0) {
#pragma unroll
                    for (int ks = 0; ks < KS; ks++) {
                        load_a<LD>(kf[ks], Kw, 0, ks * 16, lane);
                        load_a<LD>(vf[ks], Vw, 0, ks * 16, lane);
                    }
                }
            }
            if (t + 1 < ntiles) issue(t + 1, tqi + 1 == nq ? th + 1 : th, tqi + 1 == nq ? 0 : tqi + 1);
            cp_commit();
            int nb = t & 1, i0 = qlo + tqi * BQ;
            const bf16_t* Qt = Qs + nb * TS;
            const bf16_t* Ot = Os + nb * TS;
            const float* Lt = Ls + nb * BQ;
            const float* Dt = Ds + nb * BQ;
            float sc[MT][BQ / 8][4], dp[MT][BQ / 8][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int nt = 0; nt < BQ / 8; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) sc[mt][nt][e] = dp[mt][nt][e] = 0.f;
            if constexpr (WG) {
                wg_fence();
                wg_abt<D, BQ>(sc[0], kf, Qt);
                wg_abt<D, BQ>(dp[0], vf, Ot);
                wg_commit();
                wg_wait0();
                wg_keep(sc[0], BQ / 8);
                wg_keep(dp[0], BQ / 8);
            } else if constexpr (KR) {
                mm_abt_m<D, BQ, 1>(sc, (const unsigned (*)[KS][4])kf, Qt, lane);
                mm_abt_m<D, BQ, 1>(dp, (const unsigned (*)[KS][4])vf, Ot, lane);
            } else {
                mm_abt_sm<D, BQ, MT>(sc, Kw, Qt, lane);
                mm_abt_sm<D, BQ, MT>(dp, Vw, Ot, lane);
            }
            bool full = i0 + BQ <= qhi && j0 + ROWS - 1 <= off + i0 && j0 + ROWS <= tk &&
                        (window == 0 || j0 >= tc_key_lo(off + i0 + BQ - 1, window)) &&
                        (!starts || j0 >= (int)starts[qbase + i0 + BQ - 1]);
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int nt = 0; nt < BQ / 8; nt++) {
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        int c = nt * 8 + 2 * tq4 + (e & 1);  // query column in the tile
                        bool vis = true;
                        if (!full) {
                            int i = i0 + c, pos = off + i, j = jr + 16 * mt + (e < 2 ? 0 : 8);
                            vis = i < qhi && j <= pos && j >= tc_key_lo(pos, window) && (!starts || j >= (int)starts[qbase + i]);
                        }
                        float p = vis ? ex2f(sc[mt][nt][e] * sl2 - __fmul_rn(Lt[c], LOG2E)) : 0.f;
                        sc[mt][nt][e] = p;                         // Pᵀ
                        dp[mt][nt][e] = p * (dp[mt][nt][e] - Dt[c]);  // dSᵀ / scale
                    }
                }
            if constexpr (DS > 0) {
                // Rows: this warp's 16 keys; columns: the tile's 64 queries (i0 and j0 are
                // multiples of 64 when Tq = Tk: qlo = j0).
                int h = g * grp + h0 + th;
                bf16_t* tile = dst + ds_tile(b, h, H, tq, i0 >> 6, j0 >> 6) + warp * 16 * DS_T;
                if (DS == 1 || !DS_BULK) {
                    unsigned* w = (unsigned*)tile;
                    constexpr bool sw = DS == 2;
#pragma unroll
                    for (int nt = 0; nt < BQ / 8; nt++) {
                        w[(gq * DS_T + ds_chunk(gq, nt, sw) * 8 + 2 * tq4) >> 1] = pack_bf16(dp[0][nt][0], dp[0][nt][1]);
                        w[((gq + 8) * DS_T + ds_chunk(gq + 8, nt, sw) * 8 + 2 * tq4) >> 1] =
                            pack_bf16(dp[0][nt][2], dp[0][nt][3]);
                    }
                }
#if DS_BULK
                // ds_store_staged's steps, written out: calling it here moved ptxas's allocation
                // of this (the default) kernel to more spills (28 → 40 bytes stored, 7 → 12 local
                // loads in the loop; 2026-12-05, unmeasured), so it keeps its own copy.
                if constexpr (DS == 2) {
                    bf16_t* stage = (bf16_t*)(Ds + 2 * BQ) + warp * 16 * DS_T;
                    if (lane == 0) bulk_wait_read();  // the last tile's copy has read the stage
                    __syncwarp();
                    int m = lane >> 3, row = (lane & 7) + ((m & 1) << 3);
#pragma unroll
                    for (int np = 0; np < BQ / 16; np++) {
                        unsigned r4[4] = {pack_bf16(dp[0][2 * np][0], dp[0][2 * np][1]),
                                          pack_bf16(dp[0][2 * np][2], dp[0][2 * np][3]),
                                          pack_bf16(dp[0][2 * np + 1][0], dp[0][2 * np + 1][1]),
                                          pack_bf16(dp[0][2 * np + 1][2], dp[0][2 * np + 1][3])};
                        stsm_x4(stage + row * DS_T + ds_chunk(row, 2 * np + (m >> 1), true) * 8, r4);
                    }
                    ds_fence();
                    __syncwarp();
                    if (lane == 0) bulk_store(tile, stage, 16 * DS_T * 2);
                }
#endif
            }
            if constexpr (WG) {
                unsigned pa[BQ / 16][4], sa[BQ / 16][4];
                wg_pack<BQ>(sc[0], pa);
                wg_pack<BQ>(dp[0], sa);
                wg_keep_a(pa, BQ / 16);
                wg_keep_a(sa, BQ / 16);
                wg_fence();
                wg_pm<D, BQ>(av[0], pa, Ot);
                wg_pm<D, BQ>(ak[0], sa, Qt);
                wg_commit();
                wg_wait0();
                wg_keep(av[0], D / 8);
                wg_keep(ak[0], D / 8);
                wg_keep_a(pa, BQ / 16);
                wg_keep_a(sa, BQ / 16);
            } else {
                mm_pm_m<D, BQ, MT>(av, sc, Ot, lane);
                mm_pm_m<D, BQ, MT>(ak, dp, Qt, lane);
            }
            if (++tqi == nq) {
                tqi = 0;
                th++;
            }
        }
        cp_wait_all();
#if DS_BULK
        if (DS == 2 && lane == 0) bulk_wait_all();
#endif
    }
    int kvs = KVH * D;
    // Rows past tk (cache rows, or the block entirely past tk) store zeros: the accumulators
    // are zero there (every Pᵀ entry of such a key is masked), and rows ≥ s are skipped.
    if (part) {
#pragma unroll
        for (int mt = 0; mt < MT; mt++) store_part<D>(part, ak[mt], av[mt], hp, g, kbase, kvs, jr + 16 * mt, s, tq4);
        return;
    }
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        store_rows<D>(dk + (long long)g * D, ak[mt], kbase, kvs, jr + 16 * mt, s, scale, scale, lane);
        store_rows<D>(dv + (long long)g * D, av[mt], kbase, kvs, jr + 16 * mt, s, 1.f, 1.f, lane);
    }
}

// dk = scale · Σ_p part_p's dk, dv = Σ_p part_p's dv, in part order, rounded once to bf16: the
// head-split dk/dv's parts (tc_dkdv with hsplit > 1). n = B·S·KVH·D.
extern "C" __global__ void attn_tc_dkdv_sum(const float* part, bf16_t* dk, bf16_t* dv, int hsplit, long long n,
                                            float scale) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float sk = 0.f, sv = 0.f;
        for (int p = 0; p < hsplit; p++) {
            sk += part[2LL * p * n + i];
            sv += part[(2LL * p + 1) * n + i];
        }
        dk[i] = f2bf(sk * scale);
        dv[i] = f2bf(sv);
    }
}

// dq = scale · Σ_j dS_ij k_j from the dS tiles tc_dkdv<…, DS> stored (SW: swizzled, DS = 2): one product a key
// tile, no S or dP recomputed. grid (ceil(Tq/(64·MT)), H, B), block 128, shared 2·64·(D+8) +
// 2·MT·64·(64+8) bf16. Each warp owns MT tiles of 16 query rows; the block's 64·MT queries are
// MT dS query tiles. Key tiles run from the first one any of them sees to the diagonal; a
// (query tile, key tile) pair dk/dv did not visit (no query of the one sees a key of the other)
// is read as zeros, never from the buffer (which holds nothing there). Keys are summed 16 at a
// time in key order, as tc_dq does: from key 0 (no window, no packing) the same sums in the same
// order, so the same bits when the dS values are.
template <int D, int MT, bool SW>
__device__ void tc_dq_ds(const bf16_t* k, const bf16_t* ds, bf16_t* dq, int tq, int tk, int s, int H, int KVH,
                         int window, float scale, const unsigned int* starts, int pc) {
    constexpr int LD = D + 8, SL = DS_T + 8, ROWS = TC_ROWS * MT;
    static_assert(TC_ROWS == DS_T, "a warp's query rows lie in one dS tile");
    extern __shared__ __align__(1024) unsigned char tc_sm[];
    bf16_t* Ks = (bf16_t*)tc_sm;         // 2 × [64][LD]
    bf16_t* Ss = Ks + 2 * DS_T * LD;     // 2 × MT × [64][SL]: dSᵀ tiles, keys × queries
    TcTile tt = tc_tile(pc);
    int b = tt.z, h = tt.y, g = h / (H / KVH);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2;
    int i0 = (gridDim.x - 1 - tt.rank) * ROWS;  // the longest (last) query tiles first
    int nqt = (tq + DS_T - 1) / DS_T, qt0 = i0 / DS_T;
    long long srow0 = (long long)b * tq;
    int klo[MT], kfirst = 1 << 30, klast = 0;
#pragma unroll
    for (int u = 0; u < MT; u++) {
        int qt = qt0 + u, r = qt * DS_T;
        klo[u] = qt < nqt ? tc_row_lo(r, window, starts, srow0 + r) / DS_T : 1 << 30;
        if (qt < nqt) {
            kfirst = min(kfirst, klo[u]);
            klast = qt;
        }
    }
    int ntiles = klast - kfirst + 1;
    const bf16_t* kh = k + (long long)g * D;
    long long kbase = (long long)b * s;
    auto issue = [&](int t) {
        int kt = kfirst + t, nb = t & 1;
        load_rows<DS_T, D>(Ks + nb * DS_T * LD, kh, kbase, KVH * D, kt * DS_T, tk);
#pragma unroll
        for (int u = 0; u < MT; u++) {
            int qt = qt0 + u;
            bool ok = qt < nqt && kt >= klo[u] && kt <= qt;
            const bf16_t* src = ds + (ok ? ds_tile(b, h, H, tq, qt, kt) : 0);
            bf16_t* dst = Ss + (nb * MT + u) * DS_T * SL;
            // Thread x: stored chunk p = x & 7 of rows x / 8 + 16·i, as load_rows does (row r's
            // stored chunk p holds its chunk ds_chunk(r, p), and r & 7 is the same for all four).
            static_assert(DS_T * DS_T / 8 == 4 * TC_THREADS, "four 16-byte chunks a thread");
            const int p = threadIdx.x & 7, r = threadIdx.x >> 3;
            bf16_t* d = dst + r * SL + ds_chunk(r, p, SW) * 8;
            const bf16_t* sp = src + (ok ? r * DS_T + p * 8 : 0);
#pragma unroll
            for (int i = 0; i < 4; i++) cp_async16(d + i * 16 * SL, ok ? sp + i * 16 * DS_T : src, ok);
        }
    };
    issue(0);
    cp_commit();
    float acc[MT][D / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < D / 8; nt++) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.f;
    for (int t = 0; t < ntiles; t++) {
        tile_ready<false>();  // tile t is in; every warp is done with tile t−1
        if (t + 1 < ntiles) issue(t + 1);
        cp_commit();
        int nb = t & 1;
        const bf16_t* Kt = Ks + nb * DS_T * LD;
#pragma unroll
        for (int ks = 0; ks < DS_T / 16; ks++) {
            unsigned a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                int r = warp * 16 * MT + mt * 16;  // the block's row: dS tile r / 64, its row r % 64
                load_a_t<SL>(a[mt], Ss + (nb * MT + r / DS_T) * DS_T * SL, r % DS_T, ks * 16, lane);
            }
#pragma unroll
            for (int dn = 0; dn < D / 16; dn++) {
                unsigned bb[4];
                load_b_kn<LD>(bb, Kt, ks * 16, dn * 16, lane);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma16816(acc[mt][2 * dn], a[mt], bb[0], bb[1]);
                    mma16816(acc[mt][2 * dn + 1], a[mt], bb[2], bb[3]);
                }
            }
        }
    }
    long long qbase = (long long)b * tq;
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
        store_rows<D>(dq + (long long)h * D, acc[mt], qbase, H * D, i0 + warp * 16 * MT + mt * 16 + gq, tq, scale, scale, lane);
}

// delta = rowsum(dO ∘ out) for the dS path (whose dq kernel no longer computes it), RW rows a
// warp with every load issued first: the same sums in the same order as attn_bwd_delta and
// tc_delta_rows (lane l: columns l, l + 32, …; then warp_sum), so the same bits. Rows (b, i, h)
// of the (B, Tq, H) layout; block 256. The warps stride over the rows (the launcher gives a few
// blocks an SM): one round trip a block, a block a warp's RW rows, left the kernel at half the
// bandwidth, bound by blocks starting and retiring (ncu, large preset: 41 µs for 67 MB).
template <int D, int RW>
__device__ void tc_delta(const bf16_t* out, const bf16_t* dout, float* delta, int tq, int H, long long rows) {
    const long long step = ((long long)gridDim.x * blockDim.x >> 5) * RW;
    int lane = threadIdx.x & 31;
    for (long long w0 = ((blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5) * RW; w0 < rows; w0 += step) {
        float x[RW][D / 32], y[RW][D / 32];
#pragma unroll
        for (int r = 0; r < RW; r++) {
            long long w = min(w0 + r, rows - 1);
#pragma unroll
            for (int c = 0; c < D / 32; c++) {
                x[r][c] = to_f(out[w * D + lane + 32 * c]);
                y[r][c] = to_f(dout[w * D + lane + 32 * c]);
            }
        }
#pragma unroll
        for (int r = 0; r < RW; r++) {
            float acc = 0.f;
#pragma unroll
            for (int c = 0; c < D / 32; c++) acc += x[r][c] * y[r][c];
            acc = warp_sum(acc);
            long long w = w0 + r;
            if (lane == 0 && w < rows) {
                long long hh = w % H, bi = w / H, i = bi % tq, bb = bi / tq;
                delta[(bb * H + hh) * tq + i] = acc;
            }
        }
    }
}

// A kernel's launch bounds: 128 threads (ptxas picks the registers), or 128 threads with at
// least N blocks resident an SM (registers capped at 65536 / (128 · N)).
#define TC_LB __launch_bounds__(TC_THREADS)
#define TC_LBN(N) __launch_bounds__(TC_THREADS, N)
#define TC_FWD(NAME, D, BN, MT, WG, LB)                                                                                      \
    extern "C" __global__ void LB NAME(const bf16_t* q, const bf16_t* k, const bf16_t* v,       \
                                                                  bf16_t* out, float* lse, int tq, int tk, int s, int H,   \
                                                                  int KVH, int window, float scale,                        \
                                                                  const unsigned int* starts, int pc) {                    \
        tc_fwd<D, BN, MT, WG>(q, k, v, out, lse, tq, tk, s, H, KVH, window, scale, starts, pc);                                \
    }
#define TC_DQ(NAME, D, BN, MT, WG, LB)                                                                                       \
    extern "C" __global__ void LB NAME(                                                         \
        const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const bf16_t* out, const float* lse,        \
        float* delta, bf16_t* dq, int tq, int tk, int s, int H, int KVH, int window, float scale,                          \
        const unsigned int* starts, int pc) {                                                                              \
        tc_dq<D, BN, MT, WG>(q, k, v, dout, out, lse, delta, dq, tq, tk, s, H, KVH, window, scale, starts, pc);                \
    }
#define TC_DKDV(NAME, D, BQ, MT, KR, WG, LB)                                                                                 \
    extern "C" __global__ void LB NAME(                                                         \
        const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse, const float* delta,       \
        bf16_t* dk, bf16_t* dv, int tq, int tk, int s, int H, int KVH, int window, float scale,                            \
        const unsigned int* starts, const unsigned int* ends, int pc) {                                                    \
        tc_dkdv<D, BQ, MT, KR, WG>(q, k, v, dout, lse, delta, dk, dv, tq, tk, s, H, KVH, window, scale, starts, ends, pc);     \
    }
// The dS path's three kernels (tc_dq_ds): delta, dk/dv storing dS, dq from it.
#define TC_DKDV_DS(NAME, D, KR, DS, LB)                                                                                       \
    extern "C" __global__ void LB NAME(                                                                                    \
        const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse, const float* delta,       \
        bf16_t* dk, bf16_t* dv, int tq, int tk, int s, int H, int KVH, int window, float scale,                            \
        const unsigned int* starts, const unsigned int* ends, int pc, bf16_t* ds, int hsplit, float* part) {               \
        tc_dkdv<D, DS_T, 1, KR, false, DS>(q, k, v, dout, lse, delta, dk, dv, tq, tk, s, H, KVH, window, scale, starts, ends, \
                                             pc, ds, hsplit, part);                                                        \
    }
#define TC_DQ_DS(NAME, D, MT, SW, LB)                                                                                         \
    extern "C" __global__ void LB NAME(const bf16_t* k, const bf16_t* ds, bf16_t* dq, int tq, int tk, int s, int H,       \
                                       int KVH, int window, float scale, const unsigned int* starts, int pc) {            \
        tc_dq_ds<D, MT, SW>(k, ds, dq, tq, tk, s, H, KVH, window, scale, starts, pc);                                      \
    }
#define TC_DELTA(NAME, D, RW)                                                                                                 \
    extern "C" __global__ void NAME(const bf16_t* out, const bf16_t* dout, float* delta, int tq, int H, long long rows) {  \
        tc_delta<D, RW>(out, dout, delta, tq, H, rows);                                                                    \
    }
// (key tile, 16-row tiles a warp) of the forward and dq, (query tile, 16-row tiles a warp) of
// dk/dv; must match tc_kernels in cuda.rs (names, rows a block, shared memory). The forward
// takes two tiles a warp at D = 64 (attn_tc_fwd1_d64: one, for SMELT_CUDA_ATTN_MT=1 and the
// parity test: the same bits). The backward keeps one at both head dims: two tiles a warp
// (dq with 32-key tiles, dk/dv with 32-query tiles, 242 and 255 registers) measured 16.5 and
// 29.2 ms against 15.3 and 27.5 ms for one (1B shape, 8 × 2048, H200, 2026-12-03). At D = 128
// the backward's tiles are 32 wide (its 128-column accumulators leave fewer registers).
// attn_tc_dkdv_d64 holds the warp's K and V fragments in registers (attn_tc_dkdv0_d64 reads
// them from shared memory each query tile: SMELT_CUDA_ATTN_DKDV=smem, the same bits). At D = 64
// the backward's defaults are now the register-capped forms below (attn_tc_dqk32b4_d64,
// attn_tc_dkdv0b3_d64); these two stay as variants.
TC_FWD(attn_tc_fwd_d64, 64, 64, 2, false, TC_LB)
TC_FWD(attn_tc_fwd1_d64, 64, 64, 1, false, TC_LB)
TC_DQ(attn_tc_dq_d64, 64, 64, 1, false, TC_LB)
TC_DKDV(attn_tc_dkdv_d64, 64, 64, 1, true, false, TC_LB)
TC_DKDV(attn_tc_dkdv0_d64, 64, 64, 1, false, false, TC_LB)
TC_FWD(attn_tc_fwd_d128, 128, 64, 1, false, TC_LB)
TC_DQ(attn_tc_dq_d128, 128, 32, 1, false, TC_LB)
TC_DKDV(attn_tc_dkdv_d128, 128, 32, 1, false, false, TC_LB)
// Capped registers for more resident blocks (2026-12-04, H200): ncu found dk/dv at 2 blocks an
// SM (248 registers) and dq at 3, both latency-bound (issue slots 37% and 49% busy, 1.37 GHz
// under ncu). Names: bN = at least N blocks an SM; q32/k32: 32-wide streamed tiles. Measured
// under SMELT_CUDA_PROFILE (1B shape / large preset, ms): dk/dv 26.2/7.11 → dkdv0b3 24.0/6.49
// (164 B spilled, the default now), dkdvb3 25.9/6.87, dkdvq32 32.5/8.86, dkdvq32b3 26.8/7.02,
// dkdvq32b4 28.6/7.30; dq 17.6/4.77 → dqk32b4 17.1/4.66 (the default now), dqk32 19.1/5.40,
// dqk32b3 18.7/5.20; the forward 11.6/3.32 → fwd1b3 13.6/3.70, fwd1b4 13.2/3.56 (kept at MT 2).
// cuda.rs's TC_D64_* tables name them for SMELT_CUDA_ATTN_FWD / _DQ / _DKDV.
TC_FWD(attn_tc_fwd1b3_d64, 64, 64, 1, false, TC_LBN(3))
TC_FWD(attn_tc_fwd1b4_d64, 64, 64, 1, false, TC_LBN(4))
TC_DQ(attn_tc_dqk32b4_d64, 64, 32, 1, false, TC_LBN(4))
TC_DKDV(attn_tc_dkdvb3_d64, 64, 64, 1, true, false, TC_LBN(3))
TC_DKDV(attn_tc_dkdv0b3_d64, 64, 64, 1, false, false, TC_LBN(3))
TC_DKDV(attn_tc_dkdvq32b3_d64, 64, 32, 1, true, false, TC_LBN(3))
TC_DKDV(attn_tc_dkdvq32b4_d64, 64, 32, 1, true, false, TC_LBN(4))
TC_DKDV(attn_tc_dkdvq32_d64, 64, 32, 1, true, false, TC_LB)
TC_DQ(attn_tc_dqk32_d64, 64, 32, 1, false, TC_LB)
TC_DQ(attn_tc_dqk32b3_d64, 64, 32, 1, false, TC_LBN(3))
// The dS path at head dim 64 (cuda.rs DS_D64): dk/dv as attn_tc_dkdv0b3_d64 plus the dS stores,
// dq two 16-row tiles a warp (attn_tc_dqds1_d64: one, the same bits); the staged stores
// (attn_tc_dkdvdsb_d64) with their dq (attn_tc_dqdsz_d64, the swizzled tiles).
TC_DELTA(attn_tc_delta_d64, 64, 4)
TC_DKDV_DS(attn_tc_dkdvds_d64, 64, false, 1, TC_LBN(3))
TC_DKDV_DS(attn_tc_dkdvdsb_d64, 64, false, 2, TC_LBN(3))
TC_DQ_DS(attn_tc_dqds_d64, 64, 2, false, TC_LB)
TC_DQ_DS(attn_tc_dqds1_d64, 64, 1, false, TC_LB)
TC_DQ_DS(attn_tc_dqdsz_d64, 64, 2, true, TC_LB)
