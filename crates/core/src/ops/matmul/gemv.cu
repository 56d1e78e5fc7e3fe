// Matrix–vector products for a few rows (decode, n ≤ GEMV_MAXN): y_j (n × m_j) = x (n × k) ·
// W_jᵀ (+ b_j) for up to three weights that share x (q, k and v) in one launch, and
// silu(x·W_gᵀ)·(x·W_uᵀ) for a gate and up pair in one launch. Reading the weights is the whole
// cost, so they stream in 16-byte vectors; launching is the rest of it at these sizes, so one
// launch does what three (or three plus the gate) did.
//
// One warp per output row, for all n inputs: lanes stride the row in 16-byte vectors (8 bf16 or
// 4 f32) of W and of each x row, accumulate in f32, sum by shuffles; lane 0 stores (rows_dot). Rounding as
// the unfused path: each product is rounded to T, then the bias is added (f32) and rounded again;
// the gate and up products are rounded to T before silu(g)·u (swiglu.cu's arithmetic).
// W, x, y share the storage type T (f32 or bf16); biases are f32.
#define GEMV_WARPS 8

// x, or with nm.x set (one row of a decode step) the residual add and RMSNorm of nm made first
// by the whole block into shared memory (common.cuh's add_rmsnorm_shared), its bf16 result as x.
// Every thread of the block calls it, before any leaves.
template <typename T>
__device__ __forceinline__ const T* normed_input(const NormIn& nm, int k, const T* x) {
    if (!nm.x) return x;
    extern __shared__ __align__(16) unsigned char mv_shared[];
    add_rmsnorm_shared(nm, k, (bf16_t*)mv_shared);
    __syncthreads();
    return (const T*)mv_shared;
}
#define GEMV_MAXN 4

// The sums of lane `lane` of a row's G lanes (G = 32: one warp a row), added to acc[r·GEMV_MAXN
// + j] for weight row r (k elements, 16-byte vectors) and input row j: the lane owns the vectors
// lane, lane + G, … and issues the loads of MV_LOADS of them (over the R rows) before the first
// product, so the row's bytes are in flight at once (the bandwidth needs ~20 KB in flight per SM;
// one load then one product at a time reached a third of it). In vector order whatever R is, so
// one row gives the same bits alone (gemv3) as beside its pair (gemv_swiglu).
#define MV_LOADS 8
// One batch of a lane's loads: U = MV_LOADS / R vectors of each of the R rows, from vector `base`
// on in steps of G (zeros past the row).
template <typename T, int R>
struct MvBatch {
    uint4 v[R][MV_LOADS / R];
};
template <typename T, int R>
__device__ __forceinline__ void vec_load(const T* const (&w)[R], int nv, int base, int G, MvBatch<T, R>& b) {
    constexpr int U = MV_LOADS / R;
#pragma unroll
    for (int u = 0; u < U; u++) {
        int v = base + G * u;
#pragma unroll
        for (int r = 0; r < R; r++) b.v[r][u] = v < nv ? ld_stream((const uint4*)w[r] + v) : make_uint4(0, 0, 0, 0);
    }
}
// `first`: the batch at base = lane, loaded by the caller before it waited for its inputs
// (pdl_wait), so the first round trip overlaps the kernel before.
template <typename T, int R>
__device__ __forceinline__ void vec_sums(const T* const (&w)[R], const T* x, int k, int n, int lane, int G,
                                         float (&acc)[R * GEMV_MAXN], const MvBatch<T, R>& first) {
    const int W = 16 / sizeof(T);
    constexpr int U = MV_LOADS / R; // loads a row a lane: eight of one row, four of each of two
    int nv = k / W;
    MvBatch<T, R> wv = first;
    for (int base = lane; base < nv; base += G * U) {
        if (base != lane) vec_load<T, R>(w, nv, base, G, wv);
#pragma unroll
        for (int u = 0; u < U; u++) {
            int v = base + G * u;
            if (v < nv) {
#pragma unroll
                for (int j = 0; j < GEMV_MAXN; j++) {
                    if (j < n) {
                        V16<T> b;
                        b.u = ((const uint4*)(x + (long long)j * k))[v];
#pragma unroll
                        for (int r = 0; r < R; r++) {
                            V16<T> a;
                            a.u = wv.v[r][u];
#pragma unroll
                            for (int e = 0; e < W; e++) acc[r * GEMV_MAXN + j] += to_f(a.e[e]) * to_f(b.e[e]);
                        }
                    }
                }
            }
        }
    }
}

// The start every matvec kernel shares: lets the next kernel launch, issues this lane's first
// batch of weight loads (when the rows are 16-byte vectors: `vec`) and the block's share of the
// L2 prefetches it was given (`cuda::prefetch`: none unless hinted), waits for the kernel before
// (pdl_wait), and returns x — or, with nm.x set, the add+RMSNorm row the whole block makes into
// shared memory (every thread of the block calls this).
template <typename T, int R>
__device__ __forceinline__ const T* mv_start(const T* const (&w)[R], const T* x, int k, int lane, int G, bool active,
                                             const NormIn& nm, bool* vec, MvBatch<T, R>& first, const Pf& pf) {
    const int W = 16 / sizeof(T);
    pdl_trigger();
    // x's alignment is known before it is written: shared memory (the norm's row) or its address.
    bool v = k % W == 0 && (nm.x || aligned16(x));
#pragma unroll
    for (int r = 0; r < R; r++) v = v && aligned16(w[r]);
    *vec = v;
    if (v && active) vec_load<T, R>(w, k / W, lane, G, first);
    prefetch_l2(pf);  // a later kernel's weights, after this one's first loads
    pdl_wait();
    return normed_input(nm, k, x);
}

// acc[r·GEMV_MAXN + j] = row r of the R weight rows w[r] (k elements each) · input row j of x,
// summed over the warp: `vec_sums` with G = 32 where x and the rows are 16-byte vectors (`vec`,
// from mv_start, with its first batch), else one element a lane at a time.
template <typename T, int R>
__device__ __forceinline__ void rows_dot(const T* const (&w)[R], const T* x, int k, int n, float (&acc)[R * GEMV_MAXN],
                                         bool vec, const MvBatch<T, R>& first) {
    int lane = threadIdx.x & 31;
#pragma unroll
    for (int i = 0; i < R * GEMV_MAXN; i++) acc[i] = 0.f;
    if (vec) {
        vec_sums<T, R>(w, x, k, n, lane, 32, acc, first);
    } else {
        for (int i = lane; i < k; i += 32) {
#pragma unroll
            for (int j = 0; j < GEMV_MAXN; j++) {
                if (j < n) {
                    float b = to_f(x[(long long)j * k + i]);
#pragma unroll
                    for (int r = 0; r < R; r++) acc[r * GEMV_MAXN + j] += to_f(w[r][i]) * b;
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < R * GEMV_MAXN; i++) acc[i] = warp_sum(acc[i]);
}

// grid ceil((m0 + m1 + m2) / GEMV_WARPS), block 32·GEMV_WARPS. Unused weights have m = 0; a
// null bias adds nothing.
template <typename T>
__device__ void gemv3(const T* x, int n, int k, const T* w0, const float* b0, T* y0, int m0, const T* w1,
                      const float* b1, T* y1, int m1, const T* w2, const float* b2, T* y2, int m2,
                      const NormIn& nm = NormIn{}, const Pf& pf = Pf{}) {
    int r = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    const T* w = w0;
    const float* b = b0;
    T* y = y0;
    int m = m0;
    bool active = true;
    if (r < m0) {
    } else if ((r -= m0) < m1) {
        w = w1, b = b1, y = y1, m = m1;
    } else if ((r -= m1) < m2) {
        w = w2, b = b2, y = y2, m = m2;
    } else {
        active = false, r = 0;  // the whole warp: r is per warp
    }
    const T* const rows[1] = {w + (long long)r * k};
    bool vec;
    MvBatch<T, 1> first;
    x = mv_start<T, 1>(rows, x, k, threadIdx.x & 31, 32, active, nm, &vec, first, pf);
    if (!active) return;  // after the block's norm (its barrier)
    float acc[GEMV_MAXN];
    rows_dot<T, 1>(rows, x, k, n, acc, vec, first);
    if ((threadIdx.x & 31) == 0) {
#pragma unroll
        for (int j = 0; j < GEMV_MAXN; j++) {
            if (j < n) {
                T p = from_f<T>(acc[j]);
                y[(long long)j * m + r] = b ? from_f<T>(to_f(p) + b[r]) : p;
            }
        }
    }
}

// y (n × m) = silu(x·W_gᵀ)·(x·W_uᵀ). grid ceil(m / GEMV_WARPS).
template <typename T>
__device__ void gemv_swiglu(const T* x, int n, int k, const T* wg, const T* wu, T* y, int m,
                            const NormIn& nm = NormIn{}, const Pf& pf = Pf{}) {
    int r = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    bool active = r < m;
    if (!active) r = 0;
    const T* const rows[2] = {wg + (long long)r * k, wu + (long long)r * k};
    bool vec;
    MvBatch<T, 2> first;
    x = mv_start<T, 2>(rows, x, k, threadIdx.x & 31, 32, active, nm, &vec, first, pf);
    if (!active) return;
    float acc[2 * GEMV_MAXN];
    rows_dot<T, 2>(rows, x, k, n, acc, vec, first);
    if ((threadIdx.x & 31) == 0) {
#pragma unroll
        for (int j = 0; j < GEMV_MAXN; j++) {
            if (j < n) {
                float gi = to_f(from_f<T>(acc[j])), ui = to_f(from_f<T>(acc[GEMV_MAXN + j]));
                y[(long long)j * m + r] = from_f<T>(gi * (1.f / (1.f + expf(-gi))) * ui);
            }
        }
    }
}

// The same products with G lanes a row (row groups, common.cuh): the launcher picks G so that
// a lane issues about MV_LOADS 16-byte loads for its row, all before the first product, so a
// long row (the down projection's 8192 values) is read in one round trip rather than four. The
// kernels above (one warp a row: `vec_sums` with G = 32) take rows shorter than 4096 values,
// rows without 16-byte vectors and `SMELT_CUDA_MV=old`. Sums per lane in vector order, then
// group_sum: one row gives the same bits alone (gemvg3) as beside its pair (gemvg_swiglu).
template <typename T, int R>
__device__ __forceinline__ void rows_dot_g(const T* const (&w)[R], const T* x, int k, int n, int lane, int G,
                                           bool active, float (&acc)[R * GEMV_MAXN], const MvBatch<T, R>& first) {
#pragma unroll
    for (int i = 0; i < R * GEMV_MAXN; i++) acc[i] = 0.f;
    if (active) vec_sums<T, R>(w, x, k, n, lane, G, acc, first);
    group_sum<R * GEMV_MAXN>(acc, G);
}

// grid ceil((m0 + m1 + m2) / (MV_THREADS / G)), block MV_THREADS; k a multiple of 16 / sizeof(T),
// x and the weights 16-byte aligned (the launcher checks).
template <typename T>
__device__ void gemvg3(const T* x, int n, int k, const T* w0, const float* b0, T* y0, int m0, const T* w1,
                       const float* b1, T* y1, int m1, const T* w2, const float* b2, T* y2, int m2, int G,
                       const NormIn& nm = NormIn{}, const Pf& pf = Pf{}) {
    int lane = threadIdx.x & (G - 1);
    int r = blockIdx.x * (MV_THREADS / G) + threadIdx.x / G;
    const T* w = w0;
    const float* b = b0;
    T* y = y0;
    int m = m0;
    bool active = true;
    if (r < m0) {
    } else if ((r -= m0) < m1) {
        w = w1, b = b1, y = y1, m = m1;
    } else if ((r -= m1) < m2) {
        w = w2, b = b2, y = y2, m = m2;
    } else {
        active = false, r = 0; // still sums with its block (the barrier in group_sum)
    }
    const T* const rows[1] = {w + (long long)r * k};
    bool vec;
    MvBatch<T, 1> first;
    x = mv_start<T, 1>(rows, x, k, lane, G, active, nm, &vec, first, pf);
    float acc[GEMV_MAXN];
    rows_dot_g<T, 1>(rows, x, k, n, lane, G, active, acc, first);
    if (active && lane == 0) {
#pragma unroll
        for (int j = 0; j < GEMV_MAXN; j++) {
            if (j < n) {
                T p = from_f<T>(acc[j]);
                y[(long long)j * m + r] = b ? from_f<T>(to_f(p) + b[r]) : p;
            }
        }
    }
}

template <typename T>
__device__ void gemvg_swiglu(const T* x, int n, int k, const T* wg, const T* wu, T* y, int m, int G,
                             const NormIn& nm = NormIn{}, const Pf& pf = Pf{}) {
    int lane = threadIdx.x & (G - 1);
    int r = blockIdx.x * (MV_THREADS / G) + threadIdx.x / G;
    bool active = r < m;
    if (!active) r = 0;
    const T* const rows[2] = {wg + (long long)r * k, wu + (long long)r * k};
    bool vec;
    MvBatch<T, 2> first;
    x = mv_start<T, 2>(rows, x, k, lane, G, active, nm, &vec, first, pf);
    float acc[2 * GEMV_MAXN];
    rows_dot_g<T, 2>(rows, x, k, n, lane, G, active, acc, first);
    if (active && lane == 0) {
#pragma unroll
        for (int j = 0; j < GEMV_MAXN; j++) {
            if (j < n) {
                float gi = to_f(from_f<T>(acc[j])), ui = to_f(from_f<T>(acc[GEMV_MAXN + j]));
                y[(long long)j * m + r] = from_f<T>(gi * (1.f / (1.f + expf(-gi))) * ui);
            }
        }
    }
}

#define GEMV_KERNELS(T, N) \
    extern "C" __global__ void gemv3_##N(const T* x, int n, int k, const T* w0, const float* b0, T* y0, int m0, \
                                         const T* w1, const float* b1, T* y1, int m1, const T* w2, const float* b2, \
                                         T* y2, int m2, PF_ARGS) { \
        gemv3<T>(x, n, k, w0, b0, y0, m0, w1, b1, y1, m1, w2, b2, y2, m2, NormIn{}, PF_IN); \
    } \
    extern "C" __global__ void gemv_swiglu_##N(const T* x, int n, int k, const T* wg, const T* wu, T* y, int m, \
                                               PF_ARGS) { \
        gemv_swiglu<T>(x, n, k, wg, wu, y, m, NormIn{}, PF_IN); \
    } \
    extern "C" __global__ void __launch_bounds__(MV_THREADS, 2) gemvg3_##N(const T* x, int n, int k, const T* w0, const float* b0, \
                                         T* y0, int m0, const T* w1, const float* b1, T* y1, int m1, const T* w2, \
                                         const float* b2, T* y2, int m2, int G, PF_ARGS) { \
        gemvg3<T>(x, n, k, w0, b0, y0, m0, w1, b1, y1, m1, w2, b2, y2, m2, G, NormIn{}, PF_IN); \
    } \
    extern "C" __global__ void __launch_bounds__(MV_THREADS, 2) gemvg_swiglu_##N(const T* x, int n, int k, const T* wg, \
                                         const T* wu, T* y, int m, int G, PF_ARGS) { \
        gemvg_swiglu<T>(x, n, k, wg, wu, y, m, G, NormIn{}, PF_IN); \
    }
GEMV_KERNELS(float, f32)
GEMV_KERNELS(bf16_t, bf16)

// One row's residual add and RMSNorm (x f32, r bf16), then the products of its bf16 result: the
// decode step's add_rmsnorm inside the launch that follows it (mixed precision only).
#define NORM_ARGS const float *nx, const bf16_t *nr, const float *nw, float *nh, float eps, int wpr
extern "C" __global__ void gemv3_norm_bf16(NORM_ARGS, int k, const bf16_t* w0, const float* b0, bf16_t* y0, int m0,
                                           const bf16_t* w1, const float* b1, bf16_t* y1, int m1, const bf16_t* w2,
                                           const float* b2, bf16_t* y2, int m2, PF_ARGS) {
    gemv3<bf16_t>(nullptr, 1, k, w0, b0, y0, m0, w1, b1, y1, m1, w2, b2, y2, m2, NormIn{nx, nr, nw, nh, eps, wpr},
                  PF_IN);
}
extern "C" __global__ void gemv_swiglu_norm_bf16(NORM_ARGS, int k, const bf16_t* wg, const bf16_t* wu, bf16_t* y, int m,
                                                 PF_ARGS) {
    gemv_swiglu<bf16_t>(nullptr, 1, k, wg, wu, y, m, NormIn{nx, nr, nw, nh, eps, wpr}, PF_IN);
}
extern "C" __global__ void __launch_bounds__(MV_THREADS, 2)
    gemvg3_norm_bf16(NORM_ARGS, int k, const bf16_t* w0, const float* b0, bf16_t* y0, int m0, const bf16_t* w1,
                     const float* b1, bf16_t* y1, int m1, const bf16_t* w2, const float* b2, bf16_t* y2, int m2, int G,
                     PF_ARGS) {
    gemvg3<bf16_t>(nullptr, 1, k, w0, b0, y0, m0, w1, b1, y1, m1, w2, b2, y2, m2, G, NormIn{nx, nr, nw, nh, eps, wpr},
                   PF_IN);
}
extern "C" __global__ void __launch_bounds__(MV_THREADS, 2)
    gemvg_swiglu_norm_bf16(NORM_ARGS, int k, const bf16_t* wg, const bf16_t* wu, bf16_t* y, int m, int G, PF_ARGS) {
    gemvg_swiglu<bf16_t>(nullptr, 1, k, wg, wu, y, m, G, NormIn{nx, nr, nw, nh, eps, wpr}, PF_IN);
}
