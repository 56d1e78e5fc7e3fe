//! `linear`: y = x·Wᵀ + b, the one matmul shape a transformer needs (weights in Hugging Face's
//! `[out_features, in_features]` layout), with its backward. The general strided GEMM it is
//! built on (`cpu::gemm`) is public for other CPU kernels.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use crate::backend::{self, Cpu};
use crate::ops::elementwise::add_into;

/// For a training process: lets a GPU's products time cuBLASLt's candidate algorithms for each
/// large shape and keep the fastest (`cuda::blas::enable_tuning`; the same shapes recur every
/// step). Inference keeps the heuristic's choice. Nothing without CUDA.
pub fn tune_for_training() {
    #[cfg(feature = "cuda")]
    crate::cuda::blas::enable_tuning();
}
use crate::{DType, Tensor};
use anyhow::{bail, Result};

fn dims(x: &Tensor, w: &Tensor) -> Result<(usize, usize, usize)> {
    if w.shape().len() != 2 {
        bail!("linear: weight must be 2-D [out, in], got {:?}", w.shape());
    }
    let (m, k) = (w.shape()[0], w.shape()[1]);
    if x.cols() != k {
        bail!("linear: input {:?} has {} features, weight {:?} expects {k}", x.shape(), x.cols(), w.shape());
    }
    Ok((x.rows(), k, m))
}

/// The matmul kernels a backend provides: y = x·Wᵀ + b with x (n, k), w (m, k), and its
/// backward (dx only when wanted, db only with a bias).
pub trait LinearKernels {
    fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, n: usize, k: usize, m: usize) -> Result<Tensor>;
    /// c + x·wᵀ + bias, c (n, m). A backend whose product can read c itself (cuBLASLt's beta
    /// with C ≠ D) overrides it; the default is `linear` then `add`, the same numbers in f32.
    #[allow(clippy::too_many_arguments)]
    fn linear_add(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        c: &Tensor,
        n: usize,
        k: usize,
        m: usize,
    ) -> Result<Tensor> {
        crate::ops::elementwise::add(&self.linear(x, w, bias, n, k, m)?, c)
    }
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        n: usize,
        k: usize,
        m: usize,
        want_dx: bool,
        has_bias: bool,
    ) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)>;
    /// dx = dy·w alone, of x's shape, for a frozen weight (a LoRA base, a tied head that is
    /// not trained): the dW product, a third of a linear's work, is not computed, and x need
    /// not be kept for the backward.
    fn linear_dx(&self, dy: &Tensor, w: &Tensor, x_shape: &[usize], n: usize, k: usize, m: usize) -> Result<Tensor>;
    /// The backward without a bias, with dW added into `dw` (set to dW when None); returns dx
    /// when wanted. A backend whose product can accumulate (cuBLASLt's beta = 1) overrides it;
    /// the default computes dW and adds it.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward_acc(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        n: usize,
        k: usize,
        m: usize,
        want_dx: bool,
        dw: &mut Option<Tensor>,
    ) -> Result<Option<Tensor>> {
        accumulate_dw(self, x, w, dy, n, k, m, want_dx, dw)
    }
    /// dx = dy·w added into `dx` (set to it when None): the input gradient of a frozen linear
    /// whose input has other consumers (x into q, k, v and their adapters). A backend whose
    /// product can accumulate (cuBLASLt's beta = 1) overrides it; the default makes dx and adds
    /// it, as the autograd's own sum would.
    #[allow(clippy::too_many_arguments)]
    fn linear_dx_acc(
        &self,
        dy: &Tensor,
        w: &Tensor,
        x_shape: &[usize],
        n: usize,
        k: usize,
        m: usize,
        dx: &mut Option<Tensor>,
    ) -> Result<()> {
        add_into(dx, self.linear_dx(dy, w, x_shape, n, k, m)?)
    }
    /// `linear_backward` with dx (when `dx` is given) added into its slot as `linear_dx_acc`
    /// does; returns (dW, db).
    #[allow(clippy::too_many_arguments)]
    fn linear_backward_acc_dx(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        n: usize,
        k: usize,
        m: usize,
        has_bias: bool,
        dx: Option<&mut Option<Tensor>>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        backward_adding_dx(self, x, w, dy, n, k, m, has_bias, dx)
    }
    /// Several products of one input, [x·w_jᵀ + b_j] (q, k and v), every weight (m_j, k). A
    /// backend that can do them in one launch (CUDA, for the few rows of a decode step)
    /// overrides it; the default is one `linear` each.
    fn linear_many(&self, x: &Tensor, ws: &[(&Tensor, Option<&Tensor>)], n: usize, k: usize) -> Result<Vec<Tensor>> {
        ws.iter().map(|(w, b)| self.linear(x, w, *b, n, k, w.shape()[0])).collect()
    }
    /// silu(x·w_gᵀ)·(x·w_uᵀ); the default is two `linear`s and `swiglu`.
    fn linear_swiglu(&self, x: &Tensor, wg: &Tensor, wu: &Tensor, n: usize, k: usize) -> Result<Tensor> {
        let m = wg.shape()[0];
        crate::ops::swiglu::swiglu(&self.linear(x, wg, None, n, k, m)?, &self.linear(x, wu, None, n, k, m)?)
    }
}

/// `linear_backward_acc_dx` as the backward then an add (`add_into`).
#[allow(clippy::too_many_arguments)]
fn backward_adding_dx<K: LinearKernels + ?Sized>(
    kern: &K,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    n: usize,
    k: usize,
    m: usize,
    has_bias: bool,
    dx: Option<&mut Option<Tensor>>,
) -> Result<(Tensor, Option<Tensor>)> {
    let (d, dw, db) = kern.linear_backward(x, w, dy, n, k, m, dx.is_some(), has_bias)?;
    if let (Some(slot), Some(d)) = (dx, d) {
        add_into(slot, d)?;
    }
    Ok((dw, db))
}

/// `linear_backward_acc` as a product then an add (`add_assign`).
#[allow(clippy::too_many_arguments)]
fn accumulate_dw<K: LinearKernels + ?Sized>(
    kern: &K,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    n: usize,
    k: usize,
    m: usize,
    want_dx: bool,
    dw: &mut Option<Tensor>,
) -> Result<Option<Tensor>> {
    let (dx, part, _) = kern.linear_backward(x, w, dy, n, k, m, want_dx, false)?;
    match dw {
        None => *dw = Some(part),
        Some(acc) => crate::ops::elementwise::add_assign(acc, &part)?,
    }
    Ok(dx)
}

impl LinearKernels for Cpu {
    fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, n: usize, k: usize, m: usize) -> Result<Tensor> {
        let b = match bias {
            Some(b) => Some(b.as_f32()?),
            None => None,
        };
        let y = cpu::linear_fwd(x.as_f32()?, w.as_f32()?, b, n, k, m);
        let mut shape = x.shape().to_vec();
        *shape.last_mut().unwrap() = m;
        Tensor::from_f32(y, &shape)
    }

    fn linear_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        n: usize,
        k: usize,
        m: usize,
        want_dx: bool,
        has_bias: bool,
    ) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
        let (dx, dw, db) = cpu::linear_bwd(x.as_f32()?, w.as_f32()?, dy.as_f32()?, n, k, m, want_dx, has_bias);
        let dx = match dx {
            Some(d) => Some(Tensor::from_f32(d, x.shape())?),
            None => None,
        };
        let db = match db {
            Some(d) => Some(Tensor::from_f32(d, &[m])?),
            None => None,
        };
        Ok((dx, Tensor::from_f32(dw, w.shape())?, db))
    }

    fn linear_dx(&self, dy: &Tensor, w: &Tensor, x_shape: &[usize], n: usize, k: usize, m: usize) -> Result<Tensor> {
        Tensor::from_f32(cpu::linear_dx(w.as_f32()?, dy.as_f32()?, n, k, m), x_shape)
    }
}

/// x: (…, K), w: (M, K), bias: (M) → (…, M)
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, k, m) = dims(x, w)?;
    if w.dtype() == DType::Quant {
        // Inference on quantised weights: the block format's own kernels.
        return crate::ops::qmatmul::linear(x, w, bias, n, k, m);
    }
    backend::on("linear", [x, w].into_iter().chain(bias))?.linear(x, w, bias, n, k, m)
}

/// c + x·wᵀ + bias with c of the product's shape: a LoRA projection's base product and adapter
/// side in one (on CUDA the product reads c, with no pass for the sum). Dense weights only.
pub fn linear_add(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, c: &Tensor) -> Result<Tensor> {
    let (n, k, m) = dims(x, w)?;
    if c.rows() != n || c.cols() != m {
        bail!("linear_add: the addend {:?} is not the product's ({n}, {m})", c.shape());
    }
    if w.dtype() == DType::Quant {
        return crate::ops::elementwise::add(&crate::ops::qmatmul::linear(x, w, bias, n, k, m)?, c);
    }
    backend::on("linear_add", [x, w, c].into_iter().chain(bias))?.linear_add(x, w, bias, c, n, k, m)
}

/// Several products of one input (an attention block's q, k and v): `[linear(x, w_j, b_j)]`,
/// the same numbers, in one launch on a GPU for the few rows of a decode step.
pub fn linear_many(x: &Tensor, ws: &[(&Tensor, Option<&Tensor>)]) -> Result<Vec<Tensor>> {
    let mut n_k = None;
    for (w, _) in ws {
        n_k = Some(dims(x, w)?);
    }
    let Some((n, k, _)) = n_k else { return Ok(Vec::new()) };
    if ws.iter().any(|(w, _)| w.dtype() == DType::Quant) {
        if let Some(ys) = crate::ops::qmatmul::linear_many(x, ws, n, k)? {
            return Ok(ys);
        }
        return ws.iter().map(|(w, b)| linear(x, w, *b)).collect();
    }
    let all = std::iter::once(x).chain(ws.iter().flat_map(|(w, b)| std::iter::once(*w).chain(*b)));
    backend::on("linear", all)?.linear_many(x, ws, n, k)
}

/// `w` as the products read it on its device: under mixed precision on a GPU an f32 weight's
/// bf16 copy (made once and kept with it), else `w` itself.
pub(crate) fn weight_operand(w: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if !w.device().is_cpu() {
        return cuda::weight_operand(w);
    }
    Ok(w.clone())
}

/// How much of gate's and of up's weights a decode row's o product prefetches into L2 (12 MiB
/// each: with o's and the next q/k/v well inside the H200's 50 MB L2).
pub const GATE_UP_PREFETCH_BYTES: usize = 12 << 20;

/// Until the guard drops, the next matvec launched on this thread (a decode row's product on a
/// GPU) also prefetches the first `max_bytes` of each of `ws` into L2 (`cuda::prefetch`): a
/// hint, no result changes; nothing on the CPU or without the cuda feature.
pub fn prefetch_next(ws: &[&Tensor], max_bytes: usize) -> PrefetchHint {
    #[cfg(not(feature = "cuda"))]
    let _ = (ws, max_bytes);
    PrefetchHint {
        #[cfg(feature = "cuda")]
        _hint: crate::cuda::prefetch::hint(ws, max_bytes),
    }
}

/// `prefetch_next`'s guard: the hint is cleared when it drops (or `end`s).
pub struct PrefetchHint {
    #[cfg(feature = "cuda")]
    _hint: crate::cuda::prefetch::Hint,
}

impl PrefetchHint {
    /// Clears the hint here rather than at the end of the scope.
    pub fn end(self) {}
}

/// A feed-forward block's gate: `swiglu(linear(x, wg), linear(x, wu))`, in one launch on a GPU
/// for the few rows of a decode step.
pub fn linear_swiglu(x: &Tensor, wg: &Tensor, wu: &Tensor) -> Result<Tensor> {
    let ((n, k, m), (_, _, mu)) = (dims(x, wg)?, dims(x, wu)?);
    if m != mu {
        bail!("linear_swiglu: gate {:?} and up {:?} differ in shape", wg.shape(), wu.shape());
    }
    if wg.dtype() == DType::Quant || wu.dtype() == DType::Quant {
        if let Some(y) = crate::ops::qmatmul::linear_swiglu(x, wg, wu, n, k)? {
            return Ok(y);
        }
        return crate::ops::swiglu::swiglu(&linear(x, wg, None)?, &linear(x, wu, None)?);
    }
    backend::on("linear", [x, wg, wu])?.linear_swiglu(x, wg, wu, n, k)
}

/// `add_rmsnorm(x, r, w)` then `linear_many` of its normalised output, as (h, products), in one
/// launch where the backend has it (CUDA: one row of a decode step under mixed precision, dense
/// or quantised weights; the same bits as the two calls). None elsewhere: the caller makes both.
pub fn add_rmsnorm_linear_many(
    x: &Tensor,
    r: &Tensor,
    w: &Tensor,
    eps: f64,
    ws: &[(&Tensor, Option<&Tensor>)],
) -> Result<Option<(Tensor, Vec<Tensor>)>> {
    if x.device().is_cpu() {
        return Ok(None);
    }
    if ws.iter().any(|(wt, _)| wt.dtype() == DType::Quant) {
        return crate::ops::qmatmul::add_rmsnorm_linear_many(x, r, w, eps, ws);
    }
    #[cfg(feature = "cuda")]
    return cuda::add_rmsnorm_linear_many(x, r, w, eps, ws);
    #[cfg(not(feature = "cuda"))]
    Ok(None)
}

/// `add_rmsnorm(x, r, w)` then `linear_swiglu` of its normalised output, as (h, act), in one
/// launch where the backend has it (as `add_rmsnorm_linear_many`). None elsewhere.
pub fn add_rmsnorm_swiglu(
    x: &Tensor,
    r: &Tensor,
    w: &Tensor,
    eps: f64,
    wg: &Tensor,
    wu: &Tensor,
) -> Result<Option<(Tensor, Tensor)>> {
    if x.device().is_cpu() {
        return Ok(None);
    }
    if wg.dtype() == DType::Quant || wu.dtype() == DType::Quant {
        return crate::ops::qmatmul::add_rmsnorm_swiglu(x, r, w, eps, wg, wu);
    }
    #[cfg(feature = "cuda")]
    return cuda::add_rmsnorm_swiglu(x, r, w, eps, wg, wu);
    #[cfg(not(feature = "cuda"))]
    Ok(None)
}

/// `linear` whose output row i is exactly `linear` of input row i alone, whatever the other
/// rows are (for f32 weights the one-row matvec, for quantised ones their one-row kernel): the
/// decode rows of several sequences batched into one pass, each getting what `smelt generate`
/// gets for it. CPU only for now.
pub fn linear_rows_alone(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, k, m) = dims(x, w)?;
    if !x.device().is_cpu() || !w.device().is_cpu() {
        bail!("linear_rows_alone: CPU only for now (x on {}, w on {})", x.device(), w.device());
    }
    let b = match bias {
        Some(b) => Some(b.as_f32()?),
        None => None,
    };
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap() = m;
    if let Some(q) = w.as_quant() {
        let mut y = vec![0f32; n * m];
        q.matmul_rows_alone(x.as_f32()?, n, &mut y);
        if let Some(b) = b {
            for row in y.chunks_mut(m) {
                for (v, &bb) in row.iter_mut().zip(b) {
                    *v += bb;
                }
            }
        }
        return Tensor::from_f32(y, &shape);
    }
    Tensor::from_f32(cpu::linear_matvec(x.as_f32()?, w.as_f32()?, b, n, k, m), &shape)
}

/// Whether `linear(x, w)` gives each row of x exactly what that row alone gives, for any number
/// of rows (`QuantMatrix::rows_independent`: some quantised formats on the CPU). Then the rows
/// of several sequences may share one product; otherwise `linear_rows_alone` keeps them apart.
pub fn rows_independent(w: &Tensor) -> bool {
    w.device().is_cpu() && w.as_quant().is_some_and(|q| q.rows_independent())
}

/// Returns (dx, dw, db).
pub fn linear_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    want_dx: bool,
    has_bias: bool,
) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
    let (n, k, m) = dims(x, w)?;
    if w.dtype() == DType::Quant {
        bail!("linear: no gradient through a quantised weight {:?} (quantised weights are for inference)", w.shape());
    }
    backend::on("linear_backward", [x, w, dy])?.linear_backward(x, w, dy, n, k, m, want_dx, has_bias)
}

/// The input's gradient of `linear` alone, of shape `x_shape` (x's), for a weight that is not
/// trained: a quantised one's through its own kernel, a float one's without the dW product.
pub fn linear_dx(dy: &Tensor, w: &Tensor, x_shape: &[usize]) -> Result<Tensor> {
    let (m, k) = match w.shape() {
        [m, k] => (*m, *k),
        s => bail!("linear: weight must be 2-D [out, in], got {s:?}"),
    };
    if x_shape.last() != Some(&k) || dy.cols() != m || dy.numel() / m.max(1) * k != x_shape.iter().product::<usize>() {
        bail!("linear_dx: output gradient {:?} and input {x_shape:?} for weight {:?}", dy.shape(), w.shape());
    }
    if w.dtype() == DType::Quant {
        return crate::ops::qmatmul::linear_dx(dy, w, x_shape);
    }
    backend::on("linear_backward", [w, dy])?.linear_dx(dy, w, x_shape, dy.rows(), k, m)
}

/// `linear_dx`, added into `dx` (set when None; x's shape) by the product itself where the
/// backend can (CUDA, dense weights): a frozen linear's input gradient summed with the other
/// consumers' without a pass for the sum.
pub fn linear_dx_acc(dy: &Tensor, w: &Tensor, x_shape: &[usize], dx: &mut Option<Tensor>) -> Result<()> {
    if w.dtype() == DType::Quant {
        return add_into(dx, linear_dx(dy, w, x_shape)?);
    }
    let (m, k) = match w.shape() {
        [m, k] => (*m, *k),
        s => bail!("linear: weight must be 2-D [out, in], got {s:?}"),
    };
    if x_shape.last() != Some(&k) || dy.cols() != m || dy.numel() / m.max(1) * k != x_shape.iter().product::<usize>() {
        bail!("linear_dx: output gradient {:?} and input {x_shape:?} for weight {:?}", dy.shape(), w.shape());
    }
    if dx.as_ref().is_some_and(|d| d.shape() != x_shape) {
        bail!(
            "linear_dx_acc: the sum so far {:?} is not the input's shape {x_shape:?}",
            dx.as_ref().map(|d| d.shape())
        );
    }
    // A sum held elsewhere (a seed on the host) is added as add_assign adds across devices.
    if dx.as_ref().is_some_and(|d| d.device() != dy.device()) {
        return add_into(dx, linear_dx(dy, w, x_shape)?);
    }
    backend::on("linear_backward", [w, dy])?.linear_dx_acc(dy, w, x_shape, dy.rows(), k, m, dx)
}

/// `linear_backward` (dW, db) with dx, when `dx` is given, added into it as `linear_dx_acc`
/// adds.
pub fn linear_backward_acc_dx(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    has_bias: bool,
    dx: Option<&mut Option<Tensor>>,
) -> Result<(Tensor, Option<Tensor>)> {
    let (n, k, m) = dims(x, w)?;
    if w.dtype() == DType::Quant {
        bail!("linear: no gradient through a quantised weight {:?} (quantised weights are for inference)", w.shape());
    }
    if let Some(Some(d)) = dx.as_deref() {
        if d.shape() != x.shape() {
            bail!("linear_backward: the input's gradient so far {:?} is not its shape {:?}", d.shape(), x.shape());
        }
    }
    let kern = backend::on("linear_backward", [x, w, dy])?;
    // A sum held elsewhere (a seed on the host) is added as add_assign adds across devices.
    if dx.as_deref().is_some_and(|slot| slot.as_ref().is_some_and(|d| d.device() != x.device())) {
        return backward_adding_dx(kern, x, w, dy, n, k, m, has_bias, dx);
    }
    kern.linear_backward_acc_dx(x, w, dy, n, k, m, has_bias, dx)
}

/// The backward of `linear` without a bias, accumulating dW: `dw` += dyᵀ·x (set when None;
/// f32, w's shape), in the product itself where the backend can (CUDA). Returns dx when wanted.
/// The chunked loss sums the head's dW over its row chunks this way.
pub fn linear_backward_acc(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    want_dx: bool,
    dw: &mut Option<Tensor>,
) -> Result<Option<Tensor>> {
    let (n, k, m) = dims(x, w)?;
    if w.dtype() == DType::Quant {
        bail!("linear: no gradient through a quantised weight {:?} (quantised weights are for inference)", w.shape());
    }
    let acc: Vec<&Tensor> = dw.iter().collect();
    let kern = backend::on("linear_backward", [x, w, dy].into_iter().chain(acc))?;
    kern.linear_backward_acc(x, w, dy, n, k, m, want_dx, dw)
}

#[cfg(test)]
mod tests {
    use super::cpu::*;
    use crate::ops::testing::{gradcheck, rand_vec};

    #[test]
    fn linear_matches_naive_and_gradcheck() {
        let (n, k, m) = (5, 7, 3);
        let x = rand_vec(n * k, 1);
        let w = rand_vec(m * k, 2);
        let b = rand_vec(m, 3);
        let y = linear_fwd(&x, &w, Some(&b), n, k, m);
        for i in 0..n {
            for j in 0..m {
                let want: f64 = b[j] + (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum::<f64>();
                assert!((y[i * m + j] - want).abs() < 1e-12);
            }
        }
        gradcheck(
            &[x, w, b],
            |v| linear_fwd(&v[0], &v[1], Some(&v[2]), n, k, m),
            |v, dy| {
                let (dx, dw, db) = linear_bwd(&v[0], &v[1], dy, n, k, m, true, true);
                vec![dx.unwrap(), dw, db.unwrap()]
            },
        );
    }

    #[test]
    fn matvec_path_matches_gemm_path() {
        let (k, m) = (33, 70);
        let x = rand_vec(3 * k, 7);
        let w = rand_vec(m * k, 8);
        let b = rand_vec(m, 9);
        let small = linear_fwd(&x, &w, Some(&b), 3, k, m);
        let mut x8 = x.clone();
        x8.extend(rand_vec(5 * k, 10));
        let big = linear_fwd(&x8, &w, Some(&b), 8, k, m);
        for (a, b) in small.iter().zip(&big) {
            assert!((a - b).abs() < 1e-12);
        }
    }

    #[test]
    fn parallel_split_equals_single_call() {
        // Big enough to fork: the result must not depend on the thread count, and equals one
        // unsplit product in the order of the path taken (AVX-512 register tiles: one 16-lane
        // accumulator per output, then `reduce16`; elsewhere matrixmultiply's sgemm). 203
        // output rows: the tiles' four-row blocks end in single rows.
        let (n, k, m) = (300, 64, 203);
        let x: Vec<f32> = rand_vec(n * k, 4).iter().map(|&v| v as f32).collect();
        let w: Vec<f32> = rand_vec(m * k, 5).iter().map(|&v| v as f32).collect();
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| linear_fwd(&x, &w, None, n, k, m))
        };
        let y = on(3);
        assert_eq!(y, on(1));
        let tiles = crate::quant::simd::Level::detect() == crate::quant::simd::Level::Avx512;
        let mut y1 = vec![0f32; n * m];
        if tiles {
            for i in 0..n {
                for j in 0..m {
                    let mut acc = [0f32; 16];
                    for t in 0..k {
                        acc[t % 16] = w[j * k + t].mul_add(x[i * k + t], acc[t % 16]);
                    }
                    y1[i * m + j] = crate::ggml::reduce16(&acc);
                }
            }
        } else {
            unsafe {
                matrixmultiply::sgemm(
                    n,
                    k,
                    m,
                    1.0,
                    x.as_ptr(),
                    k as isize,
                    1,
                    w.as_ptr(),
                    1,
                    k as isize,
                    0.0,
                    y1.as_mut_ptr(),
                    m as isize,
                    1,
                );
            }
        }
        for (e, (a, b)) in y.iter().zip(&y1).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "output {e} (tiles: {tiles}): {a:e} vs {b:e}");
        }
    }
}
