// SwiGLU gate: y = silu(g)·u, and its backward. Elementwise; g, u, y (and dy, dg, du) share
// one storage dtype, f32 or bf16; the arithmetic is f32.

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + expf(-x)); }

// Each thread takes 16-byte vectors (8 bf16 or 4 f32) while whole ones remain, then the tail
// element by element; the arithmetic per element is the scalar form's, so are the results.
template <typename T> __device__ __forceinline__ T swiglu1(T g, T u) {
    float gi = to_f(g);
    return from_f<T>(gi * sigmoidf_(gi) * to_f(u));
}

template <typename T> __device__ __forceinline__ void swiglu1_bwd(T g, T u, T dy, T* dg, T* du) {
    float gi = to_f(g), s = sigmoidf_(gi), d = to_f(dy);
    *du = from_f<T>(d * gi * s);
    *dg = from_f<T>(d * to_f(u) * s * (1.f + gi * (1.f - s)));
}

template <typename T> __device__ void swiglu_fwd(const T* g, const T* u, T* y, long long n) {
    const int W = 16 / sizeof(T);
    long long tid = blockIdx.x * (long long)blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
    long long nv = (aligned16(g) && aligned16(u) && aligned16(y)) ? n / W : 0;
    for (long long v = tid; v < nv; v += stride) {
        V16<T> a, b, o;
        a.u = ((const uint4*)g)[v];
        b.u = ((const uint4*)u)[v];
#pragma unroll
        for (int j = 0; j < W; j++) o.e[j] = swiglu1<T>(a.e[j], b.e[j]);
        ((uint4*)y)[v] = o.u;
    }
    for (long long i = nv * W + tid; i < n; i += stride) y[i] = swiglu1<T>(g[i], u[i]);
}

template <typename T> __device__ void swiglu_bwd(const T* g, const T* u, const T* dy, T* dg, T* du, long long n) {
    const int W = 16 / sizeof(T);
    long long tid = blockIdx.x * (long long)blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
    bool al = aligned16(g) && aligned16(u) && aligned16(dy) && aligned16(dg) && aligned16(du);
    long long nv = al ? n / W : 0;
    for (long long v = tid; v < nv; v += stride) {
        V16<T> a, b, d, og, ou;
        a.u = ((const uint4*)g)[v];
        b.u = ((const uint4*)u)[v];
        d.u = ((const uint4*)dy)[v];
#pragma unroll
        for (int j = 0; j < W; j++) swiglu1_bwd<T>(a.e[j], b.e[j], d.e[j], &og.e[j], &ou.e[j]);
        ((uint4*)dg)[v] = og.u;
        ((uint4*)du)[v] = ou.u;
    }
    for (long long i = nv * W + tid; i < n; i += stride) swiglu1_bwd<T>(g[i], u[i], dy[i], &dg[i], &du[i]);
}

// swiglu_bwd adding into the gradient sums where ag / au say so: each gradient rounded to T,
// then added to the sum read at its place and rounded again (add_assign's arithmetic on
// swiglu_bwd's output: the same bits as the two launches); elsewhere written as swiglu_bwd
// writes it. dg and du may be the sums themselves (each element read, then written, by one
// thread). The add is __fadd_rn: in f32, where nothing rounds the gradient between its last
// multiply and this add, a plain `+` lets the compiler fuse the two into an FMA, which skips
// the gradient's own rounding (281 of 2,310 sums differed from the two launches' on an H200).
template <typename T> __device__ __forceinline__ T acc1(T old, T d, int acc) {
    return acc ? from_f<T>(__fadd_rn(to_f(old), to_f(d))) : d;
}
template <typename T>
__device__ void swiglu_bwd_acc(const T* g, const T* u, const T* dy, T* dg, T* du, int ag, int au, long long n) {
    const int W = 16 / sizeof(T);
    long long tid = blockIdx.x * (long long)blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
    bool al = aligned16(g) && aligned16(u) && aligned16(dy) && aligned16(dg) && aligned16(du);
    long long nv = al ? n / W : 0;
    for (long long v = tid; v < nv; v += stride) {
        V16<T> a, b, d, og, ou, sg, su;
        a.u = ((const uint4*)g)[v];
        b.u = ((const uint4*)u)[v];
        d.u = ((const uint4*)dy)[v];
        if (ag) sg.u = ((const uint4*)dg)[v];
        if (au) su.u = ((const uint4*)du)[v];
#pragma unroll
        for (int j = 0; j < W; j++) {
            swiglu1_bwd<T>(a.e[j], b.e[j], d.e[j], &og.e[j], &ou.e[j]);
            og.e[j] = acc1<T>(sg.e[j], og.e[j], ag);
            ou.e[j] = acc1<T>(su.e[j], ou.e[j], au);
        }
        ((uint4*)dg)[v] = og.u;
        ((uint4*)du)[v] = ou.u;
    }
    for (long long i = nv * W + tid; i < n; i += stride) {
        T og, ou;
        swiglu1_bwd<T>(g[i], u[i], dy[i], &og, &ou);
        T sg = ag ? dg[i] : og, su = au ? du[i] : ou;
        dg[i] = acc1<T>(sg, og, ag);
        du[i] = acc1<T>(su, ou, au);
    }
}

#define SWIGLU(T, N) \
    extern "C" __global__ void swiglu_fwd_##N(const T* g, const T* u, T* y, long long n) { swiglu_fwd<T>(g, u, y, n); } \
    extern "C" __global__ void swiglu_bwd_##N(const T* g, const T* u, const T* dy, T* dg, T* du, long long n) { \
        swiglu_bwd<T>(g, u, dy, dg, du, n); \
    } \
    extern "C" __global__ void swiglu_bwd_acc_##N(const T* g, const T* u, const T* dy, T* dg, T* du, int ag, int au, \
                                                 long long n) { \
        swiglu_bwd_acc<T>(g, u, dy, dg, du, ag, au, n); \
    }
SWIGLU(float, f32)
SWIGLU(bf16_t, bf16)
