// Decode attention: one new query per sequence against its KV cache, split over the keys
// (flash-decoding), the same with the step's RoPE and cache write inside (attn_decode_rope),
// and the two small kernels a captured decode step needs.
//
// Layout as attention.cu: q (B, 1, H, D); k, v (B, S, KVH, D). The number of valid keys is
// `*pos + 1` when `pos` is non-null (the decode position lives on the device, so one captured
// CUDA graph serves every step), else `tk`. The query sits at position tk − 1 and sees keys
// [key_lo, tk) (sliding window as attention.cu).
//
// attn_decode: grid (H, SPLITS, B), block DEC_WARPS warps. Split s owns keys
// [s·chunk, (s+1)·chunk) ∩ [lo, tk); its warps take keys in turn, each lane scoring
// d = lane + 32·e (e < PER, D ≤ 128) and the warp summing by shuffles; each warp keeps an
// online softmax (max m, sum l, weighted values o) that the block merges in shared memory.
// One split writes the output itself; several write (m, l, o) partials to `part`, and
// attn_decode_combine merges them (grid (H, B), block 128).
#define DEC_WARPS 4
#define DEC_PER 4

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

// ROPE = false: attn_decode as above (q rotated, the new row already in the caches k and v).
// ROPE = true (attn_decode_rope, one decoding row a sequence, position *pos on the device): q
// and the new key kn come unrotated and are rotated here as rope_kv rotates them (`rot`, rounded
// to T), the new key and value (vn) serve the last position from registers, and split 0 of the
// first query head of each KV head writes them into the caches for the next steps. No block
// reads the row being written, so nothing orders the blocks; the numbers are rope_kv's then
// attn_decode's, one launch instead of two.
template <typename T, bool ROPE>
__device__ void attn_decode(const T* q, T* k, T* v, T* out, float* part, const int* pos, int tk_host, int s, int H,
                            int KVH, int D, int window, float scale, int chunk, const T* kn, const T* vn,
                            const float* cosv, const float* sinv, int interleaved) {
    __shared__ float sm_m[DEC_WARPS], sm_l[DEC_WARPS];
    __shared__ float sm_o[DEC_WARPS][32 * DEC_PER];
    int h = blockIdx.x, split = blockIdx.y, b = blockIdx.z, splits = gridDim.y;
    int g = h / (H / KVH);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int tk = pos ? *pos + 1 : tk_host;
    int lo = max(dec_lo(tk - 1, window), split * chunk), hi = min(tk, (split + 1) * chunk);
    float qr[DEC_PER], o[DEC_PER], kr[DEC_PER], vr[DEC_PER];
    const T* qh = q + ((long long)b * H + h) * D;
    const float *cr = nullptr, *sr = nullptr;
    if (ROPE) {
        cr = cosv + (long long)(tk - 1) * (D / 2);
        sr = sinv + (long long)(tk - 1) * (D / 2);
    }
    for (int e = 0; e < DEC_PER; e++) {
        int d = lane + 32 * e;
        if (ROPE) {
            const T* kh = kn + ((long long)b * KVH + g) * D;
            qr[e] = d < D ? rope_elem(qh, d, D, interleaved, cr, sr) * scale : 0.f;
            kr[e] = d < D ? rope_elem(kh, d, D, interleaved, cr, sr) : 0.f;
            vr[e] = d < D ? to_f(vn[((long long)b * KVH + g) * D + d]) : 0.f;
        } else {
            qr[e] = d < D ? to_f(qh[d]) * scale : 0.f;
        }
        o[e] = 0.f;
    }
    if (ROPE && split == 0 && h % (H / KVH) == 0 && warp == 0) {
        long long row = (((long long)b * s + tk - 1) * KVH + g) * D;
        for (int e = 0; e < DEC_PER; e++) {
            int d = lane + 32 * e;
            if (d < D) {
                k[row + d] = from_f<T>(kr[e]);
                v[row + d] = from_f<T>(vr[e]);
            }
        }
    }
    float m = -SM_INF, l = 0.f;
    for (int j = lo + warp; j < hi; j += DEC_WARPS) {
        long long row = (((long long)b * s + j) * KVH + g) * D;
        bool cur = ROPE && j == tk - 1;
        float sc = 0.f;
        for (int e = 0; e < DEC_PER; e++) {
            int d = lane + 32 * e;
            if (d < D) sc += qr[e] * (cur ? kr[e] : to_f(k[row + d]));
        }
        sc = warp_sum(sc);
        float mn = fmaxf(m, sc);
        float corr = expf(m - mn), p = expf(sc - mn);
        l = l * corr + p;
        for (int e = 0; e < DEC_PER; e++) {
            int d = lane + 32 * e;
            o[e] = o[e] * corr + (d < D ? p * (cur ? vr[e] : to_f(v[row + d])) : 0.f);
        }
        m = mn;
    }
    if (lane == 0) {
        sm_m[warp] = m;
        sm_l[warp] = l;
    }
    for (int e = 0; e < DEC_PER; e++) sm_o[warp][lane + 32 * e] = o[e];
    __syncthreads();
    if (warp != 0) return;
    float M = -SM_INF;
    for (int w = 0; w < DEC_WARPS; w++) M = fmaxf(M, sm_m[w]);
    float L = 0.f, acc[DEC_PER];
    for (int e = 0; e < DEC_PER; e++) acc[e] = 0.f;
    for (int w = 0; w < DEC_WARPS; w++) {
        float c = sm_m[w] == -SM_INF ? 0.f : expf(sm_m[w] - M);
        L += sm_l[w] * c;
        for (int e = 0; e < DEC_PER; e++) acc[e] += sm_o[w][lane + 32 * e] * c;
    }
    if (splits == 1) {
        T* oh = out + ((long long)b * H + h) * D;
        float inv = L > 0.f ? 1.f / L : 0.f;
        for (int e = 0; e < DEC_PER; e++) {
            int d = lane + 32 * e;
            if (d < D) oh[d] = from_f<T>(acc[e] * inv);
        }
        return;
    }
    // Partial of this split: [m, l, o(D)] at ((b·H + h)·splits + split)·(D + 2).
    float* pp = part + (((long long)b * H + h) * splits + split) * (D + 2);
    if (lane == 0) {
        pp[0] = M;
        pp[1] = L;
    }
    for (int e = 0; e < DEC_PER; e++) {
        int d = lane + 32 * e;
        if (d < D) pp[2 + d] = acc[e];
    }
}

template <typename T>
__device__ void attn_decode_combine(const float* part, T* out, int H, int D, int splits) {
    int h = blockIdx.x, b = blockIdx.y;
    const float* pp = part + ((long long)b * H + h) * splits * (D + 2);
    float M = -SM_INF;
    for (int s = 0; s < splits; s++) M = fmaxf(M, pp[s * (D + 2)]);
    float L = 0.f;
    for (int s = 0; s < splits; s++) {
        float m = pp[s * (D + 2)];
        if (m != -SM_INF) L += pp[s * (D + 2) + 1] * expf(m - M);
    }
    float inv = L > 0.f ? 1.f / L : 0.f;
    T* oh = out + ((long long)b * H + h) * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.f;
        for (int s = 0; s < splits; s++) {
            float m = pp[s * (D + 2)];
            if (m != -SM_INF) acc += pp[s * (D + 2) + 2 + d] * expf(m - M);
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
        attn_decode<T, false>(q, (T*)k, (T*)v, out, part, pos, tk, s, H, KVH, D, window, scale, chunk, nullptr, nullptr, \
                              nullptr, nullptr, 0); \
    } \
    extern "C" __global__ void attn_decode_rope_##N(const T* q, const T* kn, const T* vn, T* kc, T* vc, T* out, \
                                                    float* part, const int* pos, const float* cosv, const float* sinv, \
                                                    int interleaved, int s, int H, int KVH, int D, int window, \
                                                    float scale, int chunk) { \
        attn_decode<T, true>(q, kc, vc, out, part, pos, 0, s, H, KVH, D, window, scale, chunk, kn, vn, cosv, sinv, \
                             interleaved); \
    } \
    extern "C" __global__ void attn_decode_combine_##N(const float* part, T* out, int H, int D, int splits) { \
        attn_decode_combine<T>(part, out, H, D, splits); \
    } \
    extern "C" __global__ void kv_write_##N(T* cache, const T* src, long long row, int t, int cap, int nb, \
                                            const int* pos, int pos_host) { \
        kv_write<T>(cache, src, row, t, cap, nb, pos, pos_host); \
    }
DECODE_KERNELS(float, f32)
DECODE_KERNELS(bf16_t, bf16)

// The decode position moves on by n (the last node of a captured step).
extern "C" __global__ void decode_pos_add(int* pos, int n) {
    if (threadIdx.x == 0 && blockIdx.x == 0) *pos += n;
}
