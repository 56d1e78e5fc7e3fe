// The paged KV pool of the server's batched forward (smelt-model's paged.rs): several sequences'
// new rows in one call, each at its own position, their keys and values in fixed-size blocks of
// one pool found through each sequence's block table.
//
// Layouts: the step's new rows q (N, H, D), k and v (N, KVH, D) in the activation dtype T (f32 or
// bf16); the pool kp, vp (P, KVH, D) in its own storage type C (f32, bf16 or f16), P = blocks ·
// block size. Per new row r (uploaded once per forward, read by every layer): pos[r] its
// position in its sequence, dst[r] the pool row it is written to, toff[r] where its sequence's
// block table starts in `tables`; position j of that sequence lives in pool row
// tables[toff[r] + j / bs] · bs + j % bs.
//
// paged_rope_kv: q rotated into qo, k rotated into the key pool at dst[r], v copied into the
// value pool there: `rope_kv` (rope.cu) with a row index instead of a contiguous position. A
// key is rounded to T first (what a contiguous cache of T holds), then to C.
//
// paged_attn: `attn_decode` (decode.cu) with the query's keys read through the block table:
// grid (H, SPLITS, N), block PG_WARPS warps; split s owns keys [s·chunk, (s+1)·chunk) ∩
// [lo, pos[r] + 1), each warp an online softmax merged in shared memory, f32 throughout. One
// split writes the output; several write (m, l, o) partials that decode.cu's
// attn_decode_combine merges (grid (H, N)). A prompt's rows are rows like any other (the
// straightforward kernel: no key tile is shared between queries).
#define PG_WARPS 4
#define PG_PER 4

// IEEE half storage (the pool only): converted with the hardware's round-to-nearest-even.
struct f16_t {
    unsigned short x;
};
__device__ __forceinline__ float to_f(f16_t v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.x));
    return f;
}
template <> __device__ __forceinline__ f16_t from_f<f16_t>(float v) {
    f16_t r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.x) : "f"(v));
    return r;
}

// A value computed in f32, stored as the activation dtype T would hold it, then as C.
template <typename T, typename C> __device__ __forceinline__ C to_pool(float y) { return from_f<C>(to_f(from_f<T>(y))); }

template <typename T, typename C>
__device__ void paged_rope_kv(const T* q, const T* k, const T* v, T* qo, C* kp, C* vp, const float* cosv,
                              const float* sinv, const int* pos, const int* dst, int n, int H, int KVH, int d,
                              int interleaved) {
    int half = d / 2;
    long long nq = (long long)n * H * half, nk = (long long)n * KVH * half, nv = (long long)n * KVH * d;
    long long tid = blockIdx.x * (long long)blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
    for (long long i = tid; i < nq + nk + nv; i += stride) {
        if (i < nq + nk) {
            bool isq = i < nq;
            long long j = isq ? i : i - nq;
            int heads = isq ? H : KVH;
            int p = (int)(j % half);
            long long rh = j / half;  // row · heads + head
            long long r = rh / heads;
            int tp = pos[r];
            const T* xh = (isq ? q : k) + rh * d;
            int ia = interleaved ? 2 * p : p;
            int ib = interleaved ? 2 * p + 1 : p + half;
            float a = to_f(xh[ia]), b = to_f(xh[ib]);
            float c = cosv[(long long)tp * half + p], s = sinv[(long long)tp * half + p];
            float ya = a * c - b * s, yb = a * s + b * c;
            if (isq) {
                qo[rh * d + ia] = from_f<T>(ya);
                qo[rh * d + ib] = from_f<T>(yb);
            } else {
                C* yh = kp + ((long long)dst[r] * KVH + rh % KVH) * d;
                yh[ia] = to_pool<T, C>(ya);
                yh[ib] = to_pool<T, C>(yb);
            }
        } else {
            long long j = i - nq - nk;
            long long rh = j / d, r = rh / KVH;
            vp[((long long)dst[r] * KVH + rh % KVH) * d + j % d] = to_pool<T, C>(to_f(v[j]));
        }
    }
}

template <typename T, typename C>
__device__ void paged_attn(const T* q, const C* kp, const C* vp, T* out, float* part, const int* pos, const int* toff,
                           const int* tables, int bs, int H, int KVH, int D, int window, float scale, int chunk) {
    __shared__ float sm_m[PG_WARPS], sm_l[PG_WARPS];
    __shared__ float sm_o[PG_WARPS][32 * PG_PER];
    int h = blockIdx.x, split = blockIdx.y, r = blockIdx.z, splits = gridDim.y;
    int g = h / (H / KVH);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int tk = pos[r] + 1;
    const int* table = tables + toff[r];
    int lo = max(window > 0 ? max(0, tk - window) : 0, split * chunk), hi = min(tk, (split + 1) * chunk);
    float qr[PG_PER], o[PG_PER];
    const T* qh = q + ((long long)r * H + h) * D;
    for (int e = 0; e < PG_PER; e++) {
        int d = lane + 32 * e;
        qr[e] = d < D ? to_f(qh[d]) * scale : 0.f;
        o[e] = 0.f;
    }
    float m = -SM_INF, l = 0.f;
    for (int j = lo + warp; j < hi; j += PG_WARPS) {
        long long row = (((long long)table[j / bs] * bs + j % bs) * KVH + g) * D;
        float sc = 0.f;
        for (int e = 0; e < PG_PER; e++) {
            int d = lane + 32 * e;
            if (d < D) sc += qr[e] * to_f(kp[row + d]);
        }
        sc = warp_sum(sc);
        float mn = fmaxf(m, sc);
        float corr = expf(m - mn), p = expf(sc - mn);
        l = l * corr + p;
        for (int e = 0; e < PG_PER; e++) {
            int d = lane + 32 * e;
            o[e] = o[e] * corr + (d < D ? p * to_f(vp[row + d]) : 0.f);
        }
        m = mn;
    }
    if (lane == 0) {
        sm_m[warp] = m;
        sm_l[warp] = l;
    }
    for (int e = 0; e < PG_PER; e++) sm_o[warp][lane + 32 * e] = o[e];
    __syncthreads();
    if (warp != 0) return;
    float M = -SM_INF;
    for (int w = 0; w < PG_WARPS; w++) M = fmaxf(M, sm_m[w]);
    float L = 0.f, acc[PG_PER];
    for (int e = 0; e < PG_PER; e++) acc[e] = 0.f;
    for (int w = 0; w < PG_WARPS; w++) {
        float c = sm_m[w] == -SM_INF ? 0.f : expf(sm_m[w] - M);
        L += sm_l[w] * c;
        for (int e = 0; e < PG_PER; e++) acc[e] += sm_o[w][lane + 32 * e] * c;
    }
    if (splits == 1) {
        T* oh = out + ((long long)r * H + h) * D;
        float inv = L > 0.f ? 1.f / L : 0.f;
        for (int e = 0; e < PG_PER; e++) {
            int d = lane + 32 * e;
            if (d < D) oh[d] = from_f<T>(acc[e] * inv);
        }
        return;
    }
    // This split's partial [m, l, o(D)] at ((r·H + h)·splits + split)·(D + 2), attn_decode's layout.
    float* pp = part + (((long long)r * H + h) * splits + split) * (D + 2);
    if (lane == 0) {
        pp[0] = M;
        pp[1] = L;
    }
    for (int e = 0; e < PG_PER; e++) {
        int d = lane + 32 * e;
        if (d < D) pp[2 + d] = acc[e];
    }
}

#define PAGED_KERNELS(T, TN, C, CN) \
    extern "C" __global__ void paged_rope_kv_##TN##_##CN( \
        const T* q, const T* k, const T* v, T* qo, C* kp, C* vp, const float* cosv, const float* sinv, const int* pos, \
        const int* dst, int n, int H, int KVH, int d, int interleaved) { \
        paged_rope_kv<T, C>(q, k, v, qo, kp, vp, cosv, sinv, pos, dst, n, H, KVH, d, interleaved); \
    } \
    extern "C" __global__ void paged_attn_##TN##_##CN(const T* q, const C* kp, const C* vp, T* out, float* part, \
                                                      const int* pos, const int* toff, const int* tables, int bs, \
                                                      int H, int KVH, int D, int window, float scale, int chunk) { \
        paged_attn<T, C>(q, kp, vp, out, part, pos, toff, tables, bs, H, KVH, D, window, scale, chunk); \
    }
PAGED_KERNELS(float, f32, float, f32)
PAGED_KERNELS(float, f32, bf16_t, bf16)
PAGED_KERNELS(float, f32, f16_t, f16)
PAGED_KERNELS(bf16_t, bf16, float, f32)
PAGED_KERNELS(bf16_t, bf16, bf16_t, bf16)
PAGED_KERNELS(bf16_t, bf16, f16_t, f16)
