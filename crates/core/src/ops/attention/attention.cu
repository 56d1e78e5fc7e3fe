// Causal GQA attention, FlashAttention-style: no T×T buffer. The forward keeps the output and
// one logsumexp per (batch, head, query); the backward recomputes probabilities from them.
//
// Layout: q (B, Tq, H, D); k, v (B, S, KVH, D), first Tk rows valid; query i sits at position
// Tk − Tq + i and sees keys [lo(i), pos(i)] (lo from the sliding window, 0 without one).
// Query head h reads KV head h / (H / KVH).
//
// Scheme (all three kernels): a block of 8 warps, one warp per row it owns (a query, or a key
// for dk/dv). Tiles of 32 rows of the other side are staged in shared memory, padded to D+1
// floats so that lane j reading row j hits distinct banks. Lane j scores row j of the tile;
// the weighted sums then broadcast each lane's weight with a shuffle, and every lane
// accumulates the feature columns d = lane + 32·e (D ≤ 128, so e < 4) in registers.
//
// Storage: q, k, v, out, dout, dq, dk, dv share one dtype T, f32 or bf16 (kernel names end in
// it); tiles are staged in shared memory as f32 and everything is computed in f32; lse and
// delta are f32.

#define ROWS 8    // warps per block = rows owned per block
#define TILE 32   // rows per staged tile (= lanes)
#define PER 4     // D ≤ 32·PER

__device__ __forceinline__ int key_lo(int pos, int window) { return window > 0 ? max(0, pos + 1 - window) : 0; }

// Loads rows [r0, r0+TILE) of a (…, rows, heads, D) tensor at (batch b, head hd) into a padded
// tile; rows at or past `rend` become zero.
template <typename T>
__device__ __forceinline__ void load_tile(float* dst, const T* src, int b, int nrows, int heads, int hd, int D,
                                          int r0, int rend) {
    for (int idx = threadIdx.x; idx < TILE * D; idx += blockDim.x) {
        int rr = idx / D, d = idx - rr * D, r = r0 + rr;
        dst[rr * (D + 1) + d] = r < rend ? to_f(src[(((long long)b * nrows + r) * heads + hd) * D + d]) : 0.f;
    }
}

// grid (ceil(Tq/ROWS), H, B), block 256, shared 2·TILE·(D+1) + ROWS·D floats.
template <typename T>
__device__ void attn_fwd(const T* q, const T* k, const T* v, T* out, float* lse, int tq, int tk, int s, int H, int KVH,
                         int D, int window, float scale) {
    extern __shared__ float sm[];
    float* Ks = sm;
    float* Vs = Ks + TILE * (D + 1);
    float* Qs = Vs + TILE * (D + 1);
    int b = blockIdx.z, h = blockIdx.y, g = h / (H / KVH);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int off = tk - tq;
    int i0 = blockIdx.x * ROWS, i = i0 + warp;
    bool active = i < tq;
    int pos = off + i, lo = key_lo(pos, window);
    int ilast = min(tq - 1, i0 + ROWS - 1);
    int blo = key_lo(off + i0, window), bhi = off + ilast + 1;
    float* qw = Qs + warp * D;
    if (active)
        for (int d = lane; d < D; d += 32) qw[d] = to_f(q[(((long long)b * tq + i) * H + h) * D + d]);
    float m = -SM_INF, l = 0.f, o[PER];
    for (int e = 0; e < PER; e++) o[e] = 0.f;
    for (int j0 = blo; j0 < bhi; j0 += TILE) {
        __syncthreads();  // the previous tile is consumed (and qw is written, first time round)
        load_tile(Ks, k, b, s, KVH, g, D, j0, bhi);
        load_tile(Vs, v, b, s, KVH, g, D, j0, bhi);
        __syncthreads();
        if (!active) continue;
        int j = j0 + lane;
        float sc = -SM_INF;
        if (j >= lo && j <= pos) {
            const float* kr = Ks + lane * (D + 1);
            float acc = 0.f;
            for (int d = 0; d < D; d++) acc += qw[d] * kr[d];
            sc = acc * scale;
        }
        float mnew = fmaxf(m, warp_max(sc));
        if (mnew == -SM_INF) continue;  // nothing visible yet (uniform across the warp)
        float corr = expf(m - mnew);
        float p = sc == -SM_INF ? 0.f : expf(sc - mnew);
        l = l * corr + warp_sum(p);
        for (int e = 0; e < PER; e++) o[e] *= corr;
        for (int jj = 0; jj < TILE; jj++) {
            float pj = __shfl_sync(0xffffffffu, p, jj);
            const float* vr = Vs + jj * (D + 1);
            for (int e = 0; e < PER; e++) {
                int d = lane + 32 * e;
                if (d < D) o[e] += pj * vr[d];
            }
        }
        m = mnew;
    }
    if (!active) return;
    float inv = 1.f / l;
    for (int e = 0; e < PER; e++) {
        int d = lane + 32 * e;
        if (d < D) out[(((long long)b * tq + i) * H + h) * D + d] = from_f<T>(o[e] * inv);
    }
    if (lane == 0) lse[((long long)b * H + h) * tq + i] = m + logf(l);
}

// delta[b, h, i] = Σ_d dout·out (one warp per row).
template <typename T>
__device__ void attn_bwd_delta(const T* out, const T* dout, float* delta, int tq, int H, int D, long long rows) {
    long long w = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (w >= rows) return;
    // w indexes (b, i, h) in the (B, Tq, H) layout of out.
    float acc = 0.f;
    for (int d = lane; d < D; d += 32) acc += to_f(out[w * D + d]) * to_f(dout[w * D + d]);
    acc = warp_sum(acc);
    long long h = w % H, bi = w / H, i = bi % tq, b = bi / tq;
    if (lane == 0) delta[(b * H + h) * tq + i] = acc;
}

// dq: like the forward, one warp per query; p = exp(s − lse), ds = p·(dO·v − delta)·scale,
// dq = Σ_j ds·k_j. grid (ceil(Tq/ROWS), H, B), shared 2·TILE·(D+1) + 2·ROWS·D floats.
template <typename T>
__device__ void attn_bwd_dq(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta,
                            T* dq, int tq, int tk, int s, int H, int KVH, int D, int window, float scale) {
    extern __shared__ float sm[];
    float* Ks = sm;
    float* Vs = Ks + TILE * (D + 1);
    float* Qs = Vs + TILE * (D + 1);
    float* Os = Qs + ROWS * D;
    int b = blockIdx.z, h = blockIdx.y, g = h / (H / KVH);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int off = tk - tq;
    int i0 = blockIdx.x * ROWS, i = i0 + warp;
    bool active = i < tq;
    int pos = off + i, lo = key_lo(pos, window);
    int ilast = min(tq - 1, i0 + ROWS - 1);
    int blo = key_lo(off + i0, window), bhi = off + ilast + 1;
    float* qw = Qs + warp * D;
    float* ow = Os + warp * D;
    long long row = ((long long)b * tq + i) * H + h;
    float L = 0.f, Di = 0.f;
    if (active) {
        for (int d = lane; d < D; d += 32) { qw[d] = to_f(q[row * D + d]); ow[d] = to_f(dout[row * D + d]); }
        L = lse[((long long)b * H + h) * tq + i];
        Di = delta[((long long)b * H + h) * tq + i];
    }
    float acc[PER];
    for (int e = 0; e < PER; e++) acc[e] = 0.f;
    for (int j0 = blo; j0 < bhi; j0 += TILE) {
        __syncthreads();
        load_tile(Ks, k, b, s, KVH, g, D, j0, bhi);
        load_tile(Vs, v, b, s, KVH, g, D, j0, bhi);
        __syncthreads();
        if (!active) continue;
        int j = j0 + lane;
        float ds = 0.f;
        if (j >= lo && j <= pos) {
            const float* kr = Ks + lane * (D + 1);
            const float* vr = Vs + lane * (D + 1);
            float sc = 0.f, dp = 0.f;
            for (int d = 0; d < D; d++) { sc += qw[d] * kr[d]; dp += ow[d] * vr[d]; }
            float p = expf(sc * scale - L);
            ds = p * (dp - Di) * scale;
        }
        for (int jj = 0; jj < TILE; jj++) {
            float dsj = __shfl_sync(0xffffffffu, ds, jj);
            const float* kr = Ks + jj * (D + 1);
            for (int e = 0; e < PER; e++) {
                int d = lane + 32 * e;
                if (d < D) acc[e] += dsj * kr[d];
            }
        }
    }
    if (!active) return;
    for (int e = 0; e < PER; e++) {
        int d = lane + 32 * e;
        if (d < D) dq[row * D + d] = from_f<T>(acc[e]);
    }
}

// dk, dv: one warp per key j of KV head g; it visits every query head of the group and every
// query that sees j: dv_j = Σ p·dO_i, dk_j = Σ ds·q_i. Rows j ≥ Tk (unused cache rows) get 0.
// grid (ceil(S/ROWS), KVH, B), shared 2·TILE·(D+1) + 2·TILE + 2·ROWS·D floats.
template <typename T>
__device__ void attn_bwd_dkdv(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta,
                              T* dk, T* dv, int tq, int tk, int s, int H, int KVH, int D, int window, float scale) {
    extern __shared__ float sm[];
    float* Qt = sm;
    float* Ot = Qt + TILE * (D + 1);
    float* Lt = Ot + TILE * (D + 1);
    float* Dt = Lt + TILE;
    float* Kw = Dt + TILE;
    float* Vw = Kw + ROWS * D;
    int b = blockIdx.z, g = blockIdx.y, grp = H / KVH;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int off = tk - tq;
    int j0 = blockIdx.x * ROWS, j = j0 + warp;
    bool active = j < tk;
    float* kw = Kw + warp * D;
    float* vw = Vw + warp * D;
    long long krow = ((long long)b * s + j) * KVH + g;
    if (active)
        for (int d = lane; d < D; d += 32) { kw[d] = to_f(k[krow * D + d]); vw[d] = to_f(v[krow * D + d]); }
    float ak[PER], av[PER];
    for (int e = 0; e < PER; e++) { ak[e] = 0.f; av[e] = 0.f; }
    // Queries that see any key of this block: pos(i) ≥ j0 and lo(pos(i)) ≤ jlast.
    int jlast = min(tk - 1, j0 + ROWS - 1);
    int qlo = max(0, j0 - off);
    int qhi = window > 0 ? min(tq, jlast + window - off) : tq;
    for (int hh = 0; hh < grp; hh++) {
        int h = g * grp + hh;
        for (int i0 = qlo; i0 < qhi; i0 += TILE) {
            __syncthreads();
            load_tile(Qt, q, b, tq, H, h, D, i0, qhi);
            load_tile(Ot, dout, b, tq, H, h, D, i0, qhi);
            if (threadIdx.x < TILE) {
                int i = i0 + threadIdx.x;
                Lt[threadIdx.x] = i < qhi ? lse[((long long)b * H + h) * tq + i] : 0.f;
                Dt[threadIdx.x] = i < qhi ? delta[((long long)b * H + h) * tq + i] : 0.f;
            }
            __syncthreads();
            if (!active) continue;
            int i = i0 + lane, pos = off + i;
            float p = 0.f, ds = 0.f;
            if (i < qhi && j <= pos && j >= key_lo(pos, window)) {
                const float* qr = Qt + lane * (D + 1);
                const float* orow = Ot + lane * (D + 1);
                float sc = 0.f, dp = 0.f;
                for (int d = 0; d < D; d++) { sc += kw[d] * qr[d]; dp += vw[d] * orow[d]; }
                p = expf(sc * scale - Lt[lane]);
                ds = p * (dp - Dt[lane]) * scale;
            }
            for (int ii = 0; ii < TILE; ii++) {
                float pi = __shfl_sync(0xffffffffu, p, ii);
                float dsi = __shfl_sync(0xffffffffu, ds, ii);
                const float* qr = Qt + ii * (D + 1);
                const float* orow = Ot + ii * (D + 1);
                for (int e = 0; e < PER; e++) {
                    int d = lane + 32 * e;
                    if (d < D) { av[e] += pi * orow[d]; ak[e] += dsi * qr[d]; }
                }
            }
        }
    }
    if (j >= s) return;
    for (int e = 0; e < PER; e++) {
        int d = lane + 32 * e;
        if (d < D) {
            dk[krow * D + d] = from_f<T>(active ? ak[e] : 0.f);
            dv[krow * D + d] = from_f<T>(active ? av[e] : 0.f);
        }
    }
}

#define ATTENTION_KERNELS(T, N) \
    extern "C" __global__ void attn_fwd_##N(const T* q, const T* k, const T* v, T* out, float* lse, int tq, int tk, \
                                            int s, int H, int KVH, int D, int window, float scale) { \
        attn_fwd<T>(q, k, v, out, lse, tq, tk, s, H, KVH, D, window, scale); \
    } \
    extern "C" __global__ void attn_bwd_delta_##N(const T* out, const T* dout, float* delta, int tq, int H, int D, \
                                                  long long rows) { \
        attn_bwd_delta<T>(out, dout, delta, tq, H, D, rows); \
    } \
    extern "C" __global__ void attn_bwd_dq_##N(const T* q, const T* k, const T* v, const T* dout, const float* lse, \
                                               const float* delta, T* dq, int tq, int tk, int s, int H, int KVH, int D, \
                                               int window, float scale) { \
        attn_bwd_dq<T>(q, k, v, dout, lse, delta, dq, tq, tk, s, H, KVH, D, window, scale); \
    } \
    extern "C" __global__ void attn_bwd_dkdv_##N(const T* q, const T* k, const T* v, const T* dout, const float* lse, \
                                                 const float* delta, T* dk, T* dv, int tq, int tk, int s, int H, int KVH, \
                                                 int D, int window, float scale) { \
        attn_bwd_dkdv<T>(q, k, v, dout, lse, delta, dk, dv, tq, tk, s, H, KVH, D, window, scale); \
    }
ATTENTION_KERNELS(float, f32)
ATTENTION_KERNELS(bf16_t, bf16)
