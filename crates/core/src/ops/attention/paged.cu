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
// The attention over these rows, `paged_attn`, is decode.cu's decode kernel with the keys read
// through the block table (one key loop for both).

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

#define PAGED_KERNELS(T, TN, C, CN) \
    extern "C" __global__ void paged_rope_kv_##TN##_##CN( \
        const T* q, const T* k, const T* v, T* qo, C* kp, C* vp, const float* cosv, const float* sinv, const int* pos, \
        const int* dst, int n, int H, int KVH, int d, int interleaved) { \
        paged_rope_kv<T, C>(q, k, v, qo, kp, vp, cosv, sinv, pos, dst, n, H, KVH, d, interleaved); \
    }
PAGED_KERNELS(float, f32, float, f32)
PAGED_KERNELS(float, f32, bf16_t, bf16)
PAGED_KERNELS(float, f32, f16_t, f16)
PAGED_KERNELS(bf16_t, bf16, float, f32)
PAGED_KERNELS(bf16_t, bf16, bf16_t, bf16)
PAGED_KERNELS(bf16_t, bf16, f16_t, f16)
