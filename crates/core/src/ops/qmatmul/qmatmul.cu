// Quantised weights on the GPU: ggml's block formats (llama.cpp's values, ggml-common.h),
// dequantised in registers. The host reference is smelt-core's quant/*.rs (dequantize); every
// decoder below is written against it, element for element, and uses the same float operations
// in the same order (no FMA contraction: __fmul_rn/__fadd_rn), so dequantisation is
// bit-identical to the CPU's.
//
// The device layout (DeviceQuant::upload arranges it): each row starts 16-byte aligned (its
// stride is the row's block bytes rounded up to 16) and holds its blocks' fields one after the
// other, field by field — first every block's quantised values, then the small per-block
// scalars — so the values load 16 bytes at a time whatever the block size (ggml's 34-, 18-,
// 20-, 22- and 210-byte blocks are only 2-byte aligned):
//   Q8_0  qs[32]·nb | d·nb                 Q4_0  qs[16]·nb | d·nb
//   Q4_1  qs[16]·nb | (d, m)·nb             Q5_0  qs[16]·nb | qh[4]·nb | d·nb
//   Q4_K  whole 144-byte blocks (9 × 16)   Q6_K  (ql[128] qh[64] scales[16])·nb | d·nb
// (nb = blocks a row; each field's bytes within a block as ggml has them).
//
//   qmatvec_*       y (n × rows) = x (n × cols) · Wᵀ for n ≤ 8 (decode): one warp per output row,
//                   lanes striding over the row's 8-element groups (a warp reads consecutive
//                   blocks), f32 activations, f32 sums.
//   mmvqg*_         the same product in integer arithmetic (llama.cpp's MMVQ idea), for mixed
//                   precision: x quantised to 8 bits once (quantize_q8_*: blocks of 32, an f32
//                   scale each), each weight chunk's integers dotted with x's by dp4a, the
//                   scales applied per 16 elements. What smelt's CPU kernels (and llama.cpp's)
//                   do, so decode in bf16 mode reads the same kind of numbers on both. G lanes
//                   a row (common.cuh's row groups), each reading whole 32-element chunks with
//                   16-byte loads (one warp a row with 8 values a lane a step read 0.2–0.6
//                   TB/s; docs/PERF.md).
//   qdequant_*      W → f32 or bf16 (the prefill path's scratch for cuBLASLt; to_vec_f32).
//   qgather_f32_*   rows ids[r] of W → f32 (embedding from a quantised token table).
//
// Each format is a struct with QK (elements per block), BYTES (bytes per block),
// deq8(row, nb, blk, g, v): elements 8g..8g+8 of block blk of the row, g < QK/8, in element
// order; for the integer matvec load(row, nb, c, Raw&) (the loads of the row's 32-element
// chunk c) and half(Raw, c, h, w[4], e, d, m): its elements e..e+15 of the row (h = 0, 1) as
// four words of four signed 8-bit integers q (w[k] holds elements e + 4k..e + 4k + 3), with the
// scale d and offset m that make them x = d·q + m (HAS_MIN says whether m can be non-zero).

typedef unsigned char u8;

__device__ __forceinline__ float h2f(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// An f16 stored little-endian at p (blocks are byte-aligned only).
__device__ __forceinline__ float f16_at(const u8* p) { return h2f((unsigned short)(p[0] | (p[1] << 8))); }
// An f16 at a 2-byte aligned p, through the read-only path.
__device__ __forceinline__ unsigned short u16_ld(const u8* p) { return __ldg((const unsigned short*)p); }
__device__ __forceinline__ unsigned int u32_ld(const u8* p) { return __ldg((const unsigned int*)p); }

// The 4 bytes at p as one little-endian word, p 2-byte aligned.
__device__ __forceinline__ unsigned int u32_at2(const u8* p) {
    const unsigned short* h = (const unsigned short*)p;
    return (unsigned int)h[0] | ((unsigned int)h[1] << 16);
}

// Bit b (b < 4) of `bits` moved to bit 4 of byte b: the fifth bits of four 5-bit values.
__device__ __forceinline__ unsigned int fifth_bits(unsigned int bits) {
    return ((bits & 1u) << 4) | ((bits & 2u) << 11) | ((bits & 4u) << 18) | ((bits & 8u) << 25);
}

__device__ __forceinline__ unsigned int word(const uint4& v, int k) { return k == 0 ? v.x : k == 1 ? v.y : k == 2 ? v.z : v.w; }
// Byte i (< 16) of v, by selects and shifts (an indexed byte array would live in local memory).
__device__ __forceinline__ int byte_of(const uint4& v, int i) { return (int)((word(v, i >> 2) >> (8 * (i & 3))) & 0xFFu); }

// Q8_0: { f16 d; i8 qs[32] }, x = d·q. Device row: qs[32]·nb | d·nb. Chunk = block.
struct Q8_0 {
    static constexpr int QK = 32, BYTES = 34;
    __device__ static float d_of(const u8* row, int nb, int blk) { return h2f(u16_ld(row + 32 * nb + 2 * blk)); }
    __device__ static void deq8(const u8* row, int nb, int blk, int g, float* v) {
        float d = d_of(row, nb, blk);
        const u8* q = row + 32 * blk + 8 * g;
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = __fmul_rn((float)(signed char)q[i], d);
    }
    static constexpr bool HAS_MIN = false;
    struct Raw {
        uint4 a, b;
        unsigned short d;
    };
    __device__ static void load(const u8* row, int nb, int c, Raw& r) {
        r.a = ld_stream(row + 32 * c);
        r.b = ld_stream(row + 32 * c + 16);
        r.d = u16_ld(row + 32 * nb + 2 * c);
    }
    __device__ static void half(const Raw& r, int c, int h, int (&w)[4], int& e, float& d, float& m) {
        const uint4& v = h ? r.b : r.a;
#pragma unroll
        for (int k = 0; k < 4; k++) w[k] = (int)word(v, k);
        e = 32 * c + 16 * h;
        d = h2f(r.d);
        m = 0.f;
    }
};

// Q4_0: { f16 d; u8 qs[16] }; element j < 16 is the low nibble of qs[j], element j + 16 the high
// nibble; x = d·(q − 8). Groups 0, 1: low nibbles of qs[0..8], qs[8..16]; groups 2, 3: high.
// Device row: qs[16]·nb | d·nb. Chunk = block; half 0 the low nibbles, half 1 the high.
struct Q4_0 {
    static constexpr int QK = 32, BYTES = 18;
    __device__ static float d_of(const u8* row, int nb, int blk) { return h2f(u16_ld(row + 16 * nb + 2 * blk)); }
    __device__ static void deq8(const u8* row, int nb, int blk, int g, float* v) {
        float d = d_of(row, nb, blk);
        const u8* q = row + 16 * blk + 8 * (g & 1);
        int sh = 4 * (g >> 1);
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = __fmul_rn((float)((int)((q[i] >> sh) & 0xF) - 8), d);
    }
    static constexpr bool HAS_MIN = false;
    struct Raw {
        uint4 q;
        unsigned short d;
    };
    __device__ static void load(const u8* row, int nb, int c, Raw& r) {
        r.q = ld_stream(row + 16 * c);
        r.d = u16_ld(row + 16 * nb + 2 * c);
    }
    __device__ static void half(const Raw& r, int c, int h, int (&w)[4], int& e, float& d, float& m) {
#pragma unroll
        for (int k = 0; k < 4; k++) w[k] = (int)__vsub4((word(r.q, k) >> (4 * h)) & 0x0F0F0F0Fu, 0x08080808u);
        e = 32 * c + 16 * h;
        d = h2f(r.d);
        m = 0.f;
    }
};

// Q4_1: { f16 d; f16 m; u8 qs[16] } (nibbles as Q4_0); x = d·q + m. Device row: qs[16]·nb |
// (d, m)·nb.
struct Q4_1 {
    static constexpr int QK = 32, BYTES = 20;
    __device__ static void deq8(const u8* row, int nb, int blk, int g, float* v) {
        unsigned int dm = u32_ld(row + 16 * nb + 4 * blk);
        float d = h2f((unsigned short)(dm & 0xFFFFu)), m = h2f((unsigned short)(dm >> 16));
        const u8* q = row + 16 * blk + 8 * (g & 1);
        int sh = 4 * (g >> 1);
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = __fadd_rn(__fmul_rn((float)((q[i] >> sh) & 0xF), d), m);
    }
    static constexpr bool HAS_MIN = true;
    struct Raw {
        uint4 q;
        unsigned int dm;
    };
    __device__ static void load(const u8* row, int nb, int c, Raw& r) {
        r.q = ld_stream(row + 16 * c);
        r.dm = u32_ld(row + 16 * nb + 4 * c);
    }
    __device__ static void half(const Raw& r, int c, int h, int (&w)[4], int& e, float& d, float& m) {
#pragma unroll
        for (int k = 0; k < 4; k++) w[k] = (int)((word(r.q, k) >> (4 * h)) & 0x0F0F0F0Fu);
        e = 32 * c + 16 * h;
        d = h2f((unsigned short)(r.dm & 0xFFFFu));
        m = h2f((unsigned short)(r.dm >> 16));
    }
};

// Q5_0: { f16 d; u8 qh[4]; u8 qs[16] }: low 4 bits as Q4_0, the fifth bit of element e is bit
// e of the little-endian u32 qh; x = d·(q − 16). Device row: qs[16]·nb | qh[4]·nb | d·nb.
struct Q5_0 {
    static constexpr int QK = 32, BYTES = 22;
    __device__ static void deq8(const u8* row, int nb, int blk, int g, float* v) {
        float d = h2f(u16_ld(row + 20 * nb + 2 * blk));
        unsigned int qh = u32_ld(row + 16 * nb + 4 * blk);
        const u8* q = row + 16 * blk + 8 * (g & 1);
        int sh = 4 * (g >> 1);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int e = 8 * g + i;
            int lo = (q[i] >> sh) & 0xF;
            int hi = (int)((qh >> e) & 1u) << 4;
            v[i] = __fmul_rn((float)((lo | hi) - 16), d);
        }
    }
    static constexpr bool HAS_MIN = false;
    struct Raw {
        uint4 q;
        unsigned int qh;
        unsigned short d;
    };
    __device__ static void load(const u8* row, int nb, int c, Raw& r) {
        r.q = ld_stream(row + 16 * c);
        r.qh = u32_ld(row + 16 * nb + 4 * c);
        r.d = u16_ld(row + 20 * nb + 2 * c);
    }
    __device__ static void half(const Raw& r, int c, int h, int (&w)[4], int& e, float& d, float& m) {
#pragma unroll
        for (int k = 0; k < 4; k++)
            w[k] = (int)__vsub4(((word(r.q, k) >> (4 * h)) & 0x0F0F0F0Fu) | fifth_bits(r.qh >> (16 * h + 4 * k)), 0x10101010u);
        e = 32 * c + 16 * h;
        d = h2f(r.d);
        m = 0.f;
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
// Device row: the blocks as they are (144 = 9 × 16 bytes). Chunk p of a block (8 of them) =
// qs[16p..16p+16]: half 0 = sub-block 2(p/2) elements 16(p mod 2).., half 1 = the next
// sub-block's, same positions; the 16-byte header (d, dmin, scales) loads with it.
struct Q4_K {
    static constexpr int QK = 256, BYTES = 144;
    __device__ static void deq8(const u8* row, int nb, int blk, int g, float* v) {
        const u8* b = row + (long long)blk * BYTES;
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
    static constexpr bool HAS_MIN = true;
    struct Raw {
        uint4 hdr, q;
    };
    __device__ static void load(const u8* row, int nb, int c, Raw& r) {
        const u8* b = row + (long long)(c >> 3) * BYTES;
        r.hdr = ld_stream(b);
        r.q = ld_stream(b + 16 + 16 * (c & 7));
    }
    __device__ static void half(const Raw& r, int c, int h, int (&w)[4], int& e, float& d, float& m) {
        int p = c & 7, j = 2 * (p >> 1) + h, sc, mn;
        // scale_min_k4 on the header's bytes 4..16.
        if (j < 4) {
            sc = byte_of(r.hdr, 4 + j) & 63;
            mn = byte_of(r.hdr, 8 + j) & 63;
        } else {
            sc = (byte_of(r.hdr, 8 + j) & 0xF) | ((byte_of(r.hdr, j) >> 6) << 4);
            mn = (byte_of(r.hdr, 8 + j) >> 4) | ((byte_of(r.hdr, 4 + j) >> 6) << 4);
        }
        d = h2f((unsigned short)(r.hdr.x & 0xFFFFu)) * (float)sc;
        m = -(h2f((unsigned short)(r.hdr.x >> 16)) * (float)mn);
#pragma unroll
        for (int k = 0; k < 4; k++) w[k] = (int)((word(r.q, k) >> (4 * h)) & 0x0F0F0F0Fu);
        e = 256 * (c >> 3) + 32 * j + 16 * (p & 1);
    }
};

// Q6_K: { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }: 6-bit values minus 32, 16 sub-blocks
// of 16 with an 8-bit scale each; x = d·sc·(q − 32). Element e: half n = e/128, quarter
// t = (e mod 128)/32, l = e mod 32; low 4 bits: ql[64n + 32·(t mod 2) + l], low nibble for
// t < 2, high for t ≥ 2; high 2 bits: bits 2t..2t+1 of qh[32n + l]; scale: scales[e/16].
// Device row: (ql, qh, scales: 208 = 13 × 16 bytes)·nb | d·nb. Chunk p of a block (8) =
// ql[16p..16p+16] with n = p/4, t' = (p/2) mod 2, s = p mod 2: half h holds quarter t = t' + 2h,
// l = 16s..16s+16 (low nibbles for h = 0, high for h = 1), their high bits in qh[32n + 16s..].
struct Q6_K {
    static constexpr int QK = 256, BYTES = 210, BODY = 208;
    __device__ static float d_of(const u8* row, int nb, int blk) { return h2f(u16_ld(row + BODY * nb + 2 * blk)); }
    __device__ static void deq8(const u8* row, int nb, int blk, int g, float* v) {
        const u8* b = row + (long long)blk * BODY;
        int n = g >> 4, t = (g >> 2) & 3, l0 = 8 * (g & 3);
        const u8* ql = b + 64 * n + 32 * (t & 1) + l0;
        const u8* qh = b + 128 + 32 * n + l0;
        int qls = 4 * (t >> 1), qhs = 2 * t;
        float ds = __fmul_rn(d_of(row, nb, blk), (float)(signed char)b[192 + (g >> 1)]);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int q = (int)(((ql[i] >> qls) & 0xF) | (((qh[i] >> qhs) & 3) << 4)) - 32;
            v[i] = __fmul_rn(ds, (float)q);
        }
    }
    static constexpr bool HAS_MIN = false;
    struct Raw {
        uint4 ql, qh;
        uint2 sc; // scales[8n..8n+8]: the chunk's two (8n + 2t' + s and 4 later)
        unsigned short d;
    };
    __device__ static void load(const u8* row, int nb, int c, Raw& r) {
        int blk = c >> 3, p = c & 7;
        const u8* b = row + (long long)blk * BODY;
        r.ql = ld_stream(b + 16 * p);
        r.qh = ld_stream(b + 128 + 32 * (p >> 2) + 16 * (p & 1));
        r.sc = __ldg((const uint2*)(b + 192 + 8 * (p >> 2)));
        r.d = u16_ld(row + BODY * nb + 2 * blk);
    }
    __device__ static void half(const Raw& r, int c, int h, int (&w)[4], int& e, float& d, float& m) {
        int p = c & 7, n = p >> 2, t = ((p >> 1) & 1) + 2 * h, s = p & 1;
#pragma unroll
        for (int k = 0; k < 4; k++)
            w[k] = (int)__vsub4(((word(r.ql, k) >> (4 * h)) & 0x0F0F0F0Fu) | (((word(r.qh, k) >> (2 * t)) & 0x03030303u) << 4),
                                0x20202020u);
        int i = 2 * t + s; // scales[8n + i]
        d = h2f(r.d) * (float)(signed char)(((i < 4 ? r.sc.x : r.sc.y) >> (8 * (i & 3))) & 0xFFu);
        m = 0.f;
        e = 256 * (c >> 3) + 128 * n + 32 * t + 16 * s;
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
        F::deq8(wr, cols / F::QK, g / G, g % G, v);
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

// x (n × cols, f32 or bf16) → 8-bit integers in blocks of 32: xq (n × cols bytes), xd (one f32
// scale a block), x ≈ xd·xq, xd = max|x| / 127, xq = round(x / xd) (llama.cpp's quantize_q8_1,
// without the stored sum: the offset terms take Σxq from dp4a). One warp a block, lane = element.
template <typename T>
__device__ __forceinline__ void quantize_q8(const T* x, signed char* xq, float* xd, long long blocks) {
    long long blk = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (blk >= blocks) return; // the whole warp
    float v = to_f(x[blk * 32 + lane]);
    float amax = warp_max(fabsf(v));
    float d = amax / 127.f;
    xq[blk * 32 + lane] = (signed char)(amax == 0.f ? 0 : __float2int_rn(v / d));
    if (lane == 0) xd[blk] = d;
}

// The chunked integer matvec: acc[r·QMV_MAX_N + j] = row wr[r] of W · input row j (xq, xd as
// quantize_q8 wrote them), summed over the row group's G lanes (group_sum). Lane t of the group
// takes the row's 32-element chunks t, t + G, …, MMVQ_LOADS at a time with every load issued
// before the first product, and for each half (16 elements) adds xd_j · (d·Σ q·xq_j + m·Σ xq_j), the Σ
// by four dp4a each. The order of the sums depends on the row's length only, so a row gives the
// same bits alone or beside others, whatever n is.
// Chunks a lane loads before its first product: eight of one row, or four of each of two rows
// (the launcher gives a row about that many chunks a lane). Bytes in flight are what a
// matvec's speed is made of: two chunks a lane read a quarter of the bandwidth.
#define MMVQ_LOADS 8
template <class F, int NM>
__device__ __forceinline__ void chunk_dot(const typename F::Raw& raw, int c, const signed char* xq, const float* xd,
                                          int cols, int n, float* acc) {
#pragma unroll
    for (int h = 0; h < 2; h++) {
        int w[4], e;
        float d, m;
        F::half(raw, c, h, w, e, d, m);
#pragma unroll
        for (int j = 0; j < NM; j++) {
            if (j < n) {
                long long at = (long long)j * cols + e;
                uint4 xv = *(const uint4*)(xq + at);
                float dx = xd[at >> 5];
                int s = __dp4a(w[3], (int)xv.w, __dp4a(w[2], (int)xv.z, __dp4a(w[1], (int)xv.y, __dp4a(w[0], (int)xv.x, 0))));
                // Explicit fmaf: the same rounding in every instantiation (NM = 1 or 8).
                float a = d * (float)s;
                if (F::HAS_MIN) {
                    int sx = __dp4a(0x01010101, (int)xv.w,
                                    __dp4a(0x01010101, (int)xv.z, __dp4a(0x01010101, (int)xv.y, __dp4a(0x01010101, (int)xv.x, 0))));
                    a = fmaf(m, (float)sx, a);
                }
                acc[j] = fmaf(dx, a, acc[j]);
            }
        }
    }
}

// x (one row of `cols` bf16 values) quantised as quantize_q8 does it (the same operations, so
// the same bytes), by this block into shared memory: sq (cols bytes), then sd (cols / 32 scales).
// A thread takes 8 values (one 16-byte load; x is 16-byte aligned, cols a multiple of 32), four
// neighbouring lanes a block of 32; every load of the thread is issued before the first max
// (one round trip, not one per block: a warp a block at a time cost a round trip each).
#define QX_LOADS 4
__device__ __forceinline__ void quantize_q8_shared(const bf16_t* x, int cols, signed char* sq, float* sd) {
    int groups = cols / 8;
    for (int g0 = threadIdx.x; g0 - (int)threadIdx.x < groups; g0 += MV_THREADS * QX_LOADS) {
        uint4 raw[QX_LOADS];
#pragma unroll
        for (int u = 0; u < QX_LOADS; u++) {
            int g = g0 + MV_THREADS * u;
            raw[u] = g < groups ? *(const uint4*)(x + 8 * g) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < QX_LOADS; u++) {
            int g = g0 + MV_THREADS * u;
            // The whole warp takes part in the shuffles (groups is a multiple of 4, so a block's
            // four lanes are in or out together).
            if (g - (int)(threadIdx.x & 31) >= groups) break;
            V16<bf16_t> v;
            v.u = raw[u];
            // amax from the first value (not 0), so that a block of NaNs gives NaN as
            // quantize_q8's warp_max does (fmaxf drops a NaN beside a number).
            float f[8], amax;
#pragma unroll
            for (int e = 0; e < 8; e++) {
                f[e] = bf2f(v.e[e]);
                amax = e == 0 ? fabsf(f[0]) : fmaxf(amax, fabsf(f[e]));
            }
            amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
            amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
            if (g < groups) {
                float d = amax / 127.f;
                unsigned int lo = 0, hi = 0;
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    unsigned int q = (unsigned int)(amax == 0.f ? 0 : __float2int_rn(f[e] / d)) & 0xFFu;
                    if (e < 4) lo |= q << (8 * e);
                    else hi |= q << (8 * (e - 4));
                }
                *(uint2*)(sq + 8 * g) = make_uint2(lo, hi);
                if ((g & 3) == 0) sd[g >> 2] = d;
            }
        }
    }
}

// xf non-null (one input row, NM = 1): x is quantised here, by every block into its shared
// memory while its first weight loads are in flight, instead of by a quantize_q8 launch before
// (dynamic shared memory: cols · 9/8 bytes). Every thread of the block calls this (barriers).
// PDL false: no programmatic-launch instructions (a caller inside a persistent kernel).
template <class F, int R, int NM, bool PDL = true>
__device__ __forceinline__ void mmvq_rows_g(const u8* const (&wr)[R], const bf16_t* xf, const signed char* xq,
                                            const float* xd, int cols, int n, int lane, int G, bool active,
                                            float (&acc)[R * NM], const NormIn& nm = NormIn{},
                                            const Pf& pf = Pf{}) {
#pragma unroll
    for (int i = 0; i < R * NM; i++) acc[i] = 0.f;
    if (PDL) pdl_trigger();
    int nb = cols / F::QK, chunks = cols / 32;
    constexpr int U = MMVQ_LOADS / R;
    typename F::Raw raw[R][U];
    int c0 = lane;
    bool go = active && c0 < chunks;
    if (go) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            int c = c0 + G * u;
            if (c < chunks)
#pragma unroll
                for (int r = 0; r < R; r++) F::load(wr[r], nb, c, raw[r][u]);
        }
    }
    prefetch_l2(pf);  // a later kernel's weights (`cuda::prefetch`), after this one's first loads
    // The weights' first loads are in flight: now the inputs the kernel before made (x, its
    // quantisation, the residual) may be read (a programmatic launch waits here).
    if (PDL) pdl_wait();
    if (nm.x) {
        // nm: x is add_rmsnorm's output, made here first (shared memory: y bf16, then xq, xd).
        extern __shared__ __align__(16) unsigned char mv_shared[];
        bf16_t* sy = (bf16_t*)mv_shared;
        signed char* sq = (signed char*)(mv_shared + 2 * cols);
        float* sd = (float*)(mv_shared + 3 * cols);
        add_rmsnorm_shared(nm, cols, sy);
        __syncthreads();
        quantize_q8_shared(sy, cols, sq, sd);
        __syncthreads();
        xq = sq, xd = sd;
    } else if (xf) {
        extern __shared__ __align__(16) unsigned char mv_shared[];
        signed char* sq = (signed char*)mv_shared;
        float* sd = (float*)(mv_shared + cols);
        quantize_q8_shared(xf, cols, sq, sd);
        __syncthreads();
        xq = sq, xd = sd;
    }
    while (go) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            int c = c0 + G * u;
            if (c < chunks)
#pragma unroll
                for (int r = 0; r < R; r++) chunk_dot<F, NM>(raw[r][u], c, xq, xd, cols, n, acc + r * NM);
        }
        c0 += G * U;
        go = c0 < chunks;
        if (go) {
#pragma unroll
            for (int u = 0; u < U; u++) {
                int c = c0 + G * u;
                if (c < chunks)
#pragma unroll
                    for (int r = 0; r < R; r++) F::load(wr[r], nb, c, raw[r][u]);
            }
        }
    }
    group_sum<R * NM>(acc, G);
}

template <class A, class B> struct same_format { static constexpr bool value = false; };
template <class A> struct same_format<A, A> { static constexpr bool value = true; };

// Block MV_THREADS: up to three products that share the input (q, k, v), one output row a row
// group, for all n ≤ NM input rows, rounded once to T. Slot j (weight w_j, m_j rows, 0 when
// unused) has G_j lanes a row (Gs packs them: G_0 | G_1 << 10 | G_2 << 20, each chosen from its
// own weight's shape, so a weight's rows sum alike alone or in a group) and its rows start on a
// block of their own (ceil(m_j / (MV_THREADS / G_j)) blocks a slot): a block runs one slot's
// code and its barriers are uniform. q and k may be of format FA with v of FB (llama.cpp's
// Q4_K_M mix keeps v at Q6_K on some layers; smelt's q4_k export of 576-wide rows falls back to
// Q5_0 with Q8_0); FA = FB for one format. Grid: the three slots' blocks.
template <class FA, class FB, typename T, int NM>
__device__ __forceinline__ void mmvqg3_mixed(const bf16_t* xf, const signed char* xq, const float* xd, int n, int cols,
                                             const u8* w0, T* y0, int m0, long long rb0, const u8* w1, T* y1, int m1,
                                             long long rb1, const u8* w2, T* y2, int m2, long long rb2, int Gs,
                                             const NormIn& nm = NormIn{}, const Pf& pf = Pf{}) {
    int g0 = Gs & 1023, g1 = (Gs >> 10) & 1023, g2 = (Gs >> 20) & 1023;
    int b0 = (m0 + MV_THREADS / g0 - 1) / (MV_THREADS / g0), b1 = (m1 + MV_THREADS / g1 - 1) / (MV_THREADS / g1);
    int blk = blockIdx.x, slot, G = g0;
    const u8* w = w0;
    T* y = y0;
    int m = m0;
    long long rb = rb0;
    if (blk < b0) {
        slot = 0;
    } else if ((blk -= b0) < b1) {
        slot = 1, w = w1, y = y1, m = m1, rb = rb1, G = g1;
    } else {
        blk -= b1;
        slot = 2, w = w2, y = y2, m = m2, rb = rb2, G = g2;
    }
    int lane = threadIdx.x & (G - 1);
    int r = blk * (MV_THREADS / G) + threadIdx.x / G;
    bool active = r < m;
    if (!active) r = 0; // still sums with its block (the barriers)
    float acc[NM];
    const u8* const rows[1] = {w + (long long)r * rb};
    if (same_format<FA, FB>::value || slot < 2) {
        mmvq_rows_g<FA, 1, NM>(rows, xf, xq, xd, cols, n, lane, G, active, acc, nm, pf);
    } else {
        mmvq_rows_g<FB, 1, NM>(rows, xf, xq, xd, cols, n, lane, G, active, acc, nm, pf);
    }
    if (active && lane == 0) {
#pragma unroll
        for (int i = 0; i < NM; i++)
            if (i < n) y[(long long)i * m + r] = from_f<T>(acc[i]);
    }
}

// y (n × m) = silu(x·W_gᵀ)·(x·W_uᵀ), both of format F, each product rounded to T first.
template <class F, typename T, int NM>
__device__ __forceinline__ void mmvqg_swiglu(const bf16_t* xf, const signed char* xq, const float* xd, int n, int cols,
                                             const u8* wg, const u8* wu, T* y, int m, long long rb, int G,
                                             const NormIn& nm = NormIn{}, const Pf& pf = Pf{}) {
    int lane = threadIdx.x & (G - 1);
    int r = blockIdx.x * (MV_THREADS / G) + threadIdx.x / G;
    bool active = r < m;
    if (!active) r = 0;
    float acc[2 * NM];
    const u8* const rows[2] = {wg + (long long)r * rb, wu + (long long)r * rb};
    mmvq_rows_g<F, 2, NM>(rows, xf, xq, xd, cols, n, lane, G, active, acc, nm, pf);
    if (active && lane == 0) {
#pragma unroll
        for (int i = 0; i < NM; i++) {
            if (i < n) {
                float gi = to_f(from_f<T>(acc[i])), ui = to_f(from_f<T>(acc[NM + i]));
                y[(long long)i * m + r] = from_f<T>(gi * (1.f / (1.f + expf(-gi))) * ui);
            }
        }
    }
}

// QMATMUL_NO_KERNELS: the device functions only, for a module that includes this file for its
// row sums (the persistent decode kernel, decode_layers.cu).
#ifndef QMATMUL_NO_KERNELS
extern "C" __global__ void quantize_q8_f32(const float* x, signed char* xq, float* xd, long long blocks) {
    quantize_q8<float>(x, xq, xd, blocks);
}
extern "C" __global__ void quantize_q8_bf16(const bf16_t* x, signed char* xq, float* xd, long long blocks) {
    quantize_q8<bf16_t>(x, xq, xd, blocks);
}
#endif

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
            F::deq8(w + (long long)src * row_bytes, cols / F::QK, g / G, g % G, v);
        } else {
#pragma unroll
            for (int k = 0; k < 8; k++) v[k] = __int_as_float(0x7fc00000);
        }
        T* o = out + r * cols + 8LL * g;
#pragma unroll
        for (int k = 0; k < 8; k++) store(o + k, v[k]);
    }
}

// The chunked integer matvecs of format F for up to NM input rows (8, and 1: batch-1 decode,
// which then holds one row's sums in registers instead of eight).
#define MMVQG_KERNELS(F, P, NM)                                                                                  \
    extern "C" __global__ void __launch_bounds__(MV_THREADS, 2)                                                  \
        mmvqg3_##P##bf16_##F(const bf16_t* xf, const signed char* xq, const float* xd, int n, int cols,           \
                             const u8* w0, bf16_t* y0,                                                              \
                             int m0, long long rb0, const u8* w1, bf16_t* y1, int m1, long long rb1, const u8* w2,  \
                             bf16_t* y2, int m2, long long rb2, int G, PF_ARGS) {                                   \
        mmvqg3_mixed<F, F, bf16_t, NM>(xf, xq, xd, n, cols, w0, y0, m0, rb0, w1, y1, m1, rb1, w2, y2, m2, rb2, G,  \
                                       NormIn{}, PF_IN);                                                            \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(MV_THREADS, 2)                                                  \
        mmvqg_swiglu_##P##bf16_##F(const bf16_t* xf, const signed char* xq, const float* xd, int n, int cols,     \
                                   const u8* wg,                                                                   \
                                   const u8* wu, bf16_t* y, int m, long long rb, int G, PF_ARGS) {                 \
        mmvqg_swiglu<F, bf16_t, NM>(xf, xq, xd, n, cols, wg, wu, y, m, rb, G, NormIn{}, PF_IN);                   \
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
    MMVQG_KERNELS(F, , QMV_MAX_N)                                                                                \
    MMVQG_KERNELS(F, n1_, 1)                                                                                     \
    /* One row's add + RMSNorm, then up to three products (q, k, v): h = x + r (stored), y_j = n·W_jᵀ. */    \
    extern "C" __global__ void __launch_bounds__(MV_THREADS, 2)                                                  \
        mmvqg3_norm_n1_bf16_##F(const float* nx, const bf16_t* nr, const float* nw, float* nh, float eps, int wpr, \
                                int cols, const u8* w0, bf16_t* y0, int m0, long long rb0, const u8* w1,          \
                                bf16_t* y1, int m1, long long rb1, const u8* w2, bf16_t* y2, int m2,              \
                                long long rb2, int G, PF_ARGS) {                                                  \
        NormIn nm{nx, nr, nw, nh, eps, wpr};                                                                     \
        mmvqg3_mixed<F, F, bf16_t, 1>(nullptr, nullptr, nullptr, 1, cols, w0, y0, m0, rb0, w1, y1, m1, rb1, w2,  \
                                      y2, m2, rb2, G, nm, PF_IN);                                                \
    }                                                                                                            \
    /* One row's add + RMSNorm, then gate/up + SwiGLU: h = x + r (stored), y = silu(n·W_gᵀ)·(n·W_uᵀ),   */    \
    /* n = rmsnorm(h)·w. */                                                                                      \
    extern "C" __global__ void __launch_bounds__(MV_THREADS, 2)                                                  \
        mmvqg_swiglu_norm_n1_bf16_##F(const float* nx, const bf16_t* nr, const float* nw, float* nh, float eps,     \
                                      int wpr, int cols, const u8* wg, const u8* wu, bf16_t* y, int m,            \
                                      long long rb, int G, PF_ARGS) {                                             \
        NormIn nm{nx, nr, nw, nh, eps, wpr};                                                                     \
        mmvqg_swiglu<F, bf16_t, 1>(nullptr, nullptr, nullptr, 1, cols, wg, wu, y, m, rb, G, nm, PF_IN);          \
    }                                                                                                            \
    extern "C" __global__ void qgather_f32_##F(const u8* w, const unsigned int* ids, float* out, long long n,    \
                                               int cols, long long row_bytes, unsigned int vocab) {              \
        qdequant<F, float>(w, ids, out, n, cols, row_bytes, vocab);                                              \
    }

#ifndef QMATMUL_NO_KERNELS
QKERNELS(Q4_0)
QKERNELS(Q4_1)
QKERNELS(Q5_0)
QKERNELS(Q8_0)
QKERNELS(Q4_K)
QKERNELS(Q6_K)
#endif

#define MMVQG_MIXED(FA, FB, P, NM)                                                                                \
    extern "C" __global__ void __launch_bounds__(MV_THREADS, 2)                                                  \
        mmvqg3_##P##bf16_##FA##_##FB(const bf16_t* xf, const signed char* xq, const float* xd, int n, int cols,    \
                                     const u8* w0, bf16_t* y0, int m0, long long rb0, const u8* w1, bf16_t* y1,   \
                                     int m1, long long rb1, const u8* w2, bf16_t* y2, int m2, long long rb2,      \
                                     int G, PF_ARGS) {                                                            \
        mmvqg3_mixed<FA, FB, bf16_t, NM>(xf, xq, xd, n, cols, w0, y0, m0, rb0, w1, y1, m1, rb1, w2, y2, m2, rb2, G, \
                                         NormIn{}, PF_IN);                                                        \
    }
#define MMVQG_MIXED_NORM(FA, FB)                                                                                  \
    extern "C" __global__ void __launch_bounds__(MV_THREADS, 2)                                                  \
        mmvqg3_norm_n1_bf16_##FA##_##FB(const float* nx, const bf16_t* nr, const float* nw, float* nh, float eps,  \
                                        int wpr, int cols, const u8* w0, bf16_t* y0, int m0, long long rb0,       \
                                        const u8* w1, bf16_t* y1, int m1, long long rb1, const u8* w2,            \
                                        bf16_t* y2, int m2, long long rb2, int G, PF_ARGS) {                      \
        NormIn nm{nx, nr, nw, nh, eps, wpr};                                                                     \
        mmvqg3_mixed<FA, FB, bf16_t, 1>(nullptr, nullptr, nullptr, 1, cols, w0, y0, m0, rb0, w1, y1, m1, rb1, w2,  \
                                        y2, m2, rb2, G, nm, PF_IN);                                              \
    }
#ifndef QMATMUL_NO_KERNELS
MMVQG_MIXED_NORM(Q4_K, Q6_K)
MMVQG_MIXED_NORM(Q5_0, Q8_0)
MMVQG_MIXED(Q4_K, Q6_K, , QMV_MAX_N)
MMVQG_MIXED(Q4_K, Q6_K, n1_, 1)
MMVQG_MIXED(Q5_0, Q8_0, , QMV_MAX_N)
MMVQG_MIXED(Q5_0, Q8_0, n1_, 1)
#endif
