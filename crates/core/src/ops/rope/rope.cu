// Rotary embedding: rotate feature pairs of each head by position angles; sign = -1 rotates
// back (the backward). x: (rows = B·T, H, D), f32 or bf16 (rotated in f32, stored in x's
// dtype) into a new y; token r sits at position pos0 + r % t (pos0 = *pos when pos is non-null:
// a decode position kept on the device), or at positions[token] when `positions` is given (packed
// rows: each example's positions start at 0); cos/sin: (positions, D/2), an f32 table kept on
// the device.

// x → y (out of place: no copy of x first). Where x and y are 16-byte aligned and d is a multiple
// of two vectors, a thread rotates one 16-byte vector's worth of pairs (half-split: W pairs, from
// the vectors at p and p + D/2; interleaved: W/2 pairs, one vector); else one pair a thread.
// Every pair's arithmetic is the same either way, so are the results.
// The pair rotation `rot` is in common.cuh (attention's decode kernel rotates with it too).

// The vector path (see `rope`), its index arithmetic in I: 32-bit when the units fit (every
// training shape: a 64-bit division is ~4× a 32-bit one, and this loop does four a unit, which
// kept the kernel near 1.7 TB/s at 1B), 64-bit otherwise. The half-split form reads its W
// cosines and sines as float4s.
template <typename T, typename I>
__device__ __forceinline__ void rope_vec(const T* x, T* y, const float* cosv, const float* sinv, I total, int upr,
                                         int t, int heads, int d, int interleaved, float sign, int pos0,
                                         const unsigned int* positions) {
    const int W = 16 / sizeof(T);
    int half = d / 2;
    I tid = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x, stride = (I)gridDim.x * (I)blockDim.x;
    for (I i = tid; i < total; i += stride) {
        int q = (int)(i % (I)upr);
        I rh = i / (I)upr, r = rh / (I)heads;
        int tp = positions ? (int)positions[r] : pos0 + (int)(r % (I)t);
        const T* xh = x + (long long)rh * d;
        T* yh = y + (long long)rh * d;
        const float* cr = cosv + (long long)tp * half;
        const float* sr = sinv + (long long)tp * half;
        if (interleaved) {
            V16<T> a, o;
            a.u = ((const uint4*)xh)[q];
#pragma unroll
            for (int j = 0; j < W / 2; j++) {
                int p = q * (W / 2) + j;
                rot<T>(to_f(a.e[2 * j]), to_f(a.e[2 * j + 1]), cr[p], sign * sr[p], &o.e[2 * j], &o.e[2 * j + 1]);
            }
            ((uint4*)yh)[q] = o.u;
        } else {
            V16<T> a, b, oa, ob;
            a.u = ((const uint4*)xh)[q];
            b.u = ((const uint4*)(xh + half))[q];
            float cv[W], sv[W];
#pragma unroll
            for (int j = 0; j < W; j += 4) {
                float4 c4 = *(const float4*)(cr + q * W + j), s4 = *(const float4*)(sr + q * W + j);
                cv[j] = c4.x, cv[j + 1] = c4.y, cv[j + 2] = c4.z, cv[j + 3] = c4.w;
                sv[j] = s4.x, sv[j + 1] = s4.y, sv[j + 2] = s4.z, sv[j + 3] = s4.w;
            }
#pragma unroll
            for (int j = 0; j < W; j++) rot<T>(to_f(a.e[j]), to_f(b.e[j]), cv[j], sign * sv[j], &oa.e[j], &ob.e[j]);
            ((uint4*)yh)[q] = oa.u;
            ((uint4*)(yh + half))[q] = ob.u;
        }
    }
}

template <typename T>
__device__ void rope(const T* x, T* y, const float* cosv, const float* sinv, long long rows, int t, int heads, int d,
                     int interleaved, float sign, int pos0, const int* pos, const unsigned int* positions) {
    const int W = 16 / sizeof(T);
    if (pos) pos0 = *pos;  // the decode position held on the device (a captured step)
    int half = d / 2;
    long long tid = blockIdx.x * (long long)blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
    // The tables' rows are 16-byte aligned when half % 4 == 0, which d % (2W) == 0 implies.
    if (aligned16(x) && aligned16(y) && aligned16(cosv) && aligned16(sinv) && d % (2 * W) == 0) {
        int upr = d / (2 * W) * (interleaved ? 2 : 1);  // units (vectors, or vector pairs) per head
        long long total = rows * heads * upr;
        if (total < 0x7fffffffll)
            rope_vec<T, unsigned>(x, y, cosv, sinv, (unsigned)total, upr, t, heads, d, interleaved, sign, pos0, positions);
        else
            rope_vec<T, long long>(x, y, cosv, sinv, total, upr, t, heads, d, interleaved, sign, pos0, positions);
        return;
    }
    long long total = rows * heads * half;
    for (long long i = tid; i < total; i += stride) {
        int p = (int)(i % half);
        long long rh = i / half;          // row * heads + head
        long long r = rh / heads;
        int tp = positions ? (int)positions[r] : pos0 + (int)(r % t);
        const T* xh = x + rh * d;
        T* yh = y + rh * d;
        int ia = interleaved ? 2 * p : p;
        int ib = interleaved ? 2 * p + 1 : p + half;
        rot<T>(to_f(xh[ia]), to_f(xh[ib]), cosv[tp * half + p], sign * sinv[tp * half + p], &yh[ia], &yh[ib]);
    }
}

// Inference with a KV cache, in one launch: q (B·T, H, D) rotated into qo; k (B·T, KVH, D)
// rotated straight into the key cache kc (B, cap, KVH, D) at rows pos0 + t_i, and v copied into
// the value cache vc likewise. The pair arithmetic is `rope`'s (so are the results).
template <typename T>
__device__ void rope_kv(const T* q, const T* k, const T* v, T* qo, T* kc, T* vc, const float* cosv, const float* sinv,
                        int nb, int t, int H, int KVH, int d, int cap, int interleaved, int pos0, const int* pos) {
    if (pos) pos0 = *pos;
    int half = d / 2;
    long long nq = (long long)nb * t * H * half, nk = (long long)nb * t * KVH * half, nv = (long long)nb * t * KVH * d;
    long long tid = blockIdx.x * (long long)blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
    for (long long i = tid; i < nq + nk + nv; i += stride) {
        if (i < nq + nk) {
            bool isq = i < nq;
            long long j = isq ? i : i - nq;
            int heads = isq ? H : KVH;
            int p = (int)(j % half);
            long long rh = j / half;  // (b·t + ti)·heads + head
            long long r = rh / heads;
            int tp = pos0 + (int)(r % t);
            const T* xh = (isq ? q : k) + rh * d;
            T* yh = isq ? qo + rh * d : kc + (((r / t) * cap + tp) * KVH + rh % KVH) * d;
            int ia = interleaved ? 2 * p : p;
            int ib = interleaved ? 2 * p + 1 : p + half;
            rot<T>(to_f(xh[ia]), to_f(xh[ib]), cosv[tp * half + p], sinv[tp * half + p], &yh[ia], &yh[ib]);
        } else {
            long long j = i - nq - nk;
            long long rh = j / d, r = rh / KVH;
            vc[(((r / t) * cap + pos0 + (int)(r % t)) * KVH + rh % KVH) * d + j % d] = v[j];
        }
    }
}

#define ROPE(T, N) \
    extern "C" __global__ void rope_##N(const T* x, T* y, const float* cosv, const float* sinv, long long rows, int t, \
                                        int heads, int d, int interleaved, float sign, int pos0, \
                                        const int* pos, const unsigned int* positions) { \
        rope<T>(x, y, cosv, sinv, rows, t, heads, d, interleaved, sign, pos0, pos, positions); \
    } \
    extern "C" __global__ void rope_kv_##N(const T* q, const T* k, const T* v, T* qo, T* kc, T* vc, const float* cosv, \
                                           const float* sinv, int nb, int t, int H, int KVH, int d, int cap, \
                                           int interleaved, int pos0, const int* pos) { \
        rope_kv<T>(q, k, v, qo, kc, vc, cosv, sinv, nb, t, H, KVH, d, cap, interleaved, pos0, pos); \
    }
ROPE(float, f32)
ROPE(bf16_t, bf16)
