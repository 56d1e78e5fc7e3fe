// SwiGLU gate: y = silu(g)·u, and its backward. Elementwise; g, u, y (and dy, dg, du) share
// one storage dtype, f32 or bf16; the arithmetic is f32.

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + expf(-x)); }

template <typename T> __device__ void swiglu_fwd(const T* g, const T* u, T* y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float gi = to_f(g[i]);
        y[i] = from_f<T>(gi * sigmoidf_(gi) * to_f(u[i]));
    }
}

template <typename T> __device__ void swiglu_bwd(const T* g, const T* u, const T* dy, T* dg, T* du, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float gi = to_f(g[i]), s = sigmoidf_(gi), d = to_f(dy[i]);
        du[i] = from_f<T>(d * gi * s);
        dg[i] = from_f<T>(d * to_f(u[i]) * s * (1.f + gi * (1.f - s)));
    }
}

#define SWIGLU(T, N) \
    extern "C" __global__ void swiglu_fwd_##N(const T* g, const T* u, T* y, long long n) { swiglu_fwd<T>(g, u, y, n); } \
    extern "C" __global__ void swiglu_bwd_##N(const T* g, const T* u, const T* dy, T* dg, T* du, long long n) { \
        swiglu_bwd<T>(g, u, dy, dg, du, n); \
    }
SWIGLU(float, f32)
SWIGLU(bf16_t, bf16)
