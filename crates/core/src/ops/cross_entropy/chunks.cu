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

// z (m, vc): logits of vocabulary ids v0..v0+vc, f32 or bf16 (read as stored: no cast pass);
// one block (1024 threads) per row.
template <typename T>
__device__ void ce_chunk_fwd(const T* z, const unsigned* t, float* state, int vc, int v0) {
    long long row = blockIdx.x;
    const T* zr = z + row * (long long)vc;
    float* st = state + row * 3;
    float m = -SM_INF;
    for (int i = threadIdx.x; i < vc; i += blockDim.x) m = fmaxf(m, to_f(zr[i]));
    m = block_max(m);
    float old = st[0];
    float nm = fmaxf(old, m);
    float s = 0.f;
    for (int i = threadIdx.x; i < vc; i += blockDim.x) s += expf(to_f(zr[i]) - nm);
    s = block_sum(s);
    if (threadIdx.x == 0) {
        st[1] = (old == -SM_INF ? 0.f : st[1] * expf(old - nm)) + s;
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
template <typename T>
__device__ void ce_chunk_bwd(const T* z, const unsigned* t, const float* lse, T* dz, long long m, int vc, int v0,
                             const float* dloss_dev, float dloss_host, float inv_count) {
    float scale = (dloss_dev ? *dloss_dev : dloss_host) * inv_count;
    long long total = m * vc;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        long long r = i / vc;
        int j = (int)(i - r * vc);
        unsigned ti = t[r];
        float d = 0.f;
        if (ti != IGNORE_ID) {
            d = expf(to_f(z[i]) - lse[r]) * scale;
            if (ti == (unsigned)(v0 + j)) d -= scale;
        }
        dz[i] = from_f<T>(d);
    }
}
extern "C" __global__ void ce_chunk_bwd_f32(const float* z, const unsigned* t, const float* lse, float* dz, long long m,
                                            int vc, int v0, const float* dloss_dev, float dloss_host, float inv_count) {
    ce_chunk_bwd<float>(z, t, lse, dz, m, vc, v0, dloss_dev, dloss_host, inv_count);
}
extern "C" __global__ void ce_chunk_bwd_bf16(const bf16_t* z, const unsigned* t, const float* lse, bf16_t* dz, long long m,
                                             int vc, int v0, const float* dloss_dev, float dloss_host, float inv_count) {
    ce_chunk_bwd<bf16_t>(z, t, lse, dz, m, vc, v0, dloss_dev, dloss_host, inv_count);
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
