// The optimizer step over every parameter in one launch, and the global gradient norm, with
// no host round trip: the norm kernel leaves [norm, clip coefficient, skip flag] on the device
// and AdamW reads them there.
//
// Tensor table `meta`: 8 int64 per tensor: p, g, m, v (device addresses), n, weight-decay flag,
// the tensor's first block, and the address of the parameter's bf16 copy (0: none) — the copy
// mixed-precision matmuls read, written here from the updated value so that no cast pass over
// every weight follows the step. A block covers CHUNK elements of one tensor; it finds its tensor by
// a binary search over the first-block column (a few hundred tensors: ~8 cached reads), so the
// only table is the small per-tensor one (no per-block table to build and upload each step).

#define CHUNK 4096
#define META 8

// The tensor of block `b` and the block's first element.
__device__ __forceinline__ void block_of(const long long* meta, int nt, long long b, long long* ti, long long* start) {
    int lo = 0, hi = nt - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (meta[META * mid + 6] <= b) lo = mid; else hi = mid - 1;
    }
    *ti = lo;
    *start = (b - meta[META * lo + 6]) * CHUNK;
}

extern "C" __global__ void sumsq_multi_f32(const long long* meta, int nt, double* partial) {
    long long ti, start;
    block_of(meta, nt, blockIdx.x, &ti, &start);
    const float* g = (const float*)meta[META * ti + 1];
    long long n = meta[META * ti + 4];
    long long end = start + CHUNK < n ? start + CHUNK : n;
    double s = 0.0;
    for (long long i = start + threadIdx.x; i < end; i += blockDim.x) { double x = g[i]; s += x * x; }
    __shared__ double red[32];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) t += red[w];
        partial[blockIdx.x] = t;
    }
}

// The sum of the nb partials, by one block of 1024 threads, in a fixed tree order; thread 0
// gets it.
__device__ __forceinline__ double partials_total(const double* partial, int nb) {
    __shared__ double red[1024];
    double s = 0.0;
    for (int i = threadIdx.x; i < nb; i += blockDim.x) s += partial[i];
    red[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
        __syncthreads();
    }
    return red[0];
}

// gstate = [norm, coef, skip, non-finite] from the sum of squares: coef = min(1, max_norm/(norm+1e-6))
// as PyTorch's clip_grad_norm_ (1 when max_norm ≤ 0); skip when the norm or the loss is not
// finite, so a diverged step leaves the parameters untouched, as on the CPU; non-finite starts
// at 0 and is raised by adamw_multi_f32 when an updated parameter is NaN or infinite.
__device__ __forceinline__ void write_norm_state(double sumsq, float* gstate, double max_norm, const float* loss) {
    double norm = sqrt(sumsq);
    double coef = 1.0;
    if (max_norm > 0.0) { coef = max_norm / (norm + 1e-6); if (coef > 1.0) coef = 1.0; }
    bool bad = !isfinite(norm) || (loss && !isfinite(loss[0]));
    gstate[0] = (float)norm;
    gstate[1] = (float)coef;
    gstate[2] = bad ? 1.f : 0.f;
    gstate[3] = 0.f;
}

// One block of 1024: the norm state of one process's gradients.
extern "C" __global__ void norm_finalize(const double* partial, int nb, float* gstate, double max_norm, const float* loss) {
    double s = partials_total(partial, nb);
    if (threadIdx.x == 0) write_norm_state(s, gstate, max_norm, loss);
}

// One block of 1024: the sum of squares alone (ZeRO-1: each rank's pieces, summed over the
// ranks before norm_from_sumsq).
extern "C" __global__ void sumsq_total(const double* partial, int nb, double* out) {
    double s = partials_total(partial, nb);
    if (threadIdx.x == 0) out[0] = s;
}

// One thread: the norm state from a sum of squares.
extern "C" __global__ void norm_from_sumsq(const double* sumsq, float* gstate, double max_norm, const float* loss) {
    write_norm_state(sumsq[0], gstate, max_norm, loss);
}

// `scalars` (when not null: a captured step, whose arguments are frozen) holds this update's
// [decay_factor, step_size, bc2_sqrt], written by the host before each replay; else the
// arguments are used.
extern "C" __global__ void adamw_multi_f32(const long long* meta, int nt, float* gstate, const float* scalars,
                                           float decay_factor, float b1, float b2, float step_size, float bc2_sqrt,
                                           float eps) {
    if (scalars) {
        decay_factor = scalars[0];
        step_size = scalars[1];
        bc2_sqrt = scalars[2];
    }
    float gscale = 1.f;
    if (gstate) {
        if (gstate[2] != 0.f) return;
        gscale = gstate[1];
    }
    long long ti, start;
    block_of(meta, nt, blockIdx.x, &ti, &start);
    const long long* mt = meta + META * ti;
    float* p = (float*)mt[0];
    const float* g = (const float*)mt[1];
    float* m = (float*)mt[2];
    float* v = (float*)mt[3];
    long long n = mt[4];
    float decay = mt[5] ? decay_factor : 1.f;
    bf16_t* pb = (bf16_t*)mt[7];
    long long end = start + CHUNK < n ? start + CHUNK : n;
    bool finite = true;
    // One element's update (the CPU's arithmetic, in its order).
    auto step = [&](float gi, float pi, float mi0, float vi0, float* np_out, float* mi_out, float* vi_out) {
        gi = gscale == 1.f ? gi : gi * gscale;
        pi = pi * decay;
        float mi = mi0 + (1.f - b1) * (gi - mi0);
        float vi = b2 * vi0 + (1.f - b2) * gi * gi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        float np = pi - step_size * mi / denom;
        *np_out = np, *mi_out = mi, *vi_out = vi;
        finite = finite && isfinite(np);
    };
    // A whole chunk of 16-byte-aligned float4s (every tensor but a ragged last chunk): each
    // thread's VQ float4s of p, g, m and v are all loaded before any is used (256 bytes in
    // flight a thread; the scalar loop below keeps 16, each iteration's loads waiting on the
    // last one's stores), then updated and stored. The same arithmetic element by element.
    constexpr int VQ = CHUNK / 4 / 256;
    bool vec = end - start == CHUNK && blockDim.x == 256 && ((unsigned long long)(p + start) & 15) == 0 &&
               ((unsigned long long)(g + start) & 15) == 0 && ((unsigned long long)(m + start) & 15) == 0 &&
               ((unsigned long long)(v + start) & 15) == 0 && (!pb || ((unsigned long long)(pb + start) & 7) == 0);
    if (vec) {
        float4 P[VQ], G[VQ], M[VQ], V[VQ];
#pragma unroll
        for (int u = 0; u < VQ; u++) {
            long long i = start + 4 * (threadIdx.x + 256 * u);
            P[u] = *(const float4*)(p + i), G[u] = *(const float4*)(g + i);
            M[u] = *(const float4*)(m + i), V[u] = *(const float4*)(v + i);
        }
#pragma unroll
        for (int u = 0; u < VQ; u++) {
            long long i = start + 4 * (threadIdx.x + 256 * u);
            float4 np, nm, nv;
            step(G[u].x, P[u].x, M[u].x, V[u].x, &np.x, &nm.x, &nv.x);
            step(G[u].y, P[u].y, M[u].y, V[u].y, &np.y, &nm.y, &nv.y);
            step(G[u].z, P[u].z, M[u].z, V[u].z, &np.z, &nm.z, &nv.z);
            step(G[u].w, P[u].w, M[u].w, V[u].w, &np.w, &nm.w, &nv.w);
            *(float4*)(p + i) = np, *(float4*)(m + i) = nm, *(float4*)(v + i) = nv;
            if (pb) {
                uint2 w2;
                w2.x = (unsigned)f2bf(np.x) | ((unsigned)f2bf(np.y) << 16);
                w2.y = (unsigned)f2bf(np.z) | ((unsigned)f2bf(np.w) << 16);
                *(uint2*)(pb + i) = w2;
            }
        }
    } else {
        for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {
            float np, mi, vi;
            step(g[i], p[i], m[i], v[i], &np, &mi, &vi);
            p[i] = np;
            if (pb) pb[i] = f2bf(np);
            m[i] = mi;
            v[i] = vi;
        }
    }
    // The non-finite flag: one vote per warp, a plain store of the same value (a benign race).
    if (gstate && !__all_sync(0xffffffffu, finite) && (threadIdx.x & 31) == 0) gstate[3] = 1.f;
}
