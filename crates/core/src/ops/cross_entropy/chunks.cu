// Cross-entropy over a slice of the vocabulary at a time (the vocabulary-chunked loss) and
// perplexity's f64 scoring. The CPU references are lse_chunk_fwd / lse_chunk_finish /
// ce_bwd_chunk / nll_rows in mod.rs.
//
// Forward: per row a running state [max, Σexp(z − max), target logit], updated slice by slice
// (online logsumexp); finish: lse = max + ln Σ, nll = lse − z[target]. Backward: the slice's
// dlogits = (exp(z − lse) − onehot)·dloss/count from the saved lse. Rows r0.. of the targets,
// state and lse are addressed by the launcher's offsets; targets outside the slice (or
// IGNORE) never index it.

#define IGNORE_ID 0xffffffffu

// Online logsumexp state of one thread, then of a group: (max, Σexp(z − max)).
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
    float nm = fmaxf(m, m2);
    if (nm == -SM_INF) return;  // both empty (or all −∞): nothing to add
    s = s * expf(m - nm) + s2 * expf(m2 - nm);
    m = nm;
}
__device__ __forceinline__ void lse_add8(float& m, float& s, const float* v, int k) {
    float lm = v[0];
    for (int e = 1; e < k; e++) lm = fmaxf(lm, v[e]);
    float nm = fmaxf(m, lm);
    if (nm == -SM_INF) return;
    float t = 0.f;
    for (int e = 0; e < k; e++) t += expf(v[e] - nm);
    s = s * expf(m - nm) + t;
    m = nm;
}
// z (m, vc): logits of vocabulary ids v0..v0+vc, f32 or bf16 (read as stored: no cast pass);
// one block (256 threads) per row, one pass: each thread keeps its own (max, Σexp) over 8
// elements at a time (16-byte accesses when vc % 8 == 0 and z is aligned), merged at the end.
template <typename T>
__device__ void ce_chunk_fwd(const T* z, const unsigned* t, float* state, int vc, int v0) {
    long long row = blockIdx.x;
    const T* zr = z + row * (long long)vc;
    float m = -SM_INF, s = 0.f;
    if ((vc & 7) == 0 && aligned16(z)) {
        for (int i = threadIdx.x * 8; i < vc; i += blockDim.x * 8) {
            float v[8];
            load8(zr + i, v);
            lse_add8(m, s, v, 8);
        }
    } else {
        for (int i = threadIdx.x; i < vc; i += blockDim.x) {
            float v = to_f(zr[i]);
            lse_add8(m, s, &v, 1);
        }
    }
    for (int o = 16; o > 0; o >>= 1) lse_merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    __shared__ float rm[32], rs[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) { rm[w] = m; rs[w] = s; }
    __syncthreads();
    if (threadIdx.x == 0) {
        m = rm[0];
        s = rs[0];
        for (int k = 1; k < (int)(blockDim.x >> 5); k++) lse_merge(m, s, rm[k], rs[k]);
        float* st = state + row * 3;
        float old = st[0];
        float nm = fmaxf(old, m);
        st[1] = (old == -SM_INF ? 0.f : st[1] * expf(old - nm)) + (m == -SM_INF ? 0.f : s * expf(m - nm));
        st[0] = nm;
        unsigned ti = t[row];
        if (ti != IGNORE_ID && ti >= (unsigned)v0 && ti < (unsigned)v0 + (unsigned)vc) st[2] = to_f(zr[ti - v0]);
    }
}
extern "C" __global__ void ce_chunk_fwd_f32(const float* z, const unsigned* t, float* state, int vc, int v0) {
    ce_chunk_fwd<float>(z, t, state, vc, v0);
}
extern "C" __global__ void ce_chunk_fwd_bf16(const bf16_t* z, const unsigned* t, float* state, int vc, int v0) {
    ce_chunk_fwd<bf16_t>(z, t, state, vc, v0);
}

// state (n, 3) → nll (n) (0 for ignored rows), lse (n).
extern "C" __global__ void ce_chunk_finish_f32(const float* state, const unsigned* t, float* nll, float* lse, long long n) {
    for (long long r = blockIdx.x * (long long)blockDim.x + threadIdx.x; r < n; r += (long long)gridDim.x * blockDim.x) {
        float l = state[r * 3] + logf(state[r * 3 + 1]);
        lse[r] = l;
        nll[r] = t[r] == IGNORE_ID ? 0.f : l - state[r * 3 + 2];
    }
}

// dz (m, vc) for the slice v0..v0+vc of rows whose targets and lse are t, lse; dz in z's
// dtype (bf16 under mixed precision: computed in f32 and rounded once, the bytes the f32 result
// cast to bf16 for the head's backward matmul would have).
// dloss: the loss gradient, read on the device when it is there (dloss_dev, so the backward
// never waits for the host), else dloss_host.
// Grid (m rows, column blocks): a thread takes 8 consecutive columns with 16-byte accesses when
// `vec` (the launcher's check: vc % 8 == 0, both buffers aligned), else one: no per-element
// division, and no 2-byte accesses on the usual shapes.
template <typename T>
__device__ void ce_chunk_bwd(const T* z, const unsigned* t, const float* lse, T* dz, long long m, int vc, int v0,
                             const float* dloss_dev, float dloss_host, float inv_count, int vec) {
    float scale = (dloss_dev ? *dloss_dev : dloss_host) * inv_count;
    long long r = blockIdx.x;
    unsigned ti = t[r];
    float l = lse[r];
    const T* zr = z + r * vc;
    T* dr = dz + r * vc;
    int j0 = (blockIdx.y * blockDim.x + threadIdx.x) * (vec ? 8 : 1);
    if (j0 >= vc) return;
    if (vec) {
        float v[8];
        load8(zr + j0, v);
        V16<T> o[sizeof(T) == 2 ? 1 : 2];
        T* oe = (T*)o;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            float d = 0.f;
            if (ti != IGNORE_ID) {
                d = expf(v[e] - l) * scale;
                if (ti == (unsigned)(v0 + j0 + e)) d -= scale;
            }
            oe[e] = from_f<T>(d);
        }
        uint4* dst = (uint4*)(dr + j0);
#pragma unroll
        for (int k = 0; k < (int)(sizeof(T) == 2 ? 1 : 2); k++) dst[k] = o[k].u;
    } else {
        float d = 0.f;
        if (ti != IGNORE_ID) {
            d = expf(to_f(zr[j0]) - l) * scale;
            if (ti == (unsigned)(v0 + j0)) d -= scale;
        }
        dr[j0] = from_f<T>(d);
    }
}
extern "C" __global__ void ce_chunk_bwd_f32(const float* z, const unsigned* t, const float* lse, float* dz, long long m,
                                            int vc, int v0, const float* dloss_dev, float dloss_host, float inv_count, int vec) {
    ce_chunk_bwd<float>(z, t, lse, dz, m, vc, v0, dloss_dev, dloss_host, inv_count, vec);
}
extern "C" __global__ void ce_chunk_bwd_bf16(const bf16_t* z, const unsigned* t, const float* lse, bf16_t* dz, long long m,
                                             int vc, int v0, const float* dloss_dev, float dloss_host, float inv_count, int vec) {
    ce_chunk_bwd<bf16_t>(z, t, lse, dz, m, vc, v0, dloss_dev, dloss_host, inv_count, vec);
}

__device__ __forceinline__ double warp_sum_f64(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Perplexity scoring: nll[r] = logsumexp(z[r]) − z[r][t[r]] with the exponentials summed in
// f64 (0 for ignored rows); out holds f64. One block (1024 threads) per row.
extern "C" __global__ void ce_nll_f64(const float* z, const unsigned* t, double* out, int v) {
    __shared__ double red[32];
    long long row = blockIdx.x;
    const float* zr = z + row * (long long)v;
    float mf = -SM_INF;
    for (int i = threadIdx.x; i < v; i += blockDim.x) mf = fmaxf(mf, zr[i]);
    double m = (double)block_max(mf);
    double s = 0.0;
    for (int i = threadIdx.x; i < v; i += blockDim.x) s += exp((double)zr[i] - m);
    s = warp_sum_f64(s);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        s = warp_sum_f64(threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.0);
        if (threadIdx.x == 0) {
            unsigned ti = t[row];
            out[row] = ti == IGNORE_ID ? 0.0 : m + log(s) - (double)zr[ti];
        }
    }
}
