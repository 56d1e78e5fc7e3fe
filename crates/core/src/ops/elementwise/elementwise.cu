// Elementwise basics over f32 or bf16 storage (computed in f32), and the f32 ↔ bf16 casts.

#define GRID_LOOP(i, n) for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

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
#define ADD_ASSIGN(TA, NA, TB, NB) \
    extern "C" __global__ void add_assign_##NA##_##NB(TA* a, const TB* b, long long n) { \
        GRID_LOOP(i, n) a[i] = from_f<TA>(to_f(a[i]) + to_f(b[i])); \
    }
ADD_ASSIGN(float, f32, float, f32)
ADD_ASSIGN(float, f32, bf16_t, bf16)
ADD_ASSIGN(bf16_t, bf16, float, f32)
ADD_ASSIGN(bf16_t, bf16, bf16_t, bf16)

extern "C" __global__ void f32_to_bf16(const float* a, bf16_t* y, long long n) { GRID_LOOP(i, n) y[i] = f2bf(a[i]); }
extern "C" __global__ void bf16_to_f32(const bf16_t* a, float* y, long long n) { GRID_LOOP(i, n) y[i] = bf2f(a[i]); }
