// Muon's elementwise steps on CUDA, in f32, each operation rounded as the CPU reference
// (`muon_update` in mod.rs) rounds it (explicit _rn intrinsics: no fused multiply-adds), so
// that only the Newton–Schulz products (cuBLASLt, another summation order) differ from the CPU.

// m ← m + (1 − μ)(g·coef − m); u ← g·coef + μ(m − g·coef).
extern "C" __global__ void muon_momentum(const float* g, float* m, float* u, long long n, float coef, float mu) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = __fmul_rn(g[i], coef);
    float mi = __fadd_rn(m[i], __fmul_rn(__fsub_rn(1.f, mu), __fsub_rn(gi, m[i])));
    m[i] = mi;
    u[i] = __fadd_rn(gi, __fmul_rn(mu, __fsub_rn(mi, gi)));
}

// Σ u² of n values: one f64 partial a block of 256 threads.
extern "C" __global__ void muon_sumsq(const float* u, double* partial, long long n) {
    __shared__ double s[256];
    double acc = 0.0;
    for (long long i = blockIdx.x * 256LL + threadIdx.x; i < n; i += 256LL * gridDim.x) {
        double x = (double)u[i];
        acc += x * x;
    }
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int w = 128; w > 0; w >>= 1) {
        if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

// X = u / norm, u (rows × cols) row-major; X is uᵀ (cols × rows) when `tall`.
extern "C" __global__ void muon_normalise(const float* u, float* x, int rows, int cols, int tall, float norm) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= (long long)rows * cols) return;
    long long r = i / cols, c = i - r * cols;
    x[tall ? c * rows + r : i] = __fdiv_rn(u[i], norm);
}

// p ← p·keep − lr·(o·scale), o = X (or Xᵀ when `tall`) of the last Newton–Schulz step.
extern "C" __global__ void muon_apply(float* p, const float* x, int rows, int cols, int tall, float keep, float lr,
                                      float scale) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= (long long)rows * cols) return;
    long long r = i / cols, c = i - r * cols;
    float d = x[tall ? c * rows + r : i];
    p[i] = __fsub_rn(__fmul_rn(p[i], keep), __fmul_rn(lr, __fmul_rn(d, scale)));
}
