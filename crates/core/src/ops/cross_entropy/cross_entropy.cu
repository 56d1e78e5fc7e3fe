// Cross-entropy fused with log-softmax. Forward: one block per row → nll and logsumexp, then a
// single block sums the nll in a fixed order into the mean loss (on the device: no host read).
// Backward: dlogits = (softmax − onehot)·dloss/count, recomputed from the saved logsumexp.
// Logits (and dlogits, which have their dtype) are f32 or bf16; nll, lse, the loss and all the
// arithmetic are f32.

#define IGNORE_ID 0xffffffffu

template <typename T> __device__ void ce_fwd(const T* z, const unsigned int* t, float* nll, float* lse, int v) {
    long long row = blockIdx.x;
    const T* zr = z + row * (long long)v;
    float m = -SM_INF;
    for (int i = threadIdx.x; i < v; i += blockDim.x) m = fmaxf(m, to_f(zr[i]));
    m = block_max(m);
    float s = 0.f;
    for (int i = threadIdx.x; i < v; i += blockDim.x) s += expf(to_f(zr[i]) - m);
    s = block_sum(s);
    if (threadIdx.x == 0) {
        float l = m + logf(s);
        lse[row] = l;
        unsigned int ti = t[row];
        nll[row] = ti == IGNORE_ID ? 0.f : l - to_f(zr[ti]);
    }
}

// loss[0] = Σ nll / count, one block of 1024 threads, fixed order.
extern "C" __global__ void ce_mean_f32(const float* nll, float* loss, long long n, float inv_count) {
    float s = 0.f;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) s += nll[i];
    s = block_sum(s);
    if (threadIdx.x == 0) loss[0] = s * inv_count;
}

// scale = dloss / count (dloss read from the device when given, else the host value).
template <typename T>
__device__ void ce_bwd(const T* z, const unsigned int* t, const float* lse, T* dz, long long n, int v,
                       const float* dloss_dev, float dloss_host, float inv_count) {
    float scale = (dloss_dev ? dloss_dev[0] : dloss_host) * inv_count;
    long long total = n * v;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        long long r = i / v;
        int j = (int)(i - r * v);
        unsigned int ti = t[r];
        float d = 0.f;
        if (ti != IGNORE_ID) {
            d = expf(to_f(z[i]) - lse[r]) * scale;
            if ((unsigned int)j == ti) d -= scale;
        }
        dz[i] = from_f<T>(d);
    }
}

#define CE_KERNELS(T, N) \
    extern "C" __global__ void ce_fwd_##N(const T* z, const unsigned int* t, float* nll, float* lse, int v) { \
        ce_fwd<T>(z, t, nll, lse, v); \
    } \
    extern "C" __global__ void ce_bwd_##N(const T* z, const unsigned int* t, const float* lse, T* dz, long long n, int v, \
                                          const float* dloss_dev, float dloss_host, float inv_count) { \
        ce_bwd<T>(z, t, lse, dz, n, v, dloss_dev, dloss_host, inv_count); \
    }
CE_KERNELS(float, f32)
CE_KERNELS(bf16_t, bf16)
