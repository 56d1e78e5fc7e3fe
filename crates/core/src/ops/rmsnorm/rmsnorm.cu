// RMSNorm forward (optionally fused with the residual add) and backward. Row-wise parts in
// row groups (below); dw is reduced over rows in two deterministic passes (column
// partials per row chunk, then a fixed-order sum of the partials).
//
// Storage: x (and h, which has x's dtype: the residual stream), r, y and dy are each f32 or
// bf16 (kernel names end in their dtypes: rmsnorm_fwd_<x>_<r>_<y>, _bwd_dx_<x>_<dy>); the
// weight, rstd and dw are f32. Sums of squares and all arithmetic are f32.

// Rows are handled in groups of `wpr` warps (uniform in a launch; blockDim.x a multiple of
// 32·wpr): one warp a row when there are many rows (training: no barrier), several when there
// are few (decode: one row of 2048 would otherwise be one warp's 64 serial loads). A thread
// takes 8 consecutive elements at a time, with 16-byte accesses when the row length is a
// multiple of 8 and every pointer is 16-byte aligned (scalar accesses otherwise).
struct RowGroup {
    long long row;
    int t, nt;  // this thread's index in its row's group, the group's size
    bool live;  // row < n (dead threads still reach the barriers)
};
__device__ __forceinline__ RowGroup row_group(long long n, int wpr) {
    RowGroup g;
    g.nt = wpr * 32;
    g.t = threadIdx.x % g.nt;
    g.row = (long long)blockIdx.x * (blockDim.x / g.nt) + threadIdx.x / g.nt;
    g.live = g.row < n;
    return g;
}

// Sum over a row's group (every thread of the block calls it).
__device__ __forceinline__ float group_sum(float v, int wpr) {
    v = warp_sum(v);
    if (wpr == 1) return v;
    __shared__ float red[32];
    int w = threadIdx.x >> 5;
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[w] = v;
    __syncthreads();
    int g0 = (w / wpr) * wpr;
    float s = 0.f;
    for (int k = 0; k < wpr; k++) s += red[g0 + k];
    return s;
}

// Elements i..i+7 of a row (vectorised) or element i alone; `ld`/`st` hide which.
template <bool VEC, typename T> __device__ __forceinline__ void ld(const T* p, float* o) {
    if (VEC) load8(p, o); else o[0] = to_f(*p);
}
template <bool VEC, typename T> __device__ __forceinline__ void st(T* p, const float* v) {
    if (VEC) store8(p, v); else *p = from_f<T>(v[0]);
}

// y = x·rstd·w, rstd = 1/sqrt(mean(x²)+eps). With r != 0: x is replaced by h = x + r, which is
// also written out (rounded to x's dtype, and y is computed from that rounded h, so y is the
// norm of the stream as stored).
template <bool VEC, typename TX, typename TR>
__device__ __forceinline__ float fwd_sumsq(const TX* x, const TR* r, TX* h, RowGroup g, int c) {
    constexpr int M = VEC ? 8 : 1;
    long long off = g.row * c;
    float ss = 0.f;
    for (int i = g.t * M; i < c; i += g.nt * M) {
        float v[8];
        ld<VEC>(x + off + i, v);
        if (r) {
            float rv[8];
            ld<VEC>(r + off + i, rv);
#pragma unroll
            for (int k = 0; k < M; k++) v[k] = to_f(from_f<TX>(v[k] + rv[k]));
            st<VEC>(h + off + i, v);
        }
#pragma unroll
        for (int k = 0; k < M; k++) ss += v[k] * v[k];
    }
    return ss;
}
template <bool VEC, typename TX, typename TY>
__device__ __forceinline__ void fwd_scale(const TX* src, const float* w, TY* y, RowGroup g, int c, float s) {
    constexpr int M = VEC ? 8 : 1;
    long long off = g.row * c;
    for (int i = g.t * M; i < c; i += g.nt * M) {
        float v[8], wv[8];
        ld<VEC>(src + off + i, v);
        ld<VEC>(w + i, wv);
#pragma unroll
        for (int k = 0; k < M; k++) v[k] = v[k] * s * wv[k];
        st<VEC>(y + off + i, v);
    }
}
// A row held in registers (`res`, the default for 16-byte rows of up to RES_K chunks of 8 a
// thread: c ≤ 2048 at one warp a row): every load of x (and r) is issued before any value is
// used, and y is computed from the registers instead of a second read of x or h. The
// arithmetic and its order are the two-pass form's (the same sums, the same roundings), so
// both give the same bits; the two-pass form stays for longer rows and unaligned ones.
#define RES_K 8
// A thread's chunks of row g.row into registers (chunk k: elements g.t·8 + k·g.nt·8 …, 8 of
// them), every load issued before any is used.
template <typename T>
__device__ __forceinline__ void load_row(const T* p, RowGroup g, int c, float (&v)[RES_K][8]) {
#pragma unroll
    for (int k = 0; k < RES_K; k++) {
        int i = g.t * 8 + k * g.nt * 8;
        if (i < c) load8(p + g.row * c + i, v[k]);
    }
}
template <typename TX, typename TR, typename TY>
__device__ __forceinline__ void fwd_resident(const TX* x, const TR* r, const float* w, TX* h, TY* y, float* rstd,
                                             RowGroup g, int c, float eps, int wpr) {
    long long off = g.row * c;
    int step = g.nt * 8;
    float v[RES_K][8];
    float ss = 0.f;
    if (g.live) {
        load_row(x, g, c, v);
        if (r) {
            float rv[RES_K][8];
            load_row(r, g, c, rv);
#pragma unroll
            for (int k = 0; k < RES_K; k++) {
                int i = g.t * 8 + k * step;
                if (i >= c) continue;
#pragma unroll
                for (int e = 0; e < 8; e++) v[k][e] = to_f(from_f<TX>(v[k][e] + rv[k][e]));
                store8(h + off + i, v[k]);
            }
        }
#pragma unroll
        for (int k = 0; k < RES_K; k++) {
            if (g.t * 8 + k * step >= c) continue;
#pragma unroll
            for (int e = 0; e < 8; e++) ss += v[k][e] * v[k][e];
        }
    }
    ss = group_sum(ss, wpr);
    if (!g.live) return;
    float s = 1.f / sqrtf(ss / (float)c + eps);
    if (g.t == 0) rstd[g.row] = s;
#pragma unroll
    for (int k = 0; k < RES_K; k++) {
        int i = g.t * 8 + k * step;
        if (i >= c) continue;
        float wv[8], o[8];
        load8(w + i, wv);
#pragma unroll
        for (int e = 0; e < 8; e++) o[e] = v[k][e] * s * wv[e];
        store8(y + off + i, o);
    }
}

template <typename TX, typename TR, typename TY>
__device__ void rmsnorm_fwd(const TX* x, const TR* r, const float* w, TX* h, TY* y, float* rstd, long long n, int c,
                            float eps, int wpr, int res) {
    RowGroup g = row_group(n, wpr);
    bool vec = (c & 7) == 0 && aligned16(x) && aligned16(w) && aligned16(y) && (!r || (aligned16(r) && aligned16(h)));
    if (res && vec && c <= RES_K * 8 * g.nt) return fwd_resident<TX, TR, TY>(x, r, w, h, y, rstd, g, c, eps, wpr);
    float ss = 0.f;
    if (g.live) ss = vec ? fwd_sumsq<true>(x, r, h, g, c) : fwd_sumsq<false>(x, r, h, g, c);
    ss = group_sum(ss, wpr);
    if (!g.live) return;
    float s = 1.f / sqrtf(ss / (float)c + eps);
    if (g.t == 0) rstd[g.row] = s;
    const TX* src = r ? h : x;  // each thread re-reads only elements it wrote itself
    if (vec) fwd_scale<true>(src, w, y, g, c, s); else fwd_scale<false>(src, w, y, g, c, s);
}

// dx = rstd·(w∘dy − x̂·mean(w∘dy∘x̂)), x̂ = x·rstd. With gh (add_rmsnorm's backward, in one
// pass): dh = round_TX(dx) + gh (the stream's own gradient, in h's dtype) is what is stored in
// dx, and dr = dh in the branch's dtype (null: the branch shares dh's dtype, nothing to
// write): the same roundings as rmsnorm_bwd_dx, add_assign and the cast in turn.
template <bool VEC, typename TX, typename TY>
__device__ __forceinline__ float bwd_dot(const TX* x, const float* w, const TY* dy, RowGroup g, int c, float s) {
    constexpr int M = VEC ? 8 : 1;
    long long off = g.row * c;
    float acc = 0.f;
    for (int i = g.t * M; i < c; i += g.nt * M) {
        float xv[8], dv[8], wv[8];
        ld<VEC>(x + off + i, xv);
        ld<VEC>(dy + off + i, dv);
        ld<VEC>(w + i, wv);
#pragma unroll
        for (int k = 0; k < M; k++) acc += wv[k] * dv[k] * xv[k] * s;
    }
    return acc;
}
template <bool VEC, typename TX, typename TY, typename TR>
__device__ __forceinline__ void bwd_store(const TX* x, const float* w, const TY* dy, const TX* gh, TX* dx, TR* dr,
                                          RowGroup g, int c, float s, float mean) {
    constexpr int M = VEC ? 8 : 1;
    long long off = g.row * c;
    for (int i = g.t * M; i < c; i += g.nt * M) {
        float xv[8], dv[8], wv[8], o[8];
        ld<VEC>(x + off + i, xv);
        ld<VEC>(dy + off + i, dv);
        ld<VEC>(w + i, wv);
#pragma unroll
        for (int k = 0; k < M; k++) o[k] = s * (wv[k] * dv[k] - xv[k] * s * mean);
        if (gh) {
            float gv[8];
            ld<VEC>(gh + off + i, gv);
#pragma unroll
            for (int k = 0; k < M; k++) o[k] = to_f(from_f<TX>(to_f(from_f<TX>(o[k])) + gv[k]));
        }
        st<VEC>(dx + off + i, o);
        if (dr) st<VEC>(dr + off + i, o);
    }
}
// The backward with the row in registers (as fwd_resident): x and dy read once, every load
// issued before the dot, gh's before the stores; the two-pass form's arithmetic and order.
template <typename TX, typename TY, typename TR>
__device__ __forceinline__ void bwd_resident(const TX* x, const float* w, float s, const TY* dy, const TX* gh,
                                             TX* dx, TR* dr, RowGroup g, int c, int wpr, float* dws = nullptr) {
    long long off = g.row * c;
    int step = g.nt * 8;
    float xv[RES_K][8], dv[RES_K][8];
    float acc = 0.f;
    if (g.live) {
        load_row(x, g, c, xv);
        load_row(dy, g, c, dv);
#pragma unroll
        for (int k = 0; k < RES_K; k++) {
            int i = g.t * 8 + k * step;
            if (i >= c) continue;
            float wv[8];
            load8(w + i, wv);
#pragma unroll
            for (int e = 0; e < 8; e++) acc += wv[e] * dv[k][e] * xv[k][e] * s;
            // dw's column partial (rmsnorm_bwd_dw_part's expression), in this lane's own words
            // (rmsnorm_bwd_rows' layout, one warp a row: chunk k's first halves at k·256 + 4·lane,
            // second halves 128 words on, so a quarter-warp's 16-byte accesses are 128
            // contiguous bytes, one wavefront).
            if (dws) {
                float4* d4a = (float4*)(dws + (k << 8) + (g.t << 2));
                float4* d4b = d4a + 32;
                float4 a = *d4a, b = *d4b;
                a.x += dv[k][0] * xv[k][0] * s, a.y += dv[k][1] * xv[k][1] * s;
                a.z += dv[k][2] * xv[k][2] * s, a.w += dv[k][3] * xv[k][3] * s;
                b.x += dv[k][4] * xv[k][4] * s, b.y += dv[k][5] * xv[k][5] * s;
                b.z += dv[k][6] * xv[k][6] * s, b.w += dv[k][7] * xv[k][7] * s;
                *d4a = a, *d4b = b;
            }
        }
    }
    float mean = group_sum(acc, wpr) / (float)c;
    if (!g.live) return;
    // dy's registers take gh's values (dy is not needed once o is formed from it, so o is
    // formed first for every chunk).
#pragma unroll
    for (int k = 0; k < RES_K; k++) {
        int i = g.t * 8 + k * step;
        if (i >= c) continue;
        float wv[8];
        load8(w + i, wv);
#pragma unroll
        for (int e = 0; e < 8; e++) xv[k][e] = s * (wv[e] * dv[k][e] - xv[k][e] * s * mean);
    }
    if (gh) load_row(gh, g, c, dv);
#pragma unroll
    for (int k = 0; k < RES_K; k++) {
        int i = g.t * 8 + k * step;
        if (i >= c) continue;
        if (gh) {
#pragma unroll
            for (int e = 0; e < 8; e++) xv[k][e] = to_f(from_f<TX>(to_f(from_f<TX>(xv[k][e])) + dv[k][e]));
        }
        store8(dx + off + i, xv[k]);
        if (dr) store8(dr + off + i, xv[k]);
    }
}

template <typename TX, typename TY, typename TR>
__device__ void rmsnorm_bwd(const TX* x, const float* w, const float* rstd, const TY* dy, const TX* gh, TX* dx,
                            TR* dr, long long n, int c, int wpr, int res) {
    RowGroup g = row_group(n, wpr);
    bool vec = (c & 7) == 0 && aligned16(x) && aligned16(w) && aligned16(dy) && aligned16(dx) &&
               (!gh || aligned16(gh)) && (!dr || aligned16(dr));
    float s = g.live ? rstd[g.row] : 0.f;
    if (res && vec && c <= RES_K * 8 * g.nt) return bwd_resident<TX, TY, TR>(x, w, s, dy, gh, dx, dr, g, c, wpr);
    float acc = 0.f;
    if (g.live) acc = vec ? bwd_dot<true>(x, w, dy, g, c, s) : bwd_dot<false>(x, w, dy, g, c, s);
    float mean = group_sum(acc, wpr) / (float)c;
    if (!g.live) return;
    if (vec) bwd_store<true>(x, w, dy, gh, dx, dr, g, c, s, mean);
    else bwd_store<false>(x, w, dy, gh, dx, dr, g, c, s, mean);
}

// The backward over many rows (training) with dw's column partials in the same pass, so x and
// dy are read once for dx and dw both (the separate dw_part kernel reads them again). A warp
// takes `rpw` consecutive rows, one at a time in registers (bwd_resident: dx the same bits as
// rmsnorm_bwd), adds each row's dy·x·rstd into its own shared-memory row of c sums (each lane
// to the columns it loaded, so no two lanes share a word), and writes that row as chunk (the
// warp's index) of `part`: part[chunk, j] = Σ_{rows of chunk, in order} dy·x·rstd, what
// rmsnorm_bwd_dw_part computes for a chunk of rpw rows. The shared row is column j's sum at
// dws_at(j) (bwd_resident's layout), ⌈c/256⌉·256 words a warp. Block 128 (4 warps), dynamic
// shared memory 4·⌈c/256⌉·256 floats; rows of 8-aligned c ≤ RES_K·8·32 (the launcher checks).
__device__ __forceinline__ int dws_at(int j) {
    int k = j >> 8, l = (j & 255) >> 3, e = j & 7;
    return (k << 8) + ((e >> 2) << 7) + (l << 2) + (e & 3);
}
template <typename TX, typename TY, typename TR>
__device__ void rmsnorm_bwd_rows(const TX* x, const float* w, const float* rstd, const TY* dy, const TX* gh, TX* dx,
                                 TR* dr, float* part, long long n, int c, int rpw) {
    extern __shared__ __align__(16) float rms_dws[];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, cpad = (c + 255) & ~255;
    float* dws = rms_dws + (long long)warp * cpad;
    for (int i = lane; i < cpad; i += 32) dws[i] = 0.f;
    __syncwarp();
    long long chunk = (long long)blockIdx.x * (blockDim.x >> 5) + warp;
    long long r0 = chunk * rpw, r1 = r0 + rpw < n ? r0 + rpw : n;
    for (long long r = r0; r < r1; r++) {
        RowGroup g;
        g.row = r, g.t = lane, g.nt = 32, g.live = true;
        bwd_resident<TX, TY, TR>(x, w, rstd[r], dy, gh, dx, dr, g, c, 1, dws);
    }
    __syncwarp();
    if (r0 < n)
        for (int j = lane; j < c; j += 32) part[chunk * c + j] = dws[dws_at(j)];
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
                                                              float* rstd, long long n, int c, float eps, int wpr, \
                                                              int res) { \
        rmsnorm_fwd<TX, TR, TY>(x, r, w, h, y, rstd, n, c, eps, wpr, res); \
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
                                                          TX* dx, long long n, int c, int wpr, int res) { \
        rmsnorm_bwd<TX, TY, TX>(x, w, rstd, dy, nullptr, dx, nullptr, n, c, wpr, res); \
    } \
    extern "C" __global__ void rmsnorm_bwd_dw_part_##NX##_##NY(const TX* x, const float* rstd, const TY* dy, float* part, \
                                                               long long n, int c, long long rows_per_chunk) { \
        rmsnorm_bwd_dw_part<TX, TY>(x, rstd, dy, part, n, c, rows_per_chunk); \
    }
#define RMSNORM_BWD_ADD(TX, NX, TY, NY, TR, NR) \
    extern "C" __global__ void rmsnorm_bwd_dx_add_##NX##_##NY##_##NR(const TX* x, const float* w, const float* rstd, \
                                                                    const TY* dy, const TX* gh, TX* dh, TR* dr, \
                                                                    long long n, int c, int wpr, int res) { \
        rmsnorm_bwd<TX, TY, TR>(x, w, rstd, dy, gh, dh, dr, n, c, wpr, res); \
    }
#define RMSNORM_BWD_ROWS(TX, NX, TY, NY, TR, NR) \
    extern "C" __global__ void rmsnorm_bwd_rows_##NX##_##NY##_##NR(const TX* x, const float* w, const float* rstd, \
                                                                  const TY* dy, const TX* gh, TX* dh, TR* dr, \
                                                                  float* part, long long n, int c, int rpw) { \
        rmsnorm_bwd_rows<TX, TY, TR>(x, w, rstd, dy, gh, dh, dr, part, n, c, rpw); \
    }
#define RMSNORM_BWD_ADD_R(TX, NX, TY, NY) \
    RMSNORM_BWD_ADD(TX, NX, TY, NY, float, f32) \
    RMSNORM_BWD_ADD(TX, NX, TY, NY, bf16_t, bf16) \
    RMSNORM_BWD_ROWS(TX, NX, TY, NY, float, f32) \
    RMSNORM_BWD_ROWS(TX, NX, TY, NY, bf16_t, bf16)
RMSNORM_BWD_ADD_R(float, f32, float, f32)
RMSNORM_BWD_ADD_R(float, f32, bf16_t, bf16)
RMSNORM_BWD_ADD_R(bf16_t, bf16, float, f32)
RMSNORM_BWD_ADD_R(bf16_t, bf16, bf16_t, bf16)

RMSNORM_BWD(float, f32, float, f32)
RMSNORM_BWD(float, f32, bf16_t, bf16)
RMSNORM_BWD(bf16_t, bf16, float, f32)
RMSNORM_BWD(bf16_t, bf16, bf16_t, bf16)

// out[j] = Σ_k part[k, j] for many chunks (rmsnorm_bwd_rows' 16-row ones): a block takes 32
// columns (a lane a column, 128-byte rows of part), each of its 8 warps sums an eighth of the
// chunks in order, and warp 0 adds the eight sums in warp order. Block 256, grid ceil(c/32).
extern "C" __global__ void sum_partials_warps_f32(const float* part, float* out, int chunks, int c) {
    __shared__ float red[8][32];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, j = blockIdx.x * 32 + lane;
    int per = (chunks + 7) / 8, k0 = warp * per, k1 = min(chunks, k0 + per);
    float acc = 0.f;
    if (j < c) {
#pragma unroll 8
        for (int k = k0; k < k1; k++) acc += part[(long long)k * c + j];
    }
    red[warp][lane] = acc;
    __syncthreads();
    if (warp == 0 && j < c) {
        float t = 0.f;
#pragma unroll
        for (int q = 0; q < 8; q++) t += red[q][lane];
        out[j] = t;
    }
}

// out[j] = Σ_k part[k, j] in k order.
extern "C" __global__ void sum_partials_f32(const float* part, float* out, int chunks, int c) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    float acc = 0.f;
    for (int k = 0; k < chunks; k++) acc += part[(long long)k * c + j];
    out[j] = acc;
}
