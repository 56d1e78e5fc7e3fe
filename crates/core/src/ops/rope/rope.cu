// Rotary embedding: rotate feature pairs of each head by position angles; sign = -1 rotates
// back (the backward). x: (rows = B·T, H, D), f32 or bf16 (rotated in f32, stored back in
// x's dtype), in place on a copy; token r sits at position pos0 + r % t; cos/sin: (positions,
// D/2), an f32 table kept on the device.

template <typename T>
__device__ void rope(T* x, const float* cosv, const float* sinv, long long rows, int t, int heads, int d, int interleaved,
                     float sign, int pos0) {
    int half = d / 2;
    long long total = rows * heads * half;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        int p = (int)(i % half);
        long long rh = i / half;          // row * heads + head
        long long r = rh / heads;
        int tp = pos0 + (int)(r % t);
        T* head = x + rh * d;
        int ia = interleaved ? 2 * p : p;
        int ib = interleaved ? 2 * p + 1 : p + half;
        float a = to_f(head[ia]), b = to_f(head[ib]);
        float c = cosv[tp * half + p], s = sign * sinv[tp * half + p];
        head[ia] = from_f<T>(a * c - b * s);
        head[ib] = from_f<T>(a * s + b * c);
    }
}

#define ROPE(T, N) \
    extern "C" __global__ void rope_##N(T* x, const float* cosv, const float* sinv, long long rows, int t, int heads, \
                                        int d, int interleaved, float sign, int pos0) { \
        rope<T>(x, cosv, sinv, rows, t, heads, d, interleaved, sign, pos0); \
    }
ROPE(float, f32)
ROPE(bf16_t, bf16)
