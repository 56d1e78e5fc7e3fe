// SwiGLU gate: y = silu(g)·u, and its backward. Elementwise, f32.

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + expf(-x)); }

extern "C" __global__ void swiglu_fwd_f32(const float* g, const float* u, float* y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float gi = g[i];
        y[i] = gi * sigmoidf_(gi) * u[i];
    }
}

extern "C" __global__ void swiglu_bwd_f32(const float* g, const float* u, const float* dy, float* dg, float* du, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float gi = g[i], s = sigmoidf_(gi), d = dy[i];
        du[i] = d * gi * s;
        dg[i] = d * u[i] * s * (1.f + gi * (1.f - s));
    }
}
