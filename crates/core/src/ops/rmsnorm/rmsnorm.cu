// RMSNorm forward (optionally fused with the residual add) and backward. One block per row
// for the row-wise parts; dw is reduced over rows in two deterministic passes (column
// partials per row chunk, then a fixed-order sum of the partials).

// y = x·rstd·w, rstd = 1/sqrt(mean(x²)+eps). With r != 0: x is replaced by h = x + r, which is
// also written out.
extern "C" __global__ void rmsnorm_fwd_f32(const float* x, const float* r, const float* w, float* h, float* y,
                                           float* rstd, int c, float eps) {
    long long row = blockIdx.x;
    const float* xr = x + row * c;
    const float* rr = r ? r + row * c : 0;
    float* hr = h ? h + row * c : 0;
    float ss = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        float v = xr[i];
        if (rr) { v += rr[i]; hr[i] = v; }
        ss += v * v;
    }
    ss = block_sum(ss);
    float s = 1.f / sqrtf(ss / (float)c + eps);
    if (threadIdx.x == 0) rstd[row] = s;
    const float* src = rr ? hr : xr;   // each thread re-reads only elements it wrote itself
    float* yr = y + row * c;
    for (int i = threadIdx.x; i < c; i += blockDim.x) yr[i] = src[i] * s * w[i];
}

// dx = rstd·(w∘dy − x̂·mean(w∘dy∘x̂)), x̂ = x·rstd.
extern "C" __global__ void rmsnorm_bwd_dx_f32(const float* x, const float* w, const float* rstd, const float* dy,
                                              float* dx, int c) {
    long long row = blockIdx.x;
    const float* xr = x + row * c;
    const float* dyr = dy + row * c;
    float s = rstd[row];
    float m = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) m += w[i] * dyr[i] * xr[i] * s;
    m = block_sum(m) / (float)c;
    float* dxr = dx + row * c;
    for (int i = threadIdx.x; i < c; i += blockDim.x) dxr[i] = s * (w[i] * dyr[i] - xr[i] * s * m);
}

// part[chunk, j] = Σ_{rows in chunk} dy[row, j]·x[row, j]·rstd[row]; grid (ceil(c/256), chunks).
extern "C" __global__ void rmsnorm_bwd_dw_part_f32(const float* x, const float* rstd, const float* dy, float* part,
                                                   long long n, int c, long long rows_per_chunk) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    long long r0 = blockIdx.y * rows_per_chunk;
    long long r1 = r0 + rows_per_chunk < n ? r0 + rows_per_chunk : n;
    float acc = 0.f;
    for (long long r = r0; r < r1; r++) acc += dy[r * c + j] * x[r * c + j] * rstd[r];
    part[(long long)blockIdx.y * c + j] = acc;
}

// out[j] = Σ_k part[k, j] in k order.
extern "C" __global__ void sum_partials_f32(const float* part, float* out, int chunks, int c) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    float acc = 0.f;
    for (int k = 0; k < chunks; k++) acc += part[(long long)k * c + j];
    out[j] = acc;
}
