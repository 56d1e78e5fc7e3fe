// The distillation loss on CUDA (mod.rs has the definition and the CPU reference): one block of
// 256 threads a row for the forward's reductions; the backward's dense part on a (column
// block, row) grid, then, for a top-k teacher, its mass scattered onto its ids by one block a
// row. dz is f32 here (the caller casts it to the logits' dtype), each element's operations in
// the CPU reference's order.

#define DISTILL_IGNORE 0xffffffffu

// rows (N × 4): the student's lse at τ and at 1, the teacher's lse at τ, unused; klce (N × 2):
// the row's KL(teacher ‖ student) and cross-entropy (0 for an ignored row).
template <typename T>
__device__ void distill_fwd(const T* z, int v, const unsigned int* tid, const float* t, int k,
                            const unsigned int* targets, float inv_tau, float* rows, float* klce) {
    long long r = blockIdx.x;
    const T* zr = z + r * v;
    const float* tr = t + r * k;
    float m1 = -SM_INF, ms = -SM_INF;
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        float x = to_f(zr[j]);
        m1 = fmaxf(m1, x);
        ms = fmaxf(ms, x * inv_tau);
    }
    m1 = block_max(m1);
    ms = block_max(ms);
    float s1 = 0.f, ss = 0.f;
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        float x = to_f(zr[j]);
        s1 += expf(x - m1);
        ss += expf(x * inv_tau - ms);
    }
    s1 = block_sum(s1);
    ss = block_sum(ss);
    float lse_one = m1 + logf(s1), lse_tau = ms + logf(ss);
    float tm = -SM_INF;
    for (int i = threadIdx.x; i < k; i += blockDim.x) tm = fmaxf(tm, tr[i] * inv_tau);
    tm = block_max(tm);
    float ts = 0.f;
    for (int i = threadIdx.x; i < k; i += blockDim.x) ts += expf(tr[i] * inv_tau - tm);
    ts = block_sum(ts);
    float tlse = tm + logf(ts);
    unsigned int y = targets[r];
    float kl = 0.f;
    if (y != DISTILL_IGNORE) {
        for (int i = threadIdx.x; i < k; i += blockDim.x) {
            float lt = tr[i] * inv_tau - tlse, pt = expf(lt);
            if (pt == 0.f) continue;
            unsigned int id = tid ? tid[r * k + i] : (unsigned int)i;
            kl += pt * (lt - (to_f(zr[id]) * inv_tau - lse_tau));
        }
    }
    kl = block_sum(kl);
    if (threadIdx.x == 0) {
        rows[r * 4] = lse_tau;
        rows[r * 4 + 1] = lse_one;
        rows[r * 4 + 2] = tlse;
        rows[r * 4 + 3] = 0.f;
        bool ign = y == DISTILL_IGNORE;
        klce[r * 2] = ign ? 0.f : kl;
        klce[r * 2 + 1] = ign ? 0.f : lse_one - to_f(zr[y]);
    }
}

// dz = soft·exp(z/τ − lse_τ) + hard·exp(z − lse_1) [− soft·p_t when the teacher is the whole
// vocabulary (t given)] [− hard at the target]; 0 on ignored rows. grid (ceil(V/256), N).
template <typename T>
__device__ void distill_bwd_dense(const T* z, int v, const float* t, const unsigned int* targets, const float* rows,
                                  float inv_tau, float soft, float hard, float* dz) {
    long long r = blockIdx.y;
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= v) return;
    unsigned int y = targets[r];
    float* d = dz + r * v;
    if (y == DISTILL_IGNORE) {
        d[j] = 0.f;
        return;
    }
    float lt = rows[r * 4], l1 = rows[r * 4 + 1];
    float x = to_f(z[r * v + j]);
    float g = soft * expf(x * inv_tau - lt) + hard * expf(x - l1);
    if (t) g -= soft * expf(t[r * v + j] * inv_tau - rows[r * 4 + 2]);
    if (t && (unsigned int)j == y) g -= hard;
    d[j] = g;
}

#define DISTILL_KERNELS(T, N)                                                                                          \
    extern "C" __global__ void distill_fwd_##N(const T* z, int v, const unsigned int* tid, const float* t, int k,     \
                                               const unsigned int* targets, float inv_tau, float* rows, float* klce) { \
        distill_fwd<T>(z, v, tid, t, k, targets, inv_tau, rows, klce);                                               \
    }                                                                                                                  \
    extern "C" __global__ void distill_bwd_dense_##N(const T* z, int v, const float* t, const unsigned int* targets,   \
                                                     const float* rows, float inv_tau, float soft, float hard,        \
                                                     float* dz) {                                                      \
        distill_bwd_dense<T>(z, v, t, targets, rows, inv_tau, soft, hard, dz);                                       \
    }
DISTILL_KERNELS(float, f32)
DISTILL_KERNELS(bf16_t, bf16)

// A top-k teacher's mass taken off its ids (unique within a row), then hard off the target:
// one block a row, after distill_bwd_dense (given no t).
extern "C" __global__ void distill_bwd_scatter(float* dz, int v, const unsigned int* tid, const float* t, int k,
                                               const unsigned int* targets, const float* rows, float inv_tau,
                                               float soft, float hard) {
    long long r = blockIdx.x;
    unsigned int y = targets[r];
    if (y == DISTILL_IGNORE) return;
    float* d = dz + r * v;
    float tlse = rows[r * 4 + 2];
    for (int i = threadIdx.x; i < k; i += blockDim.x) d[tid[r * k + i]] -= soft * expf(t[r * k + i] * inv_tau - tlse);
    __syncthreads();
    if (threadIdx.x == 0) d[y] -= hard;
}
