// Embedding gather (forward) and scatter-add (backward).
//
// Storage: the gather copies rows of an f32 or bf16 table into an output of the table's dtype
// (the model's f32 table starts the f32 residual stream; a bf16 "table" is a gather of rows of
// bf16 activations). The backward reads dout (f32 or bf16) and writes an f32 table gradient.
//
// The backward has two forms, both deterministic and both the CPU reference's additions in its
// order (each id's rows summed in ascending row order, from zero). With the ids on the host
// (a plain training step), the launcher groups the rows by id (a stable sort) and
// `embedding_bwd_sorted` sums each group. With the ids on the device (a captured step, whose
// batch lives in a device buffer), `embedding_sort_pos` finds each row's place in that same
// stable order on the device and `embedding_bwd_grouped` sums each group from its first place.

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

// Row r's place in the rows stably sorted by id: the rows of smaller id, plus the earlier rows
// of its own id. order[place] = r. A block takes 32 rows (one per lane) and its 8 warps split
// all n rows, read through shared memory in tiles: n² comparisons (16k rows: 0.27 G, on the
// order of 0.1 ms; 128k rows would take ~17 G, where a radix sort is the better tool), no
// atomics, the same answer every time. grid ceil(n / 32), block 256.
#define SORT_ROWS 32
#define SORT_WARPS 8
#define SORT_TILE 1024
extern "C" __global__ void embedding_sort_pos(const unsigned int* ids, unsigned int* order, int n) {
    __shared__ unsigned int tile[SORT_TILE];
    __shared__ unsigned int less_w[SORT_WARPS][SORT_ROWS];
    __shared__ unsigned int eq_w[SORT_WARPS][SORT_ROWS];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int r = blockIdx.x * SORT_ROWS + lane;
    unsigned int id = r < n ? ids[r] : 0xffffffffu;
    unsigned int less = 0, eq = 0;
    for (int t0 = 0; t0 < n; t0 += SORT_TILE) {
        int m = n - t0 < SORT_TILE ? n - t0 : SORT_TILE;
        __syncthreads();
        for (int i = threadIdx.x; i < m; i += blockDim.x) tile[i] = ids[t0 + i];
        __syncthreads();
        // Warp w compares its lane's row with tile entries w, w + 8, ... (broadcast reads).
        for (int i = warp; i < m; i += SORT_WARPS) {
            unsigned int o = tile[i];
            less += o < id;
            eq += (o == id) & (t0 + i < r);
        }
    }
    less_w[warp][lane] = less;
    eq_w[warp][lane] = eq;
    __syncthreads();
    if (warp == 0 && r < n) {
        unsigned int place = 0;
        for (int w = 0; w < SORT_WARPS; w++) place += less_w[w][lane] + eq_w[w][lane];
        order[place] = (unsigned int)r;
    }
}

// dtable[id, c] = Σ dout[r, c] over the rows r of id in ascending order, by the block of the
// group's first place p in `order` (from embedding_sort_pos); blocks at other places return.
// grid (n, ceil(dim / 256)); dtable zeroed beforehand (rows no id touches stay 0); ids ≥ vocab
// are skipped (the forward wrote NaN rows for them).
template <typename T>
__device__ void embedding_bwd_grouped(const T* dout, const unsigned int* ids, const unsigned int* order, float* dtable,
                                      int n, int dim, unsigned int vocab) {
    int p = blockIdx.x;
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    unsigned int id = ids[order[p]];
    if (c >= dim || id >= vocab || (p > 0 && ids[order[p - 1]] == id)) return;
    float acc = 0.f;
    for (int q = p; q < n; q++) {
        unsigned int r = order[q];
        if (ids[r] != id) break;
        acc += to_f(dout[(long long)r * dim + c]);
    }
    dtable[(long long)id * dim + c] = acc;
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
    extern "C" __global__ void embedding_bwd_grouped_##N(const T* dout, const unsigned int* ids, \
                                                         const unsigned int* order, float* dtable, int n, int dim, \
                                                         unsigned int vocab) { \
        embedding_bwd_grouped<T>(dout, ids, order, dtable, n, dim, vocab); \
    } \
    extern "C" __global__ void embedding_bwd_sorted_##N(const T* dout, const unsigned int* order, const unsigned int* uid, \
                                                        const unsigned int* seg, float* dtable, int dim) { \
        embedding_bwd_sorted<T>(dout, order, uid, seg, dtable, dim); \
    }
EMBEDDING_KERNELS(float, f32)
EMBEDDING_KERNELS(bf16_t, bf16)
