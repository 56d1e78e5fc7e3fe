// Decode attention: one new query per sequence (or per paged row) against its cached keys,
// split over the keys (flash-decoding); the same with the step's RoPE and cache write inside
// (attn_decode_rope); the paged pool's rows (paged_attn, keys through a block table); and the
// small kernels a captured decode step needs.
//
// Layout as attention.cu: q (B, 1, H, D); k, v (B, S, KVH, D). The number of valid keys is
// `*pos + 1` when `pos` is non-null (the decode position lives on the device, so one captured
// CUDA graph serves every step), else `tk`. The query sits at position tk − 1 and sees keys
// [key_lo, tk) (sliding window as attention.cu).
//
// Grid (H, SPLITS, rows), block DEC_THREADS threads: split s owns keys [s·chunk, (s+1)·chunk)
// ∩ [lo, tk). A decode step is latency-bound (a few KB of keys a head), so the block takes
// its keys DEC_THREADS at a time with every load in flight at once: each thread scores one key
// (the whole row, d in order, 16-byte loads), the block takes the tile's max and the
// exponentials (an exact softmax within a tile, rescaled across tiles), then threads (group,
// column) sum p·v over the keys of their group, 16 bytes of a row each, and the groups are
// added in order. One split writes the output; several write (m, l, o) partials that
// attn_decode_combine merges (grid (H, rows), block 128). f32 throughout.
#define DEC_THREADS 256

__device__ __forceinline__ int dec_lo(int pos, int window) { return window > 0 ? max(0, pos + 1 - window) : 0; }

// Element d of x's head (D values) rotated at the angles cr/sr (the position's row of the
// table) and rounded to T: what rope_kv stores there.
template <typename T>
__device__ __forceinline__ float rope_elem(const T* x, int d, int D, int interleaved, const float* cr, const float* sr) {
    int half = D / 2;
    int p = interleaved ? d >> 1 : (d < half ? d : d - half);
    int ia = interleaved ? 2 * p : p, ib = interleaved ? 2 * p + 1 : p + half;
    T ya, yb;
    rot<T>(to_f(x[ia]), to_f(x[ib]), cr[p], sr[p], &ya, &yb);
    return to_f(d == ia ? ya : yb);
}

// Where key j's row starts (in elements): a contiguous cache (B, S, KVH, D) ...
struct CacheRows {
    long long base, stride;  // row j at base + j·stride
    __device__ __forceinline__ long long operator()(int j) const { return base + j * stride; }
};
// ... or the paged pool (P, KVH, D), position j of the row's sequence in pool row
// table[j / bs] · bs + j % bs.
struct PoolRows {
    const int* table;
    int bs, KVH, g, D;
    __device__ __forceinline__ long long operator()(int j) const {
        return (((long long)table[j / bs] * bs + j % bs) * KVH + g) * D;
    }
};

// W consecutive storage elements as f32 (one 16-byte access when W = 16 / sizeof(C)).
template <typename C, int W> __device__ __forceinline__ void ldw(const C* p, float* o) {
    if (W * sizeof(C) == 16) {
        V16<C> v;
        v.u = *(const uint4*)p;
#pragma unroll
        for (int k = 0; k < W; k++) o[k] = to_f(v.e[k]);
    } else {
#pragma unroll
        for (int k = 0; k < W; k++) o[k] = to_f(p[k]);
    }
}

struct DecShared {
    float q[128], kcur[128], vcur[128], o[128];
    float p[DEC_THREADS];
    long long row[DEC_THREADS];
    float red[DEC_THREADS * 8];
};

// Keys [lo, hi) of one query (sh.q, D ≤ 128 values, already scaled) over the caches kc, vc
// (storage C, rows at rows(j)); key `cur` (or none, −1) is read from sh.kcur / sh.vcur instead.
// Leaves the max m and sum l of the exponentials in *M, *L and Σ exp(s − m)·v in sh.o.
template <typename C, int W, typename Rows>
__device__ void dec_keys(DecShared& sh, const C* kc, const C* vc, Rows rows, int lo, int hi, int D, int cur, float* M,
                         float* L) {
    int tid = threadIdx.x, cols = D / W, groups = DEC_THREADS / cols;
    int col = tid % cols, grp = tid / cols;
    float m = -SM_INF, l = 0.f, acc[W];
#pragma unroll
    for (int k = 0; k < W; k++) acc[k] = 0.f;
    for (int t0 = lo; t0 < hi; t0 += DEC_THREADS) {
        int n = min(DEC_THREADS, hi - t0);
        if (t0 > lo) __syncthreads();  // the last tile's readers of sh.p / sh.row are done
        float s = -SM_INF;
        if (tid < n) {
            int j = t0 + tid;
            long long row = rows(j);
            sh.row[tid] = row;
            s = 0.f;
            if (j == cur) {
                for (int d = 0; d < D; d++) s += sh.q[d] * sh.kcur[d];
            } else {
#pragma unroll 4
                for (int c = 0; c < cols; c++) {
                    float kv[W];
                    ldw<C, W>(kc + row + c * W, kv);
#pragma unroll
                    for (int k = 0; k < W; k++) s += sh.q[c * W + k] * kv[k];
                }
            }
        }
        float mn = fmaxf(m, block_max(s));
        float corr = m == -SM_INF ? 0.f : expf(m - mn), p = tid < n ? expf(s - mn) : 0.f;
        sh.p[tid] = p;
        l = l * corr + block_sum(p);  // its barriers publish sh.p and sh.row
        m = mn;
        if (grp < groups) {
#pragma unroll
            for (int k = 0; k < W; k++) acc[k] *= corr;
            for (int i = grp; i < n; i += groups) {
                float pv = sh.p[i], v[W];
                if (t0 + i == cur) {
#pragma unroll
                    for (int k = 0; k < W; k++) v[k] = sh.vcur[col * W + k];
                } else {
                    ldw<C, W>(vc + sh.row[i] + col * W, v);
                }
#pragma unroll
                for (int k = 0; k < W; k++) acc[k] += pv * v[k];
            }
        }
    }
    if (grp < groups) {
#pragma unroll
        for (int k = 0; k < W; k++) sh.red[grp * D + col * W + k] = acc[k];
    }
    __syncthreads();
    if (tid < D) {
        float o = 0.f;
        for (int g = 0; g < groups; g++) o += sh.red[g * D + tid];
        sh.o[tid] = o;
    }
    __syncthreads();
    *M = m;
    *L = l;
}

// dec_keys with 16-byte loads when the rows allow them, else element by element.
template <typename C, typename Rows>
__device__ void dec_keys_any(DecShared& sh, const C* kc, const C* vc, Rows rows, int lo, int hi, int D, int cur,
                             float* M, float* L) {
    constexpr int W = 16 / sizeof(C);
    if (D % W == 0 && aligned16(kc) && aligned16(vc))
        dec_keys<C, W>(sh, kc, vc, rows, lo, hi, D, cur, M, L);
    else
        dec_keys<C, 1>(sh, kc, vc, rows, lo, hi, D, cur, M, L);
}

// The block's result: the output row (one split) or the split's partial [m, l, o(D)] at
// ((r·H + h)·splits + split)·(D + 2).
template <typename T>
__device__ void dec_finish(const DecShared& sh, float M, float L, T* out, float* part, int r, int h, int H, int D,
                           int split, int splits) {
    int tid = threadIdx.x;
    if (splits == 1) {
        float inv = L > 0.f ? 1.f / L : 0.f;
        if (tid < D) out[((long long)r * H + h) * D + tid] = from_f<T>(sh.o[tid] * inv);
        return;
    }
    float* pp = part + (((long long)r * H + h) * splits + split) * (D + 2);
    if (tid == 0) {
        pp[0] = M;
        pp[1] = L;
    }
    if (tid < D) pp[2 + tid] = sh.o[tid];
}

// ROPE = false: attn_decode (q rotated, the new row already in the caches k and v).
// ROPE = true (attn_decode_rope, one decoding row a sequence, position *pos on the device): q
// and the new key kn come unrotated and are rotated here as rope_kv rotates them (`rot`, rounded
// to T), the new key and value (vn) serve the last position from shared memory, and split 0 of
// the first query head of each KV head writes them into the caches for the next steps. No block
// reads the row being written, so nothing orders the blocks; the numbers are rope_kv's then
// attn_decode's, one launch instead of two.
// One block's work item: head h, split `split` of `splits`, sequence b (the launched kernels'
// blockIdx; the persistent decode step's loop over items, decode_layers.cu).
template <typename T, bool ROPE>
__device__ void attn_decode(const T* q, T* k, T* v, T* out, float* part, const int* pos, int tk_host, int s, int H,
                            int KVH, int D, int window, float scale, int chunk, const T* kn, const T* vn,
                            const float* cosv, const float* sinv, int interleaved, int h, int split, int splits,
                            int b) {
    __shared__ DecShared sh;
    int tid = threadIdx.x;
    int g = h / (H / KVH);
    int tk = pos ? *pos + 1 : tk_host;
    int lo = max(dec_lo(tk - 1, window), split * chunk), hi = min(tk, (split + 1) * chunk);
    const T* qh = q + ((long long)b * H + h) * D;
    if (tid < D) {
        if (ROPE) {
            const float* cr = cosv + (long long)(tk - 1) * (D / 2);
            const float* sr = sinv + (long long)(tk - 1) * (D / 2);
            long long nr = ((long long)b * KVH + g) * D;
            sh.q[tid] = rope_elem(qh, tid, D, interleaved, cr, sr) * scale;
            float kr = rope_elem(kn + nr, tid, D, interleaved, cr, sr), vr = to_f(vn[nr + tid]);
            sh.kcur[tid] = kr;
            sh.vcur[tid] = vr;
            if (split == 0 && h % (H / KVH) == 0) {
                long long row = (((long long)b * s + tk - 1) * KVH + g) * D;
                k[row + tid] = from_f<T>(kr);
                v[row + tid] = from_f<T>(vr);
            }
        } else {
            sh.q[tid] = to_f(qh[tid]) * scale;
        }
    }
    __syncthreads();
    float M, L;
    CacheRows rows{(long long)b * s * KVH * D + (long long)g * D, (long long)KVH * D};
    dec_keys_any<T>(sh, k, v, rows, lo, hi, D, ROPE ? tk - 1 : -1, &M, &L);
    dec_finish<T>(sh, M, L, out, part, b, h, H, D, split, splits);
}

// The paged pool's rows: q (N, H, D) of activation dtype T, the pools kp, vp (P, KVH, D) of
// storage C (f32, bf16 or f16; paged.cu's layout), row r at position pos[r] with its block
// table at tables + toff[r]. Grid (H, SPLITS, N).
template <typename T, typename C>
__device__ void paged_attn(const T* q, const C* kp, const C* vp, T* out, float* part, const int* pos, const int* toff,
                           const int* tables, int bs, int H, int KVH, int D, int window, float scale, int chunk) {
    __shared__ DecShared sh;
    int h = blockIdx.x, split = blockIdx.y, r = blockIdx.z, tid = threadIdx.x;
    int g = h / (H / KVH);
    int tk = pos[r] + 1;
    int lo = max(dec_lo(tk - 1, window), split * chunk), hi = min(tk, (split + 1) * chunk);
    if (tid < D) sh.q[tid] = to_f(q[((long long)r * H + h) * D + tid]) * scale;
    __syncthreads();
    float M, L;
    dec_keys_any<C>(sh, kp, vp, PoolRows{tables + toff[r], bs, KVH, g, D}, lo, hi, D, -1, &M, &L);
    dec_finish<T>(sh, M, L, out, part, r, h, H, D, split, gridDim.y);
}

// Head h of sequence b (the launched kernel's blockIdx; the persistent step's last split of
// a head). Partials are read past L1 (__ldcg): in the persistent step they were written by
// other blocks of the same launch.
template <typename T>
__device__ void attn_decode_combine(const float* part, T* out, int H, int D, int splits, int h, int b) {
    const float* pp = part + ((long long)b * H + h) * splits * (D + 2);
    float M = -SM_INF;
    for (int s = 0; s < splits; s++) M = fmaxf(M, __ldcg(pp + s * (D + 2)));
    float L = 0.f;
    for (int s = 0; s < splits; s++) {
        float m = __ldcg(pp + s * (D + 2));
        if (m != -SM_INF) L += __ldcg(pp + s * (D + 2) + 1) * expf(m - M);
    }
    float inv = L > 0.f ? 1.f / L : 0.f;
    T* oh = out + ((long long)b * H + h) * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.f;
        for (int s = 0; s < splits; s++) {
            float m = __ldcg(pp + s * (D + 2));
            if (m != -SM_INF) acc += __ldcg(pp + s * (D + 2) + 2 + d) * expf(m - M);
        }
        oh[d] = from_f<T>(acc * inv);
    }
}

// Writes new rows src (B, t, row) into cache (B, cap, row) at position *pos (or pos_host).
template <typename T>
__device__ void kv_write(T* cache, const T* src, long long row, int t, int cap, int nb, const int* pos, int pos_host) {
    int p0 = pos ? *pos : pos_host;
    long long per = (long long)t * row, n = per * nb;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long bi = i / per, r = i - bi * per;
        cache[(bi * cap + p0) * row + r] = src[i];
    }
}

#define DECODE_KERNELS(T, N) \
    extern "C" __global__ void attn_decode_##N(const T* q, const T* k, const T* v, T* out, float* part, const int* pos, \
                                               int tk, int s, int H, int KVH, int D, int window, float scale, \
                                               int chunk) { \
        pdl_trigger(); \
        pdl_wait(); /* q comes from the kernel before */ \
        attn_decode<T, false>(q, (T*)k, (T*)v, out, part, pos, tk, s, H, KVH, D, window, scale, chunk, nullptr, nullptr, \
                              nullptr, nullptr, 0, blockIdx.x, blockIdx.y, gridDim.y, blockIdx.z); \
    } \
    extern "C" __global__ void attn_decode_rope_##N(const T* q, const T* kn, const T* vn, T* kc, T* vc, T* out, \
                                                    float* part, const int* pos, const float* cosv, const float* sinv, \
                                                    int interleaved, int s, int H, int KVH, int D, int window, \
                                                    float scale, int chunk) { \
        pdl_trigger(); \
        pdl_wait(); /* q and the new k, v come from the kernel before */ \
        attn_decode<T, true>(q, kc, vc, out, part, pos, 0, s, H, KVH, D, window, scale, chunk, kn, vn, cosv, sinv, \
                             interleaved, blockIdx.x, blockIdx.y, gridDim.y, blockIdx.z); \
    } \
    extern "C" __global__ void attn_decode_combine_##N(const float* part, T* out, int H, int D, int splits) { \
        pdl_trigger(); \
        pdl_wait(); \
        attn_decode_combine<T>(part, out, H, D, splits, blockIdx.x, blockIdx.y); \
    } \
    extern "C" __global__ void kv_write_##N(T* cache, const T* src, long long row, int t, int cap, int nb, \
                                            const int* pos, int pos_host) { \
        kv_write<T>(cache, src, row, t, cap, nb, pos, pos_host); \
    }
DECODE_KERNELS(float, f32)
DECODE_KERNELS(bf16_t, bf16)

#define PAGED_ATTN(T, TN, C, CN) \
    extern "C" __global__ void paged_attn_##TN##_##CN(const T* q, const C* kp, const C* vp, T* out, float* part, \
                                                      const int* pos, const int* toff, const int* tables, int bs, \
                                                      int H, int KVH, int D, int window, float scale, int chunk) { \
        paged_attn<T, C>(q, kp, vp, out, part, pos, toff, tables, bs, H, KVH, D, window, scale, chunk); \
    }
PAGED_ATTN(float, f32, float, f32)
PAGED_ATTN(float, f32, bf16_t, bf16)
PAGED_ATTN(float, f32, f16_t, f16)
PAGED_ATTN(bf16_t, bf16, float, f32)
PAGED_ATTN(bf16_t, bf16, bf16_t, bf16)
PAGED_ATTN(bf16_t, bf16, f16_t, f16)

// The decode position moves on by n (the last node of a captured step).
extern "C" __global__ void decode_pos_add(int* pos, int n) {
    if (threadIdx.x == 0 && blockIdx.x == 0) *pos += n;
}
