// Shared by every smelt kernel file (prepended before NVRTC compiles it). No #include: NVRTC
// then needs no include path, so the kernels build wherever libnvrtc loads.

typedef unsigned short bf16_t;
#define SM_INF __int_as_float(0x7f800000)

__device__ __forceinline__ float bf2f(bf16_t h) { return __uint_as_float(((unsigned int)h) << 16); }

// Round to nearest even; NaN stays NaN.
__device__ __forceinline__ bf16_t f2bf(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

// Storage types. Kernels are templates over the element type they read and write (float or
// bf16_t), instantiated under names ending in the dtype(s), e.g. `swiglu_fwd_bf16`; every kernel
// loads into f32 (`to_f`), computes and accumulates in f32 and rounds once when it stores
// (`from_f<T>`).
__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(bf16_t v) { return bf2f(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16_t from_f<bf16_t>(float v) { return f2bf(v); }

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

// Programmatic dependent launch (Hopper; `cuda::launch::Launch`, `SMELT_CUDA_PDL`): a kernel of
// a chain lets its successor start early (pdl_trigger, first thing), and a kernel launched that
// way issues what does not depend on its predecessor (its weight loads) and then waits for the
// predecessor's completion and writes (pdl_wait) before it reads or writes anything else. Both
// are no-ops for a plain launch and below sm_90.
__device__ __forceinline__ void pdl_trigger() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// RoPE's pair rotation, rounded to T as it is stored: rope.cu's kernels and the decode attention
// that rotates its own q and new key (decode.cu) use this one function, so the same bits.
template <typename T>
__device__ __forceinline__ void rot(float a, float b, float c, float s, T* ya, T* yb) {
    *ya = from_f<T>(a * c - b * s);
    *yb = from_f<T>(a * s + b * c);
}

// 16 bytes of storage elements (8 bf16 or 4 f32) moved by one access: memory-bound kernels
// need that many bytes in flight per thread to approach the bandwidth (2-byte accesses reach
// about a quarter of it). Device allocations are 256-byte aligned; kernels still check.
template <typename T> union V16 {
    uint4 u;
    T e[16 / sizeof(T)];
};
__device__ __forceinline__ bool aligned16(const void* p) { return (((unsigned long long)p) & 15ull) == 0; }

// 8 consecutive elements as f32, and back (rounded once): one 16-byte access for bf16, two for
// f32. p must be 16-byte aligned.
__device__ __forceinline__ void load8(const float* p, float* o) {
    float4 a = ((const float4*)p)[0], b = ((const float4*)p)[1];
    o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w; o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
}
__device__ __forceinline__ void load8(const bf16_t* p, float* o) {
    V16<bf16_t> v;
    v.u = *(const uint4*)p;
#pragma unroll
    for (int k = 0; k < 8; k++) o[k] = bf2f(v.e[k]);
}
__device__ __forceinline__ void store8(float* p, const float* v) {
    ((float4*)p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    ((float4*)p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void store8(bf16_t* p, const float* v) {
    V16<bf16_t> o;
#pragma unroll
    for (int k = 0; k < 8; k++) o.e[k] = f2bf(v[k]);
    *(uint4*)p = o.u;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32), returned to every thread. Safe to call
// repeatedly: the first barrier keeps a previous call's readers ahead of this call's writers.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float red[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v) {
    __shared__ float redm[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) redm[w] = v;
    __syncthreads();
    v = lane < nw ? redm[lane] : -SM_INF;
    return warp_max(v);
}

// A 16-byte weight vector that is read once per token: not kept in L1 (the activations are,
// for every row).
__device__ __forceinline__ uint4 ld_stream(const void* p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
}

// Weights to prefetch into L2 (`cuda::prefetch`): up to three ranges of bytes, each spread over
// the grid in 128-byte lines, this block's share issued by its threads. A prefetch returns no
// value, so the thread does not wait for it.
struct Pf {
    const char* p[3];
    long long n[3];
};
__device__ __forceinline__ void prefetch_l2(const Pf& pf) {
#pragma unroll
    for (int j = 0; j < 3; j++) {
        if (!pf.p[j] || pf.n[j] <= 0) continue;
        long long lines = (pf.n[j] + 127) >> 7, per = (lines + gridDim.x - 1) / gridDim.x;
        long long lo = per * blockIdx.x, hi = lo + per < lines ? lo + per : lines;
        for (long long l = lo + threadIdx.x; l < hi; l += blockDim.x)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(pf.p[j] + (l << 7)));
    }
}
// The kernel arguments that carry a Pf (last in a matvec's list), and the Pf they make.
#define PF_ARGS const char *pf0, long long pn0, const char *pf1, long long pn1, const char *pf2, long long pn2
#define PF_IN (Pf{{pf0, pf1, pf2}, {pn0, pn1, pn2}})

// Matrix–vector row groups (gemv.cu, qmatmul.cu): G lanes (a power of two, 4 to 256) share one
// output row; a block of MV_THREADS threads holds MV_THREADS / G rows. G is picked per shape
// by the launcher (enough lanes that each issues a few 16-byte loads, so the whole row is in
// flight at once; fewer lanes would wait on one load after another).
#define MV_THREADS 256

// v[i] summed over the G lanes of this thread's row group, in a fixed order (shuffles, then
// the warps' partial sums in warp order); the group's first lane holds the sums. Every thread
// of the block calls it (a barrier when G > 32).
template <int N>
__device__ __forceinline__ void group_sum(float (&v)[N], int G) {
    int width = G < 32 ? G : 32;
    for (int o = width >> 1; o > 0; o >>= 1)
#pragma unroll
        for (int i = 0; i < N; i++) v[i] += __shfl_xor_sync(0xffffffffu, v[i], o);
    if (G > 32) {
        __shared__ float red[MV_THREADS / 32][N];
        int w = threadIdx.x >> 5;
        if ((threadIdx.x & 31) == 0)
#pragma unroll
            for (int i = 0; i < N; i++) red[w][i] = v[i];
        __syncthreads();
        if ((threadIdx.x & (G - 1)) == 0) {
#pragma unroll
            for (int i = 0; i < N; i++) {
                float s = 0.f;
                for (int k = 0; k < G / 32; k++) s += red[w + k][i];
                v[i] = s;
            }
        }
    }
}

// The residual add and RMSNorm before a matvec, for one row, done by the matvec's block (the
// decode step's add_rmsnorm without its launch): h = x + r, y = h·rstd·w rounded to bf16, with
// rmsnorm.cu's arithmetic for x f32, r bf16, y bf16 and 16-byte accesses (cols a multiple of 8,
// aligned pointers: the launcher checks): the block's first 32·wpr threads take its elements in
// its thread→element map and sum the squares in its order (each thread's in element order,
// warp sums, then the row's warps in turn), so y has the bits add_rmsnorm gives. y goes to
// shared memory; block 0 also stores h, the new residual stream. Every thread calls it.
struct NormIn {
    const float* x;
    const bf16_t* r;
    const float* w;
    float* h;
    float eps;
    int wpr;
};
__device__ __forceinline__ void add_rmsnorm_shared(const NormIn& nm, int c, bf16_t* sy) {
    __shared__ float red[MV_THREADS / 32];
    int nt = 32 * nm.wpr, t = threadIdx.x;
    float ss = 0.f;
    if (t < nt) {
        for (int i = t * 8; i < c; i += nt * 8) {
            float v[8], rv[8];
            load8(nm.x + i, v);
            load8(nm.r + i, rv);
#pragma unroll
            for (int k = 0; k < 8; k++) v[k] = v[k] + rv[k];
            if (blockIdx.x == 0) store8(nm.h + i, v);
#pragma unroll
            for (int k = 0; k < 8; k++) ss += v[k] * v[k];
        }
    }
    ss = warp_sum(ss);
    if ((t & 31) == 0) red[t >> 5] = ss;
    __syncthreads();
    if (t < nt) {
        float tot = 0.f;
        for (int k = 0; k < nm.wpr; k++) tot += red[k];
        float s = 1.f / sqrtf(tot / (float)c + nm.eps);
        for (int i = t * 8; i < c; i += nt * 8) {
            float v[8], rv[8], wv[8];
            load8(nm.x + i, v);
            load8(nm.r + i, rv);
            load8(nm.w + i, wv);
#pragma unroll
            for (int k = 0; k < 8; k++) v[k] = (v[k] + rv[k]) * s * wv[k];
            store8(sy + i, v);
        }
    }
}
