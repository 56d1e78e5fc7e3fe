//! `QTensor`: a 2-D weight `[rows, cols]` kept in its block format, and the quantised matmul
//! that `linear` calls for it (through core's `QuantMatrix`). Each input row is quantised once
//! to the weight type's activation format (Q8_0, Q8_1 or Q8_K, as llama.cpp pairs them), then
//! every output is an integer dot product of a weight row with it. F16/BF16 matrices go to
//! `float_formats::matmul` (activations rounded to the weight type, llama.cpp's float order).
//!
//! SIMD: on x86-64 with AVX2+FMA+F16C (checked at run time with `is_x86_feature_detected!`),
//! the Q8_0/Q4_0/Q4_1/Q5_0/Q4_K/Q6_K dots run hand-written AVX2 kernels (`avx2.rs`), each in the
//! float order of the llama.cpp x86 path that matmul takes (`X86Path`); on aarch64
//! they run NEON kernels (`neon.rs`), with the dotprod extension's `sdot` where
//! `is_aarch64_feature_detected!("dotprod")` finds it (`SMELT_NO_DOTPROD=1` keeps plain NEON).
//! Everything else, and every other CPU, runs the scalar kernels, which are the reference the
//! tests compare against (`SMELT_NO_SIMD=1` forces them everywhere). Where the CPU also has
//! AVX-512 F/BW/VL and VNNI, the vec_dot-path dots of all six types and the repacked Q4_K GEMV
//! run `avx512.rs`'s kernels (four weight rows per pass for the 32-element blocks, `vpdpbusd`,
//! 512-bit K-quant unpacking), bit-identical to the AVX2 ones; the repacked Q4_0 and Q4_K GEMM
//! and the tiled paths keep the AVX2 kernels (`avx512_same_order`, `dot_rows_avx2`'s `avx512`
//! flag); `SMELT_NO_AVX512=1` keeps AVX2 throughout.
//!
//! Many input rows (prefill): the 32-element formats on AVX-512 run `tile512`'s 4 × 8 (and
//! 4 × 4) register tiles, the repacked Q4_K GEMM and tiled Q6_K take four inputs per kernel call, and
//! `gemm_tasks` splits the work over output rows and inputs; every output keeps the order of
//! the one-output kernel (docs/GGUF.md, "Many input rows").

use super::act::{quantize_q8, quantize_q8k, quantize_q8k_4x8, BlockQ8, BlockQ8K};
#[cfg(target_arch = "x86_64")]
use super::simd::avx512_detected;
use super::simd::Level;
use super::QuantMatrix;
use super::{dequantize_row, q4_0, q4_1, q4_k, q5_0, q6_k, q8_0, GgmlType};
use anyhow::{bail, Result};
use rayon::prelude::*;

#[derive(Clone)]
pub struct QTensor {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: Vec<u8>,
    /// The rows repacked for the AMX tiles, made by the first matmul that takes them.
    #[cfg(target_arch = "x86_64")]
    amx: std::sync::OnceLock<amx::Packed>,
}

#[cfg(target_arch = "x86_64")]
use super::amx;
/// Which AMX engine a matmul may use (none off x86-64).
#[cfg(target_arch = "x86_64")]
pub(crate) use amx::Engine as AmxEngine;
#[cfg(not(target_arch = "x86_64"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AmxEngine {}

/// The AMX engine this process uses (`amx::engine`), None off x86-64.
fn amx_engine() -> Option<AmxEngine> {
    #[cfg(target_arch = "x86_64")]
    return amx::engine();
    #[cfg(not(target_arch = "x86_64"))]
    None
}

impl std::fmt::Debug for QTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QTensor({} [{}, {}])", self.ty.name(), self.rows, self.cols)
    }
}

/// One input row in the activation format its weight type pairs with.
enum Act {
    F32(Vec<f32>),
    Q8(Vec<BlockQ8>),
    Q8K(Vec<BlockQ8K>),
}

impl QTensor {
    /// Wraps `data` (rows × row_bytes, llama.cpp's layout) as a `[rows, cols]` matrix.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self> {
        let row_bytes = ty.row_bytes(cols)?;
        if data.len() != rows * row_bytes {
            bail!("{} [{rows}, {cols}] needs {} bytes, got {}", ty.name(), rows * row_bytes, data.len());
        }
        Ok(QTensor {
            ty,
            rows,
            cols,
            row_bytes,
            data,
            #[cfg(target_arch = "x86_64")]
            amx: std::sync::OnceLock::new(),
        })
    }

    /// Quantises a row-major f32 matrix.
    pub fn quantize(ty: GgmlType, x: &[f32], rows: usize, cols: usize) -> Result<Self> {
        if x.len() != rows * cols {
            bail!("quantize: {} values for a [{rows}, {cols}] matrix", x.len());
        }
        let rb = ty.row_bytes(cols)?;
        let mut data = vec![0u8; rows * rb];
        data.par_chunks_mut(rb).zip(x.par_chunks(cols)).for_each(|(d, r)| {
            let mut v = Vec::with_capacity(rb);
            super::quantize_row(ty, r, &mut v);
            d.copy_from_slice(&v);
        });
        Self::new(ty, rows, cols, data)
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// This matrix as a `Tensor` (`Storage::Quant`), as a model parameter.
    pub fn into_tensor(self) -> crate::Tensor {
        crate::Tensor::from_quant(std::sync::Arc::new(self))
    }

    /// Input row `i` of `n` in its activation format. llama.cpp's repacked Q4_K quantises the
    /// rows it multiplies four at a time (all but the last n mod 4) with its 4x8 quantiser.
    fn act(&self, x: &[f32], i: usize, n: usize, path: X86Path) -> Act {
        match self.ty {
            GgmlType::F32 => Act::F32(x.to_vec()),
            GgmlType::F16 | GgmlType::BF16 => unreachable!("F16/BF16 matmuls run float_formats::matmul"),
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 => Act::Q8(quantize_q8(x)),
            GgmlType::Q4_K if path == X86Path::Repack && i < n - n % 4 => Act::Q8K(quantize_q8k_4x8(x)),
            GgmlType::Q4_K | GgmlType::Q6_K => Act::Q8K(quantize_q8k(x)),
        }
    }

    /// y (n × rows) = x (n × cols) · selfᵀ with the given kernel level (tests pin `Level::Scalar`),
    /// on AMX where this process has it on (`amx::engine`).
    pub fn matmul_with(&self, x: &[f32], n: usize, y: &mut [f32], level: Level) {
        self.matmul_amx_or(x, n, y, level, amx_engine())
    }

    /// `matmul_with` with the AMX engine given (tests: None for the AVX-512 path on any CPU,
    /// `Engine::Emulated` for the AMX order without AMX).
    pub(crate) fn matmul_amx_or(&self, x: &[f32], n: usize, y: &mut [f32], level: Level, amx: Option<AmxEngine>) {
        let (k, m) = (self.cols, self.rows);
        assert!(x.len() >= n * k && y.len() >= n * m);
        if matches!(self.ty, GgmlType::F16 | GgmlType::BF16) {
            // Activations rounded to the weight type, llama.cpp's order at every level.
            return super::float_formats::matmul(self.ty, &self.data, m, k, x, n, y, level);
        }
        let path = X86Path::pick(level, amx, self.ty, m, n);
        #[cfg(target_arch = "x86_64")]
        if let (X86Path::Amx, Some(engine)) = (path, amx) {
            // The activations (`act`'s Q8_0/Q8_1 blocks) quantised into the tiles' layout.
            // One to four rows go to `few` (but for the Portable engine): no 16-row padding.
            // (No rows: the tiles' layout, empty; `quantize_few` takes one to four.)
            let kind = amx::kind(self.ty).expect("the AMX path is picked only for its formats");
            let acts = if (1..=4).contains(&n) && engine != AmxEngine::Portable {
                amx::Acts::quantize_few_for(kind, x, n, k)
            } else {
                amx::Acts::quantize_for(kind, x, n, k)
            };
            return amx::matmul(engine, self.amx_packed(), &acts, y);
        }
        let acts: Vec<Act> = if n == 1 {
            vec![self.act(&x[..k], 0, 1, path)]
        } else {
            crate::par::map(n, |i| self.act(&x[i * k..(i + 1) * k], i, n, path))
        };
        #[cfg(target_arch = "x86_64")]
        if n > 4 && level == Level::Avx512 && path == X86Path::VecDot && avx512_detected() {
            if let Some(kind) = tile_kind(self.ty) {
                return self.matmul_tiles(kind, &acts, n, y);
            }
        }
        self.dot_blocks(level, path, &acts, y)
    }

    /// y (n × rows) from the activations of n input rows, on the given path.
    fn dot_blocks(&self, level: Level, path: X86Path, acts: &[Act], y: &mut [f32]) {
        let (n, m) = (acts.len(), self.rows);
        let rb = self.row_bytes;
        if n > 4 {
            // Many inputs (prefill): `gemm_tasks`' tasks of 32 rows × 64 inputs, so that a
            // narrow matrix still gives every thread work (576 rows in 32-row blocks alone are
            // 18 tasks: 16 threads would take two rounds for 1.1 tasks' work). Row and input
            // bounds stay multiples of 8 and 4, so the repacked/tiled kernels keep their eight
            // rows and the repacked GEMM its four inputs (the last n mod 4 take the GEMV, as
            // llama.cpp does).
            return gemm_tasks(m, n, y, |(r0, r1), (i0, i1), o| {
                let (rows, ni) = (r1 - r0, i1 - i0);
                let mut out = vec![0f32; rows * ni];
                dot_rows(level, path, self.ty, &self.data[r0 * rb..r1 * rb], rb, &acts[i0..i1], &mut out);
                for (j, oj) in out.chunks_exact(ni).enumerate() {
                    for (i, v) in oj.iter().enumerate() {
                        // SAFETY: `o` is y[i0·m + r0] and (i, j) lies in this task's block.
                        unsafe { *o.add(i * m + j) = *v };
                    }
                }
            });
        }
        // A few inputs (decode): one block of output rows per thread, so that the AVX-512
        // kernels' R streams are long; a multiple of 8, so the AVX2 repacked kernels take their
        // eight rows at once throughout.
        let block = crate::par::few_rows_block(m).next_multiple_of(8);
        let run = |yt: &mut [f32]| {
            crate::par::chunks_mut(yt, block * n, |bi, yb| {
                let r0 = bi * block;
                let rows = yb.len() / n;
                let w = &self.data[r0 * rb..(r0 + rows) * rb];
                dot_rows(level, path, self.ty, w, rb, acts, yb);
            })
        };
        into_rows_of_y(m, n, y, run)
    }
}

/// y_i (n × rows_i) = x (n × cols) · q_iᵀ for several matrices at once, for a few inputs
/// (n ≤ 4: decode's q/k/v, gate/up): the output rows of all of them cut into one set of blocks,
/// one parallel call instead of one per matrix (k and v alone are too few rows to give every
/// thread a block). Each row's numbers are `matmul`'s (the same acts and `dot_rows` or AMX-order
/// kernel, blocks a multiple of 16 rows from each matrix's start; F16/BF16 matrices
/// `float_formats::dot_rows_few`). None when the shapes do not fit.
pub(crate) fn matmul_few_many(qs: &[&QTensor], x: &[f32], n: usize) -> Option<Vec<Vec<f32>>> {
    matmul_few_many_amx_or(qs, x, n, amx_engine())
}

/// `matmul_few_many` with the AMX engine given (as `QTensor::matmul_amx_or`).
pub(crate) fn matmul_few_many_amx_or(
    qs: &[&QTensor],
    x: &[f32],
    n: usize,
    engine: Option<AmxEngine>,
) -> Option<Vec<Vec<f32>>> {
    let k = qs.first()?.cols;
    if n == 0 || n > 4 || x.len() < n * k {
        return None;
    }
    if qs.iter().any(|q| q.cols != k) {
        return None;
    }
    let level = Level::detect();
    // F16/BF16 matrices take `float_formats`' row dots (their inputs rounded to the weight type).
    let float = |q: &QTensor| matches!(q.ty, GgmlType::F16 | GgmlType::BF16);
    // The inputs rounded once per float type (q, k and v of an F16 model share them).
    let half_of = |ty: GgmlType| {
        if qs.iter().any(|q| q.ty == ty) {
            super::float_formats::half_rows(ty, x, n, k)
        } else {
            Vec::new()
        }
    };
    let (f16s, bf16s) = (half_of(GgmlType::F16), half_of(GgmlType::BF16));
    let paths: Vec<X86Path> = qs
        .iter()
        .map(|q| if float(q) { X86Path::VecDot } else { X86Path::pick(level, engine, q.ty, q.rows, n) })
        .collect();
    // The AMX-order kernel's operands instead where it runs: the packed rows (made here, not in
    // a task) and the inputs in the tiles' layout.
    let amx = |p: X86Path| p == X86Path::Amx;
    let acts: Vec<Vec<Act>> = qs
        .iter()
        .zip(&paths)
        .map(|(q, &p)| {
            if amx(p) || float(q) {
                Vec::new()
            } else {
                (0..n).map(|i| q.act(&x[i * k..(i + 1) * k], i, n, p)).collect()
            }
        })
        .collect();
    // The inputs in the tiles' layout once for every AMX matrix (they depend on x alone).
    // (Q6_K's are Q8_K rows, the others' Q8_0/Q8_1 blocks: each made once if some matrix needs it.)
    #[cfg(target_arch = "x86_64")]
    let amx_acts: [Option<amx::Acts>; 2] = [false, true].map(|q6k| {
        let needs = |(q, &p): (&&QTensor, &X86Path)| amx(p) && (q.ty == GgmlType::Q6_K) == q6k;
        qs.iter().zip(&paths).any(needs).then(|| {
            qs.iter().zip(&paths).filter(|&qp| needs(qp)).for_each(|(q, _)| {
                q.amx_packed();
            });
            // `few` alone reads them below (n ≤ 4): no 16-row padding.
            let kind = if q6k { amx::kind(GgmlType::Q6_K) } else { amx::kind(GgmlType::Q8_0) };
            amx::Acts::quantize_few_for(kind.expect("an AMX format"), x, n, k)
        })
    });
    let total: usize = qs.iter().map(|q| q.rows).sum();
    let block = crate::par::few_rows_block(total).next_multiple_of(16);
    let mut yts: Vec<Vec<f32>> = qs.iter().map(|q| vec![0f32; q.rows * n]).collect();
    {
        let pieces: Vec<crate::par::Pieces<f32>> =
            yts.iter_mut().map(|y| crate::par::Pieces::new(y, block * n)).collect();
        let tasks: Vec<(usize, usize)> =
            pieces.iter().enumerate().flat_map(|(qi, p)| (0..p.count()).map(move |b| (qi, b))).collect();
        crate::par::for_each(tasks.len(), |t| {
            let (qi, b) = tasks[t];
            let q = qs[qi];
            // SAFETY: task t is the only one that takes piece b of matrix qi.
            let yb = unsafe { pieces[qi].take(b) };
            let (r0, rb) = (b * block, q.row_bytes);
            let r1 = r0 + yb.len() / n;
            #[cfg(target_arch = "x86_64")]
            if let (true, Some(a)) = (amx(paths[qi]), &amx_acts[(q.ty == GgmlType::Q6_K) as usize]) {
                // SAFETY: the AMX path is taken at Level::Avx512 only (AVX-512 VNNI present);
                // yb holds rows r0..r1 × n inputs, element (j, i) at (j − r0)·n + i, and r0 is a
                // multiple of 16 (the block is).
                return unsafe { amx::few(q.amx_packed(), (r0 / 16, r1.div_ceil(16)), a, yb.as_mut_ptr(), 1, n) };
            }
            let w = &q.data[r0 * rb..r1 * rb];
            if float(q) {
                let acts = if q.ty == GgmlType::F16 { &f16s } else { &bf16s };
                return super::float_formats::dot_rows_few(level, q.ty, q.rows, k, w, acts, yb);
            }
            dot_rows(level, paths[qi], q.ty, w, rb, &acts[qi], yb);
        });
    }
    Some(
        yts.into_iter()
            .zip(qs)
            .map(|(yt, q)| {
                if n == 1 {
                    return yt;
                }
                let mut y = vec![0f32; n * q.rows];
                transpose_into(q.rows, n, &yt, &mut y);
                y
            })
            .collect(),
    )
}

/// y_i (n × rows_i) = x (n × cols) · q_iᵀ for several matrices of the 32-element formats at
/// once, for many inputs (n > 4: a prompt's or a server step's q/k/v, gate/up) on AVX-512: the
/// inputs quantised once for all of them, and every matrix's `gemm_tasks` blocks (32 rows × 64
/// inputs) in one parallel call, so the short k and v products do not each wait for their own
/// fork and join. Each output is `matmul`'s (the same activations, the same `tile512` tiles or
/// AMX tiles). None where `matmul` would take neither for every matrix.
pub(crate) fn matmul_many_tiles(qs: &[&QTensor], x: &[f32], n: usize) -> Option<Vec<Vec<f32>>> {
    matmul_many_tiles_amx_or(qs, x, n, amx_engine())
}

/// `matmul_many_tiles` with the AMX engine given (as `QTensor::matmul_amx_or`).
pub(crate) fn matmul_many_tiles_amx_or(
    qs: &[&QTensor],
    x: &[f32],
    n: usize,
    engine: Option<AmxEngine>,
) -> Option<Vec<Vec<f32>>> {
    many_tiles(qs, x, n, engine, false)
}

/// swiglu(x·gᵀ, x·uᵀ) (n × rows) for many inputs where `matmul_many_tiles` takes both: each
/// task multiplies its block of both matrices into its own buffers and gates them there
/// (`gemm_tasks_swiglu`), so neither product is written whole; the same bits as the products
/// and then `ops::swiglu`. None where `matmul_many_tiles` would give None.
pub(crate) fn swiglu_many_tiles(g: &QTensor, u: &QTensor, x: &[f32], n: usize) -> Option<Vec<f32>> {
    swiglu_many_tiles_amx_or(g, u, x, n, amx_engine())
}

/// `swiglu_many_tiles` with the AMX engine given.
pub(crate) fn swiglu_many_tiles_amx_or(
    g: &QTensor,
    u: &QTensor,
    x: &[f32],
    n: usize,
    engine: Option<AmxEngine>,
) -> Option<Vec<f32>> {
    if g.rows != u.rows {
        return None;
    }
    many_tiles(&[g, u], x, n, engine, true)?.pop()
}

/// `matmul_many_tiles` (swiglu false: one product per matrix) or `swiglu_many_tiles` (true: qs
/// are gate and up, one gated output).
fn many_tiles(qs: &[&QTensor], x: &[f32], n: usize, engine: Option<AmxEngine>, swiglu: bool) -> Option<Vec<Vec<f32>>> {
    #[cfg(target_arch = "x86_64")]
    {
        let k = qs.first()?.cols;
        if n <= 4 || x.len() < n * k || Level::detect() != Level::Avx512 || !avx512_detected() {
            return None;
        }
        if qs.iter().all(|q| q.ty == GgmlType::F16 && q.cols == k) {
            let ws: Vec<(&[u8], usize)> = qs.iter().map(|q| (&q.data[..], q.rows)).collect();
            return super::float_formats::matmul_many_f16(&ws, k, x, n, Level::Avx512, swiglu);
        }
        // Per matrix: Some(tile512 format) for the register tiles, None for AMX.
        let kinds: Vec<Option<u8>> = qs
            .iter()
            .map(|q| match X86Path::pick(Level::Avx512, engine, q.ty, q.rows, n) {
                _ if q.cols != k => None,
                X86Path::Amx => Some(None),
                X86Path::VecDot => tile_kind(q.ty).map(Some),
                _ => None,
            })
            .collect::<Option<_>>()?;
        // The 32-element formats all pair with the same activation blocks (`QTensor::act`), as
        // rows for the register tiles, in the tiles' layout for AMX.
        let tiles = kinds.iter().any(Option::is_some);
        let acts: Vec<Vec<BlockQ8>> =
            if tiles { crate::par::map(n, |i| quantize_q8(&x[i * k..(i + 1) * k])) } else { Vec::new() };
        let a: Vec<&[BlockQ8]> = acts.iter().map(|v| &v[..]).collect();
        let eights = if tiles { eights(&a) } else { Vec::new() };
        // AMX matrices: Q6_K's activations are Q8_K rows (`Acts::quantize_for`), the others'
        // the 32-element blocks; each made once where some matrix needs it.
        let on_amx = |q6k: bool| qs.iter().zip(&kinds).any(|(q, kd)| kd.is_none() && (q.ty == GgmlType::Q6_K) == q6k);
        let amx_acts = match on_amx(false) {
            false => None,
            true if tiles => Some(amx::Acts::new(&a)),
            true => Some(amx::Acts::quantize(x, n, k)),
        };
        let amx_acts_k = match (on_amx(true), amx::kind(GgmlType::Q6_K)) {
            (true, Some(kind)) => Some(amx::Acts::quantize_for(kind, x, n, k)),
            _ => None,
        };
        for (q, kind) in qs.iter().zip(&kinds) {
            if kind.is_none() {
                q.amx_packed();
            }
        }
        // Block (r0..r1) × (i0..i1) of matrix qi at o, out[i·ldo + j].
        let product = |qi: usize, (r0, r1): (usize, usize), (i0, i1): (usize, usize), o: *mut f32, ldo: usize| {
            let q = qs[qi];
            match (kinds[qi], engine, if q.ty == GgmlType::Q6_K { &amx_acts_k } else { &amx_acts }) {
                // SAFETY: AVX-512 detected; `o` holds the block at stride ldo (the callers').
                (Some(kind), ..) => unsafe {
                    let w = &q.data[r0 * q.row_bytes..r1 * q.row_bytes];
                    tiles_of_kind(kind, w, q.row_bytes, &a[i0..i1], &eights[i0 / 8..], o, ldo)
                },
                // SAFETY: the AMX path is picked only with an engine on (AMX granted, AVX-512);
                // `o` as above, which is `gemm_task`'s contract.
                (None, Some(e), Some(aa)) => unsafe {
                    amx::gemm_task(e, q.amx_packed(), (r0, r1), aa, (i0, i1), o, ldo)
                },
                _ => unreachable!("an AMX matrix without the AMX engine or its inputs"),
            }
        };
        if swiglu {
            let mut y = crate::par::uninit::<f32>(n * qs[0].rows);
            gemm_tasks_swiglu(qs[0].rows, n, &mut y, product);
            // SAFETY: gemm_tasks_swiglu writes every element of y.
            return Some(vec![unsafe { crate::par::assume_init(y) }]);
        }
        let mut ys: Vec<Vec<f32>> = qs.iter().map(|q| crate::mem::zeros(n * q.rows)).collect();
        let ms: Vec<usize> = qs.iter().map(|q| q.rows).collect();
        gemm_tasks_many(&ms, n, &mut ys, |qi, r, i, o| product(qi, r, i, o, ms[qi]));
        Some(ys)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (qs, x, n, engine, swiglu);
        None
    }
}

/// The Q8_0/Q8_1 blocks of activation rows of the 32-element formats.
#[cfg(target_arch = "x86_64")]
fn q8_rows(acts: &[Act]) -> Vec<&[BlockQ8]> {
    acts.iter()
        .map(|a| match a {
            Act::Q8(b) => &b[..],
            _ => unreachable!("the 32-element formats pair with Q8_0/Q8_1 activations"),
        })
        .collect()
}

/// The 32-element block formats that `tile512` multiplies in register tiles.
#[cfg(target_arch = "x86_64")]
fn tile_kind(ty: GgmlType) -> Option<u8> {
    use super::tile512 as t;
    match ty {
        GgmlType::Q8_0 => Some(t::Q8_0),
        GgmlType::Q4_0 => Some(t::Q4_0),
        GgmlType::Q4_1 => Some(t::Q4_1),
        GgmlType::Q5_0 => Some(t::Q5_0),
        _ => None,
    }
}

#[cfg(target_arch = "x86_64")]
impl QTensor {
    /// The rows in the AMX tiles' layout, repacked by the first call.
    pub(crate) fn amx_packed(&self) -> &amx::Packed {
        self.amx.get_or_init(|| {
            let kind = amx::kind(self.ty).expect("the AMX path takes Q8_0, Q4_0, Q4_1 and Q6_K only");
            amx::Packed::new(kind, &self.data, self.rows, self.cols)
        })
    }

    /// y (n × rows) for many inputs with `tile512`'s register tiles, written in place
    /// (`gemm_tasks` splits the work).
    fn matmul_tiles(&self, kind: u8, acts: &[Act], n: usize, y: &mut [f32]) {
        let m = self.rows;
        let a = q8_rows(acts);
        let eights = eights(&a);
        let rb = self.row_bytes;
        gemm_tasks(m, n, y, |(r0, r1), (i0, i1), o| {
            // SAFETY: AVX-512 was detected (`matmul_with`); `o` is as `gemm_tasks` says.
            unsafe { tiles_of_kind(kind, &self.data[r0 * rb..r1 * rb], rb, &a[i0..i1], &eights[i0 / 8..], o, m) }
        });
    }
}

/// Cuts y (n inputs × m outputs) into tasks of 32 weight rows × 64 inputs (two axes, so that
/// narrow matrices still give every thread tasks) and runs them on `par`'s pool:
/// `task((r0, r1), (i0, i1), o)` must write y[i·m + j] for i in i0..i1 and j in r0..r1, through
/// `o` = &y[i0·m + r0] (so element (i, j) at o + (i − i0)·m + (j − r0)), and nothing else.
/// A task's weight rows stay in L1 while its inputs pass them a few at a time; tasks write
/// disjoint 128-byte pieces of y's rows (no false sharing beyond the block edges).
pub(crate) fn gemm_tasks(
    m: usize,
    n: usize,
    y: &mut [f32],
    task: impl Fn((usize, usize), (usize, usize), *mut f32) + Sync,
) {
    gemm_tasks_many(&[m], n, &mut [y], |_, r, i, o| task(r, i, o));
}

/// `gemm_tasks` for several outputs of the same n inputs (y_q: n × ms[q], the products of
/// several matrices), every output's tasks in one parallel call; `task(q, ..)` as there, for y_q.
pub(crate) fn gemm_tasks_many<Y: AsMut<[f32]>>(
    ms: &[usize],
    n: usize,
    ys: &mut [Y],
    task: impl Fn(usize, (usize, usize), (usize, usize), *mut f32) + Sync,
) {
    const ROWS: usize = 32;
    const INPUTS: usize = 64;
    let outs: Vec<crate::par::SendPtr<f32>> = ys
        .iter_mut()
        .zip(ms)
        .map(|(y, &m)| {
            let y = y.as_mut();
            assert!(y.len() >= n * m, "gemm: {} outputs for {n} × {m}", y.len());
            crate::par::SendPtr(y.as_mut_ptr())
        })
        .collect();
    let tn = n.div_ceil(INPUTS);
    let tasks: Vec<(usize, usize)> =
        ms.iter().enumerate().flat_map(|(q, &m)| (0..m.div_ceil(ROWS) * tn).map(move |t| (q, t))).collect();
    crate::par::for_each(tasks.len(), |t| {
        let (q, t) = tasks[t];
        let (m, r0, i0) = (ms[q], t / tn * ROWS, t % tn * INPUTS);
        // SAFETY: inside y_q (asserted above); the tasks' (q, i, j) ranges are disjoint.
        task(q, (r0, (r0 + ROWS).min(m)), (i0, (i0 + INPUTS).min(n)), unsafe { outs[q].get().add(i0 * m + r0) })
    });
}

/// y (n × m) = swiglu(G, U) for the products G, U (n × m each) of two matrices of m rows,
/// `gemm_tasks`' blocks (32 rows × 64 inputs) in one parallel call: a task has
/// `product(q, (r0, r1), (i0, i1), o, ldo)` (q 0 for G, 1 for U) write its block of each into
/// its own buffers (out[i·ldo + j]), then gates each input's run of rows into y with
/// `swiglu_into` (elementwise, so the same bits as the whole products gated afterwards). Every
/// element of y is written.
pub(crate) fn gemm_tasks_swiglu(
    m: usize,
    n: usize,
    y: &mut [std::mem::MaybeUninit<f32>],
    product: impl Fn(usize, (usize, usize), (usize, usize), *mut f32, usize) + Sync,
) {
    use crate::float::Float;
    const ROWS: usize = 32;
    const INPUTS: usize = 64;
    assert!(y.len() >= n * m, "gemm swiglu: {} outputs for {n} × {m}", y.len());
    let out = crate::par::SendPtr(y.as_mut_ptr() as *mut f32);
    let tn = n.div_ceil(INPUTS);
    crate::par::for_each(m.div_ceil(ROWS) * tn, |t| {
        let (r0, i0) = (t / tn * ROWS, t % tn * INPUTS);
        let (r1, i1) = ((r0 + ROWS).min(m), (i0 + INPUTS).min(n));
        let mut g = [0f32; ROWS * INPUTS];
        let mut u = [0f32; ROWS * INPUTS];
        product(0, (r0, r1), (i0, i1), g.as_mut_ptr(), ROWS);
        product(1, (r0, r1), (i0, i1), u.as_mut_ptr(), ROWS);
        let rows = r1 - r0;
        let mut gated = [0f32; ROWS];
        for i in 0..i1 - i0 {
            f32::swiglu_into(&mut gated[..rows], &g[i * ROWS..i * ROWS + rows], &u[i * ROWS..i * ROWS + rows]);
            // SAFETY: row i0 + i, columns r0..r1 of y: this task's alone (the blocks are disjoint),
            // written through the raw pointer (y is not initialised before).
            unsafe { std::ptr::copy_nonoverlapping(gated.as_ptr(), out.get().add((i0 + i) * m + r0), rows) };
        }
    });
}

/// Every whole group of eight activation rows (rows 8g..8g + 8 → group g) prepared for
/// `tile512::tile_eight`, in parallel.
#[cfg(target_arch = "x86_64")]
fn eights(a: &[&[BlockQ8]]) -> Vec<Vec<super::tile512::Eight>> {
    crate::par::map(a.len() / 8, |g| {
        let ac: [&[BlockQ8]; 8] = std::array::from_fn(|c| a[8 * g + c]);
        // SAFETY: only reached on the AVX-512 tile paths (F/BW/VL/VNNI detected).
        unsafe { super::tile512::eight(ac) }
    })
}

/// `tiles_avx512` for the format `kind` (a `tile512` format constant) chosen at run time.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI present; `out` as `tiles_avx512` needs it.
#[cfg(target_arch = "x86_64")]
unsafe fn tiles_of_kind(
    kind: u8,
    w: &[u8],
    rb: usize,
    a: &[&[BlockQ8]],
    eights: &[Vec<super::tile512::Eight>],
    out: *mut f32,
    ldo: usize,
) {
    use super::tile512 as k;
    match kind {
        k::Q8_0 => tiles_avx512::<{ k::Q8_0 }>(w, rb, a, eights, out, ldo),
        k::Q4_0 => tiles_avx512::<{ k::Q4_0 }>(w, rb, a, eights, out, ldo),
        k::Q4_1 => tiles_avx512::<{ k::Q4_1 }>(w, rb, a, eights, out, ldo),
        _ => tiles_avx512::<{ k::Q5_0 }>(w, rb, a, eights, out, ldo),
    }
}

/// Every row of `w` against every activation row of `a`, eight inputs at a time (`eights[g]`
/// holds a[8g..8g + 8] prepared: `tile_rows_eight`'s 4 × 8 tiles, 1 × 8 at the last rows), then
/// four (`tile_rows`), then one at a time (`tile`'s 4 × 1 and 1 × 1): out[i·ldo + j] = row j ·
/// input i.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tiles_avx512<const K: u8>(
    w: &[u8],
    rb: usize,
    a: &[&[BlockQ8]],
    eights: &[Vec<super::tile512::Eight>],
    out: *mut f32,
    ldo: usize,
) {
    use super::tile512::tile;
    let (rows, n) = (w.len() / rb, a.len());
    let mut i = 0;
    while i + 8 <= n {
        let e = &eights[i / 8];
        assert_eq!(e.len(), a[i].len(), "tiles_avx512: the prepared rows are not these");
        super::tile512::check_eight::<K>(rows, w, rb, e.len());
        tile_rows_eight::<K>(w, rb, e, i == 0, out.add(i * ldo), ldo);
        i += 8;
    }
    if i + 4 <= n {
        tile_rows::<K, 4>(w, rb, [a[i], a[i + 1], a[i + 2], a[i + 3]], i == 0, out.add(i * ldo), ldo);
        i += 4;
    }
    for i in i..n {
        let mut j = 0;
        while j + 4 <= rows {
            let o = tile::<K, 4, 1>(&w[j * rb..], rb, [a[i]]);
            for (r, or) in o.iter().enumerate() {
                *out.add(i * ldo + j + r) = or[0];
            }
            j += 4;
        }
        for j in j..rows {
            *out.add(i * ldo + j) = tile::<K, 1, 1>(&w[j * rb..], rb, [a[i]])[0][0];
        }
    }
}

/// Every row of `w` against the C activation rows `ac`: 4 × C tiles, then 1 × C for the last
/// rows; out[c·ldo + j] = row j · input c. `first`: this is the first pass over `w` (see below).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_rows<const K: u8, const C: usize>(
    w: &[u8],
    rb: usize,
    ac: [&[BlockQ8]; C],
    first: bool,
    out: *mut f32,
    ldo: usize,
) {
    use super::tile512::tile_pairs;
    let rows = w.len() / rb;
    let mut j = 0;
    while j + 4 <= rows {
        if first {
            prefetch_tile(w, rb, j);
        }
        store_tile(&tile_pairs::<K, 4, C>(&w[j * rb..], rb, ac), out, ldo, j);
        j += 4;
    }
    for j in j..rows {
        store_tile(&tile_pairs::<K, 1, C>(&w[j * rb..], rb, ac), out, ldo, j);
    }
}

/// The first pass over a weight's rows reads them from memory, four interleaved rows at a
/// time, which the hardware prefetcher does not run ahead of: ask for the next tile's rows
/// (contiguous) while tile `j` computes (and for tile 0's own at the start).
#[cfg(target_arch = "x86_64")]
#[inline]
fn prefetch_tile(w: &[u8], rb: usize, j: usize) {
    if j == 0 {
        prefetch(&w[..(4 * rb).min(w.len())]);
    }
    prefetch(&w[((j + 4) * rb).min(w.len())..((j + 8) * rb).min(w.len())]);
}

/// out[c·ldo + j + r] = o[r][c]: a tile of R weight rows from row j, for C inputs.
/// Safety: `out` holds (C − 1)·ldo + j + R values.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn store_tile<const R: usize, const C: usize>(o: &[[f32; C]; R], out: *mut f32, ldo: usize, j: usize) {
    for (r, or) in o.iter().enumerate() {
        for (c, v) in or.iter().enumerate() {
            *out.add(c * ldo + j + r) = *v;
        }
    }
}

/// `store_tile` of a 4 × 8 tile: the four rows' eight outputs transposed in registers, then
/// each input's four consecutive outputs stored as one 16-byte vector (32 scalar moves before).
/// Safety: as `store_tile`, with AVX present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn store_tile_4x8(o: &[[f32; 8]; 4], out: *mut f32, ldo: usize, j: usize) {
    use std::arch::x86_64::*;
    let r: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(o[i].as_ptr()));
    // t0 = [r0c0 r1c0 r0c1 r1c1 | r0c4 r1c4 r0c5 r1c5], t1 = c2, c3 | c6, c7 (rows 0, 1);
    // t2, t3 the same for rows 2, 3. Then (t0, t2) give columns 0 and 1 (and 4, 5) whole.
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let c = [
        _mm256_shuffle_ps::<0x44>(t0, t2), // columns 0 | 4
        _mm256_shuffle_ps::<0xEE>(t0, t2), // columns 1 | 5
        _mm256_shuffle_ps::<0x44>(t1, t3), // columns 2 | 6
        _mm256_shuffle_ps::<0xEE>(t1, t3), // columns 3 | 7
    ];
    for (i, v) in c.iter().enumerate() {
        _mm_storeu_ps(out.add(i * ldo + j), _mm256_castps256_ps128(*v));
        _mm_storeu_ps(out.add((i + 4) * ldo + j), _mm256_extractf128_ps::<1>(*v));
    }
}

/// `tile_rows::<K, 8>` on eight prepared activation rows (`tile512::tile_eight`, the same
/// bits). Safety: `w`'s rows hold `e.len()` blocks of format K (`check_eight`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_rows_eight<const K: u8>(
    w: &[u8],
    rb: usize,
    e: &[super::tile512::Eight],
    first: bool,
    out: *mut f32,
    ldo: usize,
) {
    use super::tile512::tile_eight;
    let rows = w.len() / rb;
    let mut j = 0;
    while j + 4 <= rows {
        if first {
            prefetch_tile(w, rb, j);
        }
        store_tile_4x8(&tile_eight::<K, 4>(w.get_unchecked(j * rb..), rb, e), out, ldo, j);
        j += 4;
    }
    for j in j..rows {
        store_tile(&tile_eight::<K, 1>(w.get_unchecked(j * rb..), rb, e), out, ldo, j);
    }
}

/// Asks for every cache line of `bytes` to be brought into L1 (a hint: no fault, no wait).
#[cfg(target_arch = "x86_64")]
#[inline]
fn prefetch(bytes: &[u8]) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for off in (0..bytes.len()).step_by(64) {
        // SAFETY: a prefetch of an address inside the slice; it cannot fault.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().add(off) as *const i8) };
    }
}

/// Runs `run` on an (m outputs × n inputs) buffer and writes it into y (n × m): for one input
/// rows × 1 is already y's layout, otherwise a transpose.
pub(crate) fn into_rows_of_y(m: usize, n: usize, y: &mut [f32], run: impl FnOnce(&mut [f32])) {
    if n == 1 {
        return run(&mut y[..m]);
    }
    let mut yt = crate::mem::zeros(m * n);
    run(&mut yt);
    transpose_into(m, n, &yt, y);
}

/// y (n × m) from yt (m × n). In parallel (serial, it is a few percent of a prefill, more with
/// more threads), 16 rows of y per task: each output's 16 values are one cache line of yt.
fn transpose_into(m: usize, n: usize, yt: &[f32], y: &mut [f32]) {
    const ROWS: usize = 16;
    crate::par::chunks_mut(&mut y[..n * m], ROWS * m, |bi, yc| {
        let (i0, rows) = (bi * ROWS, yc.len() / m);
        for j in 0..m {
            for (ii, v) in yt[j * n + i0..j * n + i0 + rows].iter().enumerate() {
                yc[ii * m + j] = *v;
            }
        }
    });
}

impl QuantMatrix for QTensor {
    fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
    fn type_name(&self) -> &'static str {
        self.ty.name()
    }
    fn ggml_type(&self) -> GgmlType {
        self.ty
    }
    fn blocks(&self) -> &[u8] {
        &self.data
    }
    fn nbytes(&self) -> usize {
        self.data.len()
    }
    fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) {
        self.matmul_with(x, n, y, Level::detect())
    }
    fn rows_independent(&self) -> bool {
        // On x86 the 32-element formats always take llama.cpp's vec-dot order (`X86Path::of`):
        // one row at a time, and for many rows the register tiles (`tile512`) or tinyBLAS,
        // which sum each output in that order too (`rows_alone_equal_each_row_alone_bit_for_bit`).
        // The K-quants' repacked and tiled paths depend on the row count; F16/BF16's tiles
        // sum in tinyBLAS's order, their matvec in `ggml_vec_dot_f16`'s.
        // On AMX (a Q6_K matrix it takes too) every row count sums in the AMX order.
        let x86 = matches!(Level::detect(), Level::Avx2 | Level::Avx512);
        #[cfg(target_arch = "x86_64")]
        if x86 && X86Path::pick(Level::detect(), amx_engine(), self.ty, self.rows, 1) == X86Path::Amx {
            return true;
        }
        x86 && matches!(self.ty, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0)
    }
    fn matmul_rows_alone(&self, x: &[f32], n: usize, y: &mut [f32]) {
        if self.rows_independent() {
            // On AVX-512 the register tiles then unpack each weight block once for four rows.
            return self.matmul(x, n, y);
        }
        let level = Level::detect();
        let x86 = matches!(level, Level::Avx2 | Level::Avx512);
        let path = if x86 { X86Path::of(self.ty, self.rows, 1) } else { X86Path::VecDot };
        // The one-row path is a dot per (weight row, input row), each input quantised alone:
        // all rows in one pass give each row's n = 1 result. Others go row by row.
        if n <= 1 || path != X86Path::VecDot || matches!(self.ty, GgmlType::F16 | GgmlType::BF16) {
            for i in 0..n {
                self.matmul_with(
                    &x[i * self.cols..(i + 1) * self.cols],
                    1,
                    &mut y[i * self.rows..(i + 1) * self.rows],
                    level,
                );
            }
            return;
        }
        let c = self.cols;
        let acts: Vec<Act> = crate::par::map(n, |i| self.act(&x[i * c..(i + 1) * c], 0, 1, path));
        self.dot_blocks(level, path, &acts, y)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize_row(self.ty, &self.data[r * self.row_bytes..(r + 1) * self.row_bytes], out)
    }
}

/// Which of llama.cpp's x86 CPU code paths a matmul takes, i.e. in which float order the AVX2
/// kernels sum (docs/GGUF.md "Parity"). `ggml_compute_forward_mul_mat` on this build: weights
/// in the CPU_REPACK buffer (Q4_0 and Q4_K with a multiple of 8 output rows) run the repacked
/// GEMV/GEMM; otherwise Q6_K (and the other K-quants) with ≥ 8 input rows run the tiled
/// K-quant matmul; Q8_0/Q4_0/Q5_0 with ≥ 2 rows run llamafile's tinyBLAS, whose order per output
/// is `ggml_vec_dot`'s; everything else runs `ggml_vec_dot_*`. On a CPU with AMX its AMX build
/// takes Q8_0/Q4_0/Q4_1/Q6_K matrices of a multiple of 32 rows first (`amx::takes`), in the
/// order of `amx`'s module doc, at every input count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum X86Path {
    VecDot,
    Repack,
    Tiled,
    Amx,
}

impl X86Path {
    fn of(ty: GgmlType, rows: usize, n: usize) -> X86Path {
        match ty {
            GgmlType::Q4_0 | GgmlType::Q4_K if rows.is_multiple_of(8) => X86Path::Repack,
            GgmlType::Q4_K | GgmlType::Q6_K if n >= 8 => X86Path::Tiled,
            _ => X86Path::VecDot,
        }
    }

    /// The path of a [rows, _] matrix of `ty` times n inputs at `level`, with the AMX engine
    /// `amx` (None: AMX off): `Amx` at `Level::Avx512` where `amx::takes` the matrix, else `of`
    /// on the x86 levels and `VecDot` on the others.
    fn pick(level: Level, amx: Option<AmxEngine>, ty: GgmlType, rows: usize, n: usize) -> X86Path {
        #[cfg(target_arch = "x86_64")]
        if level == Level::Avx512 && amx.is_some() && amx::takes(ty, rows) {
            return X86Path::Amx;
        }
        let _ = amx;
        if matches!(level, Level::Avx2 | Level::Avx512) {
            X86Path::of(ty, rows, n)
        } else {
            X86Path::VecDot
        }
    }
}

/// out (rows × n): dot products of each weight row with each activation row.
fn dot_rows(level: Level, path: X86Path, ty: GgmlType, w: &[u8], rb: usize, acts: &[Act], out: &mut [f32]) {
    assert!(path != X86Path::Amx, "the AMX path runs amx::matmul, not dot_rows");
    #[cfg(target_arch = "x86_64")]
    match level {
        // SAFETY: Level::Avx2 is only chosen after run-time feature detection.
        Level::Avx2 => return unsafe { dot_rows_avx2(path, false, ty, w, rb, acts, out) },
        // SAFETY: checked again here (cached by std), as tests may pin the level.
        Level::Avx512 if avx512_detected() => {
            return unsafe {
                if avx512_same_order(ty, path) {
                    dot_rows_avx512(ty, w, rb, acts, out)
                } else {
                    dot_rows_avx2(path, true, ty, w, rb, acts, out)
                }
            }
        }
        _ => {}
    }
    let _ = path;
    #[cfg(target_arch = "aarch64")]
    match level {
        // SAFETY: NEON is baseline on aarch64; sdot only where the CPU has it (a cached check).
        Level::NeonDotprod if std::arch::is_aarch64_feature_detected!("dotprod") => {
            return unsafe { dot_rows_neon_dotprod(ty, w, rb, acts, out) }
        }
        Level::Neon | Level::NeonDotprod => return unsafe { dot_rows_neon::<false>(ty, w, rb, acts, out) },
        _ => {}
    }
    let _ = level;
    dot_rows_generic(ty, w, rb, acts, out)
}

/// Whether `dot_rows_avx512` sums (ty, path) in the float order that `dot_rows_avx2` uses for
/// it, i.e. llama.cpp's: its kernels follow the `ggml_vec_dot_*` orders (Q6_K's included: the
/// 32·Σ sc·Σa offset subtracted from the integer lanes before the FMA). llama.cpp's repacked
/// (Q4_0, Q4_K) and tiled (Q4_K, Q6_K) paths sum in other orders and take `dot_rows_avx2`,
/// which runs them on AVX2 kernels except the repacked Q4_K GEMV (`avx512::dot8_q4_k_repack`,
/// the AVX2 kernel's float operations lane for lane), so that Level::Avx512 stays
/// bit-identical to llama.cpp too.
#[cfg(target_arch = "x86_64")]
fn avx512_same_order(_ty: GgmlType, path: X86Path) -> bool {
    path == X86Path::VecDot
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "dotprod")]
unsafe fn dot_rows_neon_dotprod(ty: GgmlType, w: &[u8], rb: usize, acts: &[Act], out: &mut [f32]) {
    dot_rows_neon::<true>(ty, w, rb, acts, out)
}

/// `DOT`: sum byte dots with `sdot` (only called so from `dot_rows_neon_dotprod`).
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn dot_rows_neon<const DOT: bool>(ty: GgmlType, w: &[u8], rb: usize, acts: &[Act], out: &mut [f32]) {
    use super::neon;
    let n = acts.len();
    for (j, wr) in w.chunks_exact(rb).enumerate() {
        for (i, a) in acts.iter().enumerate() {
            out[j * n + i] = match (ty, a) {
                (GgmlType::Q8_0, Act::Q8(a)) => neon::dot_q8_0::<DOT>(wr, a),
                (GgmlType::Q4_0, Act::Q8(a)) => neon::dot_q4_0::<DOT>(wr, a),
                (GgmlType::Q4_1, Act::Q8(a)) => neon::dot_q4_1::<DOT>(wr, a),
                (GgmlType::Q5_0, Act::Q8(a)) => neon::dot_q5_0::<DOT>(wr, a),
                (GgmlType::Q4_K, Act::Q8K(a)) => neon::dot_q4_k::<DOT>(wr, a),
                (GgmlType::Q6_K, Act::Q8K(a)) => neon::dot_q6_k::<DOT>(wr, a),
                _ => dot_one(ty, wr, a),
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_avx2(path: X86Path, avx512: bool, ty: GgmlType, w: &[u8], rb: usize, acts: &[Act], out: &mut [f32]) {
    use super::avx2;
    let n = acts.len();
    // The repacked GEMM takes the input rows four at a time, the GEMV the last n mod 4.
    let gemm_rows = n - n % 4;
    let rows = w.len() / rb;
    // Repacked and tiled orders: eight weight rows at once (the same per-row operations).
    let mut j0 = 0;
    if path != X86Path::VecDot {
        while j0 + 8 <= rows {
            let w8 = &w[j0 * rb..(j0 + 8) * rb];
            // Four inputs at once where a four-input kernel exists (each output as the
            // one-input kernel computes it), then one at a time.
            let mut i0 = 0;
            while i0 + 4 <= n {
                // SAFETY (the AVX-512 kernels): `avx512` only where the caller checked the
                // AVX-512 features. Their float operations are the AVX2 kernels' (tested).
                let o = match (ty, path) {
                    (GgmlType::Q4_K, X86Path::Repack) if i0 + 4 <= gemm_rows && avx512 => {
                        super::avx512::dot8x4_q4_k_repack_gemm(w8, rb, q8k_four(&acts[i0..i0 + 4]))
                    }
                    (GgmlType::Q4_K, X86Path::Repack) if i0 + 4 <= gemm_rows => {
                        avx2::dot8x4_q4_k_repack_gemm(w8, rb, q8k_four(&acts[i0..i0 + 4]))
                    }
                    (GgmlType::Q6_K, X86Path::Tiled) if avx512 => {
                        super::avx512::dot8x4_q6_k_tiled(w8, rb, q8k_four(&acts[i0..i0 + 4]))
                    }
                    (GgmlType::Q6_K, X86Path::Tiled) => avx2::dot8x4_q6_k_tiled(w8, rb, q8k_four(&acts[i0..i0 + 4])),
                    _ => break,
                };
                for (jj, oj) in o.iter().enumerate() {
                    for (r, v) in oj.iter().enumerate() {
                        out[(j0 + r) * n + i0 + jj] = *v;
                    }
                }
                i0 += 4;
            }
            for (i, a) in acts.iter().enumerate().skip(i0) {
                let o = match (ty, a) {
                    (GgmlType::Q4_0, Act::Q8(a)) => avx2::dot8_q4_0_repack(w8, rb, a),
                    (GgmlType::Q4_K, Act::Q8K(a)) if path == X86Path::Repack && i < gemm_rows => {
                        avx2::dot8_q4_k_repack::<true>(w8, rb, a)
                    }
                    // SAFETY: `avx512` only where the caller checked the AVX-512 features.
                    (GgmlType::Q4_K, Act::Q8K(a)) if path == X86Path::Repack && avx512 => {
                        super::avx512::dot8_q4_k_repack(w8, rb, a)
                    }
                    (GgmlType::Q4_K, Act::Q8K(a)) if path == X86Path::Repack => {
                        avx2::dot8_q4_k_repack::<false>(w8, rb, a)
                    }
                    (GgmlType::Q4_K, Act::Q8K(a)) => avx2::dot8_q4_k_tiled(w8, rb, a),
                    (GgmlType::Q6_K, Act::Q8K(a)) => avx2::dot8_q6_k_tiled(w8, rb, a),
                    _ => unreachable!("X86Path::of picks repack/tiled only for these"),
                };
                for (r, v) in o.iter().enumerate() {
                    out[(j0 + r) * n + i] = *v;
                }
            }
            j0 += 8;
        }
    } else if ty == GgmlType::Q5_0 {
        while j0 + 2 <= rows {
            for (i, a) in acts.iter().enumerate() {
                let Act::Q8(a) = a else { unreachable!("Q5_0 pairs with Q8_0 activations") };
                let o = avx2::dot2_q5_0(&w[j0 * rb..(j0 + 2) * rb], rb, a);
                (out[j0 * n + i], out[(j0 + 1) * n + i]) = (o[0], o[1]);
            }
            j0 += 2;
        }
    }
    for (j, wr) in w.chunks_exact(rb).enumerate().skip(j0) {
        for (i, a) in acts.iter().enumerate() {
            out[j * n + i] = match (ty, a) {
                (GgmlType::Q8_0, Act::Q8(a)) => avx2::dot_q8_0(wr, a),
                (GgmlType::Q4_0, Act::Q8(a)) if path == X86Path::Repack => avx2::dot_q4_0_repack(wr, a),
                (GgmlType::Q4_K, Act::Q8K(a)) if path == X86Path::Repack && i < gemm_rows => {
                    avx2::dot_q4_k_repack_gemm(wr, a)
                }
                (GgmlType::Q4_K, Act::Q8K(a)) if path == X86Path::Repack => avx2::dot_q4_k_repack(wr, a),
                (GgmlType::Q4_K, Act::Q8K(a)) if path == X86Path::Tiled => avx2::dot_q4_k_tiled(wr, a),
                (GgmlType::Q6_K, Act::Q8K(a)) if path == X86Path::Tiled => avx2::dot_q6_k_tiled(wr, a),
                (GgmlType::Q4_0, Act::Q8(a)) => avx2::dot_q4_0(wr, a),
                (GgmlType::Q4_1, Act::Q8(a)) => avx2::dot_q4_1(wr, a),
                (GgmlType::Q5_0, Act::Q8(a)) => avx2::dot_q5_0(wr, a),
                (GgmlType::Q4_K, Act::Q8K(a)) => avx2::dot_q4_k(wr, a),
                (GgmlType::Q6_K, Act::Q8K(a)) => avx2::dot_q6_k(wr, a),
                _ => dot_one(ty, wr, a),
            };
        }
    }
}

/// Four Q8_K activation rows as the four-input kernels take them.
#[cfg(target_arch = "x86_64")]
fn q8k_four(acts: &[Act]) -> [&[BlockQ8K]; 4] {
    std::array::from_fn(|i| match &acts[i] {
        Act::Q8K(b) => &b[..],
        _ => unreachable!("the K-quants pair with Q8_K activations"),
    })
}

/// Weight rows taken `R` at a time, each against every activation row: the chunk is cut into R
/// equal runs of rows and pass p takes row p of each run, so the weights are read as R
/// sequential streams (rows next to each other in one pass would make R streams that jump
/// ahead after every pass, which the hardware prefetcher does not follow: 4× slower from
/// memory). Leftover rows go one at a time. Per row the arithmetic does not depend on R.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot_rows_avx512(ty: GgmlType, w: &[u8], rb: usize, acts: &[Act], out: &mut [f32]) {
    const R: usize = 4;
    let n = acts.len();
    let rows = w.len() / rb.max(1);
    // The K-quants have one FMA per 256 elements, so nothing to hide, and read as four streams
    // Q4_K is slower from memory (9-14 GB/s against 22 in one stream): rows in order.
    let run = if matches!(ty, GgmlType::Q4_K | GgmlType::Q6_K) { 0 } else { rows / R };
    for p in 0..run {
        let wr = &w[p * rb..];
        for (i, a) in acts.iter().enumerate() {
            match dots_avx512::<R>(ty, wr, run * rb, a) {
                Some(d) => {
                    for (r, v) in d.into_iter().enumerate() {
                        out[(p + r * run) * n + i] = v;
                    }
                }
                None => {
                    for r in 0..R {
                        let j = p + r * run;
                        out[j * n + i] = dot_one(ty, &w[j * rb..(j + 1) * rb], a);
                    }
                }
            }
        }
    }
    for j in R * run..rows {
        let wr = &w[j * rb..(j + 1) * rb];
        for (i, a) in acts.iter().enumerate() {
            out[j * n + i] = match dots_avx512::<1>(ty, wr, rb, a) {
                Some([v]) => v,
                None => dot_one(ty, wr, a),
            };
        }
    }
}

/// R rows' dots with the AVX-512 kernels; None for the float types (scalar kernels).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dots_avx512<const R: usize>(ty: GgmlType, w: &[u8], rb: usize, a: &Act) -> Option<[f32; R]> {
    use super::avx512;
    Some(match (ty, a) {
        (GgmlType::Q8_0, Act::Q8(a)) => avx512::dot_q8_0::<R>(w, rb, a),
        (GgmlType::Q4_0, Act::Q8(a)) => avx512::dot_q4_0::<R>(w, rb, a),
        (GgmlType::Q4_1, Act::Q8(a)) => avx512::dot_q4_1::<R>(w, rb, a),
        (GgmlType::Q5_0, Act::Q8(a)) => avx512::dot_q5_0::<R>(w, rb, a),
        (GgmlType::Q4_K, Act::Q8K(a)) => avx512::dot_q4_k::<R>(w, rb, a),
        (GgmlType::Q6_K, Act::Q8K(a)) => avx512::dot_q6_k::<R>(w, rb, a),
        _ => return None,
    })
}

fn dot_rows_generic(ty: GgmlType, w: &[u8], rb: usize, acts: &[Act], out: &mut [f32]) {
    let n = acts.len();
    for (j, wr) in w.chunks_exact(rb).enumerate() {
        for (i, a) in acts.iter().enumerate() {
            out[j * n + i] = dot_one(ty, wr, a);
        }
    }
}

/// One weight row · one activation row with the scalar kernels.
#[inline(always)]
fn dot_one(ty: GgmlType, wr: &[u8], a: &Act) -> f32 {
    match (ty, a) {
        (GgmlType::Q8_0, Act::Q8(a)) => q8_0::dot(wr, a),
        (GgmlType::Q4_0, Act::Q8(a)) => q4_0::dot(wr, a),
        (GgmlType::Q4_1, Act::Q8(a)) => q4_1::dot(wr, a),
        (GgmlType::Q5_0, Act::Q8(a)) => q5_0::dot(wr, a),
        (GgmlType::Q4_K, Act::Q8K(a)) => q4_k::dot(wr, a),
        (GgmlType::Q6_K, Act::Q8K(a)) => q6_k::dot(wr, a),
        (GgmlType::F32, Act::F32(a)) => float_dot(wr, a, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]), 4),
        _ => unreachable!("activation format is chosen from the weight type"),
    }
}

#[inline(always)]
fn float_dot(w: &[u8], a: &[f32], f: impl Fn(&[u8]) -> f32, size: usize) -> f32 {
    let mut acc = [0f32; 8];
    for (wc, ac) in w.chunks_exact(8 * size).zip(a.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += f(&wc[l * size..]) * ac[l];
        }
    }
    let tail = a.len() / 8 * 8;
    let mut s: f32 = acc.iter().sum();
    for i in tail..a.len() {
        s += f(&w[i * size..]) * a[i];
    }
    s
}
