//! CPU GEMM: matrixmultiply's packed kernels (AVX2/FMA picked at run time), split across
//! rayon threads by blocks of output rows (or columns). Every output element is computed by one
//! call with the same k-order whatever the split, so results do not depend on the thread count.

use crate::float::Float;

/// A matrix operand: data plus (row stride, column stride), so transposes are free.
#[derive(Clone, Copy)]
pub struct Mat<'a, F> {
    pub data: &'a [F],
    pub rs: usize,
    pub cs: usize,
}

impl<'a, F> Mat<'a, F> {
    /// Row-major `rows × cols`.
    pub fn rm(data: &'a [F], cols: usize) -> Self {
        Mat { data, rs: cols, cs: 1 }
    }
    /// The transpose of a row-major `cols × rows` matrix.
    pub fn tr(data: &'a [F], rows_of_original_cols: usize) -> Self {
        Mat { data, rs: 1, cs: rows_of_original_cols }
    }
}

/// c (m×n, row-major) = a (m×k) · b (k×n) + beta·c.
pub fn gemm<F: Float>(m: usize, k: usize, n: usize, a: Mat<F>, b: Mat<F>, beta: F, c: &mut [F]) {
    assert!(c.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for v in &mut c[..m * n] {
            *v *= beta;
        }
        return;
    }
    // SAFETY: c holds m·n initialised values.
    unsafe { gemm_raw(m, k, n, a, b, beta, c.as_mut_ptr()) }
}

/// a (m×k) · b (k×n) as a new row-major m×n matrix. The output is not zeroed first: the
/// product writes every element without reading any (beta 0), which saves a pass over it
/// (calloc's memset was ~4% of a CPU LoRA step, 2026-12-04).
pub fn gemm_new<F: Float>(m: usize, k: usize, n: usize, a: Mat<F>, b: Mat<F>) -> Vec<F> {
    if m == 0 || n == 0 || k == 0 {
        return vec![F::ZERO; m * n];
    }
    let mut c: Vec<F> = Vec::with_capacity(m * n);
    // SAFETY: with beta 0 the GEMM (matrixmultiply: "if beta is zero, c need not be
    // initialised") writes all m·n elements of the capacity and reads none; then they are
    // initialised and the length may cover them.
    unsafe {
        gemm_raw(m, k, n, a, b, F::ZERO, c.as_mut_ptr());
        c.set_len(m * n);
    }
    c
}

/// `gemm` on a raw output: m, n, k > 0.
///
/// # Safety
/// `c` must address m·n elements, initialised unless beta is zero (then only written).
unsafe fn gemm_raw<F: Float>(m: usize, k: usize, n: usize, a: Mat<F>, b: Mat<F>, beta: F, c: *mut F) {
    let threads = crate::par::threads();
    let flops = m * n * k;
    // Small products are not worth a fork.
    let parts = if flops < 1 << 17 { 1 } else { threads };
    let cp = crate::par::SendPtr(c);
    if parts <= 1 || (m < 2 * parts && n < 2 * parts) {
        unsafe {
            F::gemm(
                m,
                k,
                n,
                F::ONE,
                a.data.as_ptr(),
                a.rs as isize,
                a.cs as isize,
                b.data.as_ptr(),
                b.rs as isize,
                b.cs as isize,
                beta,
                c,
                n as isize,
                1,
            );
        }
    } else if m >= n {
        // Split rows of C (and A). Every block packs all of B again, every column block all
        // of A: the split that repeats the smaller operand (B here: k × n ≤ m × k). One block
        // a thread, as repacking costs (two a thread measured 2% slower on a CPU LoRA step,
        // 2026-12-04, where B is a transposed weight and its packing a strided gather).
        let step = m.div_ceil(parts).max(8);
        crate::par::for_each(m.div_ceil(step), |i| {
            let r0 = i * step;
            let rows = step.min(m - r0);
            // SAFETY: blocks of rows are disjoint regions of c.
            unsafe {
                F::gemm(
                    rows,
                    k,
                    n,
                    F::ONE,
                    a.data.as_ptr().add(r0 * a.rs),
                    a.rs as isize,
                    a.cs as isize,
                    b.data.as_ptr(),
                    b.rs as isize,
                    b.cs as isize,
                    beta,
                    cp.get().add(r0 * n),
                    n as isize,
                    1,
                );
            }
        });
    } else {
        // Split columns of C (and B): A, the smaller, is the one packed again per block.
        let step = n.div_ceil(parts).max(16);
        crate::par::for_each(n.div_ceil(step), |i| {
            let c0 = i * step;
            let cols = step.min(n - c0);
            // SAFETY: blocks of columns are disjoint regions of c.
            unsafe {
                F::gemm(
                    m,
                    k,
                    cols,
                    F::ONE,
                    a.data.as_ptr(),
                    a.rs as isize,
                    a.cs as isize,
                    b.data.as_ptr().add(c0 * b.cs),
                    b.rs as isize,
                    b.cs as isize,
                    beta,
                    cp.get().add(c0),
                    n as isize,
                    1,
                );
            }
        });
    }
}

/// y (n×m) = x (n×k) · wᵀ (w is m×k, the Hugging Face `[out, in]` layout) + bias: f32 on
/// AVX-512 in register tiles (`Float::matmul_tiles`, the bias added after), else `gemm`.
pub fn linear_fwd<F: Float>(x: &[F], w: &[F], bias: Option<&[F]>, n: usize, k: usize, m: usize) -> Vec<F> {
    if n <= MATVEC_ROWS {
        return linear_matvec(x, w, bias, n, k, m);
    }
    let mut y = Vec::new();
    if F::matmul_tiles(x, w, n, k, m, &mut y) {
        if let Some(b) = bias {
            for row in y.chunks_mut(m) {
                for (v, &bb) in row.iter_mut().zip(b) {
                    *v += bb;
                }
            }
        }
        return y;
    }
    let Some(b) = bias else {
        return gemm_new(n, k, m, Mat::rm(x, k), Mat::tr(w, k));
    };
    let mut y = Vec::with_capacity(n * m);
    for _ in 0..n {
        y.extend_from_slice(b);
    }
    gemm(n, k, m, Mat::rm(x, k), Mat::tr(w, k), F::ONE, &mut y);
    y
}

/// Up to this many input rows, `linear_fwd` streams the weights once with dot products
/// instead of packing them for GEMM (decode is one row; packing would copy every weight).
const MATVEC_ROWS: usize = 4;

/// y = x·wᵀ for a few rows: each output is a contiguous dot product over a weight row, so
/// row i is the same whatever the other rows are (the server's batched decode relies on it).
pub fn linear_matvec<F: Float>(x: &[F], w: &[F], bias: Option<&[F]>, n: usize, k: usize, m: usize) -> Vec<F> {
    // Output columns in blocks; every block reads its weight rows once for all n inputs.
    const BLOCK: usize = 64;
    let mut yt = vec![F::ZERO; m * n]; // (m, n): blocks of output columns are contiguous
    crate::par::chunks_mut(&mut yt, BLOCK * n, |bi, yb| {
        for (jj, yrow) in yb.chunks_mut(n).enumerate() {
            let j = bi * BLOCK + jj;
            let wr = &w[j * k..(j + 1) * k];
            let b = bias.map_or(F::ZERO, |b| b[j]);
            for (i, y) in yrow.iter_mut().enumerate() {
                *y = crate::float::dot(&x[i * k..(i + 1) * k], wr) + b;
            }
        }
    });
    let mut y = vec![F::ZERO; n * m];
    for j in 0..m {
        for i in 0..n {
            y[i * m + j] = yt[j * n + i];
        }
    }
    y
}

/// dx = dy·w (n×k), the input's gradient of `linear_fwd` alone: what a frozen weight needs.
pub fn linear_dx<F: Float>(w: &[F], dy: &[F], n: usize, k: usize, m: usize) -> Vec<F> {
    gemm_new(n, m, k, Mat::rm(dy, m), Mat::rm(w, k))
}

/// Gradients of `linear_fwd`: dx = dy·w, dw = dyᵀ·x, db = column sums of dy.
pub fn linear_bwd<F: Float>(
    x: &[F],
    w: &[F],
    dy: &[F],
    n: usize,
    k: usize,
    m: usize,
    want_dx: bool,
    want_bias: bool,
) -> (Option<Vec<F>>, Vec<F>, Option<Vec<F>>) {
    let dx = want_dx.then(|| linear_dx(w, dy, n, k, m));
    let dw = gemm_new(m, n, k, Mat::tr(dy, m), Mat::rm(x, k));
    let db = want_bias.then(|| {
        let mut db = vec![F::ZERO; m];
        for row in dy.chunks(m) {
            for (d, &g) in db.iter_mut().zip(row) {
                *d += g;
            }
        }
        db
    });
    (dx, dw, db)
}
