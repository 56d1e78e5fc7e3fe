// Sampling on the device: one block of 1024 threads per row picks that row's token. The
// definition, and the CPU reference this file must match bit for bit, are in mod.rs.
//
// Passes over the row (each recomputes the penalised logit from z and the seen bits):
//   argmax → (temperature 0: done) → top-k: radix select of the k-th key (counts) →
//   the top-k and min-p masses → top-p: radix select on masses → the draw: a scan in id order.
// Masses are exact integers (⌊w·2^44⌋), so every sum, in whatever order the block adds it, is
// the CPU's sum; weights come from exp_cpu below, which repeats the CPU's exp_f32 exactly.

#define NT 1024
#define FULL 0xffffffffu
typedef unsigned long long u64;

// crates/core/src/float.rs exp_f32, operation for operation, constants as bit patterns. The
// __f*_rn intrinsics are never contracted into FMAs, so the result has the CPU's bits.
__device__ float exp_cpu(float x) {
    const float lo = __uint_as_float(0xc2ae999au), hi = __uint_as_float(0x42b16666u); // -87.3, 88.7
    if (x < lo) x = lo;
    if (x > hi) x = hi;
    const float round = __uint_as_float(0x4b400000u); // 1.5·2^23
    float n = __fsub_rn(__fadd_rn(__fmul_rn(x, __uint_as_float(0x3fb8aa3bu)), round), round);
    float r = __fsub_rn(__fsub_rn(x, __fmul_rn(n, __uint_as_float(0x3f318000u))), __fmul_rn(n, __uint_as_float(0xb95e8083u)));
    float p = __uint_as_float(0x39506967u);
    p = __fadd_rn(__fmul_rn(p, r), __uint_as_float(0x3ab743ceu));
    p = __fadd_rn(__fmul_rn(p, r), __uint_as_float(0x3c088908u));
    p = __fadd_rn(__fmul_rn(p, r), __uint_as_float(0x3d2aa9c1u));
    p = __fadd_rn(__fmul_rn(p, r), __uint_as_float(0x3e2aaaaau));
    p = __fadd_rn(__fmul_rn(p, r), __uint_as_float(0x3f000000u));
    float y = __fadd_rn(__fadd_rn(__fmul_rn(__fmul_rn(p, r), r), r), 1.0f);
    return __fmul_rn(y, __uint_as_float((unsigned)((int)n + 127) << 23));
}

// The IEEE total order as an unsigned key (mod.rs order_key) and back.
__device__ __forceinline__ unsigned okey(float x) {
    unsigned u = __float_as_uint(x);
    return (u >> 31) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float unkey(unsigned k) { return __uint_as_float((k >> 31) ? (k & 0x7fffffffu) : ~k); }

// mod.rs mass
__device__ __forceinline__ u64 qmass(float w) {
    if (!(w > 0.f)) return 0ull;
    if (w >= 1.f) return 1ull << 44;
    return (u64)((double)w * 17592186044416.0);
}

// One row and the filters decided so far. Prefix bounds: ids with key > k, or key == k and
// id <= b, are inside.
struct Row {
    const float* z;
    const unsigned* seen;
    int v;
    float rp, temp, m, min_p;
    bool use_min_p, has_k1, has_p;
    unsigned k1, kp;
    int b1, bp;

    __device__ float val(int i) const {
        float x = z[i];
        if (seen && rp != 1.f && ((seen[i >> 5] >> (i & 31)) & 1u)) x = x > 0.f ? __fdiv_rn(x, rp) : __fmul_rn(x, rp);
        return x;
    }
    __device__ float weight(float x) const { return exp_cpu(__fdiv_rn(__fsub_rn(x, m), temp)); }
    __device__ bool in_k1(unsigned key, int i) const { return !has_k1 || key > k1 || (key == k1 && i <= b1); }
    __device__ bool in_p(unsigned key, int i) const { return !has_p || key > kp || (key == kp && i <= bp); }
    __device__ bool passes_min_p(float w) const { return !use_min_p || w >= min_p; }
};

// Sum of x over the lanes in `peers` (a group found by __match_any_sync), to every member.
__device__ __forceinline__ u64 group_sum(unsigned peers, u64 x) {
#if __CUDA_ARCH__ >= 800
    // Masses are < 2^45: two 22-bit halves of 32 lanes each fit in 32 bits.
    unsigned hi = __reduce_add_sync(peers, (unsigned)(x >> 22)), lo = __reduce_add_sync(peers, (unsigned)(x & 0x3fffffu));
    return ((u64)hi << 22) + lo;
#else
    u64 s = 0;
    for (unsigned mm = peers; mm; mm &= mm - 1) s += __shfl_sync(peers, x, __ffs(mm) - 1);
    return s;
#endif
}

__device__ __forceinline__ u64 warp_max_u64(u64 v) {
    for (int o = 16; o > 0; o >>= 1) {
        u64 x = __shfl_xor_sync(FULL, v, o);
        v = x > v ? x : v;
    }
    return v;
}

__device__ __forceinline__ u64 warp_sum_u64(u64 v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
    return v;
}

// Block-wide max / sum of a u64 (NT = 32 warps), returned to every thread.
__device__ u64 block_max_u64(u64 v, u64* sh) {
    v = warp_max_u64(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    return warp_max_u64(sh[threadIdx.x & 31]);
}

__device__ u64 block_sum_u64(u64 v, u64* sh) {
    v = warp_sum_u64(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    return warp_sum_u64(sh[threadIdx.x & 31]);
}

// Exclusive prefix sum over the threads in order; *total gets the sum of all. sh: 33 slots.
__device__ u64 block_exclusive_scan_u64(u64 v, u64* sh, u64* total) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    u64 inc = v;
    for (int o = 1; o < 32; o <<= 1) {
        u64 x = __shfl_up_sync(FULL, inc, o);
        if (lane >= o) inc += x;
    }
    __syncthreads();
    if (lane == 31) sh[w] = inc;
    __syncthreads();
    if (w == 0) {
        u64 s = sh[lane], si = s;
        for (int o = 1; o < 32; o <<= 1) {
            u64 x = __shfl_up_sync(FULL, si, o);
            if (lane >= o) si += x;
        }
        sh[lane] = si - s;
        if (lane == 31) sh[32] = si;
    }
    __syncthreads();
    *total = sh[32];
    return sh[w] + inc - v;
}

struct Shared {
    u64 hist[256];
    u64 red[33];
    u64 w0, w1;
    unsigned u0;
    int i0;
};

// The end of the shortest prefix of the order (key descending, then id) over the active ids
// whose weight reaches `target` (1 ≤ target ≤ the active total): returns its key; *need gets
// the weight still missing after every active id with a larger key, *tie the weight of all
// active ids with exactly that key. `elem(i, key, wt)` says whether id i is active, with its key
// and weight (counts: wt = 1). Eight bits of the key per pass, most significant first.
template <class F>
__device__ unsigned radix_select(int v, F elem, u64 target, Shared& s, u64* need, u64* tie) {
    unsigned prefix = 0, pmask = 0;
    u64 want = target, tied = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += NT) s.hist[b] = 0;
        __syncthreads();
        for (int base = 0; base < v; base += NT) {
            int i = base + threadIdx.x;
            unsigned key = 0;
            u64 wt = 0;
            bool act = i < v && elem(i, key, wt) && (key & pmask) == prefix;
            unsigned bin = act ? (key >> shift) & 255u : 256u;
            unsigned peers = __match_any_sync(FULL, bin);
            u64 sum = group_sum(peers, act ? wt : 0ull);
            if (act && (int)(threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(&s.hist[bin], sum);
        }
        __syncthreads();
        // From the top bin down, the first whose cumulative weight reaches `want` (bin 0 if
        // none): lane l of warp 0 sums bins 255−8l … 248−8l, a scan over the lanes finds the
        // lane holding it, and that lane walks its eight bins.
        if (threadIdx.x < 32) {
            int lane = threadIdx.x, top = 255 - 8 * lane;
            u64 sum = 0;
            for (int k = 0; k < 8; k++) sum += s.hist[top - k];
            u64 inc = sum;
            for (int o = 1; o < 32; o <<= 1) {
                u64 x = __shfl_up_sync(FULL, inc, o);
                if (lane >= o) inc += x;
            }
            unsigned hit = __ballot_sync(FULL, inc >= want);
            if (lane == (hit ? __ffs(hit) - 1 : 31)) {
                u64 acc = inc - sum;
                int b = top;
                for (; b > top - 7; b--) {
                    if (acc + s.hist[b] >= want) break;
                    acc += s.hist[b];
                }
                s.u0 = (unsigned)b;
                s.w0 = want - acc;
                s.w1 = s.hist[b];
            }
        }
        __syncthreads();
        prefix |= s.u0 << shift;
        pmask |= 255u << shift;
        want = s.w0;
        tied = s.w1;
        __syncthreads();
    }
    *need = want;
    *tie = tied;
    return prefix;
}

// The id of the j-th (from 1) active id with key `kb`, in id order. Each thread counts a
// contiguous range of ids; a block scan of the counts finds the range that holds it.
template <class F>
__device__ int jth_tied(int v, F active_key, unsigned kb, u64 j, Shared& s) {
    int per = (v + NT - 1) / NT, lo = min(v, (int)threadIdx.x * per), hi = min(v, lo + per);
    u64 c = 0;
    for (int i = lo; i < hi; i++) {
        unsigned key;
        if (active_key(i, key) && key == kb) c++;
    }
    if (threadIdx.x == 0) s.i0 = v - 1;
    u64 total;
    u64 ex = block_exclusive_scan_u64(c, s.red, &total);
    if (ex < j && j <= ex + c) {
        u64 k = ex;
        for (int i = lo; i < hi; i++) {
            unsigned key;
            if (active_key(i, key) && key == kb && ++k == j) {
                s.i0 = i;
                break;
            }
        }
    }
    __syncthreads();
    int r = s.i0;
    __syncthreads();
    return r;
}

// logits (rows, v); seen (rows, words) bits or null; uniforms one per row (null: u0 for the
// one row); out one id per row.
// top_k in 1..v-1 or 0 (off); top_p < 1 only when use_top_p; min_p ≤ 1 only when use_min_p.
extern "C" __global__ void __launch_bounds__(NT) sample_f32(const float* logits, unsigned* seen, const double* uniforms,
                                                             double u0, unsigned* out, int v, int words, float rp, float temp,
                                                             int greedy, unsigned top_k, int use_top_p, float top_p,
                                                             int use_min_p, float min_p) {
    __shared__ Shared s;
    Row R;
    R.z = logits + (long long)blockIdx.x * v;
    R.seen = seen ? seen + (long long)blockIdx.x * words : nullptr;
    R.v = v;
    R.rp = rp;
    R.temp = temp;
    R.min_p = min_p;
    R.use_min_p = use_min_p != 0;
    R.has_k1 = R.has_p = false;
    R.k1 = R.kp = 0;
    R.b1 = R.bp = v - 1;
    R.m = 0.f;

    // argmax: the largest key, then the smallest id (~i is larger for smaller i).
    u64 best = 0;
    for (int i = threadIdx.x; i < v; i += NT) {
        u64 c = ((u64)okey(R.val(i)) << 32) | (unsigned)~i;
        best = c > best ? c : best;
    }
    best = block_max_u64(best, s.red);
    int first = (int)~(unsigned)(best & 0xffffffffu);
    int tok = first;
    if (!greedy && v > 1) {
        R.m = R.val(first);
        // top-k: the k-th key of the order, ties by id.
        if (top_k > 0) {
            u64 need, tie;
            auto all = [&](int i, unsigned& key, u64& wt) { key = okey(R.val(i)); wt = 1; return true; };
            unsigned kb = radix_select(v, all, top_k, s, &need, &tie);
            auto any_key = [&](int i, unsigned& key) { key = okey(R.val(i)); return true; };
            R.b1 = need == tie ? v - 1 : jth_tied(v, any_key, kb, need, s);
            R.k1 = kb;
            R.has_k1 = true;
        }
        // Masses of the top-k ids and of those among them that pass min-p.
        u64 mk = 0, mm = 0;
        for (int i = threadIdx.x; i < v; i += NT) {
            float x = R.val(i);
            if (!R.in_k1(okey(x), i)) continue;
            float w = R.weight(x);
            u64 q = qmass(w);
            mk += q;
            if (R.passes_min_p(w)) mm += q;
        }
        mk = block_sum_u64(mk, s.red);
        mm = block_sum_u64(mm, s.red);
        // top-p: the shortest prefix of the top-k ids passing min-p whose mass reaches the target.
        if (use_top_p) {
            u64 target = (u64)ceil((double)top_p * (double)mk);
            u64 cap = mk > 0 ? mk : 1;
            target = target < 1 ? 1 : (target > cap ? cap : target);
            if (mm >= target) {
                auto active = [&](int i, unsigned& key, u64& wt) {
                    float x = R.val(i);
                    key = okey(x);
                    if (!R.in_k1(key, i)) return false;
                    float w = R.weight(x);
                    wt = qmass(w);
                    return R.passes_min_p(w);
                };
                u64 need, tie;
                unsigned kb = radix_select(v, active, target, s, &need, &tie);
                u64 q = qmass(R.weight(unkey(kb)));
                if (q == 0) q = 1;
                u64 j = (need + q - 1) / q;
                auto active_key = [&](int i, unsigned& key) {
                    u64 wt;
                    return active(i, key, wt);
                };
                R.bp = j == tie / q ? v - 1 : jth_tied(v, active_key, kb, j, s);
                R.kp = kb;
                R.has_p = true;
            }
        }
        // The draw: r = ⌊u · mass⌋; the first kept id, in id order, whose running mass exceeds r.
        int per = (v + NT - 1) / NT, lo = min(v, (int)threadIdx.x * per), hi = min(v, lo + per);
        u64 part = 0;
        for (int i = lo; i < hi; i++) {
            float x = R.val(i);
            unsigned key = okey(x);
            if (!R.in_k1(key, i) || !R.in_p(key, i)) continue;
            float w = R.weight(x);
            if (R.passes_min_p(w)) part += qmass(w);
        }
        if (threadIdx.x == 0) s.i0 = first;
        u64 total;
        u64 ex = block_exclusive_scan_u64(part, s.red, &total);
        if (total > 0) {
            u64 r = (u64)((uniforms ? uniforms[blockIdx.x] : u0) * (double)total);
            if (r > total - 1) r = total - 1;
            if (ex <= r && r < ex + part) {
                u64 c = ex;
                for (int i = lo; i < hi; i++) {
                    float x = R.val(i);
                    unsigned key = okey(x);
                    if (!R.in_k1(key, i) || !R.in_p(key, i)) continue;
                    float w = R.weight(x);
                    if (!R.passes_min_p(w)) continue;
                    c += qmass(w);
                    if (c > r) {
                        s.i0 = i;
                        break;
                    }
                }
            }
        }
        __syncthreads();
        tok = s.i0;
    }
    if (threadIdx.x == 0) {
        out[blockIdx.x] = (unsigned)tok;
        if (seen) atomicOr(seen + (long long)blockIdx.x * words + (tok >> 5), 1u << (tok & 31));
    }
}

// Sets the bits of ids[0..n) in one row's seen words.
extern "C" __global__ void sample_mark(unsigned* seen, const unsigned* ids, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) atomicOr(seen + (ids[i] >> 5), 1u << (ids[i] & 31));
}
