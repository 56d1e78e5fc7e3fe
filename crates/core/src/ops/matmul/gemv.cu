// Matrix–vector products for a few rows (decode, n ≤ GEMV_MAXN): y_j (n × m_j) = x (n × k) ·
// W_jᵀ (+ b_j) for up to three weights that share x (q, k and v) in one launch, and
// silu(x·W_gᵀ)·(x·W_uᵀ) for a gate and up pair in one launch. Reading the weights is the whole
// cost, so they stream in 16-byte vectors; launching is the rest of it at these sizes, so one
// launch does what three (or three plus the gate) did.
//
// One warp per output row, for all n inputs: lanes stride the row in 16-byte vectors (8 bf16 or
// 4 f32) of W and of each x row, accumulate in f32, sum by shuffles; lane 0 stores. Rounding as
// the unfused path: each product is rounded to T, then the bias is added (f32) and rounded again;
// the gate and up products are rounded to T before silu(g)·u (swiglu.cu's arithmetic).
// W, x, y share the storage type T (f32 or bf16); biases are f32.
#define GEMV_WARPS 8
#define GEMV_MAXN 4

template <typename T>
__device__ __forceinline__ void row_dot(const T* w, const T* x, int k, int n, float acc[GEMV_MAXN]) {
    const int W = 16 / sizeof(T);
    int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < GEMV_MAXN; j++) acc[j] = 0.f;
    if (k % W == 0 && aligned16(w) && aligned16(x)) {
        int nv = k / W;
        const uint4* wv = (const uint4*)w;
#pragma unroll 4
        for (int v = lane; v < nv; v += 32) {
            V16<T> a;
            a.u = wv[v];
#pragma unroll
            for (int j = 0; j < GEMV_MAXN; j++) {
                if (j < n) {
                    V16<T> b;
                    b.u = ((const uint4*)(x + (long long)j * k))[v];
#pragma unroll
                    for (int e = 0; e < W; e++) acc[j] += to_f(a.e[e]) * to_f(b.e[e]);
                }
            }
        }
    } else {
        for (int i = lane; i < k; i += 32) {
            float a = to_f(w[i]);
#pragma unroll
            for (int j = 0; j < GEMV_MAXN; j++)
                if (j < n) acc[j] += a * to_f(x[(long long)j * k + i]);
        }
    }
#pragma unroll
    for (int j = 0; j < GEMV_MAXN; j++) acc[j] = warp_sum(acc[j]);
}

// grid ceil((m0 + m1 + m2) / GEMV_WARPS), block 32·GEMV_WARPS. Unused weights have m = 0; a
// null bias adds nothing.
template <typename T>
__device__ void gemv3(const T* x, int n, int k, const T* w0, const float* b0, T* y0, int m0, const T* w1,
                      const float* b1, T* y1, int m1, const T* w2, const float* b2, T* y2, int m2) {
    int r = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    const T* w;
    const float* b;
    T* y;
    int m;
    if (r < m0) {
        w = w0, b = b0, y = y0, m = m0;
    } else if ((r -= m0) < m1) {
        w = w1, b = b1, y = y1, m = m1;
    } else if ((r -= m1) < m2) {
        w = w2, b = b2, y = y2, m = m2;
    } else {
        return;  // the whole warp: r is per warp
    }
    float acc[GEMV_MAXN];
    row_dot(w + (long long)r * k, x, k, n, acc);
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
__device__ void gemv_swiglu(const T* x, int n, int k, const T* wg, const T* wu, T* y, int m) {
    int r = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (r >= m) return;
    float g[GEMV_MAXN], u[GEMV_MAXN];
    row_dot(wg + (long long)r * k, x, k, n, g);
    row_dot(wu + (long long)r * k, x, k, n, u);
    if ((threadIdx.x & 31) == 0) {
#pragma unroll
        for (int j = 0; j < GEMV_MAXN; j++) {
            if (j < n) {
                float gi = to_f(from_f<T>(g[j])), ui = to_f(from_f<T>(u[j]));
                y[(long long)j * m + r] = from_f<T>(gi * (1.f / (1.f + expf(-gi))) * ui);
            }
        }
    }
}

#define GEMV_KERNELS(T, N) \
    extern "C" __global__ void gemv3_##N(const T* x, int n, int k, const T* w0, const float* b0, T* y0, int m0, \
                                         const T* w1, const float* b1, T* y1, int m1, const T* w2, const float* b2, \
                                         T* y2, int m2) { \
        gemv3<T>(x, n, k, w0, b0, y0, m0, w1, b1, y1, m1, w2, b2, y2, m2); \
    } \
    extern "C" __global__ void gemv_swiglu_##N(const T* x, int n, int k, const T* wg, const T* wu, T* y, int m) { \
        gemv_swiglu<T>(x, n, k, wg, wu, y, m); \
    }
GEMV_KERNELS(float, f32)
GEMV_KERNELS(bf16_t, bf16)
