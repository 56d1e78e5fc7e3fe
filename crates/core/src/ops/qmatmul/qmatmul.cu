// Quantised weights on the GPU: ggml's block formats (llama.cpp's byte layouts, ggml-common.h)
// read in place and dequantised in registers. The host reference is smelt-core's quant/*.rs
// (dequantize); every decoder below is written against it, element for element, and uses
// the same float operations in the same order (no FMA contraction: __fmul_rn/__fadd_rn), so
// dequantisation is bit-identical to the CPU's.
//
//   qmatvec_*       y (n × rows) = x (n × cols) · Wᵀ for n ≤ 8 (decode): one warp per output row,
//                   lanes striding over the row's 8-element groups (a warp reads consecutive
//                   blocks), f32 activations, f32 sums.
//   qdequant_*      W → f32 or bf16 (the prefill path's scratch for cuBLASLt; to_vec_f32).
//   qgather_f32_*   rows ids[r] of W → f32 (embedding from a quantised token table).
//
// Each format is a struct with QK (elements per block), BYTES (bytes per block) and
// deq8(block, g, v): elements 8g..8g+8 of the block, g < QK/8, in element order.

typedef unsigned char u8;

__device__ __forceinline__ float h2f(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// An f16 stored little-endian at p (blocks are byte-aligned only).
__device__ __forceinline__ float f16_at(const u8* p) { return h2f((unsigned short)(p[0] | (p[1] << 8))); }

// Q8_0: { f16 d; i8 qs[32] }, x = d·q.
struct Q8_0 {
    static constexpr int QK = 32, BYTES = 34;
    __device__ static void deq8(const u8* b, int g, float* v) {
        float d = f16_at(b);
        const u8* q = b + 2 + 8 * g;
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = __fmul_rn((float)(signed char)q[i], d);
    }
};

// Q4_0: { f16 d; u8 qs[16] }; element j < 16 is the low nibble of qs[j], element j + 16 the high
// nibble; x = d·(q − 8). Groups 0, 1: low nibbles of qs[0..8], qs[8..16]; groups 2, 3: high.
struct Q4_0 {
    static constexpr int QK = 32, BYTES = 18;
    __device__ static void deq8(const u8* b, int g, float* v) {
        float d = f16_at(b);
        const u8* q = b + 2 + 8 * (g & 1);
        int sh = 4 * (g >> 1);
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = __fmul_rn((float)((int)((q[i] >> sh) & 0xF) - 8), d);
    }
};

// Q4_1: { f16 d; f16 m; u8 qs[16] } (nibbles as Q4_0); x = d·q + m.
struct Q4_1 {
    static constexpr int QK = 32, BYTES = 20;
    __device__ static void deq8(const u8* b, int g, float* v) {
        float d = f16_at(b), m = f16_at(b + 2);
        const u8* q = b + 4 + 8 * (g & 1);
        int sh = 4 * (g >> 1);
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = __fadd_rn(__fmul_rn((float)((q[i] >> sh) & 0xF), d), m);
    }
};

// Q5_0: { f16 d; u8 qh[4]; u8 qs[16] }: low 4 bits as Q4_0, the fifth bit of element e is bit
// e of the little-endian u32 qh; x = d·(q − 16).
struct Q5_0 {
    static constexpr int QK = 32, BYTES = 22;
    __device__ static void deq8(const u8* b, int g, float* v) {
        float d = f16_at(b);
        unsigned int qh = (unsigned int)b[2] | ((unsigned int)b[3] << 8) | ((unsigned int)b[4] << 16) | ((unsigned int)b[5] << 24);
        const u8* q = b + 6 + 8 * (g & 1);
        int sh = 4 * (g >> 1);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int e = 8 * g + i;
            int lo = (q[i] >> sh) & 0xF;
            int hi = (int)((qh >> e) & 1u) << 4;
            v[i] = __fmul_rn((float)((lo | hi) - 16), d);
        }
    }
};

// llama.cpp's get_scale_min_k4: the 6-bit scale and min of Q4_K sub-block j (of 8), packed in
// 12 bytes: j < 4 in the low 6 bits of s[j] (scale) and s[j+4] (min); j ≥ 4 in the nibbles of
// s[j+4] with their top 2 bits in the top bits of s[j-4] (scale) and s[j] (min).
__device__ __forceinline__ void scale_min_k4(int j, const u8* s, int& sc, int& m) {
    if (j < 4) {
        sc = s[j] & 63;
        m = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// Q4_K: { f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }: 8 sub-blocks of 32, x = d·sc·q − dmin·m.
// Sub-blocks 2c and 2c+1 share qs[32c..32c+32]: low nibbles for 2c, high nibbles for 2c+1.
struct Q4_K {
    static constexpr int QK = 256, BYTES = 144;
    __device__ static void deq8(const u8* b, int g, float* v) {
        float d = f16_at(b), dmin = f16_at(b + 2);
        int j = g >> 2; // sub-block: elements 32j..32j+32, this group at offset 8·(g mod 4)
        int sc, m;
        scale_min_k4(j, b + 4, sc, m);
        float d1 = __fmul_rn(d, (float)sc), m1 = __fmul_rn(dmin, (float)m);
        const u8* q = b + 16 + 32 * (j >> 1) + 8 * (g & 3);
        int sh = 4 * (j & 1);
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = __fsub_rn(__fmul_rn(d1, (float)((q[i] >> sh) & 0xF)), m1);
    }
};

// Q6_K: { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }: 6-bit values minus 32, 16 sub-blocks
// of 16 with an 8-bit scale each; x = d·sc·(q − 32). Element e: half n = e/128, quarter
// t = (e mod 128)/32, l = e mod 32; low 4 bits: ql[64n + 32·(t mod 2) + l], low nibble for
// t < 2, high for t ≥ 2; high 2 bits: bits 2t..2t+1 of qh[32n + l]; scale: scales[e/16].
struct Q6_K {
    static constexpr int QK = 256, BYTES = 210;
    __device__ static void deq8(const u8* b, int g, float* v) {
        int n = g >> 4, t = (g >> 2) & 3, l0 = 8 * (g & 3);
        const u8* ql = b + 64 * n + 32 * (t & 1) + l0;
        const u8* qh = b + 128 + 32 * n + l0;
        int qls = 4 * (t >> 1), qhs = 2 * t;
        float ds = __fmul_rn(f16_at(b + 208), (float)(signed char)b[192 + (g >> 1)]);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int q = (int)(((ql[i] >> qls) & 0xF) | (((qh[i] >> qhs) & 3) << 4)) - 32;
            v[i] = __fmul_rn(ds, (float)q);
        }
    }
};

#define QMV_MAX_N 8
#define QMV_WARPS 4

// Block (32, QMV_WARPS): warp threadIdx.y computes output row blockIdx.x·QMV_WARPS + threadIdx.y
// for all n ≤ QMV_MAX_N input rows.
// x and y are f32, or bf16 under mixed precision (loaded into f32, stored rounded once).
template <class F, typename T>
__device__ __forceinline__ void qmatvec(const u8* w, const T* x, T* y, int rows, int cols, long long row_bytes, int n) {
    int r = blockIdx.x * QMV_WARPS + threadIdx.y;
    if (r >= rows) return; // the whole warp leaves together
    const u8* wr = w + (long long)r * row_bytes;
    constexpr int G = F::QK / 8;
    int groups = cols / 8;
    float acc[QMV_MAX_N];
#pragma unroll
    for (int i = 0; i < QMV_MAX_N; i++) acc[i] = 0.f;
    for (int g = threadIdx.x; g < groups; g += 32) {
        float v[8];
        F::deq8(wr + (long long)(g / G) * F::BYTES, g % G, v);
        const T* xg = x + 8LL * g;
#pragma unroll
        for (int i = 0; i < QMV_MAX_N; i++) {
            if (i < n) {
                const T* xi = xg + (long long)i * cols;
                float s = 0.f;
#pragma unroll
                for (int k = 0; k < 8; k++) s = fmaf(v[k], to_f(xi[k]), s);
                acc[i] += s;
            }
        }
    }
#pragma unroll
    for (int i = 0; i < QMV_MAX_N; i++) {
        if (i < n) {
            float s = warp_sum(acc[i]);
            if (threadIdx.x == 0) y[(long long)i * rows + r] = from_f<T>(s);
        }
    }
}

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(bf16_t* p, float v) { *p = f2bf(v); }

// out[r, :] = row src(r) of W, src(r) = ids ? ids[r] : r; an id ≥ vocab writes NaN (the bug
// shows). One thread per 8-element group, grid-stride.
template <class F, typename T>
__device__ __forceinline__ void qdequant(const u8* w, const unsigned int* ids, T* out, long long n_rows, int cols, long long row_bytes, unsigned int vocab) {
    constexpr int G = F::QK / 8;
    int gpr = cols / 8;
    long long total = n_rows * gpr;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total; t += (long long)gridDim.x * blockDim.x) {
        long long r = t / gpr;
        int g = (int)(t - r * gpr);
        unsigned int src = ids ? ids[r] : (unsigned int)r;
        float v[8];
        if (src < vocab) {
            F::deq8(w + (long long)src * row_bytes + (long long)(g / G) * F::BYTES, g % G, v);
        } else {
#pragma unroll
            for (int k = 0; k < 8; k++) v[k] = __int_as_float(0x7fc00000);
        }
        T* o = out + r * cols + 8LL * g;
#pragma unroll
        for (int k = 0; k < 8; k++) store(o + k, v[k]);
    }
}

#define QKERNELS(F)                                                                                              \
    extern "C" __global__ void qmatvec_##F(const u8* w, const float* x, float* y, int rows, int cols,            \
                                           long long row_bytes, int n) {                                         \
        qmatvec<F, float>(w, x, y, rows, cols, row_bytes, n);                                                    \
    }                                                                                                            \
    extern "C" __global__ void qmatvec_bf16_##F(const u8* w, const bf16_t* x, bf16_t* y, int rows, int cols,    \
                                                long long row_bytes, int n) {                                    \
        qmatvec<F, bf16_t>(w, x, y, rows, cols, row_bytes, n);                                                   \
    }                                                                                                            \
    extern "C" __global__ void qdequant_f32_##F(const u8* w, float* out, long long rows, int cols,               \
                                                long long row_bytes) {                                           \
        qdequant<F, float>(w, nullptr, out, rows, cols, row_bytes, (unsigned int)rows);                          \
    }                                                                                                            \
    extern "C" __global__ void qdequant_bf16_##F(const u8* w, bf16_t* out, long long rows, int cols,             \
                                                 long long row_bytes) {                                          \
        qdequant<F, bf16_t>(w, nullptr, out, rows, cols, row_bytes, (unsigned int)rows);                         \
    }                                                                                                            \
    extern "C" __global__ void qgather_f32_##F(const u8* w, const unsigned int* ids, float* out, long long n,    \
                                               int cols, long long row_bytes, unsigned int vocab) {              \
        qdequant<F, float>(w, ids, out, n, cols, row_bytes, vocab);                                              \
    }

QKERNELS(Q4_0)
QKERNELS(Q4_1)
QKERNELS(Q5_0)
QKERNELS(Q8_0)
QKERNELS(Q4_K)
QKERNELS(Q6_K)
