// Elementwise basics over f32 or bf16 storage (computed in f32), and the f32 ↔ bf16 casts.

#define GRID_LOOP(i, n) for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

// A grid-stride loop over 8 elements at a time (`f8(i)`: elements i..i+7, 16-byte accesses) when
// `vec` (every pointer 16-byte aligned), and element by element (`f1`) over the rest. The
// launcher sizes the grid for n/8 threads: memory-bound passes need 16 bytes a thread in flight.
template <typename F8, typename F1>
__device__ __forceinline__ void grid_each(long long n, bool vec, F8 f8, F1 f1) {
    long long tid = blockIdx.x * (long long)blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
    long long nv = vec ? n / 8 : 0;
    for (long long v = tid; v < nv; v += stride) f8(v * 8);
    for (long long i = nv * 8 + tid; i < n; i += stride) f1(i);
}

#define BINARY(NAME, OP, T, N) \
    extern "C" __global__ void NAME##_##N(const T* a, const T* b, T* y, long long n) { \
        GRID_LOOP(i, n) y[i] = from_f<T>(to_f(a[i]) OP to_f(b[i])); \
    }
#define SAME_TYPE(T, N) \
    BINARY(add, +, T, N) \
    BINARY(mul, *, T, N) \
    extern "C" __global__ void scale_##N(const T* a, T* y, float s, long long n) { GRID_LOOP(i, n) y[i] = from_f<T>(to_f(a[i]) * s); }
SAME_TYPE(float, f32)
SAME_TYPE(bf16_t, bf16)

// a += b; the accumulator and the addend may differ in storage (an f32 sum of bf16 terms).
template <typename TA, typename TB> __device__ __forceinline__ void add_assign(TA* a, const TB* b, long long n) {
    grid_each(
        n, aligned16(a) && aligned16(b),
        [&](long long i) {
            float x[8], y[8];
            load8(a + i, x);
            load8(b + i, y);
#pragma unroll
            for (int k = 0; k < 8; k++) x[k] += y[k];
            store8(a + i, x);
        },
        [&](long long i) { a[i] = from_f<TA>(to_f(a[i]) + to_f(b[i])); });
}
#define ADD_ASSIGN(TA, NA, TB, NB) \
    extern "C" __global__ void add_assign_##NA##_##NB(TA* a, const TB* b, long long n) { add_assign<TA, TB>(a, b, n); }
ADD_ASSIGN(float, f32, float, f32)
ADD_ASSIGN(float, f32, bf16_t, bf16)
ADD_ASSIGN(bf16_t, bf16, float, f32)
ADD_ASSIGN(bf16_t, bf16, bf16_t, bf16)

template <typename TA, typename TY> __device__ __forceinline__ void convert(const TA* a, TY* y, long long n) {
    grid_each(
        n, aligned16(a) && aligned16(y),
        [&](long long i) {
            float x[8];
            load8(a + i, x);
            store8(y + i, x);
        },
        [&](long long i) { y[i] = from_f<TY>(to_f(a[i])); });
}
extern "C" __global__ void f32_to_bf16(const float* a, bf16_t* y, long long n) { convert(a, y, n); }
extern "C" __global__ void bf16_to_f32(const bf16_t* a, float* y, long long n) { convert(a, y, n); }

// dst[r, c] = src[r, c] for r < rows, c < cols, row strides sld and dld (elements; the pointers
// already at the first column): a column block copied into or out of a wider matrix
// (`concat_cols`, `narrow_cols`). 16-byte vectors where cols, both strides and both pointers
// allow, element by element otherwise.
template <typename T>
__device__ __forceinline__ void copy_cols(const T* src, long long sld, T* dst, long long dld, long long rows, int cols) {
    const int W = 16 / sizeof(T);
    bool vec = cols % W == 0 && sld % W == 0 && dld % W == 0 && aligned16(src) && aligned16(dst);
    long long tid = blockIdx.x * (long long)blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
    if (vec) {
        int vpr = cols / W;
        for (long long i = tid; i < rows * vpr; i += stride) {
            long long r = i / vpr;
            int v = (int)(i - r * vpr);
            ((uint4*)(dst + r * dld))[v] = ((const uint4*)(src + r * sld))[v];
        }
        return;
    }
    for (long long i = tid; i < rows * cols; i += stride) {
        long long r = i / cols;
        int c = (int)(i - r * cols);
        dst[r * dld + c] = src[r * sld + c];
    }
}
extern "C" __global__ void copy_cols_f32(const float* src, long long sld, float* dst, long long dld, long long rows, int cols) {
    copy_cols(src, sld, dst, dld, rows, cols);
}
extern "C" __global__ void copy_cols_bf16(const bf16_t* src, long long sld, bf16_t* dst, long long dld, long long rows,
                                          int cols) {
    copy_cols(src, sld, dst, dld, rows, cols);
}

// y = [w | 0 … b … 0], rows × (k + width): row r is w's row (k values), then `width` values that
// hold b's row (nb values) from column k + off and zeros elsewhere, in w's dtype (`extend_cols`:
// a frozen projection's weight beside its LoRA adapter's B, one pass). One block a row,
// grid-strided; w's part in 16-byte chunks when k, k + width and both pointers allow.
template <typename TW, typename TB>
__device__ __forceinline__ void extend_cols(const TW* w, const TB* b, TW* y, int rows, int k, int nb, int off, int width) {
    const int W = 16 / sizeof(TW), cols = k + width;
    bool vec = k % W == 0 && cols % W == 0 && aligned16(w) && aligned16(y);
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const TW* wr = w + (long long)r * k;
        TW* yr = y + (long long)r * cols;
        int c0 = 0;
        if (vec) {
            for (int v = threadIdx.x; v < k / W; v += blockDim.x) ((uint4*)yr)[v] = ((const uint4*)wr)[v];
            c0 = k;
        }
        for (int c = c0 + threadIdx.x; c < cols; c += blockDim.x) {
            int j = c - k - off;
            float v = c < k ? to_f(wr[c]) : (j >= 0 && j < nb ? to_f(b[(long long)r * nb + j]) : 0.f);
            yr[c] = from_f<TW>(v);
        }
    }
}
#define EXTEND_COLS(NW, TW, NB, TB)                                                                                  \
    extern "C" __global__ void extend_cols_##NW##_##NB(const TW* w, const TB* b, TW* y, int rows, int k, int nb, int off, \
                                                       int width) {                                                  \
        extend_cols(w, b, y, rows, k, nb, off, width);                                                               \
    }
EXTEND_COLS(f32, float, f32, float)
EXTEND_COLS(f32, float, bf16, bf16_t)
EXTEND_COLS(bf16, bf16_t, f32, float)
EXTEND_COLS(bf16, bf16_t, bf16, bf16_t)
