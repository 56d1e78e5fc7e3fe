// RMSNorm forward (optionally fused with the residual add) and backward. One block per row
// for the row-wise parts; dw is reduced over rows in two deterministic passes (column
// partials per row chunk, then a fixed-order sum of the partials).
//
// Storage: x (and h, which has x's dtype: the residual stream), r, y and dy are each f32 or
// bf16 (kernel names end in their dtypes: rmsnorm_fwd_<x>_<r>_<y>, _bwd_dx_<x>_<dy>); the
// weight, rstd and dw are f32. Sums of squares and all arithmetic are f32.

// y = x·rstd·w, rstd = 1/sqrt(mean(x²)+eps). With r != 0: x is replaced by h = x + r, which is
// also written out (rounded to x's dtype, and y is computed from that rounded h, so y is the
// norm of the stream as stored).
template <typename TX, typename TR, typename TY>
__device__ void rmsnorm_fwd(const TX* x, const TR* r, const float* w, TX* h, TY* y, float* rstd, int c, float eps) {
    long long row = blockIdx.x;
    const TX* xr = x + row * c;
    const TR* rr = r ? r + row * c : 0;
    TX* hr = h ? h + row * c : 0;
    float ss = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        float v = to_f(xr[i]);
        if (rr) { TX hv = from_f<TX>(v + to_f(rr[i])); hr[i] = hv; v = to_f(hv); }
        ss += v * v;
    }
    ss = block_sum(ss);
    float s = 1.f / sqrtf(ss / (float)c + eps);
    if (threadIdx.x == 0) rstd[row] = s;
    const TX* src = rr ? hr : xr;   // each thread re-reads only elements it wrote itself
    TY* yr = y + row * c;
    for (int i = threadIdx.x; i < c; i += blockDim.x) yr[i] = from_f<TY>(to_f(src[i]) * s * w[i]);
}

// dx = rstd·(w∘dy − x̂·mean(w∘dy∘x̂)), x̂ = x·rstd.
template <typename TX, typename TY>
__device__ void rmsnorm_bwd_dx(const TX* x, const float* w, const float* rstd, const TY* dy, TX* dx, int c) {
    long long row = blockIdx.x;
    const TX* xr = x + row * c;
    const TY* dyr = dy + row * c;
    float s = rstd[row];
    float m = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) m += w[i] * to_f(dyr[i]) * to_f(xr[i]) * s;
    m = block_sum(m) / (float)c;
    TX* dxr = dx + row * c;
    for (int i = threadIdx.x; i < c; i += blockDim.x) dxr[i] = from_f<TX>(s * (w[i] * to_f(dyr[i]) - to_f(xr[i]) * s * m));
}

// add_rmsnorm's backward in one pass: dh = round_TX(dx) + gh (the stream's own gradient, in h's
// dtype) and dr = dh in the branch's dtype (null: the branch shares dh's dtype, nothing to write).
// The same roundings as rmsnorm_bwd_dx, add_assign and the cast in turn, so bit for bit theirs.
template <typename TX, typename TY, typename TR>
__device__ void rmsnorm_bwd_dx_add(const TX* x, const float* w, const float* rstd, const TY* dy, const TX* gh, TX* dh,
                                   TR* dr, int c) {
    long long row = blockIdx.x;
    const TX* xr = x + row * c;
    const TY* dyr = dy + row * c;
    float s = rstd[row];
    float m = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) m += w[i] * to_f(dyr[i]) * to_f(xr[i]) * s;
    m = block_sum(m) / (float)c;
    const TX* ghr = gh + row * c;
    TX* dhr = dh + row * c;
    TR* drr = dr ? dr + row * c : nullptr;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        float d = to_f(from_f<TX>(s * (w[i] * to_f(dyr[i]) - to_f(xr[i]) * s * m)));
        TX v = from_f<TX>(d + to_f(ghr[i]));
        dhr[i] = v;
        if (drr) drr[i] = from_f<TR>(to_f(v));
    }
}

// part[chunk, j] = Σ_{rows in chunk} dy[row, j]·x[row, j]·rstd[row]; grid (ceil(c/256), chunks).
template <typename TX, typename TY>
__device__ void rmsnorm_bwd_dw_part(const TX* x, const float* rstd, const TY* dy, float* part, long long n, int c,
                                    long long rows_per_chunk) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    long long r0 = blockIdx.y * rows_per_chunk;
    long long r1 = r0 + rows_per_chunk < n ? r0 + rows_per_chunk : n;
    float acc = 0.f;
    for (long long r = r0; r < r1; r++) acc += to_f(dy[r * c + j]) * to_f(x[r * c + j]) * rstd[r];
    part[(long long)blockIdx.y * c + j] = acc;
}

#define RMSNORM_FWD(TX, NX, TR, NR, TY, NY) \
    extern "C" __global__ void rmsnorm_fwd_##NX##_##NR##_##NY(const TX* x, const TR* r, const float* w, TX* h, TY* y, \
                                                              float* rstd, int c, float eps) { \
        rmsnorm_fwd<TX, TR, TY>(x, r, w, h, y, rstd, c, eps); \
    }
#define RMSNORM_FWD_X(TX, NX) \
    RMSNORM_FWD(TX, NX, float, f32, float, f32) \
    RMSNORM_FWD(TX, NX, float, f32, bf16_t, bf16) \
    RMSNORM_FWD(TX, NX, bf16_t, bf16, float, f32) \
    RMSNORM_FWD(TX, NX, bf16_t, bf16, bf16_t, bf16)
RMSNORM_FWD_X(float, f32)
RMSNORM_FWD_X(bf16_t, bf16)

#define RMSNORM_BWD(TX, NX, TY, NY) \
    extern "C" __global__ void rmsnorm_bwd_dx_##NX##_##NY(const TX* x, const float* w, const float* rstd, const TY* dy, \
                                                          TX* dx, int c) { \
        rmsnorm_bwd_dx<TX, TY>(x, w, rstd, dy, dx, c); \
    } \
    extern "C" __global__ void rmsnorm_bwd_dw_part_##NX##_##NY(const TX* x, const float* rstd, const TY* dy, float* part, \
                                                               long long n, int c, long long rows_per_chunk) { \
        rmsnorm_bwd_dw_part<TX, TY>(x, rstd, dy, part, n, c, rows_per_chunk); \
    }
#define RMSNORM_BWD_ADD(TX, NX, TY, NY, TR, NR) \
    extern "C" __global__ void rmsnorm_bwd_dx_add_##NX##_##NY##_##NR(const TX* x, const float* w, const float* rstd, \
                                                                    const TY* dy, const TX* gh, TX* dh, TR* dr, int c) { \
        rmsnorm_bwd_dx_add<TX, TY, TR>(x, w, rstd, dy, gh, dh, dr, c); \
    }
#define RMSNORM_BWD_ADD_R(TX, NX, TY, NY) \
    RMSNORM_BWD_ADD(TX, NX, TY, NY, float, f32) \
    RMSNORM_BWD_ADD(TX, NX, TY, NY, bf16_t, bf16)
RMSNORM_BWD_ADD_R(float, f32, float, f32)
RMSNORM_BWD_ADD_R(float, f32, bf16_t, bf16)
RMSNORM_BWD_ADD_R(bf16_t, bf16, float, f32)
RMSNORM_BWD_ADD_R(bf16_t, bf16, bf16_t, bf16)

RMSNORM_BWD(float, f32, float, f32)
RMSNORM_BWD(float, f32, bf16_t, bf16)
RMSNORM_BWD(bf16_t, bf16, float, f32)
RMSNORM_BWD(bf16_t, bf16, bf16_t, bf16)

// out[j] = Σ_k part[k, j] in k order.
extern "C" __global__ void sum_partials_f32(const float* part, float* out, int chunks, int c) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    float acc = 0.f;
    for (int k = 0; k < chunks; k++) acc += part[(long long)k * c + j];
    out[j] = acc;
}
