// Embedding gather (forward) and scatter-add (backward).
//
// Storage: the gather copies rows of an f32 or bf16 table into an output of the table's dtype
// (the model's f32 table starts the f32 residual stream; a bf16 "table" is a gather of rows of
// bf16 activations). The backward reads dout (f32 or bf16) and writes an f32 table gradient.
//
// The backward has two forms. With the ids on the host (training), the launcher sorts the rows
// by id and the segmented kernel sums each id's rows in row order: deterministic, and the same
// additions in the same order as the CPU reference. With device ids, atomics.

// out[r, c] = table[ids[r], c]; an out-of-range id writes NaN so the bug shows.
template <typename T>
__device__ void embedding_fwd(const T* table, const unsigned int* ids, T* out, long long n, int dim, unsigned int vocab) {
    long long total = n * dim;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        long long r = i / dim;
        int c = (int)(i - r * dim);
        unsigned int id = ids[r];
        out[i] = id < vocab ? table[(long long)id * dim + c] : from_f<T>(__int_as_float(0x7fc00000));
    }
}

// dtable[ids[r], c] += dout[r, c]; dtable zeroed first. Atomics: the summation order of rows
// sharing an id varies between runs (rounding-level differences from the CPU's id order).
template <typename T>
__device__ void embedding_bwd(const T* dout, const unsigned int* ids, float* dtable, long long n, int dim, unsigned int vocab) {
    long long total = n * dim;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        long long r = i / dim;
        int c = (int)(i - r * dim);
        unsigned int id = ids[r];
        if (id < vocab) atomicAdd(&dtable[(long long)id * dim + c], to_f(dout[i]));
    }
}

// One block column per distinct id u: dtable[uid[u], c] = Σ_{k in seg[u]..seg[u+1]} dout[order[k], c],
// rows in ascending order. grid (U, ceil(dim/256)); rows of dtable no id touches are zeroed
// beforehand.
template <typename T>
__device__ void embedding_bwd_sorted(const T* dout, const unsigned int* order, const unsigned int* uid,
                                     const unsigned int* seg, float* dtable, int dim) {
    int u = blockIdx.x;
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= dim) return;
    float acc = 0.f;
    for (unsigned int k = seg[u]; k < seg[u + 1]; k++) acc += to_f(dout[(long long)order[k] * dim + c]);
    dtable[(long long)uid[u] * dim + c] = acc;
}

#define EMBEDDING_KERNELS(T, N) \
    extern "C" __global__ void embedding_fwd_##N(const T* table, const unsigned int* ids, T* out, long long n, int dim, \
                                                 unsigned int vocab) { \
        embedding_fwd<T>(table, ids, out, n, dim, vocab); \
    } \
    extern "C" __global__ void embedding_bwd_##N(const T* dout, const unsigned int* ids, float* dtable, long long n, \
                                                 int dim, unsigned int vocab) { \
        embedding_bwd<T>(dout, ids, dtable, n, dim, vocab); \
    } \
    extern "C" __global__ void embedding_bwd_sorted_##N(const T* dout, const unsigned int* order, const unsigned int* uid, \
                                                        const unsigned int* seg, float* dtable, int dim) { \
        embedding_bwd_sorted<T>(dout, order, uid, seg, dtable, dim); \
    }
EMBEDDING_KERNELS(float, f32)
EMBEDDING_KERNELS(bf16_t, bf16)
