//! The plain float types as "block formats" of one element: F32, F16, BF16 (little-endian),
//! and the F16/BF16 matmul in llama.cpp's arithmetic (`matmul`).
//!
//! llama.cpp's CPU backend does not multiply F16/BF16 weights by f32 activations: it first
//! rounds each input row to the weight type (`from_float` of the type's `vec_dot_type`:
//! `_mm512_cvtps_ph`, round to nearest even, for F16; `GGML_FP32_TO_BF16` for BF16), then sums
//! in the order of the path `ggml_compute_forward_mul_mat` takes on the x86 AVX-512 build
//! (`Order`): llamafile's tinyBLAS for a matmul of ≥ 2 input rows whose shape it takes,
//! `ggml_vec_dot_f16`/`ggml_vec_dot_bf16` otherwise. BF16 dots there are `vdpbf16ps`
//! (AVX512_BF16): per lane, two bf16 products added one after the other, the odd element
//! first, each rounded once (products of two bf16 are exact in f32), subnormal inputs and
//! results flushed to zero. Every kernel here sums in those lanes and that order, so they all
//! give llama.cpp's bits: the scalar ones (the reference, on every CPU), AVX2+F16C and
//! AVX-512 (`vdpbf16ps` itself where the CPU has AVX512_BF16; elsewhere two FMAs, which differ
//! from it only where a bf16 input or a partial sum is subnormal).

use super::simd::Level;
use super::GgmlType;
use crate::ggml::reduce16;

pub fn dequantize_f32(b: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}
pub fn dequantize_f16(b: &[u8], out: &mut [f32]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: F16C and AVX detected.
        done = unsafe { dequantize_f16_f16c(b, out) };
    }
    for (o, c) in out[done..].iter_mut().zip(b[2 * done..].chunks_exact(2)) {
        *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
    }
}

/// The first multiple of 8 values of `dequantize_f16` by `vcvtph2ps` (an exact conversion, as
/// the scalar one); returns how many.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn dequantize_f16_f16c(b: &[u8], out: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let n = out.len().min(b.len() / 2) / 8 * 8;
    for i in (0..n).step_by(8) {
        let h = _mm_loadu_si128(b.as_ptr().add(2 * i) as *const __m128i);
        _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
    }
    n
}
pub fn dequantize_bf16(b: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
    }
}
pub fn quantize_f32(x: &[f32], out: &mut Vec<u8>) {
    for v in x {
        out.extend_from_slice(&v.to_le_bytes());
    }
}
pub fn quantize_f16(x: &[f32], out: &mut Vec<u8>) {
    for &v in x {
        out.extend_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
    }
}
/// Round to nearest even, as ggml's `GGML_FP32_TO_BF16` (NaNs kept quiet).
pub fn quantize_bf16(x: &[f32], out: &mut Vec<u8>) {
    for &v in x {
        out.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
    }
}

/// Which of llama.cpp's x86 code paths an F16/BF16 matmul takes, i.e. its summation order.
/// `ggml_compute_forward_mul_mat`: no repack or tiled kernel takes F16/BF16, so llamafile's
/// `tinyBLAS` runs when there are ≥ 2 input rows, the row length is a multiple of its vector
/// (16 f16 = one `__m512`; 32 bf16 = one `__m512bh`) and the output rows a multiple of 4;
/// everything else runs `ggml_vec_dot_*` (one output at a time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    /// `ggml_vec_dot_f16`: four 16-lane accumulators over 64-element steps (element e of a step
    /// in accumulator e/16, lane e%16, one FMA each), (a0+a2)+(a1+a3), `reduce16`, the last
    /// n mod 64 products added in f64. `ggml_vec_dot_bf16`: two 16-lane `vdpbf16ps`
    /// accumulators over 64-element steps (the first and second 32 elements; lane l takes
    /// elements 2l+1 then 2l), each `reduce16`ed, added in f64 with the leftover products.
    VecDot,
    /// tinyBLAS: one 16-lane accumulator over the whole row (F16: element e in lane e%16, one
    /// FMA; BF16: one `vdpbf16ps` per 32 elements, lane l taking 2l+1 then 2l), `reduce16`.
    TinyBlas,
}

impl Order {
    fn of(ty: GgmlType, rows: usize, cols: usize, n: usize) -> Order {
        let kn = if ty == GgmlType::BF16 { 32 } else { 16 };
        if n >= 2 && cols.is_multiple_of(kn) && rows.is_multiple_of(4) {
            Order::TinyBlas
        } else {
            Order::VecDot
        }
    }
}

/// An input row rounded to the weight type: `x` the values as f32 (exact), `h` their bits.
pub(crate) struct HalfRow {
    x: Vec<f32>,
    h: Vec<u16>,
}

fn half_row(ty: GgmlType, x: &[f32]) -> HalfRow {
    if ty == GgmlType::F16 {
        // The slice conversions (F16C eight at a time where the CPU has it, the same rounding:
        // nearest, ties to even): one value at a time, `f16::from_f32` with its per-call
        // feature check cost a tenth of a prompt's F16 matmuls.
        use half::slice::HalfFloatSliceExt;
        let mut hf = vec![half::f16::ZERO; x.len()];
        hf.convert_from_f32_slice(x);
        let mut xf = vec![0f32; x.len()];
        hf.convert_to_f32_slice(&mut xf);
        return HalfRow { x: xf, h: hf.iter().map(|v| v.to_bits()).collect() };
    }
    let h: Vec<u16> = x.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
    let x = h.iter().map(|&b| bf16_f32(b)).collect();
    HalfRow { x, h }
}

#[inline(always)]
fn bf16_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// y (n × rows) = x (n × cols) · wᵀ for F16/BF16 weights `w` (rows × cols, little-endian), in
/// llama.cpp's arithmetic (see the top of the file) at every `level`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    level: Level,
) {
    debug_assert!(matches!(ty, GgmlType::F16 | GgmlType::BF16));
    let (k, m, rb) = (cols, rows, 2 * cols);
    let order = Order::of(ty, m, k, n);
    #[cfg(target_arch = "x86_64")]
    if n > 4
        && ty == GgmlType::F16
        && order == Order::TinyBlas
        && level == Level::Avx512
        && std::arch::is_x86_feature_detected!("avx512f")
    {
        // Register tiles, written straight into y (many inputs: prefill).
        let xr = f16_rounded(x, n, k);
        let a: Vec<&[f32]> = xr.chunks_exact(k).collect();
        return super::qtensor::gemm_tasks(m, n, y, |(r0, r1), (i0, i1), o| {
            // SAFETY: AVX-512 F detected above; `o` as `gemm_tasks` says.
            unsafe { x86::f16_tinyblas_tiles_avx512(&w[r0 * rb..r1 * rb], rb, &a[i0..i1], o, m) }
        });
    }
    let acts: Vec<HalfRow> =
        if n == 1 { vec![half_row(ty, &x[..k])] } else { crate::par::map(n, |i| half_row(ty, &x[i * k..(i + 1) * k])) };
    // Blocks of output rows, each reading its weight rows once for all n inputs: one block per
    // thread for a few inputs (decode), 32 rows for more.
    let block = if n <= 4 { crate::par::few_rows_block(m) } else { 32 };
    let run = |yt: &mut [f32]| {
        crate::par::chunks_mut(yt, block * n, |bi, yb| {
            let r0 = bi * block;
            let w = &w[r0 * rb..(r0 + yb.len() / n) * rb];
            dot_rows(level, ty, order, w, rb, &acts, yb);
        })
    };
    super::qtensor::into_rows_of_y(m, n, y, run)
}

/// The rows of x (n × k) rounded to F16 and back to f32 (exact), one allocation, in parallel
/// blocks of rows: what the register tiles read (they need neither the bits nor a `HalfRow`
/// per row, whose 2n allocations a 16-thread prompt paid on every product).
#[cfg(target_arch = "x86_64")]
fn f16_rounded(x: &[f32], n: usize, k: usize) -> Vec<f32> {
    use half::slice::HalfFloatSliceExt;
    const ROWS: usize = 16;
    let mut out = crate::mem::zeros(n * k);
    crate::par::chunks_mut(&mut out, ROWS * k, |b, o| {
        let mut h = vec![half::f16::ZERO; k];
        for (r, orow) in o.chunks_exact_mut(k).enumerate() {
            h.convert_from_f32_slice(&x[(b * ROWS + r) * k..][..k]);
            h.convert_to_f32_slice(orow);
        }
    });
    out
}

/// y_i (n × rows_i) = x (n × cols) · w_iᵀ for several F16 matrices of the same cols (a prompt's
/// q/k/v, gate/up), many inputs (n > 4), on the AVX-512 register tiles: x rounded once, every
/// matrix's tiles in one parallel call. Each output is what `matmul` gives for its matrix alone
/// (the same rounding, tiles and order); None where `matmul` would not take the tiles for one
/// of them (then the caller multiplies them one by one).
///
/// With `swiglu` (two matrices of the same rows: gate and up) the one output is their gated
/// product, tile by tile (`qtensor::gemm_tasks_swiglu`).
pub(crate) fn matmul_many_f16(
    ws: &[(&[u8], usize)],
    cols: usize,
    x: &[f32],
    n: usize,
    level: Level,
    swiglu: bool,
) -> Option<Vec<Vec<f32>>> {
    #[cfg(target_arch = "x86_64")]
    {
        let tiles = n > 4
            && level == Level::Avx512
            && x.len() >= n * cols
            && ws.iter().all(|&(w, rows)| {
                w.len() >= rows * 2 * cols && Order::of(GgmlType::F16, rows, cols, n) == Order::TinyBlas
            })
            && std::arch::is_x86_feature_detected!("avx512f");
        if !tiles {
            return None;
        }
        if swiglu && (ws.len() != 2 || ws[0].1 != ws[1].1) {
            return None;
        }
        let xr = f16_rounded(x, n, cols);
        let a: Vec<&[f32]> = xr.chunks_exact(cols).collect();
        let ms: Vec<usize> = ws.iter().map(|&(_, rows)| rows).collect();
        let rb = 2 * cols;
        let product = |q: usize, (r0, r1): (usize, usize), (i0, i1): (usize, usize), o: *mut f32, ldo: usize| {
            // SAFETY: AVX-512 F detected above; `o` holds the block at stride ldo (the callers').
            unsafe { x86::f16_tinyblas_tiles_avx512(&ws[q].0[r0 * rb..r1 * rb], rb, &a[i0..i1], o, ldo) }
        };
        if swiglu {
            let mut y = crate::par::uninit::<f32>(n * ms[0]);
            super::qtensor::gemm_tasks_swiglu(ms[0], n, &mut y, product);
            // SAFETY: gemm_tasks_swiglu writes every element of y.
            return Some(vec![unsafe { crate::par::assume_init(y) }]);
        }
        let mut ys: Vec<Vec<f32>> = ms.iter().map(|&m| crate::mem::zeros(n * m)).collect();
        super::qtensor::gemm_tasks_many(&ms, n, &mut ys, |q, r, i, o| product(q, r, i, o, ms[q]));
        Some(ys)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (ws, cols, x, n, level, swiglu);
        None
    }
}

/// `matmul`'s inputs for a few rows (decode), for [`dot_rows_few`]: each rounded to `ty`.
pub(crate) fn half_rows(ty: GgmlType, x: &[f32], n: usize, cols: usize) -> Vec<HalfRow> {
    (0..n).map(|i| half_row(ty, &x[i * cols..(i + 1) * cols])).collect()
}

/// Rows of `w` (a block of a `rows` × `cols` matrix's rows) against `acts`, into out (block rows
/// × n): what `matmul` of the whole matrix computes for those rows (its order is chosen by the
/// whole matrix's shape, and each output is one row's dot alone), so a caller may cut the rows
/// of several matrices into one parallel call's tasks (`qtensor::matmul_few_many`).
pub(crate) fn dot_rows_few(
    level: Level,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    w: &[u8],
    acts: &[HalfRow],
    out: &mut [f32],
) {
    dot_rows(level, ty, Order::of(ty, rows, cols, acts.len()), w, 2 * cols, acts, out)
}

/// out (rows × n): each weight row of `w` against every input row.
fn dot_rows(level: Level, ty: GgmlType, order: Order, w: &[u8], rb: usize, acts: &[HalfRow], out: &mut [f32]) {
    let n = acts.len();
    #[cfg(target_arch = "x86_64")]
    if n == 1 && ty == GgmlType::F16 && order == Order::VecDot && level == Level::Avx512 && avx512f() {
        // SAFETY: AVX-512 F checked (cached).
        return unsafe { x86::f16_vecdot_matvec_avx512(w, rb, &acts[0].x, out) };
    }
    for (j, wr) in w.chunks_exact(rb).enumerate() {
        // tinyBLAS runs one dependent FMA chain per output: four outputs at a time overlap them.
        let mut i = 0;
        if order == Order::TinyBlas {
            while i + 4 <= n {
                let a = [&acts[i], &acts[i + 1], &acts[i + 2], &acts[i + 3]];
                let o = dot4_tinyblas(level, ty, wr, a);
                out[j * n + i..j * n + i + 4].copy_from_slice(&o);
                i += 4;
            }
        }
        for (i, a) in acts.iter().enumerate().skip(i) {
            out[j * n + i] = dot(level, ty, order, wr, a);
        }
    }
}

fn dot4_tinyblas(level: Level, ty: GgmlType, w: &[u8], a: [&HalfRow; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    match level {
        // SAFETY: the levels are chosen by run-time detection (AVX-512 checked again, as tests
        // may pin the level).
        Level::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => unsafe {
            return if ty == GgmlType::F16 {
                x86::f16_tinyblas4_avx512(w, [&a[0].x, &a[1].x, &a[2].x, &a[3].x])
            } else if bf16_instr() {
                x86::bf16_tinyblas4_dpbf16(w, [&a[0].h, &a[1].h, &a[2].h, &a[3].h])
            } else {
                x86::bf16_tinyblas4_avx512(w, [&a[0].h, &a[1].h, &a[2].h, &a[3].h])
            };
        },
        Level::Avx2 | Level::Avx512 => unsafe {
            return if ty == GgmlType::F16 {
                x86::f16_tinyblas4_avx2(w, [&a[0].x, &a[1].x, &a[2].x, &a[3].x])
            } else {
                x86::bf16_tinyblas4_avx2(w, [&a[0].h, &a[1].h, &a[2].h, &a[3].h])
            };
        },
        _ => {}
    }
    let _ = level;
    a.map(|a| dot_scalar(ty, Order::TinyBlas, w, a))
}

fn dot(level: Level, ty: GgmlType, order: Order, w: &[u8], a: &HalfRow) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match (level, ty, order) {
        // SAFETY: as in `dot4_tinyblas`.
        (Level::Avx512, _, _) if std::arch::is_x86_feature_detected!("avx512f") => unsafe {
            return match (ty, order) {
                (GgmlType::F16, Order::VecDot) => x86::f16_vecdot_avx512(w, &a.x),
                (GgmlType::F16, Order::TinyBlas) => x86::f16_tinyblas4_avx512(w, [&a.x; 4])[0],
                (_, Order::VecDot) if bf16_instr() => x86::bf16_vecdot_dpbf16(w, &a.h),
                (_, Order::VecDot) => x86::bf16_vecdot_avx512(w, &a.h),
                (_, Order::TinyBlas) if bf16_instr() => x86::bf16_tinyblas4_dpbf16(w, [&a.h; 4])[0],
                (_, Order::TinyBlas) => x86::bf16_tinyblas4_avx512(w, [&a.h; 4])[0],
            };
        },
        (Level::Avx2 | Level::Avx512, _, _) => unsafe {
            return match (ty, order) {
                (GgmlType::F16, Order::VecDot) => x86::f16_vecdot_avx2(w, &a.x),
                (GgmlType::F16, Order::TinyBlas) => x86::f16_tinyblas4_avx2(w, [&a.x; 4])[0],
                (_, Order::VecDot) => x86::bf16_vecdot_avx2(w, &a.h),
                (_, Order::TinyBlas) => x86::bf16_tinyblas4_avx2(w, [&a.h; 4])[0],
            };
        },
        _ => {}
    }
    let _ = level;
    dot_scalar(ty, order, w, a)
}

/// y (n × m) = x (n × k) · wᵀ for f32 weights `w` (m × k) in 4 × 6 register tiles on AVX-512
/// (`Level::Avx512`), each output one 16-lane accumulator over the row then `reduce16`
/// (tinyBLAS's F32 order; the same whatever the thread count or the split), split by
/// `gemm_tasks`, y resized to n·m and every element written. False (y untouched) without AVX-512, for k not a
/// multiple of 16, or for at most 4 inputs (the matvec's case).
pub fn f32_matmul_tiles(x: &[f32], w: &[f32], n: usize, k: usize, m: usize, y: &mut Vec<f32>) -> bool {
    #[cfg(target_arch = "x86_64")]
    if n > 4 && k >= 16 && k.is_multiple_of(16) && Level::detect() == Level::Avx512 && avx512f() {
        y.resize(n * m, 0.0);
        assert!(x.len() >= n * k && w.len() >= m * k, "f32 tiles: {n} × {k} by {m} × {k}");
        // SAFETY: the f32s of w as their bytes (u8 has no alignment; the length is in bytes).
        let wb = unsafe { std::slice::from_raw_parts(w.as_ptr() as *const u8, m * k * 4) };
        let a: Vec<&[f32]> = x[..n * k].chunks_exact(k).collect();
        let rb = 4 * k;
        super::qtensor::gemm_tasks(m, n, y, |(r0, r1), (i0, i1), o| {
            // SAFETY: AVX-512 F detected; `o` as `gemm_tasks` says.
            unsafe { x86::f32_tinyblas_tiles_avx512(&wb[r0 * rb..r1 * rb], rb, &a[i0..i1], o, m) }
        });
        return true;
    }
    let _ = (x, w, n, k, m, y);
    false
}

/// Whether the CPU has AVX-512 F (read once: asked per call).
#[cfg(target_arch = "x86_64")]
fn avx512f() -> bool {
    static B: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *B.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
}

/// Whether the CPU has `vdpbf16ps` (`SMELT_NO_AVX512BF16=1` takes the two-FMA kernels); read
/// once, as it is asked per dot product.
#[cfg(target_arch = "x86_64")]
fn bf16_instr() -> bool {
    static B: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *B.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512bf16") && std::env::var_os("SMELT_NO_AVX512BF16").is_none()
    })
}

/// The reference: llama.cpp's lanes and order written out (see `Order`).
fn dot_scalar(ty: GgmlType, order: Order, w: &[u8], a: &HalfRow) -> f32 {
    let wv = |i: usize| u16::from_le_bytes([w[2 * i], w[2 * i + 1]]);
    let n = a.x.len();
    match (ty, order) {
        (GgmlType::F16, Order::VecDot) => {
            let wf = |i: usize| half::f16::from_bits(wv(i)).to_f32();
            let np = n & !63;
            let mut acc = [[0f32; 16]; 4];
            for i in (0..np).step_by(64) {
                for (k, ak) in acc.iter_mut().enumerate() {
                    for l in 0..16 {
                        ak[l] = wf(i + 16 * k + l).mul_add(a.x[i + 16 * k + l], ak[l]);
                    }
                }
            }
            let mut r = [0f32; 16];
            for l in 0..16 {
                r[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
            }
            let mut s = reduce16(&r) as f64;
            for i in np..n {
                s += (wf(i) * a.x[i]) as f64;
            }
            s as f32
        }
        (GgmlType::F16, Order::TinyBlas) => {
            let mut acc = [0f32; 16];
            for i in 0..n {
                acc[i % 16] = half::f16::from_bits(wv(i)).to_f32().mul_add(a.x[i], acc[i % 16]);
            }
            reduce16(&acc)
        }
        (_, Order::VecDot) => {
            let np = n / 64 * 64;
            let (mut c1, mut c2) = ([0f32; 16], [0f32; 16]);
            for i in (0..np).step_by(64) {
                for l in 0..16 {
                    c1[l] =
                        dpbf16_lane(c1[l], [wv(i + 2 * l), wv(i + 2 * l + 1)], [a.h[i + 2 * l], a.h[i + 2 * l + 1]]);
                    c2[l] = dpbf16_lane(
                        c2[l],
                        [wv(i + 32 + 2 * l), wv(i + 33 + 2 * l)],
                        [a.h[i + 32 + 2 * l], a.h[i + 33 + 2 * l]],
                    );
                }
            }
            let mut s = reduce16(&c1) as f64 + reduce16(&c2) as f64;
            for i in np..n {
                s += (bf16_f32(wv(i)) * a.x[i]) as f64;
            }
            s as f32
        }
        (_, Order::TinyBlas) => {
            let mut c = [0f32; 16];
            for i in (0..n).step_by(32) {
                for l in 0..16 {
                    c[l] = dpbf16_lane(c[l], [wv(i + 2 * l), wv(i + 2 * l + 1)], [a.h[i + 2 * l], a.h[i + 2 * l + 1]]);
                }
            }
            reduce16(&c)
        }
    }
}

/// One lane of `vdpbf16ps`: acc + w₁a₁, then + w₀a₀, each rounded once (the products are
/// exact), subnormal inputs (the accumulator too) and results taken as zero (DAZ, FTZ), as the
/// instruction does (checked against it: `dpbf16_lane_is_the_instruction`).
#[inline(always)]
fn dpbf16_lane(acc: f32, w: [u16; 2], a: [u16; 2]) -> f32 {
    let daz = |b: u16| if b & 0x7f80 == 0 { bf16_f32(b & 0x8000) } else { bf16_f32(b) };
    let ftz = |v: f32| if v.is_subnormal() { f32::from_bits(v.to_bits() & 0x8000_0000) } else { v };
    let acc = ftz(daz(w[1]).mul_add(daz(a[1]), ftz(acc)));
    ftz(daz(w[0]).mul_add(daz(a[0]), acc))
}

/// The SIMD kernels: the lanes of `Order` in 512-bit registers (AVX-512) or as pairs of
/// 256-bit halves (AVX2), so each gives the scalar reference's bits.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::reduce16;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn store16(v: __m512) -> [f32; 16] {
        let mut r = [0f32; 16];
        _mm512_storeu_ps(r.as_mut_ptr(), v);
        r
    }

    #[inline(always)]
    unsafe fn store8x2(lo: __m256, hi: __m256) -> [f32; 16] {
        let mut r = [0f32; 16];
        _mm256_storeu_ps(r.as_mut_ptr(), lo);
        _mm256_storeu_ps(r.as_mut_ptr().add(8), hi);
        r
    }

    #[inline(always)]
    fn f16_tail(w: &[u8], a: &[f32], from: usize, mut s: f64) -> f64 {
        for i in from..a.len() {
            s += (half::f16::from_bits(u16::from_le_bytes([w[2 * i], w[2 * i + 1]])).to_f32() * a[i]) as f64;
        }
        s
    }

    #[inline(always)]
    fn bf16_tail(w: &[u8], a: &[u16], from: usize, mut s: f64) -> f64 {
        for i in from..a.len() {
            s += (super::bf16_f32(u16::from_le_bytes([w[2 * i], w[2 * i + 1]])) * super::bf16_f32(a[i])) as f64;
        }
        s
    }

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn f16_vecdot_avx512(w: &[u8], a: &[f32]) -> f32 {
        let n = a.len();
        let np = n & !63;
        let (wp, ap) = (w.as_ptr(), a.as_ptr());
        let mut s = [_mm512_setzero_ps(); 4];
        for i in (0..np).step_by(64) {
            for (k, sk) in s.iter_mut().enumerate() {
                let wk = _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(2 * (i + 16 * k)) as *const __m256i));
                *sk = _mm512_fmadd_ps(wk, _mm512_loadu_ps(ap.add(i + 16 * k)), *sk);
            }
        }
        let r = _mm512_add_ps(_mm512_add_ps(s[0], s[2]), _mm512_add_ps(s[1], s[3]));
        f16_tail(w, a, np, reduce16(&store16(r)) as f64) as f32
    }

    /// `reduce16` of a register in the same order, without a trip through memory: the halves
    /// added (v[i+8]+v[i]), then their halves (t3[i+4]+t3[i]), then (t6[0]+t6[2])+(t6[1]+t6[3]).
    #[inline(always)]
    unsafe fn reduce16_512(v: __m512) -> f32 {
        let t3 =
            _mm256_add_ps(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)), _mm512_castps512_ps256(v));
        let t6 = _mm_add_ps(_mm256_extractf128_ps(t3, 1), _mm256_castps256_ps128(t3));
        // (t6[2]+t6[0], t6[3]+t6[1]), then their sum.
        let u = _mm_add_ps(_mm_movehl_ps(t6, t6), t6);
        _mm_cvtss_f32(_mm_add_ss(u, _mm_shuffle_ps(u, u, 1)))
    }

    /// `f16_vecdot_avx512` for R weight rows at once (`w[r]` each the start of a row of
    /// `a.len()` values): each row's four accumulators, sums and leftovers as there, so every
    /// output has its bits; the R rows are R streams read side by side (decode: the weight
    /// matrix comes from memory, and one stream per core does not reach its bandwidth).
    #[inline(always)]
    pub unsafe fn f16_vecdot_rows_avx512<const R: usize>(w: [*const u8; R], a: &[f32]) -> [f32; R] {
        let n = a.len();
        let np = n & !63;
        let ap = a.as_ptr();
        let mut s = [[_mm512_setzero_ps(); 4]; R];
        for i in (0..np).step_by(64) {
            // Each stream's lines 1 KiB ahead (past this row's end: the stream's next row).
            for wr in w {
                // (`wrapping_add`: past the buffer's end for the last rows, which a prefetch may
                // name but `add` may not.)
                _mm_prefetch::<_MM_HINT_T0>(wr.wrapping_add(2 * i + 1024) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(wr.wrapping_add(2 * i + 1088) as *const i8);
            }
            for k in 0..4 {
                let av = _mm512_loadu_ps(ap.add(i + 16 * k));
                for r in 0..R {
                    let wk = _mm512_cvtph_ps(_mm256_loadu_si256(w[r].add(2 * (i + 16 * k)) as *const __m256i));
                    s[r][k] = _mm512_fmadd_ps(wk, av, s[r][k]);
                }
            }
        }
        // A loop, not `array::from_fn`: a closure does not inherit the target features, and
        // outside them the intrinsics are calls (that halved the decode's speed once).
        let mut out = [0f32; R];
        for (r, o) in out.iter_mut().enumerate() {
            let v = _mm512_add_ps(_mm512_add_ps(s[r][0], s[r][2]), _mm512_add_ps(s[r][1], s[r][3]));
            let mut t = reduce16_512(v) as f64;
            for i in np..n {
                let h = u16::from_le_bytes([*w[r].add(2 * i), *w[r].add(2 * i + 1)]);
                t += (half::f16::from_bits(h).to_f32() * a[i]) as f64;
            }
            *o = t as f32;
        }
        out
    }

    /// Rows of `w` (`rb` bytes apart) · one input in `ggml_vec_dot_f16`'s order, into out[j]:
    /// four rows per pass, taken from four equal runs of the rows (four sequential streams),
    /// then the leftover rows one at a time.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn f16_vecdot_matvec_avx512(w: &[u8], rb: usize, a: &[f32], out: &mut [f32]) {
        const R: usize = 4;
        let rows = out.len();
        assert!(rb >= 2 * a.len() && w.len() >= rows * rb, "f16 matvec: {rows} rows of {rb} bytes in {}", w.len());
        let wp = w.as_ptr();
        let run = rows / R;
        for p in 0..run {
            let mut rows4 = [wp; R];
            for (r, rp) in rows4.iter_mut().enumerate() {
                *rp = wp.add((p + r * run) * rb);
            }
            let d = f16_vecdot_rows_avx512::<R>(rows4, a);
            for (r, v) in d.into_iter().enumerate() {
                out[p + r * run] = v;
            }
        }
        for j in R * run..rows {
            out[j] = f16_vecdot_rows_avx512::<1>([wp.add(j * rb)], a)[0];
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f16_vecdot_avx2(w: &[u8], a: &[f32]) -> f32 {
        let n = a.len();
        let np = n & !63;
        let (wp, ap) = (w.as_ptr(), a.as_ptr());
        // Accumulator k of ggml's as two 256-bit halves: s[2k] lanes 0-7, s[2k+1] lanes 8-15.
        let mut s = [_mm256_setzero_ps(); 8];
        for i in (0..np).step_by(64) {
            for (h, sh) in s.iter_mut().enumerate() {
                let wh = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(2 * (i + 8 * h)) as *const __m128i));
                *sh = _mm256_fmadd_ps(wh, _mm256_loadu_ps(ap.add(i + 8 * h)), *sh);
            }
        }
        let lo = _mm256_add_ps(_mm256_add_ps(s[0], s[4]), _mm256_add_ps(s[2], s[6]));
        let hi = _mm256_add_ps(_mm256_add_ps(s[1], s[5]), _mm256_add_ps(s[3], s[7]));
        f16_tail(w, a, np, reduce16(&store8x2(lo, hi)) as f64) as f32
    }

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn f16_tinyblas4_avx512(w: &[u8], a: [&[f32]; 4]) -> [f32; 4] {
        let wp = w.as_ptr();
        let mut c = [_mm512_setzero_ps(); 4];
        for i in (0..a[0].len()).step_by(16) {
            let wv = _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(2 * i) as *const __m256i));
            for r in 0..4 {
                c[r] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(a[r].as_ptr().add(i)), c[r]);
            }
        }
        c.map(|c| reduce16(&store16(c)))
    }

    /// [reduce16(v₀), reduce16(v₁), reduce16(v₂), reduce16(v₃)] in registers, each in
    /// `reduce16`'s order: the halves of each added (v[i+8]+v[i]), then their halves
    /// (t3[i+4]+t3[i]), then (t6[0]+t6[2])+(t6[1]+t6[3]), four vectors per instruction.
    #[inline(always)]
    unsafe fn reduce16x4(v: [__m512; 4]) -> __m128 {
        // [v₀ t3, v₁ t3], [v₂ t3, v₃ t3]: 256-bit halves added.
        let ab = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b11_10_11_10>(v[0], v[1]),
            _mm512_shuffle_f32x4::<0b01_00_01_00>(v[0], v[1]),
        );
        let cd = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b11_10_11_10>(v[2], v[3]),
            _mm512_shuffle_f32x4::<0b01_00_01_00>(v[2], v[3]),
        );
        // [v₀ t6, v₁ t6, v₂ t6, v₃ t6]: the 128-bit halves of each t3 added.
        let t6 =
            _mm512_add_ps(_mm512_shuffle_f32x4::<0b11_01_11_01>(ab, cd), _mm512_shuffle_f32x4::<0b10_00_10_00>(ab, cd));
        // Per 128-bit lane: (t6[0]+t6[2], t6[1]+t6[3]), then their sum in element 0.
        let s = _mm512_add_ps(t6, _mm512_permute_ps::<0b01_00_11_10>(t6));
        let r = _mm512_add_ps(s, _mm512_permute_ps::<0b10_11_00_01>(s));
        _mm512_castps512_ps128(_mm512_permutexvar_ps(
            _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
            r,
        ))
    }

    /// 16 weights at `p` as f32 lanes: f16 converted (`F16`), else f32 loaded.
    #[inline(always)]
    unsafe fn load_w<const F16: bool>(p: *const u8) -> __m512 {
        if F16 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
        } else {
            _mm512_loadu_ps(p as *const f32)
        }
    }

    /// `f16_tinyblas4_avx512` (F16 weights; f32 weights with `F16` false, the same lanes and
    /// order) for four weight rows (`rb` bytes apart) × C inputs at once, each output's
    /// accumulator and order as there (a weight vector loaded once for C inputs, an input
    /// vector once for four rows), written to out[c·ldo + r] (the four rows' outputs of input c
    /// side by side). The first step's FMAs add to a zero register, as the loop's would to
    /// zeroed accumulators (an array of zeroed accumulators was a `memset` on the stack and 24
    /// reloads per tile), and the sums are reduced four at a time in registers. Not inlined:
    /// inlined into the loop over tiles, LLVM spilled accumulators inside the inner loop.
    #[inline(never)]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn tinyblas_tile4_avx512<const C: usize, const F16: bool>(
        w: &[u8],
        rb: usize,
        a: [&[f32]; C],
        out: *mut f32,
        ldo: usize,
    ) {
        const R: usize = 4;
        let es = if F16 { 2 } else { 4 };
        let k = a[0].len();
        assert!(
            k >= 16
                && k.is_multiple_of(16)
                && rb >= es * k
                && w.len() >= (R - 1) * rb + es * k
                && a.iter().all(|x| x.len() == k),
            "tile: {R} rows of {rb} bytes in {} bytes, inputs of {k}",
            w.len()
        );
        let wp = w.as_ptr();
        // (Loops, not closures: a closure does not inherit the target features, so it is not
        // inlined here.)
        let mut wv = [_mm512_setzero_ps(); R];
        for (r, v) in wv.iter_mut().enumerate() {
            *v = load_w::<F16>(wp.add(r * rb));
        }
        // Filled with a value the compiler cannot take for a constant, all overwritten below.
        let mut c = [[wv[0]; C]; R];
        let zero = _mm512_setzero_ps();
        for j in 0..C {
            let av = _mm512_loadu_ps(a[j].as_ptr());
            for r in 0..R {
                c[r][j] = _mm512_fmadd_ps(wv[r], av, zero);
            }
        }
        for i in (16..k).step_by(16) {
            for (r, v) in wv.iter_mut().enumerate() {
                *v = load_w::<F16>(wp.add(r * rb + es * i));
            }
            for j in 0..C {
                let av = _mm512_loadu_ps(a[j].as_ptr().add(i));
                for r in 0..R {
                    c[r][j] = _mm512_fmadd_ps(wv[r], av, c[r][j]);
                }
            }
        }
        for j in 0..C {
            _mm_storeu_ps(out.add(j * ldo), reduce16x4([c[0][j], c[1][j], c[2][j], c[3][j]]));
        }
    }

    /// Every row of `w` against every input of `a` in tinyBLAS's F16 order, 4 × 6 tiles (its
    /// own `gemm<4, 6>` shape on 32 registers: 24 accumulators), then one 4 × (n mod 6) tile
    /// for the last inputs (4 × 1 tiles there read each weight vector once per input, twice
    /// the cost per output); the rows are a multiple of 4, as `Order::of` requires:
    /// out[i·ldo + j] = row j · input i.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn f16_tinyblas_tiles_avx512(w: &[u8], rb: usize, a: &[&[f32]], out: *mut f32, ldo: usize) {
        tinyblas_tiles_avx512::<true>(w, rb, a, out, ldo)
    }

    /// `f16_tinyblas_tiles_avx512` for f32 weights (llama.cpp's tinyBLAS F32 order: one
    /// 16-lane accumulator per output over the row, `reduce16`); rows not a multiple of 4 end
    /// in single rows in the same order.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn f32_tinyblas_tiles_avx512(w: &[u8], rb: usize, a: &[&[f32]], out: *mut f32, ldo: usize) {
        let rows = w.len() / rb;
        let whole = rows - rows % 4;
        tinyblas_tiles_avx512::<false>(&w[..whole * rb], rb, a, out, ldo);
        for j in whole..rows {
            for (i, ai) in a.iter().enumerate() {
                *out.add(i * ldo + j) = f32_tinyblas_dot_avx512(&w[j * rb..], ai);
            }
        }
    }

    /// One output in tinyBLAS's F32 order (the tiles' lanes and `reduce16`).
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn f32_tinyblas_dot_avx512(w: &[u8], a: &[f32]) -> f32 {
        assert!(w.len() >= 4 * a.len() && a.len().is_multiple_of(16), "f32 dot: {} bytes, {} inputs", w.len(), a.len());
        let mut c = _mm512_setzero_ps();
        for i in (0..a.len()).step_by(16) {
            c = _mm512_fmadd_ps(load_w::<false>(w.as_ptr().add(4 * i)), _mm512_loadu_ps(a.as_ptr().add(i)), c);
        }
        reduce16_512(c)
    }

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn tinyblas_tiles_avx512<const F16: bool>(w: &[u8], rb: usize, a: &[&[f32]], out: *mut f32, ldo: usize) {
        let (rows, n) = (w.len() / rb, a.len());
        assert!(rows.is_multiple_of(4), "tiles: {rows} rows");
        let mut i = 0;
        while i < n {
            let c = (n - i).min(6);
            match c {
                6 => tile_columns::<6, F16>(w, rb, &a[i..], out.add(i * ldo), ldo),
                5 => tile_columns::<5, F16>(w, rb, &a[i..], out.add(i * ldo), ldo),
                4 => tile_columns::<4, F16>(w, rb, &a[i..], out.add(i * ldo), ldo),
                3 => tile_columns::<3, F16>(w, rb, &a[i..], out.add(i * ldo), ldo),
                2 => tile_columns::<2, F16>(w, rb, &a[i..], out.add(i * ldo), ldo),
                _ => tile_columns::<1, F16>(w, rb, &a[i..], out.add(i * ldo), ldo),
            }
            i += c;
        }
    }

    /// Inputs a[..C] against every row of `w` in 4 × C tiles: out[c·ldo + j] = row j · a[c].
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn tile_columns<const C: usize, const F16: bool>(
        w: &[u8],
        rb: usize,
        a: &[&[f32]],
        out: *mut f32,
        ldo: usize,
    ) {
        let rows = w.len() / rb;
        let ac: [&[f32]; C] = std::array::from_fn(|cc| a[cc]);
        for j in (0..rows).step_by(4) {
            tinyblas_tile4_avx512::<C, F16>(&w[j * rb..], rb, ac, out.add(j), ldo);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f16_tinyblas4_avx2(w: &[u8], a: [&[f32]; 4]) -> [f32; 4] {
        let wp = w.as_ptr();
        let mut lo = [_mm256_setzero_ps(); 4];
        let mut hi = [_mm256_setzero_ps(); 4];
        for i in (0..a[0].len()).step_by(16) {
            let wl = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(2 * i) as *const __m128i));
            let wh = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(2 * i + 16) as *const __m128i));
            for r in 0..4 {
                lo[r] = _mm256_fmadd_ps(wl, _mm256_loadu_ps(a[r].as_ptr().add(i)), lo[r]);
                hi[r] = _mm256_fmadd_ps(wh, _mm256_loadu_ps(a[r].as_ptr().add(i + 8)), hi[r]);
            }
        }
        let mut out = [0f32; 4];
        for (r, o) in out.iter_mut().enumerate() {
            *o = reduce16(&store8x2(lo[r], hi[r]));
        }
        out
    }

    /// 32 bf16 as `__m512bh` (the pairs of each 32-bit lane).
    #[inline(always)]
    unsafe fn load_bh(p: *const u8) -> __m512bh {
        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p as *const _))
    }

    /// A BF16 vec_dot (ggml's two 512-bit accumulators over 64 elements) and tinyBLAS 4-row
    /// kernel (one accumulator per row over 32), for a `dot(c, w, a)` step on 16 f32 lanes of
    /// 32 bf16 pairs and a `load` of 64 bytes: `vdpbf16ps` itself, or its two-FMA emulation.
    macro_rules! bf16_kernels_512 {
        ($features:literal, $vecdot:ident, $tinyblas4:ident, $load:ident, $dot:ident) => {
            #[target_feature(enable = $features)]
            pub unsafe fn $vecdot(w: &[u8], a: &[u16]) -> f32 {
                let n = a.len();
                let np = n / 64 * 64;
                let (wp, ap) = (w.as_ptr(), a.as_ptr() as *const u8);
                let (mut c1, mut c2) = (_mm512_setzero_ps(), _mm512_setzero_ps());
                for i in (0..np).step_by(64) {
                    c1 = $dot(c1, $load(wp.add(2 * i)), $load(ap.add(2 * i)));
                    c2 = $dot(c2, $load(wp.add(2 * i + 64)), $load(ap.add(2 * i + 64)));
                }
                bf16_tail(w, a, np, reduce16(&store16(c1)) as f64 + reduce16(&store16(c2)) as f64) as f32
            }

            #[target_feature(enable = $features)]
            pub unsafe fn $tinyblas4(w: &[u8], a: [&[u16]; 4]) -> [f32; 4] {
                let wp = w.as_ptr();
                let mut c = [_mm512_setzero_ps(); 4];
                for i in (0..a[0].len()).step_by(32) {
                    let wv = $load(wp.add(2 * i));
                    for r in 0..4 {
                        c[r] = $dot(c[r], wv, $load((a[r].as_ptr() as *const u8).add(2 * i)));
                    }
                }
                c.map(|c| reduce16(&store16(c)))
            }
        };
    }

    bf16_kernels_512!(
        "avx512f,avx512bf16,avx2,fma",
        bf16_vecdot_dpbf16,
        bf16_tinyblas4_dpbf16,
        load_bh,
        _mm512_dpbf16_ps
    );
    bf16_kernels_512!("avx512f,avx2,fma", bf16_vecdot_avx512, bf16_tinyblas4_avx512, ld512, dp512);

    /// `vdpbf16ps` by two FMAs: the odd element of each pair (the high half of the 32-bit
    /// lane), then the even one (the low half shifted up).
    #[inline(always)]
    unsafe fn dp512(c: __m512, w: __m512i, a: __m512i) -> __m512 {
        let hi = _mm512_set1_epi32(0xffff_0000u32 as i32);
        let c = _mm512_fmadd_ps(
            _mm512_castsi512_ps(_mm512_and_si512(w, hi)),
            _mm512_castsi512_ps(_mm512_and_si512(a, hi)),
            c,
        );
        _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(w, 16)), _mm512_castsi512_ps(_mm512_slli_epi32(a, 16)), c)
    }

    #[inline(always)]
    unsafe fn dp256(c: __m256, w: __m256i, a: __m256i) -> __m256 {
        let hi = _mm256_set1_epi32(0xffff_0000u32 as i32);
        let c = _mm256_fmadd_ps(
            _mm256_castsi256_ps(_mm256_and_si256(w, hi)),
            _mm256_castsi256_ps(_mm256_and_si256(a, hi)),
            c,
        );
        _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(w, 16)), _mm256_castsi256_ps(_mm256_slli_epi32(a, 16)), c)
    }

    #[inline(always)]
    unsafe fn ld512(p: *const u8) -> __m512i {
        _mm512_loadu_si512(p as *const _)
    }
    #[inline(always)]
    unsafe fn ld256(p: *const u8) -> __m256i {
        _mm256_loadu_si256(p as *const __m256i)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn bf16_vecdot_avx2(w: &[u8], a: &[u16]) -> f32 {
        let n = a.len();
        let np = n / 64 * 64;
        let (wp, ap) = (w.as_ptr(), a.as_ptr() as *const u8);
        // c1, c2 of ggml's as 256-bit halves (lanes 0-7: the first 16 elements of its 32).
        let mut c = [_mm256_setzero_ps(); 4];
        for i in (0..np).step_by(64) {
            for (h, ch) in c.iter_mut().enumerate() {
                *ch = dp256(*ch, ld256(wp.add(2 * i + 32 * h)), ld256(ap.add(2 * i + 32 * h)));
            }
        }
        bf16_tail(w, a, np, reduce16(&store8x2(c[0], c[1])) as f64 + reduce16(&store8x2(c[2], c[3])) as f64) as f32
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn bf16_tinyblas4_avx2(w: &[u8], a: [&[u16]; 4]) -> [f32; 4] {
        let wp = w.as_ptr();
        let mut lo = [_mm256_setzero_ps(); 4];
        let mut hi = [_mm256_setzero_ps(); 4];
        for i in (0..a[0].len()).step_by(32) {
            let (wl, wh) = (ld256(wp.add(2 * i)), ld256(wp.add(2 * i + 32)));
            for r in 0..4 {
                let ap = a[r].as_ptr() as *const u8;
                lo[r] = dp256(lo[r], wl, ld256(ap.add(2 * i)));
                hi[r] = dp256(hi[r], wh, ld256(ap.add(2 * i + 32)));
            }
        }
        let mut out = [0f32; 4];
        for (r, o) in out.iter_mut().enumerate() {
            *o = reduce16(&store8x2(lo[r], hi[r]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::rng::Rng::new(seed);
        (0..n).map(|_| r.normal() as f32).collect()
    }

    fn levels() -> Vec<Level> {
        let mut l = vec![Level::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if matches!(Level::detect(), Level::Avx2 | Level::Avx512) {
                l.push(Level::Avx2);
            }
            if Level::detect() == Level::Avx512 {
                l.push(Level::Avx512);
            }
        }
        l
    }

    /// Every level gives the scalar reference's bits, on both orders (rows % 4 = 0 and n ≥ 2
    /// take tinyBLAS; 37 rows or one input take vec_dot; one input's F16 matvec reads four rows
    /// at a time, the last rows mod 4 alone), with rows not a multiple of 64 (the
    /// f64 leftovers) and the remainder of the four-at-a-time tinyBLAS loop; and the reference
    /// is within rounding of the f64 dot product of the rounded values.
    #[test]
    fn every_level_matches_the_scalar_reference_bit_for_bit() {
        for ty in [GgmlType::F16, GgmlType::BF16] {
            for (rows, cols, n) in [
                (40, 576, 7),
                (37, 576, 3),
                (40, 576, 1),
                (37, 80, 1),
                (3, 1536, 1),
                (8, 96, 5),
                (12, 80, 2),
                (72, 96, 70),
                (16, 96, 9),
                (16, 96, 8),
            ] {
                let mut wb = Vec::new();
                super::super::quantize_row(ty, &rand(rows * cols, 1), &mut wb);
                let x = rand(n * cols, 2);
                let mut want = vec![0f32; n * rows];
                matmul(ty, &wb, rows, cols, &x, n, &mut want, Level::Scalar);
                for i in 0..n {
                    let a = half_row(ty, &x[i * cols..(i + 1) * cols]);
                    let mut wr = vec![0f32; cols];
                    for j in 0..rows {
                        super::super::dequantize_row(ty, &wb[j * 2 * cols..(j + 1) * 2 * cols], &mut wr);
                        let exact: f64 = wr.iter().zip(&a.x).map(|(w, a)| *w as f64 * *a as f64).sum();
                        let got = want[i * rows + j] as f64;
                        assert!(
                            (got - exact).abs() < 1e-4 * (1.0 + exact.abs()),
                            "{ty:?} [{rows}, {cols}] n {n}: {got} vs {exact}"
                        );
                    }
                }
                for level in levels() {
                    let mut y = vec![0f32; n * rows];
                    matmul(ty, &wb, rows, cols, &x, n, &mut y, level);
                    for (k, (a, b)) in want.iter().zip(&y).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "{ty:?} {level:?} [{rows}, {cols}] n {n} at {k}: {b:e} vs scalar {a:e}"
                        );
                    }
                }
            }
        }
    }

    /// The input rows' f16 rounding is `f16::from_f32`'s, value for value (the slice
    /// conversion takes F16C where the CPU has it): normals, subnormals, halfway cases, overflow.
    #[test]
    fn half_row_rounds_as_from_f32() {
        let mut x = rand(4096, 7);
        x.extend([0.0, -0.0, 65504.0, 65520.0, 1e6, -1e6, 6e-8, 3e-8, 1e-5, f32::INFINITY, 1.0 + 1.0 / 2048.0]);
        x.extend((0..64).map(|i| (i as f32 + 0.5) * 2f32.powi(-24)));
        let r = half_row(GgmlType::F16, &x);
        for (i, &v) in x.iter().enumerate() {
            let want = half::f16::from_f32(v);
            assert_eq!(r.h[i], want.to_bits(), "{v:e}");
            assert_eq!(r.x[i].to_bits(), want.to_f32().to_bits(), "{v:e}");
        }
    }

    #[test]
    fn the_order_follows_llama_cpp_path_choice() {
        assert_eq!(Order::of(GgmlType::F16, 576, 576, 1), Order::VecDot);
        assert_eq!(Order::of(GgmlType::F16, 576, 576, 2), Order::TinyBlas);
        assert_eq!(Order::of(GgmlType::F16, 578, 576, 9), Order::VecDot);
        assert_eq!(Order::of(GgmlType::F16, 576, 80, 9), Order::TinyBlas);
        assert_eq!(Order::of(GgmlType::BF16, 576, 80, 9), Order::VecDot);
    }

    /// The scalar `vdpbf16ps` lane against the instruction itself, where the CPU has it:
    /// random pairs of every magnitude, subnormal inputs and results included.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn dpbf16_lane_is_the_instruction() {
        if !std::arch::is_x86_feature_detected!("avx512bf16") {
            smelt_testing::skip(smelt_testing::Need::Cpu, "no AVX512_BF16 here");
            return;
        }
        let mut r = crate::rng::Rng::new(3);
        let mut bits = || -> u16 {
            // Any sign, exponents from subnormal to large, any mantissa (no inf/NaN).
            let e = (r.uniform() * 140.0) as u16;
            let m = (r.uniform() * 128.0) as u16;
            let s = if r.uniform() < 0.5 { 0x8000 } else { 0 };
            s | (e.min(254) << 7) | m
        };
        for _ in 0..20000 {
            let w: Vec<u16> = (0..32).map(|_| bits()).collect();
            let a: Vec<u16> = (0..32).map(|_| bits()).collect();
            let c: Vec<f32> = (0..16).map(|_| bf16_f32(bits()) * 3.0).collect();
            let wb: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            // SAFETY: checked above. One `vdpbf16ps` on (c, w, a).
            let got = unsafe { dp_once(&c, &wb, &a) };
            for l in 0..16 {
                let want = dpbf16_lane(c[l], [w[2 * l], w[2 * l + 1]], [a[2 * l], a[2 * l + 1]]);
                assert_eq!(
                    got[l].to_bits(),
                    want.to_bits(),
                    "lane {l}: c {:e} w {:04x} {:04x} a {:04x} {:04x}",
                    c[l],
                    w[2 * l],
                    w[2 * l + 1],
                    a[2 * l],
                    a[2 * l + 1]
                );
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn dp_once(c: &[f32], w: &[u8], a: &[u16]) -> [f32; 16] {
        use std::arch::x86_64::*;
        let bh = |p: *const u8| std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p as *const _));
        let r = _mm512_dpbf16_ps(_mm512_loadu_ps(c.as_ptr()), bh(w.as_ptr()), bh(a.as_ptr() as *const u8));
        let mut o = [0f32; 16];
        _mm512_storeu_ps(o.as_mut_ptr(), r);
        o
    }
}
