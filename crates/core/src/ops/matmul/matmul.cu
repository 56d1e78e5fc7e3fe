// What cuBLASLt does not do for `linear`: the bias add and the bias gradient (column sums,
// two deterministic passes as in rmsnorm's dw).

// y[r, j] += bias[j]; y: (n, m).
extern "C" __global__ void add_bias_f32(float* y, const float* bias, long long n, int m) {
    long long total = n * m;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x)
        y[i] += bias[i % m];
}

// part[chunk, j] = Σ_{rows in chunk} x[row, j]; grid (ceil(m/256), chunks).
extern "C" __global__ void col_sum_part_f32(const float* x, float* part, long long n, int m, long long rows_per_chunk) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= m) return;
    long long r0 = blockIdx.y * rows_per_chunk;
    long long r1 = r0 + rows_per_chunk < n ? r0 + rows_per_chunk : n;
    float acc = 0.f;
    for (long long r = r0; r < r1; r++) acc += x[r * m + j];
    part[(long long)blockIdx.y * m + j] = acc;
}

extern "C" __global__ void sum_partials_f32(const float* part, float* out, int chunks, int m) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= m) return;
    float acc = 0.f;
    for (int k = 0; k < chunks; k++) acc += part[(long long)k * m + j];
    out[j] = acc;
}
