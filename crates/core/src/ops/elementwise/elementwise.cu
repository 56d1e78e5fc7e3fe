// Elementwise basics on f32 (and the f32 ↔ bf16 casts the mixed-precision matmuls use).

#define GRID_LOOP(i, n) for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

extern "C" __global__ void add_f32(const float* a, const float* b, float* y, long long n) { GRID_LOOP(i, n) y[i] = a[i] + b[i]; }
extern "C" __global__ void add_assign_f32(float* a, const float* b, long long n) { GRID_LOOP(i, n) a[i] += b[i]; }
extern "C" __global__ void mul_f32(const float* a, const float* b, float* y, long long n) { GRID_LOOP(i, n) y[i] = a[i] * b[i]; }
extern "C" __global__ void scale_f32(const float* a, float* y, float s, long long n) { GRID_LOOP(i, n) y[i] = a[i] * s; }
extern "C" __global__ void f32_to_bf16(const float* a, bf16_t* y, long long n) { GRID_LOOP(i, n) y[i] = f2bf(a[i]); }
extern "C" __global__ void bf16_to_f32(const bf16_t* a, float* y, long long n) { GRID_LOOP(i, n) y[i] = bf2f(a[i]); }
