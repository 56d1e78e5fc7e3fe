// Every layer of a decode step in one launch (batch 1, bf16 activations, dense Llama-family
// layers): a persistent kernel, one block per SM (or two), whose phases are the launched decode
// step's kernels and whose kernel boundaries are grid-wide barriers. Compiled after gemv.cu and
// decode.cu (their device functions are the phases' bodies), so each phase computes what the
// launched kernel computes, bit for bit:
//
//   P1  add + RMSNorm of the stream (every block into shared memory, block 0 stores it), the
//       q, k, v rows (gemv3 / gemvg3 with the launcher's lanes a row), biases;
//   P2  attention with the rotation and the cache write inside (attn_decode_rope), work items
//       (head, split); with several splits the block that finishes a head's last split merges
//       them (attn_decode_combine; a counter a head), so no barrier for the merge;
//   P3  o's rows;
//   P4  add + RMSNorm again, gate/up rows and SwiGLU (gemv_swiglu / gemvg_swiglu);
//   P5  down's rows.
//
// A matvec phase issues its first rows' weight loads before it waits at the barrier (the
// weights do not depend on the phase before), which is what a kernel boundary cannot do.
// The launched kernels' blocks are the phases' "virtual blocks", taken in turn by the
// resident blocks; a row's sums depend only on its lanes (G), never on which block runs it.
//
// Activations live in one scratch buffer, a separate piece per layer: a block may have read a
// piece into its L1 (which other SMs' stores do not invalidate) only after it was written, so
// no stale line is ever read. The final stream (f32) and the last down output (bf16) go to
// x_out and r_out; the caller makes the final add + norm and the head.

// One layer's operands (device addresses and shapes), packed by the host (decode_layers/cuda.rs,
// `layer_table`): 14 addresses, then 8 ints.
struct DlLayer {
    const bf16_t* w[3];  // q, k, v
    const float* b[3];   // their biases (null: none)
    const bf16_t* wo;
    const bf16_t* wg;
    const bf16_t* wu;
    const bf16_t* wd;
    const float* attn_norm;  // read from layer 1 on: layer 0's input arrives normed (h0)
    const float* ffn_norm;
    bf16_t* kc;  // caches (1, S, KVH, D)
    bf16_t* vc;
    int m[3];  // rows of q, k, v
    int g_qkv, g_o, g_gu, g_d;  // lanes a row of each product (32: a warp a row, gemv3's)
    int window;
};

// A layer's piece of the scratch buffer; the host's `layer_bytes` is the same sum.
__host__ __device__ inline long long dl_al(long long n) { return (n + 255) & ~255ll; }
struct DlBufs {
    float *xa, *xb;  // the stream after P1's add and after P4's
    bf16_t *q, *k, *v, *att, *ro, *act, *rd;
    float* part;
};
__device__ inline long long dl_layer_bytes(int C, int H, int KVH, int D, int F, int splits) {
    return 2 * dl_al(4ll * C) + dl_al(2ll * H * D) * 2 + dl_al(2ll * KVH * D) * 2 + dl_al(2ll * C) * 2 +
           dl_al(2ll * F) + (splits > 1 ? dl_al(4ll * H * splits * (D + 2)) : 0);
}
__device__ inline DlBufs dl_bufs(unsigned char* base, int l, int C, int H, int KVH, int D, int F, int splits) {
    unsigned char* p = base + (long long)l * dl_layer_bytes(C, H, KVH, D, F, splits);
    DlBufs b;
    b.xa = (float*)p; p += dl_al(4ll * C);
    b.xb = (float*)p; p += dl_al(4ll * C);
    b.q = (bf16_t*)p; p += dl_al(2ll * H * D);
    b.att = (bf16_t*)p; p += dl_al(2ll * H * D);
    b.k = (bf16_t*)p; p += dl_al(2ll * KVH * D);
    b.v = (bf16_t*)p; p += dl_al(2ll * KVH * D);
    b.ro = (bf16_t*)p; p += dl_al(2ll * C);
    b.rd = (bf16_t*)p; p += dl_al(2ll * C);
    b.act = (bf16_t*)p; p += dl_al(2ll * F);
    b.part = splits > 1 ? (float*)p : nullptr;
    return b;
}

// The barrier state: [0] arrivals (grows by gridDim.x a barrier), [1] blocks done, [2] this
// launch's hung flag, [3] a sticky failure word the host reads and clears, [4 + h] head h's
// finished splits. The last block to finish resets [0], [1] and [2] (and, after a failure, the
// heads' counts), so every launch (every replay of a captured step) starts from zero.
#define DL_COUNT 0
#define DL_DONE 1
#define DL_HUNG 2
#define DL_FAILED 3
#define DL_HEADS 4
#define DL_SPIN_LIMIT (1ll << 22)

// The block's stores, then its arrival (cooperative groups' grid sync: the barrier orders the
// block's threads, thread 0's fence makes their stores visible device-wide before the count).
__device__ __forceinline__ void dl_arrive(unsigned int* st) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(st + DL_COUNT, 1u);
    }
}
// Waits until `target` arrivals (all blocks at barrier number target / gridDim.x). The launch is
// cooperative (every block resident), so this ends; a wait that spins too long anyway sets the
// launch's hung flag, which frees every waiter (the step's numbers are then wrong: the last block
// records the failure for the host, `decode_layers::check`).
__device__ __forceinline__ void dl_wait(unsigned int* st, unsigned int target) {
    if (threadIdx.x == 0) {
        volatile unsigned int* c = st + DL_COUNT;
        volatile unsigned int* hung = st + DL_HUNG;
        long long spins = 0;
        while (*c < target) {
            if ((++spins & 1023) == 0 && (*hung || spins > DL_SPIN_LIMIT)) {
                *hung = 1;
                break;
            }
        }
        __threadfence();
    }
    __syncthreads();
}

// The rows of one matvec phase: R = 1, up to three weights one after another (q, k, v; or o
// alone); R = 2, a gate/up pair and SwiGLU. `x`: the input row (shared memory after a norm, or
// global). Virtual block vb holds rows vb·(MV_THREADS / G) + threadIdx.x / G.
template <int R>
struct DlRows {
    const bf16_t* w[3];
    const float* b[3];
    bf16_t* y[3];
    int m[3];
    int G, k;
    __device__ int total() const { return R == 1 ? m[0] + m[1] + m[2] : m[0]; }
    // The rows this thread's group reads in virtual block vb, and where its result goes.
    __device__ bool row(int vb, const bf16_t* (&rows)[R], int* j, int* r) const {
        int rr = vb * (MV_THREADS / G) + threadIdx.x / G;
        bool active = rr < total();
        if (!active) rr = 0;
        int jj = 0;
        if (R == 1) {
            if (rr >= m[0]) {
                rr -= m[0], jj = 1;
                if (rr >= m[1]) rr -= m[1], jj = 2;
            }
        }
        rows[0] = w[jj] + (long long)rr * k;
        if (R == 2) rows[R - 1] = w[1] + (long long)rr * k;
        *j = jj;
        *r = rr;
        return active;
    }
};

// The first virtual block's first weight loads (before the barrier).
template <int R>
__device__ __forceinline__ void dl_prefetch(const DlRows<R>& a, MvBatch<bf16_t, R>& first) {
    int vb = blockIdx.x, j, r;
    const bf16_t* rows[R];
    bool active = a.row(vb, rows, &j, &r);
    int nvb = (a.total() + MV_THREADS / a.G - 1) / (MV_THREADS / a.G);
    if (vb < nvb && active) vec_load<bf16_t, R>(rows, a.k / 8, threadIdx.x & (a.G - 1), a.G, first);
}

// Every virtual block of the phase this block takes, after the barrier (and the norm).
template <int R>
__device__ void dl_matvec(const DlRows<R>& a, const bf16_t* x, const MvBatch<bf16_t, R>& first0) {
    int G = a.G, lane = threadIdx.x & (G - 1);
    int nvb = (a.total() + MV_THREADS / G - 1) / (MV_THREADS / G);
    for (int vb = blockIdx.x; vb < nvb; vb += gridDim.x) {
        const bf16_t* rows[R];
        int j, r;
        bool active = a.row(vb, rows, &j, &r);
        MvBatch<bf16_t, R> first;
        if (vb == blockIdx.x)
            first = first0;
        else if (active)
            vec_load<bf16_t, R>(rows, a.k / 8, lane, G, first);
        float acc[R * GEMV_MAXN];
#pragma unroll
        for (int i = 0; i < R * GEMV_MAXN; i++) acc[i] = 0.f;
        if (active) vec_sums<bf16_t, R>(rows, x, a.k, 1, lane, G, acc, first);
        // One input row: only acc[r·GEMV_MAXN] hold sums. Each value is reduced on its own
        // (G = 32: warp_sum's shuffles, gemv3's order), so reducing those alone gives the same bits
        // with a quarter of the shuffles.
        float sum[R];
#pragma unroll
        for (int i = 0; i < R; i++) sum[i] = acc[i * GEMV_MAXN];
        group_sum<R>(sum, G);
        if (active && lane == 0) {
            if (R == 1) {
                bf16_t p = f2bf(sum[0]);
                a.y[j][r] = a.b[j] ? f2bf(bf2f(p) + a.b[j][r]) : p;
            } else {
                float gi = bf2f(f2bf(sum[0])), ui = bf2f(f2bf(sum[R - 1]));
                a.y[0][r] = f2bf(gi * (1.f / (1.f + expf(-gi))) * ui);
            }
        }
        // group_sum past a warp goes through shared memory: its readers finish before the next
        // virtual block's sums are written there (the launched kernels run it once a block).
        if (G > 32) __syncthreads();
    }
}

// L2 prefetch (no data changes hands, so the numbers cannot change): bytes [from, to) of `p`,
// clamped to its `n` bytes, shared among every thread of the grid, one `prefetch.global.L2` a
// 128-byte line. A phase issues the next weights' first bytes before it waits at its barrier, so
// the DRAM is busy through the barriers and the attention phase (which reads no weights) instead
// of idle; `l2` caps each such window (the host's SMELT_CUDA_PERSIST_L2 MiB; 0: off).
__device__ __forceinline__ void dl_l2(const void* p, long long n, long long from, long long to) {
    if (!p) return;
    if (to > n) to = n;
    const char* c = (const char*)p;
    long long stride = 128ll * gridDim.x * blockDim.x;
    for (long long off = from + 128ll * (blockIdx.x * (long long)blockDim.x + threadIdx.x); off < to; off += stride)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(c + off));
}

// A matvec phase: prefetch, wait for barrier `target` (0: none), the norm (nm.x set) into
// shared memory or the global input row, the rows.
// Not inlined (nor is the attention phase): each phase gets the registers to itself, which the
// whole loop inlined into one body did not (255 registers and spills).
template <int R>
__device__ __noinline__ void dl_phase(const DlRows<R>& a, const bf16_t* xin, const NormIn& nm, unsigned int* st,
                         unsigned int target) {
    extern __shared__ __align__(16) unsigned char mv_shared[];
    MvBatch<bf16_t, R> first;
    dl_prefetch<R>(a, first);
    if (target) dl_wait(st, target);
    const bf16_t* x = xin;
    if (nm.x) {
        add_rmsnorm_shared(nm, a.k, (bf16_t*)mv_shared);
        __syncthreads();
        x = (const bf16_t*)mv_shared;
    }
    dl_matvec<R>(a, x, first);
}

// P2: every (head, split) item this block takes; the block that finishes a head's last split
// merges the head's partials.
__device__ __noinline__ void dl_attention(const DlLayer& ly, const DlBufs& bf, int H, int KVH, int D, int S,
                                          float scale, int chunk, int splits, int interleaved, const int* pos,
                                          const float* cosv, const float* sinv, unsigned int* st) {
    __shared__ int merge;
    for (int it = blockIdx.x; it < H * splits; it += gridDim.x) {
        int h = it % H, split = it / H;
        attn_decode<bf16_t, true>(bf.q, ly.kc, ly.vc, bf.att, bf.part, pos, 0, S, H, KVH, D, ly.window, scale, chunk,
                                  bf.k, bf.v, cosv, sinv, interleaved, h, split, splits, 0);
        if (splits > 1) {
            __syncthreads();  // this split's partials, before the count says they are there
            if (threadIdx.x == 0) {
                __threadfence();
                merge = atomicAdd(st + DL_HEADS + h, 1u) == (unsigned int)splits - 1;
                if (merge) atomicExch(st + DL_HEADS + h, 0u);
                __threadfence();
            }
            __syncthreads();
            if (merge) attn_decode_combine<bf16_t>(bf.part, bf.att, H, D, splits, h, 0);
            __syncthreads();
        }
    }
}

// The end of a launch: the last block out resets the counters for the next launch (every block
// has passed its last wait, so nobody reads them any more). A hung launch leaves its mark in
// DL_FAILED and zeroes the heads' counts, which a broken barrier may have left mid-count.
__device__ __forceinline__ void dl_finish(unsigned int* st, int H) {
    unsigned int nb = gridDim.x;
    __shared__ int last_out;
    __syncthreads();
    if (threadIdx.x == 0) last_out = atomicAdd(st + DL_DONE, 1u) == nb - 1;
    __syncthreads();
    if (last_out) {
        __threadfence();
        volatile unsigned int* hung = st + DL_HUNG;
        bool failed = *hung != 0;
        if (failed)
            for (int h = threadIdx.x; h < H; h += blockDim.x) st[DL_HEADS + h] = 0;
        __syncthreads();
        if (threadIdx.x == 0) {
            if (failed) atomicExch(st + DL_FAILED, 1u);
            atomicExch(st + DL_HUNG, 0u);
            atomicExch(st + DL_COUNT, 0u);
            atomicExch(st + DL_DONE, 0u);
            __threadfence();
        }
    }
}

// grid: resident blocks only (the host sizes it from the occupancy), MV_THREADS threads,
// dynamic shared memory 2·C bytes (the normed row).
#define DL_ARGS                                                                                                  \
    const DlLayer *layers, int L, int C, int H, int KVH, int D, int F, int S, float eps, int wpr, float scale,  \
        int chunk, int splits, int interleaved, const int *pos, const float *cosv, const float *sinv,            \
        const float *x0, const bf16_t *h0, unsigned char *scratch, float *x_out, bf16_t *r_out, unsigned int *st, \
        long long l2
__device__ __forceinline__ void decode_layers_body(DL_ARGS) {
    unsigned int bar = 0, nb = gridDim.x;
    const NormIn none{nullptr, nullptr, nullptr, nullptr, 0.f, 0};
    const float* xprev = x0;    // the stream before this layer's add
    const bf16_t* rprev = h0;   // the branch output the add takes (layer 0: none, h0 is normed)
    for (int l = 0; l < L; l++) {
        const DlLayer& ly = layers[l];
        DlBufs bf = dl_bufs(scratch, l, C, H, KVH, D, F, splits);
        bool last = l == L - 1;
        // P1: q, k, v.
        DlRows<1> qkv;
        for (int j = 0; j < 3; j++) qkv.w[j] = ly.w[j], qkv.b[j] = ly.b[j], qkv.m[j] = ly.m[j];
        qkv.y[0] = bf.q, qkv.y[1] = bf.k, qkv.y[2] = bf.v, qkv.G = ly.g_qkv, qkv.k = C;
        const float* xa = xprev;
        // The L2 windows (l2 > 0): during P1, o; during P2 (no weights), the first half-window
        // of gate and up each; during P3 their second; during P4, down; during P5, the next
        // layer's q/k/v. Issued before each phase's wait.
        if (l2) dl_l2(ly.wo, 2ll * C * H * D, 0, l2);
        if (l == 0) {
            dl_phase<1>(qkv, h0, none, st, 0);
        } else {
            dl_phase<1>(qkv, nullptr, NormIn{xprev, rprev, ly.attn_norm, bf.xa, eps, wpr}, st, ++bar * nb);
            xa = bf.xa;
        }
        dl_arrive(st);
        // P2: attention, the rotation and the cache write inside; the last split of a head merges.
        if (l2) dl_l2(ly.wg, 2ll * F * C, 0, l2 / 2), dl_l2(ly.wu, 2ll * F * C, 0, l2 / 2);
        dl_wait(st, ++bar * nb);
        dl_attention(ly, bf, H, KVH, D, S, scale, chunk, splits, interleaved, pos, cosv, sinv, st);
        dl_arrive(st);
        // P3: o.
        DlRows<1> o;
        o.w[0] = ly.wo, o.b[0] = nullptr, o.y[0] = bf.ro, o.m[0] = C;
        o.w[1] = o.w[2] = nullptr, o.b[1] = o.b[2] = nullptr, o.y[1] = o.y[2] = nullptr, o.m[1] = o.m[2] = 0;
        o.G = ly.g_o, o.k = H * D;
        if (l2) dl_l2(ly.wg, 2ll * F * C, l2 / 2, l2), dl_l2(ly.wu, 2ll * F * C, l2 / 2, l2);
        dl_phase<1>(o, bf.att, none, st, ++bar * nb);
        dl_arrive(st);
        // P4: gate, up, SwiGLU after the add and the norm.
        float* xb = last ? x_out : bf.xb;
        DlRows<2> gu;
        gu.w[0] = ly.wg, gu.w[1] = ly.wu, gu.w[2] = nullptr, gu.b[0] = gu.b[1] = gu.b[2] = nullptr;
        gu.y[0] = bf.act, gu.y[1] = gu.y[2] = nullptr, gu.m[0] = F, gu.m[1] = gu.m[2] = 0, gu.G = ly.g_gu, gu.k = C;
        if (l2) dl_l2(ly.wd, 2ll * C * F, 0, l2);
        dl_phase<2>(gu, nullptr, NormIn{xa, bf.ro, ly.ffn_norm, xb, eps, wpr}, st, ++bar * nb);
        dl_arrive(st);
        // P5: down.
        bf16_t* rd = last ? r_out : bf.rd;
        DlRows<1> dn;
        dn.w[0] = ly.wd, dn.b[0] = nullptr, dn.y[0] = rd, dn.m[0] = C;
        dn.w[1] = dn.w[2] = nullptr, dn.b[1] = dn.b[2] = nullptr, dn.y[1] = dn.y[2] = nullptr, dn.m[1] = dn.m[2] = 0;
        dn.G = ly.g_d, dn.k = F;
        if (l2 && !last) {
            // The next layer's q, k and v lie in three allocations: the window split by rows.
            const DlLayer& nx = layers[l + 1];
            for (int j = 0; j < 3; j++) dl_l2(nx.w[j], 2ll * nx.m[j] * C, 0, l2 / 3);
        }
        dl_phase<1>(dn, bf.act, none, st, ++bar * nb);
        if (!last) dl_arrive(st);
        xprev = xb;
        rprev = rd;
    }
    dl_finish(st, H);
}

#define DL_PASS layers, L, C, H, KVH, D, F, S, eps, wpr, scale, chunk, splits, interleaved, pos, cosv, sinv, x0, h0, \
                scratch, x_out, r_out, st, l2
// One block an SM (ptxas: ~250 registers, no spills) ...
extern "C" __global__ void __launch_bounds__(MV_THREADS, 1) decode_layers_bf16(DL_ARGS) { decode_layers_body(DL_PASS); }
// ... or two (128 registers, ~150 bytes spilled: twice the warps to keep loads in flight;
// SMELT_CUDA_PERSIST_BPS=2).
extern "C" __global__ void __launch_bounds__(MV_THREADS, 2) decode_layers_b2_bf16(DL_ARGS) {
    decode_layers_body(DL_PASS);
}

// ---- Quantised layers ------------------------------------------------------------------------
// The same five phases with block-quantised weights (qmatmul.cu's formats, compiled in before
// this file with QMATMUL_NO_KERNELS). A matvec phase quantises its input row to 8 bits in every
// block's shared memory (after the add + norm where one precedes), as the launched one-row
// kernels do (`mmvq_rows_g` given xf, or nm), then sums its rows through `mmvq_rows_g` given that
// quantised row, with the lanes a row the launchers pick (`mmvq_lanes`): the launched step's bits.
// Each weight is of one of the kernel's four formats, which its table entry names: one kernel
// takes llama.cpp's Q4_K_M mix (Q4_K, some v and down matrices at Q6_K), smelt's q4_k export of
// rows that are not whole 256-blocks (Q5_0 with Q8_0) and any mix of the two (a 576-wide model's
// down rows are 1536 wide), and plain Q8_0.

// One quantised weight: blocks, bytes a row, rows, lanes a row, its format (0-3: F0-F3).
struct DlqW {
    const u8* w;
    long long rb;
    int m, G, fmt, pad;
};
// One layer, packed by the host (decode_layers/cuda.rs, `quant_table`): 288 bytes.
struct DlqLayer {
    DlqW w[7];  // q, k, v, o, gate, up, down
    const float* b[3];
    const float* attn_norm;
    const float* ffn_norm;
    bf16_t* kc;
    bf16_t* vc;
    long long window;
};

__device__ __forceinline__ int dlq_blocks(const DlqW& w) { return (w.m + MV_THREADS / w.G - 1) / (MV_THREADS / w.G); }

// The input row of a phase, quantised into this block's shared memory: after the add + norm
// (nm.x set: y in shared memory first, then its 8-bit form) or from `xin`. Returns (xq, xd).
__device__ __forceinline__ void dlq_input(const bf16_t* xin, const NormIn& nm, int cols, const signed char** xq,
                                          const float** xd) {
    extern __shared__ __align__(16) unsigned char mv_shared[];
    signed char* sq;
    float* sd;
    if (nm.x) {
        bf16_t* sy = (bf16_t*)mv_shared;
        sq = (signed char*)(mv_shared + 2 * cols);
        sd = (float*)(mv_shared + 3 * cols);
        add_rmsnorm_shared(nm, cols, sy);
        __syncthreads();
        quantize_q8_shared(sy, cols, sq, sd);
    } else {
        sq = (signed char*)mv_shared;
        sd = (float*)(mv_shared + cols);
        quantize_q8_shared(xin, cols, sq, sd);
    }
    __syncthreads();
    *xq = sq;
    *xd = sd;
}

// One virtual block's rows of a weight of format F (R = 1), or of a gate/up pair (R = 2, SwiGLU):
// `mmvq_rows_g` given the quantised input row, as the launched one-row kernels call it; y = the
// product rounded to bf16 (+ bias, rounded again, as add_bias does), or SwiGLU's product as
// `mmvqg_swiglu` computes it. One function a format, so that each gets the registers to itself.
template <class F, int R>
__device__ __noinline__ void dlq_block(const DlqW& w, const DlqW& u, int blk, const signed char* xq, const float* xd,
                                       int cols, const float* bias, bf16_t* y) {
    int G = w.G, lane = threadIdx.x & (G - 1);
    int r = blk * (MV_THREADS / G) + threadIdx.x / G;
    bool active = r < w.m;
    if (!active) r = 0;  // still sums with its block (the barriers)
    float acc[R];
    const u8* rows[R];
    rows[0] = w.w + (long long)r * w.rb;
    if (R == 2) rows[R - 1] = u.w + (long long)r * u.rb;
    mmvq_rows_g<F, R, 1, false>(rows, nullptr, xq, xd, cols, 1, lane, G, active, acc);
    if (active && lane == 0) {
        if (R == 1) {
            bf16_t p = f2bf(acc[0]);
            y[r] = bias ? f2bf(bf2f(p) + bias[r]) : p;
        } else {
            float gi = bf2f(f2bf(acc[0])), ui = bf2f(f2bf(acc[R - 1]));
            y[r] = f2bf(gi * (1.f / (1.f + expf(-gi))) * ui);
        }
    }
    if (G > 32) __syncthreads();  // group_sum's shared memory, before the next block's sums
}

// A quantised matvec phase: wait for barrier `target` (0: none), the input row quantised in
// shared memory, then every virtual block this block takes: up to three weights sharing the
// input (R = 1: q, k, v; or o, or down alone), each on virtual blocks of its own as
// `mmvqg3_mixed` lays them out, or a gate/up pair (R = 2, ws[0] and ws[1], into ys[0]).
template <class F0, class F1, class F2, class F3, int R>
__device__ __noinline__ void dlq_phase(const DlqW* ws, int ns, const float* const* bias, bf16_t* const* ys,
                                       const bf16_t* xin, const NormIn& nm, int cols, unsigned int* st,
                                       unsigned int target) {
    int slots = R == 1 ? ns : 1, total = 0;
    for (int j = 0; j < slots; j++) total += dlq_blocks(ws[j]);
    if (target && blockIdx.x < total) {
        // The rows of this block's first virtual block into L2 before the barrier (the weights
        // do not depend on the phase before; the launched kernels issue these loads before
        // their programmatic wait): their DRAM latency overlaps the wait.
        int blk = blockIdx.x, j = 0;
        while (j < slots - 1 && blk >= dlq_blocks(ws[j])) blk -= dlq_blocks(ws[j++]);
        const DlqW& w = ws[j];
        long long per = MV_THREADS / w.G, r0 = blk * per, r1 = r0 + per < w.m ? r0 + per : w.m;
        for (int k = 0; k < R; k++) {
            const DlqW& x = ws[R == 2 ? k : j];
            for (long long off = r0 * x.rb + 128ll * threadIdx.x; off < r1 * x.rb; off += 128ll * blockDim.x)
                asm volatile("prefetch.global.L2 [%0];" ::"l"(x.w + off));
        }
    }
    if (target) dl_wait(st, target);
    const signed char* xq;
    const float* xd;
    dlq_input(xin, nm, cols, &xq, &xd);
    for (int vb = blockIdx.x; vb < total; vb += gridDim.x) {
        int blk = vb, j = 0;
        while (j < slots - 1 && blk >= dlq_blocks(ws[j])) blk -= dlq_blocks(ws[j++]);
        const DlqW& w = ws[j];
        const DlqW& u = ws[R == 2 ? 1 : j];
        const float* b = R == 1 ? bias[j] : nullptr;
        switch (w.fmt) {
            case 0: dlq_block<F0, R>(w, u, blk, xq, xd, cols, b, ys[j]); break;
            case 1: dlq_block<F1, R>(w, u, blk, xq, xd, cols, b, ys[j]); break;
            case 2: dlq_block<F2, R>(w, u, blk, xq, xd, cols, b, ys[j]); break;
            default: dlq_block<F3, R>(w, u, blk, xq, xd, cols, b, ys[j]); break;
        }
    }
}

// The quantised layers' body: decode_layers_body's phases and barriers, its attention phase.
#define DLQ_ARGS                                                                                                 \
    const DlqLayer *layers, int L, int C, int H, int KVH, int D, int F, int S, float eps, int wpr, float scale, \
        int chunk, int splits, int interleaved, const int *pos, const float *cosv, const float *sinv,            \
        const float *x0, const bf16_t *h0, unsigned char *scratch, float *x_out, bf16_t *r_out, unsigned int *st, \
        long long l2
template <class F0, class F1, class F2, class F3>
__device__ __forceinline__ void decode_layers_q_body(DLQ_ARGS) {
    unsigned int bar = 0, nb = gridDim.x;
    const NormIn none{nullptr, nullptr, nullptr, nullptr, 0.f, 0};
    const float* xprev = x0;
    const bf16_t* rprev = h0;
    const float* const nobias[3] = {nullptr, nullptr, nullptr};
    for (int l = 0; l < L; l++) {
        const DlqLayer& ly = layers[l];
        DlBufs bf = dl_bufs(scratch, l, C, H, KVH, D, F, splits);
        bool last = l == L - 1;
        // The attention phase reads the bf16 table's fields: the caches and the window.
        DlLayer at;
        at.kc = ly.kc, at.vc = ly.vc, at.window = (int)ly.window;
        if (l2) dl_l2(ly.w[3].w, ly.w[3].rb * ly.w[3].m, 0, l2);
        // P1: q, k, v (layer 0's input arrives normed: h0, quantised here).
        bf16_t* const qkv_y[3] = {bf.q, bf.k, bf.v};
        const float* xa = xprev;
        if (l == 0) {
            dlq_phase<F0, F1, F2, F3, 1>(ly.w, 3, ly.b, qkv_y, h0, none, C, st, 0);
        } else {
            dlq_phase<F0, F1, F2, F3, 1>(ly.w, 3, ly.b, qkv_y, nullptr, NormIn{xprev, rprev, ly.attn_norm, bf.xa, eps, wpr}, C,
                                 st, ++bar * nb);
            xa = bf.xa;
        }
        dl_arrive(st);
        // P2: attention.
        if (l2) dl_l2(ly.w[4].w, ly.w[4].rb * ly.w[4].m, 0, l2 / 2), dl_l2(ly.w[5].w, ly.w[5].rb * ly.w[5].m, 0, l2 / 2);
        dl_wait(st, ++bar * nb);
        dl_attention(at, bf, H, KVH, D, S, scale, chunk, splits, interleaved, pos, cosv, sinv, st);
        dl_arrive(st);
        // P3: o.
        if (l2) dl_l2(ly.w[4].w, ly.w[4].rb * ly.w[4].m, l2 / 2, l2), dl_l2(ly.w[5].w, ly.w[5].rb * ly.w[5].m, l2 / 2, l2);
        bf16_t* const o_y[1] = {bf.ro};
        dlq_phase<F0, F1, F2, F3, 1>(&ly.w[3], 1, nobias, o_y, bf.att, none, H * D, st, ++bar * nb);
        dl_arrive(st);
        // P4: gate, up, SwiGLU after the add and the norm.
        float* xb = last ? x_out : bf.xb;
        if (l2) dl_l2(ly.w[6].w, ly.w[6].rb * ly.w[6].m, 0, l2);
        bf16_t* const act_y[1] = {bf.act};
        dlq_phase<F0, F1, F2, F3, 2>(&ly.w[4], 2, nobias, act_y, nullptr, NormIn{xa, bf.ro, ly.ffn_norm, xb, eps, wpr}, C, st,
                             ++bar * nb);
        dl_arrive(st);
        // P5: down.
        bf16_t* rd = last ? r_out : bf.rd;
        if (l2 && !last)
            for (int j = 0; j < 3; j++) dl_l2(layers[l + 1].w[j].w, layers[l + 1].w[j].rb * layers[l + 1].w[j].m, 0, l2 / 3);
        bf16_t* const d_y[1] = {rd};
        dlq_phase<F0, F1, F2, F3, 1>(&ly.w[6], 1, nobias, d_y, bf.act, none, F, st, ++bar * nb);
        if (!last) dl_arrive(st);
        xprev = xb;
        rprev = rd;
    }
    dl_finish(st, H);
}

#define DLQ_PASS layers, L, C, H, KVH, D, F, S, eps, wpr, scale, chunk, splits, interleaved, pos, cosv, sinv, x0, h0, \
                 scratch, x_out, r_out, st, l2
// Formats 0-3: Q4_K, Q6_K, Q5_0, Q8_0 (decode_layers/cuda.rs, `QUANT_FORMATS`).
extern "C" __global__ void __launch_bounds__(MV_THREADS, 1) decode_layers_quant(DLQ_ARGS) {
    decode_layers_q_body<Q4_K, Q6_K, Q5_0, Q8_0>(DLQ_PASS);
}
