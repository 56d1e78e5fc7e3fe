// Inverted dropout: y[i] = x[i]·keep where the draw of (seed, i) clears p, else 0, x and y of
// one storage dtype (f32 or bf16), the product in f32. The draw is mod.rs's `draw` bit for bit
// (a splitmix64 finaliser of seed ^ i·golden, its top 24 bits over 2^24), so the mask equals
// the CPU's. The backward is the same kernel on dy with the same seed (dx = dy·mask): no mask
// is stored.

__device__ __forceinline__ float dropout_draw(unsigned long long seed, unsigned long long i) {
    unsigned long long z = seed ^ (i * 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

template <typename T>
__device__ void dropout(const T* x, T* y, long long n, float p, float keep, unsigned long long seed) {
    long long tid = blockIdx.x * (long long)blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
    for (long long i = tid; i < n; i += stride) {
        float m = dropout_draw(seed, (unsigned long long)i) >= p ? keep : 0.0f;
        y[i] = from_f<T>(to_f(x[i]) * m);
    }
}

#define DROPOUT(T, N) \
    extern "C" __global__ void dropout_##N(const T* x, T* y, long long n, float p, float keep, unsigned long long seed) { \
        dropout<T>(x, y, n, p, keep, seed); \
    }
DROPOUT(float, f32)
DROPOUT(bf16_t, bf16)
