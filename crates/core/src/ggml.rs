//! llama.cpp's CPU float arithmetic, reproduced bit for bit, so that smelt's inference path
//! gives the same f32 values as llama.cpp on a GGUF model (and therefore the same 8-bit
//! activations, the same logits and the same greedy tokens).
//!
//! The reference is ggml's CPU backend as llama-cpp-python 0.3.36 builds it on x86-64 with
//! AVX-512 (GGML_NATIVE): 16-lane f32 vectors, `GGML_F32_STEP` 64, gcc's `-ffp-contract=fast`.
//! Every function names the ggml code it follows; the lane structure is what matters (which
//! products are summed together, in which order), not the instructions, so these scalar loops
//! give the same bits on any CPU (`f32::mul_add` is a correctly rounded FMA everywhere).

/// gcc's `_mm512_reduce_add_ps`: halves (8 + 8), then quarters (4 + 4), then lanes (0+2, 1+3),
/// then the two.
#[inline(always)]
pub fn reduce16(v: &[f32; 16]) -> f32 {
    let mut t3 = [0f32; 8];
    for i in 0..8 {
        t3[i] = v[i + 8] + v[i];
    }
    let mut t6 = [0f32; 4];
    for i in 0..4 {
        t6[i] = t3[i + 4] + t3[i];
    }
    (t6[0] + t6[2]) + (t6[1] + t6[3])
}

/// Public slice functions run their `#[inline(always)]` body inside a `target_feature(fma)`
/// copy when the CPU has FMA, so `mul_add` is one instruction instead of a libm call (same
/// result either way).
macro_rules! fma_dispatch {
    ($(#[$m:meta])* pub fn $name:ident($($a:ident: $t:ty),*) -> $r:ty = $body:ident;) => {
        $(#[$m])*
        pub fn $name($($a: $t),*) -> $r {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($a: $t),*) -> $r { $body($($a),*) }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: FMA checked at run time.
                    return unsafe { fast($($a),*) };
                }
            }
            $body($($a),*)
        }
    };
}

fma_dispatch! {
    /// `ggml_vec_dot_f32` (AVX-512): four 16-lane accumulators over 64-element steps (element
    /// e of a step in accumulator e/16, lane e%16, one FMA each), reduced as (a0+a2)+(a1+a3),
    /// then `reduce16`; leftover elements added one by one with FMA.
    pub fn dot_f32(x: &[f32], y: &[f32]) -> f32 = dot_f32_body;
}

fma_dispatch! {
    /// out[j] = `dot_f32`(row j of x, y) · scale for the rows x_j = x[j·stride..][..y.len()]: the
    /// attention scores of one query, in one call (each dot in `dot_f32`'s order; a call per key
    /// cost more than the 64-element dot itself).
    pub fn dot_f32_rows(out: &mut [f32], x: &[f32], stride: usize, y: &[f32], scale: f32) -> () = dot_f32_rows_body;
}

fma_dispatch! {
    /// `dot_f32_rows` with row j at x[offs[j]..] (rows read through a KV cache's block table).
    pub fn dot_f32_rows_at(out: &mut [f32], x: &[f32], offs: &[usize], y: &[f32], scale: f32) -> () = dot_f32_rows_at_body;
}

fma_dispatch! {
    /// out[j] = `dot_f32`(key j, y) · scale for 16 keys at once, the keys transposed:
    /// kt[e·16 + j] = element e of key j (kt holds y.len() · 16 values). The same lanes and the
    /// same additions as `dot_f32`, each now a vector over the 16 keys, so each score is
    /// bit-identical to `dot_f32_rows`'s; what goes is the horizontal reduction per score (the
    /// larger part of a 64-element dot).
    pub fn dot_f32_keys16(out: &mut [f32; 16], kt: &[f32], y: &[f32], scale: f32) -> () = dot_f32_keys16_body;
}

#[inline(always)]
fn dot_f32_keys16_body(out: &mut [f32; 16], kt: &[f32], y: &[f32], scale: f32) {
    let n = y.len();
    assert!(kt.len() >= 16 * n, "dot_f32_keys16: {} transposed values for {n} × 16", kt.len());
    let np = n & !63;
    // acc[a][l]: accumulator a, lane l of `dot_f32`, as a vector over the keys.
    let mut acc = [[[0f32; 16]; 16]; 4];
    for i in (0..np).step_by(64) {
        for (a, acc_a) in acc.iter_mut().enumerate() {
            for (l, v) in acc_a.iter_mut().enumerate() {
                let e = i + 16 * a + l;
                let (c, ye) = (&kt[16 * e..16 * e + 16], y[e]);
                for j in 0..16 {
                    v[j] = c[j].mul_add(ye, v[j]);
                }
            }
        }
    }
    let mut r = [[0f32; 16]; 16];
    for l in 0..16 {
        for j in 0..16 {
            r[l][j] = (acc[0][l][j] + acc[2][l][j]) + (acc[1][l][j] + acc[3][l][j]);
        }
    }
    // `reduce16` over the lanes l.
    for i in 0..8 {
        for j in 0..16 {
            r[i][j] += r[i + 8][j];
        }
    }
    for i in 0..4 {
        for j in 0..16 {
            r[i][j] += r[i + 4][j];
        }
    }
    let mut s = [0f32; 16];
    for j in 0..16 {
        s[j] = (r[0][j] + r[2][j]) + (r[1][j] + r[3][j]);
    }
    for e in np..n {
        for j in 0..16 {
            s[j] = kt[16 * e + j].mul_add(y[e], s[j]);
        }
    }
    for j in 0..16 {
        out[j] = s[j] * scale;
    }
}

fma_dispatch! {
    /// tinyBLAS (llamafile sgemm, AVX-512, f32): one 16-lane accumulator over the whole length
    /// (element e in lane e%16), then `reduce16`. Needs a length that is a multiple of 16
    /// (tinyBLAS declines otherwise); shorter rows are zero-padded by the caller.
    pub fn dot_f32_tinyblas(x: &[f32], y: &[f32]) -> f32 = dot_f32_tinyblas_body;
}

fma_dispatch! {
    /// out[t] = `dot_f32`(column t of V, p) for the `rows` rows v_j = v[j·stride..][..out.len()],
    /// without transposing V: the same lanes (element j in accumulator (j%64)/16, lane j%16, one
    /// FMA each, in order of j), each lane a vector over t. `p` may be longer (padding: its rows
    /// are zeros with p = 0, which add exact zeros to accumulators that are never −0, so they are
    /// skipped). `acc` is scratch (64 · out.len()).
    pub fn dot_f32_columns(out: &mut [f32], v: &[f32], stride: usize, rows: usize, p: &[f32], acc: &mut Vec<f32>) -> () = dot_f32_columns_body;
}

fma_dispatch! {
    /// out[t] = `dot_f32_tinyblas`(column t of V, p[..]) for the `rows` rows as in
    /// `dot_f32_columns` (one accumulator: element j in lane j%16); `rows` must be the number of
    /// real rows within the 16-padded length tinyBLAS would see.
    pub fn dot_f32_tinyblas_columns(out: &mut [f32], v: &[f32], stride: usize, rows: usize, p: &[f32], acc: &mut Vec<f32>) -> () = dot_f32_tinyblas_columns_body;
}

fma_dispatch! {
    /// `dot_f32_columns` over the rows v[offs[j]..], j < offs.len(): the same sums in the same
    /// order, whatever blocks the rows sit in.
    pub fn dot_f32_columns_at(out: &mut [f32], v: &[f32], offs: &[usize], p: &[f32], acc: &mut Vec<f32>) -> () = dot_f32_columns_at_body;
}

fma_dispatch! {
    /// `dot_f32_tinyblas_columns` over the rows v[offs[j]..], j < offs.len().
    pub fn dot_f32_tinyblas_columns_at(out: &mut [f32], v: &[f32], offs: &[usize], p: &[f32], acc: &mut Vec<f32>) -> () = dot_f32_tinyblas_columns_at_body;
}

/// acc[e·d..][..d] += v_j · p_j for j < rows, e = j % lanes, row j at v[off(j)..][..d].
#[inline(always)]
fn columns_acc(
    acc: &mut Vec<f32>,
    lanes: usize,
    d: usize,
    v: &[f32],
    off: impl Fn(usize) -> usize,
    rows: usize,
    p: &[f32],
) {
    acc.clear();
    acc.resize(lanes * d, 0.0);
    for j in 0..rows {
        let e = j % lanes;
        let (a, vr, pj) = (&mut acc[e * d..(e + 1) * d], &v[off(j)..][..d], p[j]);
        for t in 0..d {
            a[t] = vr[t].mul_add(pj, a[t]);
        }
    }
}

/// `reduce16` of (r[l][t], l = 0..16) for every t, r[l] = r[l·d..][..d] (overwritten).
#[inline(always)]
fn reduce16_columns(out: &mut [f32], r: &mut [f32]) {
    let d = out.len();
    // dst[t] = dst[t] + src[t] for rows dst < src: `reduce16`'s steps, a vector over t.
    let add = |r: &mut [f32], dst: usize, src: usize| {
        let (lo, hi) = r.split_at_mut(src * d);
        for (x, &y) in lo[dst * d..][..d].iter_mut().zip(&hi[..d]) {
            *x += y;
        }
    };
    for i in 0..8 {
        add(r, i, i + 8);
    }
    for i in 0..4 {
        add(r, i, i + 4);
    }
    let (r0, r1, r2, r3) = (&r[..d], &r[d..2 * d], &r[2 * d..3 * d], &r[3 * d..4 * d]);
    for t in 0..d {
        out[t] = (r0[t] + r2[t]) + (r1[t] + r3[t]);
    }
}

#[inline(always)]
fn dot_f32_columns_body(out: &mut [f32], v: &[f32], stride: usize, rows: usize, p: &[f32], acc: &mut Vec<f32>) {
    columns_64(out, v, |j| j * stride, rows, p, acc)
}

#[inline(always)]
fn dot_f32_columns_at_body(out: &mut [f32], v: &[f32], offs: &[usize], p: &[f32], acc: &mut Vec<f32>) {
    columns_64(out, v, |j| offs[j], offs.len(), p, acc)
}

#[inline(always)]
fn columns_64(out: &mut [f32], v: &[f32], off: impl Fn(usize) -> usize, rows: usize, p: &[f32], acc: &mut Vec<f32>) {
    let d = out.len();
    assert!(rows <= p.len() && p.len().is_multiple_of(64), "dot_f32_columns: {rows} rows, p of {}", p.len());
    columns_acc(acc, 64, d, v, off, rows, p);
    // (a0 + a2) + (a1 + a3) per lane l, accumulator k holding elements 16k + l of each step,
    // into rows 0..16.
    let (lo, hi) = acc.split_at_mut(16 * d);
    for l in 0..16 {
        let (a1, a2, a3) = (&hi[l * d..][..d], &hi[(16 + l) * d..][..d], &hi[(32 + l) * d..][..d]);
        for (t, a0) in lo[l * d..][..d].iter_mut().enumerate() {
            *a0 = (*a0 + a2[t]) + (a1[t] + a3[t]);
        }
    }
    reduce16_columns(out, &mut acc[..16 * d]);
}

#[inline(always)]
fn dot_f32_tinyblas_columns_body(
    out: &mut [f32],
    v: &[f32],
    stride: usize,
    rows: usize,
    p: &[f32],
    acc: &mut Vec<f32>,
) {
    let d = out.len();
    assert!(rows <= p.len(), "dot_f32_tinyblas_columns: {rows} rows, p of {}", p.len());
    columns_acc(acc, 16, d, v, |j| j * stride, rows, p);
    reduce16_columns(out, acc);
}

#[inline(always)]
fn dot_f32_tinyblas_columns_at_body(out: &mut [f32], v: &[f32], offs: &[usize], p: &[f32], acc: &mut Vec<f32>) {
    let d = out.len();
    assert!(offs.len() <= p.len(), "dot_f32_tinyblas_columns: {} rows, p of {}", offs.len(), p.len());
    columns_acc(acc, 16, d, v, |j| offs[j], offs.len(), p);
    reduce16_columns(out, acc);
}

/// `dot_f32_keys16` with AVX-512 registers where the CPU has AVX-512 F: per lane l of
/// `dot_f32` its four accumulators over the 64-element steps (four vectors over the keys), then
/// (a0+a2)+(a1+a3), `reduce16` across the lanes, the leftovers, the scale: the same operations
/// on the same values, bit for bit (tested). The portable body, compiled for AVX2, kept its
/// 4 × 16 × 16 accumulators in memory.
pub fn dot_f32_keys16_fast(out: &mut [f32; 16], kt: &[f32], y: &[f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        assert!(kt.len() >= 16 * y.len(), "dot_f32_keys16: {} transposed values for {} × 16", kt.len(), y.len());
        // SAFETY: AVX-512 F detected; reads inside kt (asserted) and y.
        return unsafe { keys16_avx512(out, kt, y, scale) };
    }
    dot_f32_keys16(out, kt, y, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn keys16_avx512(out: &mut [f32; 16], kt: &[f32], y: &[f32], scale: f32) {
    use std::arch::x86_64::*;
    let n = y.len();
    let np = n & !63;
    let (kp, yp) = (kt.as_ptr(), y.as_ptr());
    // `reduce16`'s first step adds lanes l and l + 8: computed in that order, each pair is
    // summed at once, so at most eight lane sums are live (no spill of sixteen to the stack).
    let mut t = [_mm512_setzero_ps(); 8];
    for (l, tl) in t.iter_mut().enumerate() {
        *tl = _mm512_add_ps(keys16_lane(kp, yp, np, l), keys16_lane(kp, yp, np, l + 8));
    }
    let mut u = [_mm512_setzero_ps(); 4];
    for (i, ui) in u.iter_mut().enumerate() {
        *ui = _mm512_add_ps(t[i], t[i + 4]);
    }
    let mut s = _mm512_add_ps(_mm512_add_ps(u[0], u[2]), _mm512_add_ps(u[1], u[3]));
    for e in np..n {
        s = _mm512_fmadd_ps(_mm512_loadu_ps(kp.add(16 * e)), _mm512_set1_ps(*yp.add(e)), s);
    }
    _mm512_storeu_ps(out.as_mut_ptr(), _mm512_mul_ps(s, _mm512_set1_ps(scale)));
}

/// `dot_f32_keys16_fast` for two queries against the same 16 keys: each key vector loaded once
/// for both (a prompt's scores were bound by those loads), each query's operations exactly
/// `keys16_avx512`'s (the lane pairs (l, l + 8) and then (l, l + 4) added in the same order, only
/// computed quarter by quarter: u_i = (lane i + lane i+8) + (lane i+4 + lane i+12)).
pub fn dot_f32_keys16x2_fast(out: [&mut [f32; 16]; 2], kt: &[f32], y: [&[f32]; 2], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        let n = y[0].len();
        assert!(y[1].len() == n && kt.len() >= 16 * n, "dot_f32_keys16x2: {} transposed values for {n} × 16", kt.len());
        // SAFETY: AVX-512 F detected; reads inside kt (asserted), y[0] and y[1] (same length).
        return unsafe { keys16x2_avx512(out, kt, y, scale) };
    }
    let [o0, o1] = out;
    dot_f32_keys16(o0, kt, y[0], scale);
    dot_f32_keys16(o1, kt, y[1], scale);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn keys16x2_avx512(out: [&mut [f32; 16]; 2], kt: &[f32], y: [&[f32]; 2], scale: f32) {
    use std::arch::x86_64::*;
    let n = y[0].len();
    let np = n & !63;
    let kp = kt.as_ptr();
    let yp = [y[0].as_ptr(), y[1].as_ptr()];
    // (Functions, not closures: a closure does not inherit the target features.)
    let mut u = [[_mm512_setzero_ps(); 4]; 2];
    for i in 0..4 {
        let (a, b, c, d) = (
            keys16x2_lane(kp, yp, np, i),
            keys16x2_lane(kp, yp, np, i + 8),
            keys16x2_lane(kp, yp, np, i + 4),
            keys16x2_lane(kp, yp, np, i + 12),
        );
        for q in 0..2 {
            // t[i] = lane i + lane i+8, t[i+4] = lane i+4 + lane i+12, u[i] = t[i] + t[i+4].
            u[q][i] = _mm512_add_ps(_mm512_add_ps(a[q], b[q]), _mm512_add_ps(c[q], d[q]));
        }
    }
    for (q, o) in out.into_iter().enumerate() {
        let mut s = _mm512_add_ps(_mm512_add_ps(u[q][0], u[q][2]), _mm512_add_ps(u[q][1], u[q][3]));
        for e in np..n {
            s = _mm512_fmadd_ps(_mm512_loadu_ps(kp.add(16 * e)), _mm512_set1_ps(*yp[q].add(e)), s);
        }
        _mm512_storeu_ps(o.as_mut_ptr(), _mm512_mul_ps(s, _mm512_set1_ps(scale)));
    }
}

/// `keys16_lane` for two queries: each key vector loaded once.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn keys16x2_lane(kp: *const f32, yp: [*const f32; 2], np: usize, l: usize) -> [std::arch::x86_64::__m512; 2] {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 4]; 2];
    for i in (0..np).step_by(64) {
        for a in 0..4 {
            let e = i + 16 * a + l;
            let kv = _mm512_loadu_ps(kp.add(16 * e));
            acc[0][a] = _mm512_fmadd_ps(kv, _mm512_set1_ps(*yp[0].add(e)), acc[0][a]);
            acc[1][a] = _mm512_fmadd_ps(kv, _mm512_set1_ps(*yp[1].add(e)), acc[1][a]);
        }
    }
    [
        _mm512_add_ps(_mm512_add_ps(acc[0][0], acc[0][2]), _mm512_add_ps(acc[0][1], acc[0][3])),
        _mm512_add_ps(_mm512_add_ps(acc[1][0], acc[1][2]), _mm512_add_ps(acc[1][1], acc[1][3])),
    ]
}

/// Lane l of `dot_f32` for 16 keys: its four accumulators over the 64-element steps, then
/// (a0 + a2) + (a1 + a3).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn keys16_lane(kp: *const f32, yp: *const f32, np: usize, l: usize) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); 4];
    for i in (0..np).step_by(64) {
        for (a, acc_a) in acc.iter_mut().enumerate() {
            let e = i + 16 * a + l;
            *acc_a = _mm512_fmadd_ps(_mm512_loadu_ps(kp.add(16 * e)), _mm512_set1_ps(*yp.add(e)), *acc_a);
        }
    }
    _mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3]))
}

/// `dot_f32_rows_at` (a decoding row's scores) on AVX-512 where the CPU has it: per key
/// `dot_f32`'s four 16-lane accumulators as four registers (the query's 64-element steps
/// loaded once for all keys), (a0 + a2) + (a1 + a3), `reduce16` across the register's lanes
/// (upper half onto lower, then quarters, then (t0 + t2) + (t1 + t3)), the leftovers one FMA
/// at a time, the scale: the same operations, bit for bit (tested).
pub fn dot_f32_rows_at_fast(out: &mut [f32], x: &[f32], offs: &[usize], y: &[f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if y.len() == 64 && std::arch::is_x86_feature_detected!("avx512f") {
        assert!(
            out.len() <= offs.len() && offs.iter().all(|&o| o + y.len() <= x.len()),
            "dot_f32_rows: {} rows of {} in {} values",
            offs.len(),
            y.len(),
            x.len()
        );
        // SAFETY: AVX-512 F detected; every read is inside x and y (asserted).
        return unsafe { rows64_avx512::<false>(out, x.as_ptr() as *const u8, offs, y, scale) };
    }
    dot_f32_rows_at(out, x, offs, y, scale)
}

/// Whether the CPU runs the f16 forms of the decoding row's kernels (`dot_f16_rows64_at`,
/// `dot_f16_columns_at`): AVX-512 F and F16C.
pub fn f16_decode_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `dot_f32_rows_at_fast` (rows of 64) over keys stored as f16 (their bits, `x`), each widened in
/// registers as it is loaded: the same f32 values as widening the rows first (f16 → f32 is
/// exact), the same operations, so the same bits as the f32 kernel on the widened rows. Where
/// `f16_decode_kernels` says so; panics otherwise.
pub fn dot_f16_rows64_at(out: &mut [f32], x: &[u16], offs: &[usize], y: &[f32], scale: f32) {
    assert!(f16_decode_kernels() && y.len() == 64, "dot_f16_rows64_at: AVX-512 F/F16C and rows of 64");
    assert!(
        out.len() <= offs.len() && offs.iter().all(|&o| o + 64 <= x.len()),
        "dot_f16_rows64_at: {} rows of 64 in {} values",
        offs.len(),
        x.len()
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the features are checked; every read is inside x and y (asserted).
    unsafe {
        rows64_avx512::<true>(out, x.as_ptr() as *const u8, offs, y, scale)
    }
}

/// 16 consecutive values at element `at` of f32 (H false) or f16 (H true) storage `base`, as f32.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn load16<const H: bool>(base: *const u8, at: usize) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    if H {
        _mm512_cvtph_ps(_mm256_loadu_si256((base as *const u16).add(at) as *const __m256i))
    } else {
        _mm512_loadu_ps((base as *const f32).add(at))
    }
}

/// Rows of exactly 64 (one step of `dot_f32`, no leftovers): the common head size. `xb` holds
/// f32 values, or f16 with H (offsets in elements either way).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn rows64_avx512<const H: bool>(out: &mut [f32], xb: *const u8, offs: &[usize], y: &[f32], scale: f32) {
    use std::arch::x86_64::*;
    let yp = y.as_ptr();
    // No closures around the intrinsics (a closure loses the target features).
    let (y0, y1, y2, y3) =
        (_mm512_loadu_ps(yp), _mm512_loadu_ps(yp.add(16)), _mm512_loadu_ps(yp.add(32)), _mm512_loadu_ps(yp.add(48)));
    let z = _mm512_setzero_ps();
    // Sixteen keys at a time: each key's 16-lane (a0 + a2) + (a1 + a3) as before, then the
    // sixteen `reduce16`s together on shuffled vectors (the same additions of the same lanes:
    // halves, quarters, then (t0 + t2) + (t1 + t3)), a quarter of the instructions of one
    // horizontal sum per key.
    let n16 = out.len() / 16 * 16;
    // Position 4k + j of the last step holds key k + 4j.
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    for c in (0..n16).step_by(16) {
        let mut r = [z; 16];
        for (t, rt) in r.iter_mut().enumerate() {
            let k = *offs.get_unchecked(c + t);
            let a0 = _mm512_fmadd_ps(load16::<H>(xb, k), y0, z);
            let a1 = _mm512_fmadd_ps(load16::<H>(xb, k + 16), y1, z);
            let a2 = _mm512_fmadd_ps(load16::<H>(xb, k + 32), y2, z);
            let a3 = _mm512_fmadd_ps(load16::<H>(xb, k + 48), y3, z);
            *rt = _mm512_add_ps(_mm512_add_ps(a0, a2), _mm512_add_ps(a1, a3));
        }
        // Lanes i + i+8 of keys 2m, 2m + 1 → positions 0..8, 8..16 of h[m].
        let mut h = [z; 8];
        for (m, hm) in h.iter_mut().enumerate() {
            let (a, b) = (r[2 * m], r[2 * m + 1]);
            *hm = _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(a, b), _mm512_shuffle_f32x4::<0xEE>(a, b));
        }
        // t6 = lanes i + i+4 of t3: key 4m + k's in 128-bit lane k of q[m].
        let mut q = [z; 4];
        for (m, qm) in q.iter_mut().enumerate() {
            let (a, b) = (h[2 * m], h[2 * m + 1]);
            *qm = _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(a, b), _mm512_shuffle_f32x4::<0xDD>(a, b));
        }
        // (t0 + t2, t1 + t3) of keys k and 4 + k (then 8 + k, 12 + k), then their sum.
        let g0 = _mm512_add_ps(_mm512_shuffle_ps::<0x44>(q[0], q[1]), _mm512_shuffle_ps::<0xEE>(q[0], q[1]));
        let g1 = _mm512_add_ps(_mm512_shuffle_ps::<0x44>(q[2], q[3]), _mm512_shuffle_ps::<0xEE>(q[2], q[3]));
        let sum = _mm512_add_ps(_mm512_shuffle_ps::<0x88>(g0, g1), _mm512_shuffle_ps::<0xDD>(g0, g1));
        let sum = _mm512_permutexvar_ps(order, sum);
        _mm512_storeu_ps(out.as_mut_ptr().add(c), _mm512_mul_ps(sum, _mm512_set1_ps(scale)));
    }
    for (o, &k) in out[n16..].iter_mut().zip(&offs[n16..]) {
        let a0 = _mm512_fmadd_ps(load16::<H>(xb, k), y0, z);
        let a1 = _mm512_fmadd_ps(load16::<H>(xb, k + 16), y1, z);
        let a2 = _mm512_fmadd_ps(load16::<H>(xb, k + 32), y2, z);
        let a3 = _mm512_fmadd_ps(load16::<H>(xb, k + 48), y3, z);
        let r = _mm512_add_ps(_mm512_add_ps(a0, a2), _mm512_add_ps(a1, a3));
        let t3 = _mm256_add_ps(
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(r))),
            _mm512_castps512_ps256(r),
        );
        let t6 = _mm_add_ps(_mm256_extractf128_ps::<1>(t3), _mm256_castps256_ps128(t3));
        let u = _mm_add_ps(t6, _mm_movehl_ps(t6, t6));
        let s = _mm_cvtss_f32(_mm_add_ss(u, _mm_movehdup_ps(u)));
        *o = s * scale;
    }
}

/// The register P·V kernels' bounds: every row of `d` values at `offs` inside v, a p per row.
fn check_columns<T>(what: &str, d: usize, v: &[T], offs: &[usize], p: &[f32]) {
    assert!(
        offs.len() <= p.len() && offs.iter().all(|&o| o + d <= v.len()),
        "{what}: {} rows of {d} in {} values, p of {}",
        offs.len(),
        v.len(),
        p.len()
    );
}

/// `reduce16` across 16 registers, a vector over 16 columns: (a[i] + a[i+8]), then (+ a[i+4]),
/// then (a0 + a2) + (a1 + a3).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn reduce16_regs(mut a: [std::arch::x86_64::__m512; 16]) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    for i in 0..8 {
        a[i] = _mm512_add_ps(a[i], a[i + 8]);
    }
    for i in 0..4 {
        a[i] = _mm512_add_ps(a[i], a[i + 4]);
    }
    _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3]))
}

/// `dot_f32_columns_at` (a decoding row's P·V) with its accumulators in AVX-512 registers where
/// the CPU has AVX-512 F and the row length is a multiple of 16: for each block of 16 columns,
/// one of `dot_f32`'s four accumulators (16 lanes, rows j with (j % 64) / 16 = a) at a time, so
/// the 16 lane vectors stay in registers; the portable body adds each row into 64 rows of memory
/// accumulators (a load, an FMA and a store per element). The same FMAs in the same order of
/// rows, the same (a0 + a2) + (a1 + a3) and `reduce16`: bit-identical (tested).
pub fn dot_f32_columns_at_fast(out: &mut [f32], v: &[f32], offs: &[usize], p: &[f32], acc: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if out.len().is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx512f") {
        check_columns("dot_f32_columns", out.len(), v, offs, p);
        // SAFETY: AVX-512 F detected; every read is inside v and p (checked).
        return unsafe { columns_avx512::<false>(out, v.as_ptr() as *const u8, offs, p) };
    }
    dot_f32_columns_at(out, v, offs, p, acc)
}

/// `dot_f32_columns_at_fast` over values stored as f16 (their bits, `v`), widened in registers
/// as they are loaded: the same bits as the f32 kernel on the widened rows (see
/// `dot_f16_rows64_at`). Rows of a multiple of 16, where `f16_decode_kernels` says so.
pub fn dot_f16_columns_at(out: &mut [f32], v: &[u16], offs: &[usize], p: &[f32]) {
    let d = out.len();
    assert!(f16_decode_kernels() && d.is_multiple_of(16), "dot_f16_columns_at: AVX-512 F/F16C and rows of 16·k");
    check_columns("dot_f16_columns_at", d, v, offs, p);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the features are checked; every read is inside v and p (asserted).
    unsafe {
        columns_avx512::<true>(out, v.as_ptr() as *const u8, offs, p)
    }
}

/// `vb` holds f32 values, or f16 with H (offsets in elements either way). Lane by lane: the
/// four accumulators of lanes l and l + 1 (rows j ≡ l mod 16, accumulator (j mod 64) / 16)
/// are summed over their rows in order, then combined at once into lane l's
/// (a0 + a2) + (a1 + a3), so 16 lane sums and 8 accumulators are live, not 64 accumulators
/// (which spilled, and were zeroed in memory, for every 16 columns: most of a short context's
/// time, as a served request's is).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn columns_avx512<const H: bool>(out: &mut [f32], vb: *const u8, offs: &[usize], p: &[f32]) {
    use std::arch::x86_64::*;
    let (pp, rows) = (p.as_ptr(), offs.len());
    for c in (0..out.len()).step_by(16) {
        let mut r = [_mm512_setzero_ps(); 16];
        for l in (0..16).step_by(2) {
            // Eight independent sums (lanes l, l + 1 × four accumulators) a step of 64 rows.
            let mut x = [[_mm512_setzero_ps(); 4]; 2];
            let mut base = 0;
            while base + 64 <= rows {
                for (h, xh) in x.iter_mut().enumerate() {
                    for (a, xa) in xh.iter_mut().enumerate() {
                        let j = base + 16 * a + l + h;
                        *xa = _mm512_fmadd_ps(
                            load16::<H>(vb, *offs.get_unchecked(j) + c),
                            _mm512_set1_ps(*pp.add(j)),
                            *xa,
                        );
                    }
                }
                base += 64;
            }
            for (h, xh) in x.iter_mut().enumerate() {
                for (a, xa) in xh.iter_mut().enumerate() {
                    let j = base + 16 * a + l + h;
                    if j < rows {
                        *xa = _mm512_fmadd_ps(
                            load16::<H>(vb, *offs.get_unchecked(j) + c),
                            _mm512_set1_ps(*pp.add(j)),
                            *xa,
                        );
                    }
                }
            }
            for (h, [a0, a1, a2, a3]) in x.into_iter().enumerate() {
                r[l + h] = _mm512_add_ps(_mm512_add_ps(a0, a2), _mm512_add_ps(a1, a3));
            }
        }
        _mm512_storeu_ps(out.as_mut_ptr().add(c), reduce16_regs(r));
    }
}

/// `dot_f32_tinyblas_columns_at`, with the 16 lane accumulators of every 16 columns held in
/// AVX-512 registers where the CPU has AVX-512 F and the row length is a multiple of 16 (the
/// portable body keeps them in `acc` in memory: a load, an FMA and a store per 16 columns and
/// row). Row j of V at v[offs[j]..]: a contiguous cache's j·stride or a paged cache's block
/// table. The same FMAs per (lane, column) in the same order of rows, and the same `reduce16`:
/// bit-identical.
pub fn dot_f32_tinyblas_columns_at_fast(out: &mut [f32], v: &[f32], offs: &[usize], p: &[f32], acc: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if out.len().is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx512f") {
        check_columns("dot_f32_tinyblas_columns", out.len(), v, offs, p);
        // SAFETY: AVX-512 F detected; every read is inside v and p (checked).
        return unsafe { tinyblas_columns_avx512(out, v, offs, p) };
    }
    dot_f32_tinyblas_columns_at(out, v, offs, p, acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tinyblas_columns_avx512(out: &mut [f32], v: &[f32], offs: &[usize], p: &[f32]) {
    use std::arch::x86_64::*;
    let (vp, pp, rows) = (v.as_ptr(), p.as_ptr(), offs.len());
    for c in (0..out.len()).step_by(16) {
        // a[e]: lane e's accumulator (rows j with j % 16 = e), 16 columns c..c+16.
        let mut a = [_mm512_setzero_ps(); 16];
        let mut j = 0;
        while j + 16 <= rows {
            for (e, ae) in a.iter_mut().enumerate() {
                let x = _mm512_loadu_ps(vp.add(offs[j + e] + c));
                *ae = _mm512_fmadd_ps(x, _mm512_set1_ps(*pp.add(j + e)), *ae);
            }
            j += 16;
        }
        for (e, ae) in a.iter_mut().enumerate() {
            if j + e < rows {
                let x = _mm512_loadu_ps(vp.add(offs[j + e] + c));
                *ae = _mm512_fmadd_ps(x, _mm512_set1_ps(*pp.add(j + e)), *ae);
            }
        }
        _mm512_storeu_ps(out.as_mut_ptr().add(c), reduce16_regs(a));
    }
}

/// `dot_f32_tinyblas_columns_at_fast` for several queries' probability rows over the same rows
/// of V: `outs[q]` from `ps[q]` over V's first `rows[q]` rows. On AVX-512 (D a multiple of 16)
/// two or four queries share each pass over V: the 16 lane accumulators of a column block are
/// computed 16/Q lanes at a time for Q queries (the accumulators of Q queries × 16/Q lanes fill
/// the registers), so V is read once for Q queries instead of Q times. Every accumulator gets
/// the same FMAs in the same order; the rows past a query's own count that another query needs
/// are multiplied by that query's p, which must be zero there (softmax padding), and adding
/// 0·v to a sum that started at +0 changes no bit. Bit-identical to one call per query (tested).
pub fn dot_f32_tinyblas_columns_at_many(
    outs: &mut [&mut [f32]],
    v: &[f32],
    offs: &[usize],
    ps: &[&[f32]],
    rows: &[usize],
    acc: &mut Vec<f32>,
) {
    let nq = outs.len();
    assert!(
        ps.len() == nq && rows.len() == nq,
        "dot_f32_tinyblas_columns_at_many: {nq} outputs, {} p rows, {} counts",
        ps.len(),
        rows.len()
    );
    let most = rows.iter().copied().max().unwrap_or(0);
    #[cfg(target_arch = "x86_64")]
    if (nq == 2 || nq == 4)
        && outs.iter().all(|o| o.len() == outs[0].len())
        && std::arch::is_x86_feature_detected!("avx512f")
    {
        let d = outs[0].len();
        if d.is_multiple_of(16) {
            assert!(
                most <= offs.len()
                    && ps.iter().all(|p| p.len() >= most)
                    && offs[..most].iter().all(|&o| o + d <= v.len()),
                "dot_f32_tinyblas_columns_at_many: {most} rows of {d} in {} values",
                v.len()
            );
            // SAFETY: AVX-512 F detected; every read is inside v and each p (asserted).
            unsafe {
                if nq == 2 {
                    let [o0, o1] = outs else { unreachable!() };
                    return tinyblas_columns_many_avx512::<2, 8>([o0, o1], v, &offs[..most], [ps[0], ps[1]]);
                }
                let [o0, o1, o2, o3] = outs else { unreachable!() };
                return tinyblas_columns_many_avx512::<4, 4>(
                    [o0, o1, o2, o3],
                    v,
                    &offs[..most],
                    [ps[0], ps[1], ps[2], ps[3]],
                );
            }
        }
    }
    for ((o, p), &r) in outs.iter_mut().zip(ps).zip(rows) {
        dot_f32_tinyblas_columns_at_fast(o, v, &offs[..r], p, acc);
    }
}

/// Q queries, L = 16/Q lanes of each column block per pass over V.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tinyblas_columns_many_avx512<const Q: usize, const L: usize>(
    outs: [&mut &mut [f32]; Q],
    v: &[f32],
    offs: &[usize],
    ps: [&[f32]; Q],
) {
    use std::arch::x86_64::*;
    let (vp, rows, d) = (v.as_ptr(), offs.len(), outs[0].len());
    for c in (0..d).step_by(16) {
        let mut a = [[_mm512_setzero_ps(); 16]; Q];
        for pass in 0..16 / L {
            let mut x = [[_mm512_setzero_ps(); L]; Q];
            let mut j = 0;
            while j + 16 <= rows {
                for k in 0..L {
                    let e = pass * L + k;
                    let row = _mm512_loadu_ps(vp.add(offs[j + e] + c));
                    for q in 0..Q {
                        x[q][k] = _mm512_fmadd_ps(row, _mm512_set1_ps(*ps[q].get_unchecked(j + e)), x[q][k]);
                    }
                }
                j += 16;
            }
            for k in 0..L {
                let e = pass * L + k;
                if j + e < rows {
                    let row = _mm512_loadu_ps(vp.add(offs[j + e] + c));
                    for q in 0..Q {
                        x[q][k] = _mm512_fmadd_ps(row, _mm512_set1_ps(*ps[q].get_unchecked(j + e)), x[q][k]);
                    }
                }
            }
            for q in 0..Q {
                a[q][pass * L..pass * L + L].copy_from_slice(&x[q]);
            }
        }
        for (q, aq) in a.into_iter().enumerate() {
            _mm512_storeu_ps(outs[q].as_mut_ptr().add(c), reduce16_regs(aq));
        }
    }
}

fma_dispatch! {
    /// `soft_max` one lane at a time (the reference for the AVX-512 form, and every other CPU's).
    pub fn soft_max_portable(y: &mut [f32], x: &[f32], max: f32) -> f64 = soft_max_body;
}

fma_dispatch! {
    /// `swiglu` one lane at a time (the reference for the AVX-512 form, and every other CPU's).
    pub fn swiglu_portable(y: &mut [f32], g: &[f32], u: &[f32]) -> () = swiglu_body;
}

/// `ggml_vec_soft_max_f32` (AVX-512): y = expf(x − max) per element, and the sum,
/// accumulated in f64 one 16-element chunk at a time (each chunk `reduce16`ed in f32). The
/// caller pads the row with −∞ to a multiple of 16, as llama.cpp's KV cache is padded and
/// masked (masked lanes give exactly 0). With AVX-512 F/DQ, sixteen lanes per instruction,
/// ggml's own `ggml_v_expf` (bit-identical to the portable form, tested).
pub fn soft_max(y: &mut [f32], x: &[f32], max: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq") {
        assert!(x.len() == y.len() && x.len().is_multiple_of(16), "soft_max: {} into {}", x.len(), y.len());
        // SAFETY: AVX-512 F/DQ detected; whole 16-element chunks of x and y (asserted).
        return unsafe { x86::soft_max_avx512(y, x, max) };
    }
    soft_max_portable(y, x, max)
}

/// `ggml_vec_swiglu_f32` (AVX-512): y = silu(g) · u, sixteen lanes per instruction where the
/// CPU has AVX-512 F/DQ (ggml's `ggml_v_silu`), the leftover lanes one at a time.
pub fn swiglu(y: &mut [f32], g: &[f32], u: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq") {
        assert!(g.len() >= y.len() && u.len() >= y.len(), "swiglu: {} from {} and {}", y.len(), g.len(), u.len());
        // SAFETY: AVX-512 F/DQ detected; every access inside y, g and u (asserted).
        return unsafe { x86::swiglu_avx512(y, g, u) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        assert!(g.len() >= y.len() && u.len() >= y.len(), "swiglu: {} from {} and {}", y.len(), g.len(), u.len());
        // SAFETY: AVX2 and FMA detected; every access inside y, g and u (asserted).
        return unsafe { x86::swiglu_avx2(y, g, u) };
    }
    swiglu_portable(y, g, u)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// ggml's AVX-512 `ggml_v_expf`, sixteen lanes: `expf`'s operations as vectors (the
    /// scaling by 2ⁿ one `vscalefps`, which `expf` emulates in f64).
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
    pub unsafe fn expf16(x: __m512) -> __m512 {
        let c = |b: u32| _mm512_set1_ps(f32::from_bits(b));
        let r = c(R);
        let z = _mm512_fmadd_ps(x, c(LOG2E), r);
        let n = _mm512_sub_ps(z, r);
        let b = _mm512_fnmadd_ps(n, c(LN2_LO), _mm512_fnmadd_ps(n, c(LN2_HI), x));
        let d = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
        let u = _mm512_mul_ps(b, b);
        let j = _mm512_fmadd_ps(
            _mm512_fmadd_ps(_mm512_fmadd_ps(c(C5), b, c(C4)), u, _mm512_fmadd_ps(c(C3), b, c(C2))),
            u,
            _mm512_fmadd_ps(c(C1), b, _mm512_set1_ps(1.0)),
        );
        let res = _mm512_scalef_ps(j, n);
        if d == 0 {
            return res;
        }
        let zero = _mm512_setzero_ps();
        let alt = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, zero), _mm512_set1_ps(f32::INFINITY), zero);
        _mm512_mask_blend_ps(d, res, alt)
    }

    /// `expf` (the AVX-512 `ggml_v_expf`'s lanes) on AVX2, eight lanes: the same operations,
    /// and the scaling by 2ⁿ as `expf` does it, in f64 (j·2ⁿ exact there, one rounding back to
    /// f32: what `vscalefps` gives), so the bits of `expf` and of the AVX-512 form.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn expf8(x: __m256) -> __m256 {
        let c = |b: u32| _mm256_set1_ps(f32::from_bits(b));
        let r = c(R);
        let z = _mm256_fmadd_ps(x, c(LOG2E), r);
        let n = _mm256_sub_ps(z, r);
        let b = _mm256_fnmadd_ps(n, c(LN2_LO), _mm256_fnmadd_ps(n, c(LN2_HI), x));
        let u = _mm256_mul_ps(b, b);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(_mm256_fmadd_ps(c(C5), b, c(C4)), u, _mm256_fmadd_ps(c(C3), b, c(C2))),
            u,
            _mm256_fmadd_ps(c(C1), b, _mm256_set1_ps(1.0)),
        );
        // |n| > 192: 0 or ∞ (and n's integer below is not used there).
        let big = _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_andnot_ps(_mm256_set1_ps(-0.0), n), _mm256_set1_ps(192.0));
        let nb = _mm256_blendv_ps(n, _mm256_setzero_ps(), big);
        let ni = _mm256_cvtps_epi32(nb); // n is an integer in [−192, 192]
        let bias = _mm256_set1_epi64x(1023);
        let p2 =
            |h: __m128i| _mm256_castsi256_pd(_mm256_slli_epi64::<52>(_mm256_add_epi64(_mm256_cvtepi32_epi64(h), bias)));
        let lo = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(j)), p2(_mm256_castsi256_si128(ni)));
        let hi = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps::<1>(j)), p2(_mm256_extracti128_si256::<1>(ni)));
        let res = _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo));
        if _mm256_movemask_ps(big) == 0 {
            return res;
        }
        let alt = _mm256_blendv_ps(
            _mm256_set1_ps(f32::INFINITY),
            _mm256_setzero_ps(),
            _mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps()),
        );
        _mm256_blendv_ps(res, alt, big)
    }

    /// `swiglu_avx512` on AVX2: eight lanes at a time through `expf8`, the leftover lanes one
    /// at a time; the portable form's bits.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn swiglu_avx2(y: &mut [f32], g: &[f32], u: &[f32]) {
        let n = y.len();
        let (one, zero) = (_mm256_set1_ps(1.0), _mm256_setzero_ps());
        let mut i = 0;
        while i + 8 <= n {
            let gv = _mm256_loadu_ps(g.as_ptr().add(i));
            let silu = _mm256_div_ps(gv, _mm256_add_ps(one, expf8(_mm256_sub_ps(zero, gv))));
            _mm256_storeu_ps(y.as_mut_ptr().add(i), _mm256_mul_ps(silu, _mm256_loadu_ps(u.as_ptr().add(i))));
            i += 8;
        }
        swiglu_body(&mut y[i..], &g[i..n], &u[i..n]);
    }

    /// gcc's `_mm512_reduce_add_ps` in registers (`reduce16`'s additions).
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
    unsafe fn reduce16_512(v: __m512) -> f32 {
        let t3 = _mm256_add_ps(_mm512_extractf32x8_ps::<1>(v), _mm512_castps512_ps256(v));
        let t6 = _mm_add_ps(_mm256_extractf128_ps::<1>(t3), _mm256_castps256_ps128(t3));
        let mut l = [0f32; 4];
        _mm_storeu_ps(l.as_mut_ptr(), t6);
        (l[0] + l[2]) + (l[1] + l[3])
    }

    #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
    pub unsafe fn soft_max_avx512(y: &mut [f32], x: &[f32], max: f32) -> f64 {
        let m = _mm512_set1_ps(max);
        let mut sum = 0f64;
        for i in (0..x.len()).step_by(16) {
            let v = expf16(_mm512_sub_ps(_mm512_loadu_ps(x.as_ptr().add(i)), m));
            _mm512_storeu_ps(y.as_mut_ptr().add(i), v);
            sum += reduce16_512(v) as f64;
        }
        sum
    }

    #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
    pub unsafe fn swiglu_avx512(y: &mut [f32], g: &[f32], u: &[f32]) {
        let n = y.len();
        let (one, zero) = (_mm512_set1_ps(1.0), _mm512_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            let gv = _mm512_loadu_ps(g.as_ptr().add(i));
            let silu = _mm512_div_ps(gv, _mm512_add_ps(one, expf16(_mm512_sub_ps(zero, gv))));
            _mm512_storeu_ps(y.as_mut_ptr().add(i), _mm512_mul_ps(silu, _mm512_loadu_ps(u.as_ptr().add(i))));
            i += 16;
        }
        swiglu_body(&mut y[i..], &g[i..n], &u[i..n]);
    }
}

#[inline(always)]
fn swiglu_body(y: &mut [f32], g: &[f32], u: &[f32]) {
    for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
        *y = silu(g) * u;
    }
}

#[inline(always)]
fn dot_f32_rows_body(out: &mut [f32], x: &[f32], stride: usize, y: &[f32], scale: f32) {
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot_f32_body(&x[j * stride..][..y.len()], y) * scale;
    }
}

#[inline(always)]
fn dot_f32_rows_at_body(out: &mut [f32], x: &[f32], offs: &[usize], y: &[f32], scale: f32) {
    for (o, &at) in out.iter_mut().zip(offs) {
        *o = dot_f32_body(&x[at..][..y.len()], y) * scale;
    }
}

#[inline(always)]
fn dot_f32_body(x: &[f32], y: &[f32]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let n = x.len();
    let np = n & !63;
    let mut acc = [[0f32; 16]; 4];
    for i in (0..np).step_by(64) {
        for (j, a) in acc.iter_mut().enumerate() {
            let (xs, ys) = (&x[i + 16 * j..i + 16 * j + 16], &y[i + 16 * j..i + 16 * j + 16]);
            for l in 0..16 {
                a[l] = xs[l].mul_add(ys[l], a[l]);
            }
        }
    }
    let mut r = [0f32; 16];
    for l in 0..16 {
        r[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    let mut s = reduce16(&r);
    for i in np..n {
        s = x[i].mul_add(y[i], s);
    }
    s
}

#[inline(always)]
fn dot_f32_tinyblas_body(x: &[f32], y: &[f32]) -> f32 {
    debug_assert!(x.len() == y.len() && x.len().is_multiple_of(16));
    let mut acc = [0f32; 16];
    for (xs, ys) in x.chunks_exact(16).zip(y.chunks_exact(16)) {
        for l in 0..16 {
            acc[l] = xs[l].mul_add(ys[l], acc[l]);
        }
    }
    reduce16(&acc)
}

const R: u32 = 0x4b400000; // 0x1.8p23
const LOG2E: u32 = 0x3fb8aa3b;
const LN2_HI: u32 = 0x3f317200;
const LN2_LO: u32 = 0x35bfbe8e;
const C5: u32 = 0x3c072010;
const C4: u32 = 0x3d2b9f17;
const C3: u32 = 0x3e2aaf33;
const C2: u32 = 0x3efffedb;
const C1: u32 = 0x3f7ffff6;

/// One lane of ggml's AVX-512 `ggml_v_expf` (vec.h; ARM's optimized-routines exp, ~1.5 ulp):
/// n = round(x·log2 e), b = x − n·ln2 (two FMAs), a degree-5 polynomial in b, scaled by 2ⁿ
/// with `vscalefps` (one rounding; done here in f64, where the product is exact). |n| > 192
/// gives 0 or ∞.
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    let f = f32::from_bits;
    let r = f(R);
    let z = x.mul_add(f(LOG2E), r);
    let n = z - r;
    let b = (-n).mul_add(f(LN2_LO), (-n).mul_add(f(LN2_HI), x));
    let u = b * b;
    let j = f(C5).mul_add(b, f(C4)).mul_add(u, f(C3).mul_add(b, f(C2))).mul_add(u, f(C1).mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    // 2ⁿ exactly in f64 (n is an integer in [−192, 192]).
    let p2 = f64::from_bits(((n as i64 + 1023) as u64) << 52);
    (j as f64 * p2) as f32
}

/// ggml's AVX-512 `ggml_v_silu`: x / (1 + expf(0 − x)).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + expf(0.0 - x))
}

#[inline(always)]
fn soft_max_body(y: &mut [f32], x: &[f32], max: f32) -> f64 {
    debug_assert!(x.len() == y.len() && x.len().is_multiple_of(16));
    let mut sum = 0f64;
    for (yc, xc) in y.chunks_exact_mut(16).zip(x.chunks_exact(16)) {
        let mut v = [0f32; 16];
        for l in 0..16 {
            v[l] = expf(xc[l] - max);
        }
        yc.copy_from_slice(&v);
        sum += reduce16(&v) as f64;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The register-accumulator P·V gives the portable one's bits, for row counts with and
    /// without a partial last group of 16.
    #[test]
    fn tinyblas_columns_fast_is_the_portable_kernel_bit_for_bit() {
        let mut r = crate::rng::Rng::new(9);
        let (d, stride) = (64, 192);
        for rows in [1usize, 15, 16, 37, 80] {
            let v: Vec<f32> = (0..rows * stride).map(|_| r.normal() as f32).collect();
            let p: Vec<f32> =
                (0..rows.next_multiple_of(16)).map(|j| if j < rows { r.uniform() as f32 } else { 0.0 }).collect();
            let (mut want, mut got, mut acc) = (vec![0f32; d], vec![0f32; d], Vec::new());
            dot_f32_tinyblas_columns(&mut want, &v, stride, rows, &p, &mut acc);
            let offs: Vec<usize> = (0..rows).map(|j| j * stride).collect();
            dot_f32_tinyblas_columns_at_fast(&mut got, &v, &offs, &p, &mut acc);
            for t in 0..d {
                assert_eq!(got[t].to_bits(), want[t].to_bits(), "{rows} rows, column {t}: {} vs {}", got[t], want[t]);
            }
        }
    }

    /// The register form of a decoding row's scores gives `dot_f32_rows_at`'s bits.
    #[test]
    fn rows_fast_is_the_portable_kernel_bit_for_bit() {
        let mut r = crate::rng::Rng::new(17);
        let (d, stride, rows) = (64, 192, 70);
        let x: Vec<f32> = (0..rows * stride).map(|_| r.normal() as f32).collect();
        let mut y: Vec<f32> = (0..d).map(|_| r.normal() as f32).collect();
        let offs: Vec<usize> = (0..rows).map(|j| (j * 37 % rows) * stride).collect();
        for pass in 0..2 {
            if pass == 1 {
                y.iter_mut().for_each(|v| *v = 0.0); // all-zero dots: the sign of zero too
            }
            let (mut want, mut got) = (vec![0f32; rows], vec![0f32; rows]);
            dot_f32_rows_at(&mut want, &x, &offs, &y, 0.125);
            dot_f32_rows_at_fast(&mut got, &x, &offs, &y, 0.125);
            for j in 0..rows {
                assert_eq!(got[j].to_bits(), want[j].to_bits(), "row {j}: {} vs {}", got[j], want[j]);
            }
        }
    }

    /// The register form of a decoding row's P·V gives the portable kernel's bits, for row counts
    /// with and without partial groups of 16 and 64, rows scattered as in a paged cache.
    #[test]
    fn columns_fast_is_the_portable_kernel_bit_for_bit() {
        let mut r = crate::rng::Rng::new(13);
        let (d, stride) = (64, 192);
        for rows in [1usize, 15, 16, 37, 64, 80, 130] {
            let v: Vec<f32> = (0..rows * stride).map(|_| r.normal() as f32).collect();
            let offs: Vec<usize> = (0..rows).map(|j| (rows - 1 - j) * stride).collect();
            let p: Vec<f32> =
                (0..rows.next_multiple_of(64)).map(|j| if j < rows { r.uniform() as f32 } else { 0.0 }).collect();
            let (mut want, mut got, mut acc) = (vec![0f32; d], vec![0f32; d], Vec::new());
            dot_f32_columns_at(&mut want, &v, &offs, &p, &mut acc);
            dot_f32_columns_at_fast(&mut got, &v, &offs, &p, &mut acc);
            for t in 0..d {
                assert_eq!(got[t].to_bits(), want[t].to_bits(), "{rows} rows, column {t}: {} vs {}", got[t], want[t]);
            }
        }
    }

    /// Two or four queries through one pass over V give each query's own call's bits, with
    /// different row counts per query (p zero past each query's rows, as softmax leaves it).
    #[test]
    fn tinyblas_columns_many_are_each_query_alone_bit_for_bit() {
        let mut r = crate::rng::Rng::new(11);
        let (d, stride, tk) = (64, 192, 83);
        let v: Vec<f32> = (0..tk * stride).map(|_| r.normal() as f32).collect();
        let offs: Vec<usize> = (0..tk).map(|j| j * stride).collect();
        for counts in [vec![16usize, 37], vec![1, 83, 80, 15], vec![83, 83], vec![32, 48, 64, 83]] {
            let ps: Vec<Vec<f32>> = counts
                .iter()
                .map(|&n| (0..tk.next_multiple_of(16)).map(|j| if j < n { r.uniform() as f32 } else { 0.0 }).collect())
                .collect();
            let mut acc = Vec::new();
            let want: Vec<Vec<f32>> = ps
                .iter()
                .zip(&counts)
                .map(|(p, &n)| {
                    let mut o = vec![0f32; d];
                    dot_f32_tinyblas_columns_at_fast(&mut o, &v, &offs[..n], p, &mut acc);
                    o
                })
                .collect();
            let mut got = vec![vec![0f32; d]; counts.len()];
            let mut outs: Vec<&mut [f32]> = got.iter_mut().map(|o| &mut o[..]).collect();
            let pr: Vec<&[f32]> = ps.iter().map(|p| &p[..]).collect();
            dot_f32_tinyblas_columns_at_many(&mut outs, &v, &offs, &pr, &counts, &mut acc);
            for (q, (g, w)) in got.iter().zip(&want).enumerate() {
                let bad = g.iter().zip(w).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(bad, 0, "rows {counts:?}: query {q}: {bad} of {d} outputs differ");
            }
        }
    }

    /// 16 transposed keys at once give `dot_f32_rows`'s scores bit for bit, for head sizes
    /// with and without leftovers past the 64-element steps.
    #[test]
    fn keys16_scores_are_dot_f32_rows_bit_for_bit() {
        let mut r = crate::rng::Rng::new(5);
        for d in [64, 128, 80, 40] {
            let k: Vec<f32> = (0..16 * d).map(|_| r.normal() as f32).collect();
            let q: Vec<f32> = (0..d).map(|_| r.normal() as f32).collect();
            let mut want = [0f32; 16];
            dot_f32_rows(&mut want, &k, d, &q, 0.125);
            let mut kt = vec![0f32; 16 * d];
            for j in 0..16 {
                for e in 0..d {
                    kt[e * 16 + j] = k[j * d + e];
                }
            }
            let (mut got, mut fast) = ([0f32; 16], [0f32; 16]);
            dot_f32_keys16(&mut got, &kt, &q, 0.125);
            dot_f32_keys16_fast(&mut fast, &kt, &q, 0.125);
            // Two queries at once: the second another query (its own scores from dot_f32_rows).
            let q2: Vec<f32> = (0..d).map(|_| r.normal() as f32).collect();
            let mut want2 = [0f32; 16];
            dot_f32_rows(&mut want2, &k, d, &q2, 0.125);
            let (mut p0, mut p1) = ([0f32; 16], [0f32; 16]);
            dot_f32_keys16x2_fast([&mut p0, &mut p1], &kt, [&q, &q2], 0.125);
            for j in 0..16 {
                assert_eq!(got[j].to_bits(), want[j].to_bits(), "d {d}, key {j}: {} vs {}", got[j], want[j]);
                assert_eq!(fast[j].to_bits(), want[j].to_bits(), "d {d}, key {j}: fast {} vs {}", fast[j], want[j]);
                assert_eq!(p0[j].to_bits(), want[j].to_bits(), "d {d}, key {j}: pair, first");
                assert_eq!(p1[j].to_bits(), want2[j].to_bits(), "d {d}, key {j}: pair, second");
            }
        }
    }

    #[test]
    fn expf_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = expf(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.01173;
        }
        assert!(worst < 4e-7, "relative error {worst}");
        assert_eq!(expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf(0.0), 1.0);
        assert!(expf(f32::NAN).is_nan());
    }

    /// Bit for bit against ggml's AVX-512 code (scripts/ggml_expf_golden.sh): 8192 inputs from
    /// −200 to 200, so underflow to denormals and 0, and overflow to ∞, are covered.
    #[test]
    fn expf_is_ggmls() {
        let b = include_bytes!("ggml_data/expf.bin");
        let v: Vec<f32> = b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let bad: Vec<(f32, f32, f32)> = v
            .chunks_exact(2)
            .filter(|p| expf(p[0]).to_bits() != p[1].to_bits())
            .map(|p| (p[0], p[1], expf(p[0])))
            .collect();
        assert!(
            bad.is_empty(),
            "{} of {} differ, e.g. (x, ggml, ours) {:?}",
            bad.len(),
            v.len() / 2,
            &bad[..bad.len().min(3)]
        );
        assert!(v.chunks_exact(2).any(|p| p[1] == 0.0) && v.chunks_exact(2).any(|p| p[1].is_infinite()));
    }

    /// The AVX-512 soft_max and swiglu (ggml's `ggml_v_expf` as vectors) give the portable
    /// lane-at-a-time bits, and the vector expf gives ggml's on the golden inputs.
    #[test]
    fn avx512_soft_max_and_swiglu_are_the_portable_bits() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq") {
            let b = include_bytes!("ggml_data/expf.bin");
            let v: Vec<f32> = b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            let (xs, want): (Vec<f32>, Vec<f32>) = v.chunks_exact(2).map(|p| (p[0], p[1])).unzip();
            let n16 = xs.len() / 16 * 16;
            let mut y = vec![0f32; n16];
            // max 0: y = expf(x − 0) = expf(x).
            // SAFETY: features detected; whole 16-element chunks.
            unsafe { x86::soft_max_avx512(&mut y, &xs[..n16], 0.0) };
            for i in 0..n16 {
                assert_eq!(y[i].to_bits(), want[i].to_bits(), "expf({}) = {} vs ggml {}", xs[i], y[i], want[i]);
            }
            let mut r = crate::rng::Rng::new(3);
            for n in [16usize, 160, 512] {
                let mut x: Vec<f32> = (0..n).map(|_| (r.normal() * 8.0) as f32).collect();
                x[n - 3..].fill(f32::NEG_INFINITY);
                let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
                let (sa, sb) = (soft_max_portable(&mut a, &x, max), soft_max(&mut b, &x, max));
                assert_eq!(sa.to_bits(), sb.to_bits(), "soft_max sum, n {n}");
                assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "soft_max, n {n}");
            }
            for n in [1usize, 15, 16, 37, 1536] {
                let g: Vec<f32> =
                    (0..n).map(|i| if i % 97 == 5 { -150.0 } else { (r.normal() * 6.0) as f32 }).collect();
                let u: Vec<f32> = (0..n).map(|_| r.normal() as f32).collect();
                let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
                swiglu_portable(&mut a, &g, &u);
                swiglu(&mut b, &g, &u);
                assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "swiglu, n {n}");
            }
        }
    }

    /// The AVX2 swiglu (`expf8`) gives the portable bits, and its expf ggml's on the golden
    /// inputs (0 and ∞ past |n| 192 included).
    #[test]
    fn avx2_swiglu_and_expf_are_the_portable_bits() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            let b = include_bytes!("ggml_data/expf.bin");
            let v: Vec<f32> = b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            for p in v.chunks_exact(2).collect::<Vec<_>>().chunks_exact(8) {
                let xs: [f32; 8] = std::array::from_fn(|l| p[l][0]);
                let mut y = [0f32; 8];
                // SAFETY: AVX2 and FMA detected; eight lanes in and out.
                unsafe {
                    use std::arch::x86_64::*;
                    _mm256_storeu_ps(y.as_mut_ptr(), x86::expf8(_mm256_loadu_ps(xs.as_ptr())));
                }
                for l in 0..8 {
                    assert_eq!(y[l].to_bits(), p[l][1].to_bits(), "expf8({}) = {} vs ggml {}", xs[l], y[l], p[l][1]);
                }
            }
            let mut r = crate::rng::Rng::new(4);
            for n in [1usize, 7, 8, 37, 1536] {
                let g: Vec<f32> =
                    (0..n).map(|i| if i % 97 == 5 { -150.0 } else { (r.normal() * 6.0) as f32 }).collect();
                let u: Vec<f32> = (0..n).map(|_| r.normal() as f32).collect();
                let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
                swiglu_portable(&mut a, &g, &u);
                // SAFETY: AVX2 and FMA detected; slices of one length.
                unsafe { x86::swiglu_avx2(&mut b, &g, &u) };
                assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "swiglu, n {n}");
            }
        }
    }

    #[test]
    fn dots_match_plain_sums() {
        let x: Vec<f32> = (0..200).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let y: Vec<f32> = (0..200).map(|i| ((i * 53 % 97) as f32 - 48.0) / 5.0).collect();
        let want: f64 = x.iter().zip(&y).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!((dot_f32(&x, &y) as f64 - want).abs() < 1e-3);
        assert!(
            (dot_f32_tinyblas(&x[..192], &y[..192]) as f64
                - x[..192].iter().zip(&y).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>())
            .abs()
                < 1e-3
        );
    }

    /// The column forms give `dot_f32` / `dot_f32_tinyblas` of the transposed, zero-padded
    /// columns bit for bit (what attention computed before it stopped transposing V).
    #[test]
    fn column_dots_equal_dots_of_transposed_columns() {
        let mut rng = crate::rng::Rng::new(5);
        for (rows, d, stride) in [(1usize, 64usize, 64usize), (37, 64, 192), (64, 8, 8), (150, 64, 128), (200, 16, 48)]
        {
            let v: Vec<f32> = (0..rows * stride).map(|_| rng.normal() as f32).collect();
            let mut acc = Vec::new();
            for pad in [64, 16] {
                let n = rows.div_ceil(pad) * pad;
                // Probabilities with zeros (a window) and padding zeros.
                let p: Vec<f32> =
                    (0..n).map(|j| if j < rows && j % 7 != 3 { rng.uniform() as f32 } else { 0.0 }).collect();
                let col =
                    |t: usize| -> Vec<f32> { (0..n).map(|j| if j < rows { v[j * stride + t] } else { 0.0 }).collect() };
                let mut got = vec![0f32; d];
                if pad == 64 {
                    dot_f32_columns(&mut got, &v, stride, rows, &p, &mut acc);
                    for t in 0..d {
                        assert_eq!(got[t].to_bits(), dot_f32(&col(t), &p).to_bits(), "rows {rows} d {d} t {t}");
                    }
                } else {
                    dot_f32_tinyblas_columns(&mut got, &v, stride, rows, &p, &mut acc);
                    for t in 0..d {
                        assert_eq!(
                            got[t].to_bits(),
                            dot_f32_tinyblas(&col(t), &p).to_bits(),
                            "tinyblas rows {rows} d {d} t {t}"
                        );
                    }
                }
            }
        }
    }
}
