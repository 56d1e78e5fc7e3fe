// What cuBLASLt does not do for `linear`: the bias add and the bias gradient (column sums,
// two deterministic passes as in rmsnorm's dw). y and dy are f32 or bf16 (the activation
// dtype); bias and its gradient are f32 (weights).

#define GRID_LOOP(i, n) for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

// y[r, j] += bias[j]; y: (n, m).
template <typename T> __device__ void add_bias(T* y, const float* bias, long long n, int m) {
    GRID_LOOP(i, n * m) y[i] = from_f<T>(to_f(y[i]) + bias[i % m]);
}

// part[chunk, j] = Σ_{rows in chunk} x[row, j]; grid (ceil(m/256), chunks).
template <typename T> __device__ void col_sum_part(const T* x, float* part, long long n, int m, long long rows_per_chunk) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= m) return;
    long long r0 = blockIdx.y * rows_per_chunk;
    long long r1 = r0 + rows_per_chunk < n ? r0 + rows_per_chunk : n;
    float acc = 0.f;
    for (long long r = r0; r < r1; r++) acc += to_f(x[r * m + j]);
    part[(long long)blockIdx.y * m + j] = acc;
}

#define MATMUL_KERNELS(T, N) \
    extern "C" __global__ void add_bias_##N(T* y, const float* bias, long long n, int m) { add_bias<T>(y, bias, n, m); } \
    extern "C" __global__ void col_sum_part_##N(const T* x, float* part, long long n, int m, long long rows_per_chunk) { \
        col_sum_part<T>(x, part, n, m, rows_per_chunk); \
    }
MATMUL_KERNELS(float, f32)
MATMUL_KERNELS(bf16_t, bf16)

extern "C" __global__ void sum_partials_f32(const float* part, float* out, int chunks, int m) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= m) return;
    float acc = 0.f;
    for (int k = 0; k < chunks; k++) acc += part[(long long)k * m + j];
    out[j] = acc;
}
