//! RMSNorm, y = x / sqrt(mean(x²) + eps) · w, optionally fused with the residual add that
//! precedes it in a pre-norm transformer: h = x + r; y = rmsnorm(h). The fused form reads the
//! residual stream once and returns both h (the new stream) and y (the block input).

use crate::backend::{self, Cpu};
use crate::float::Float;
use crate::{DType, Tensor};
use anyhow::{bail, Result};
use rayon::prelude::*;

#[cfg(feature = "cuda")]
pub mod cuda;

/// Rows per parallel task; fixed so that reductions over rows (dw) sum in a fixed order.
const ROWS_PER_TASK: usize = 32;

/// Rows a forward task takes: `ROWS_PER_TASK`, or fewer (a multiple of 4, `rstd_rows`'
/// group) so that a few rows still make two tasks a thread: a server step's 32 decode rows were
/// one task, a serial part of every layer while the other threads waited. Each row's numbers do
/// not depend on its task (no sum crosses rows), so the bits are the same.
fn fwd_rows_per_task(n: usize) -> usize {
    n.div_ceil(2 * crate::par::threads()).next_multiple_of(4).clamp(4, ROWS_PER_TASK)
}

/// 1/sqrt(mean(x²) + eps) in ggml's order (`ggml_compute_forward_rms_norm_f32`): each square
/// rounded to F, summed sequentially in f64, the mean rounded to F, then eps added, sqrt and
/// reciprocal in F. So the normalised rows are bit-identical to llama.cpp's.
#[inline]
pub fn rstd_of<F: Float>(x: &[F], eps: f64) -> F {
    let mut sum = 0f64;
    for &v in x {
        sum += (v * v).to_f64();
    }
    let mean = F::from_f64(sum / x.len() as f64);
    F::ONE / (mean + F::from_f64(eps)).sqrt()
}

/// `rstd_of` of each row of x (rows of c) into `out`, four rows at a time: each row's sum in
/// its own order (the same bits), four independent chains of f64 additions instead of one.
pub fn rstd_rows<F: Float>(x: &[F], c: usize, eps: f64, out: &mut [F]) {
    let finish = |sum: f64| {
        let mean = F::from_f64(sum / c as f64);
        F::ONE / (mean + F::from_f64(eps)).sqrt()
    };
    let mut rows = x.chunks_exact(c);
    let mut outs = out.chunks_exact_mut(4);
    for o in &mut outs {
        let (Some(a), Some(b), Some(cc), Some(d)) = (rows.next(), rows.next(), rows.next(), rows.next()) else {
            unreachable!("out has a slot per row")
        };
        let mut sum = [0f64; 4];
        for i in 0..c {
            sum[0] += (a[i] * a[i]).to_f64();
            sum[1] += (b[i] * b[i]).to_f64();
            sum[2] += (cc[i] * cc[i]).to_f64();
            sum[3] += (d[i] * d[i]).to_f64();
        }
        for (o, s) in o.iter_mut().zip(sum) {
            *o = finish(s);
        }
    }
    for (o, r) in outs.into_remainder().iter_mut().zip(rows) {
        *o = rstd_of(r, eps);
    }
}

/// Returns (y, rstd) for x: (n, c).
pub fn rmsnorm_fwd<F: Float>(x: &[F], w: &[F], eps: f64, c: usize) -> (Vec<F>, Vec<F>) {
    let n = x.len() / c;
    let mut y = vec![F::ZERO; n * c];
    let mut rstd = vec![F::ZERO; n];
    let rows = fwd_rows_per_task(n);
    let (yp, rp) = (crate::par::Pieces::new(&mut y, c * rows), crate::par::Pieces::new(&mut rstd, rows));
    crate::par::for_each(rp.count(), |b| {
        // SAFETY: task b takes piece b of each output, and only it.
        let (yb, rb) = unsafe { (yp.take(b), rp.take(b)) };
        let xb = &x[b * c * rows..][..yb.len()];
        rstd_rows(xb, c, eps, rb);
        for ((yr, &s), xr) in yb.chunks_mut(c).zip(rb.iter()).zip(xb.chunks(c)) {
            for ((o, &xi), &wi) in yr.iter_mut().zip(xr).zip(w) {
                *o = xi * s * wi;
            }
        }
    });
    (y, rstd)
}

/// Returns (dx, dw). dx = rstd·(w∘dy − x̂·mean(w∘dy∘x̂)), dw = Σ_rows dy∘x̂.
pub fn rmsnorm_bwd<F: Float>(x: &[F], w: &[F], rstd: &[F], dy: &[F], c: usize) -> (Vec<F>, Vec<F>) {
    let n = x.len() / c;
    let mut dx = vec![F::ZERO; n * c];
    let partial_dw: Vec<Vec<F>> = dx
        .par_chunks_mut(c * ROWS_PER_TASK)
        .zip(x.par_chunks(c * ROWS_PER_TASK))
        .zip(dy.par_chunks(c * ROWS_PER_TASK))
        .zip(rstd.par_chunks(ROWS_PER_TASK))
        .map(|(((dxb, xb), dyb), rb)| {
            let mut dw = vec![F::ZERO; c];
            for (((dxr, xr), dyr), &s) in dxb.chunks_mut(c).zip(xb.chunks(c)).zip(dyb.chunks(c)).zip(rb) {
                let mut m = F::ZERO;
                for i in 0..c {
                    let xh = xr[i] * s;
                    dw[i] += dyr[i] * xh;
                    m += w[i] * dyr[i] * xh;
                }
                m = m / F::from_f64(c as f64);
                for i in 0..c {
                    dxr[i] = s * (w[i] * dyr[i] - xr[i] * s * m);
                }
            }
            dw
        })
        .collect();
    let mut dw = vec![F::ZERO; c];
    for p in &partial_dw {
        for (a, &b) in dw.iter_mut().zip(p) {
            *a += b;
        }
    }
    (dx, dw)
}

fn check(x: &Tensor, w: &Tensor) -> Result<usize> {
    if w.shape() != [x.cols()] {
        bail!("rmsnorm: weight {:?} does not match input {:?}", w.shape(), x.shape());
    }
    Ok(x.cols())
}

/// The RMSNorm kernels a backend provides (shapes checked by the entry points below).
pub trait RmsNormKernels {
    fn rmsnorm(&self, x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)>;
    fn rmsnorm_backward(&self, x: &Tensor, w: &Tensor, rstd: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)>;
    /// h = x + r, then rmsnorm(h): (h, y, rstd).
    fn add_rmsnorm(&self, x: &Tensor, r: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)>;
    /// add_rmsnorm's backward given y's gradient `dy` and h's own gradient `gh`: (dh, dr, dw)
    /// with dh = rmsnorm_backward's dx + gh, dr = dh in `r_dtype`. CUDA does it in one kernel.
    fn add_rmsnorm_backward(
        &self,
        h: &Tensor,
        w: &Tensor,
        rstd: &Tensor,
        dy: &Tensor,
        gh: &Tensor,
        r_dtype: DType,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        unfused_add_backward(self, h, w, rstd, dy, gh, r_dtype)
    }
}

/// add_rmsnorm's backward as rmsnorm_backward, add_assign and a cast.
fn unfused_add_backward<K: RmsNormKernels + ?Sized>(
    kern: &K,
    h: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
    gh: &Tensor,
    r_dtype: DType,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (mut dh, dw) = kern.rmsnorm_backward(h, w, rstd, dy)?;
    crate::ops::elementwise::add_assign(&mut dh, gh)?;
    let dr = if r_dtype == dh.dtype() { dh.clone() } else { crate::ops::elementwise::cast(&dh, r_dtype)? };
    Ok((dh, dr, dw))
}

impl RmsNormKernels for Cpu {
    fn rmsnorm(&self, x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
        let (y, r) = rmsnorm_fwd(x.as_f32()?, w.as_f32()?, eps, x.cols());
        Ok((Tensor::from_f32(y, x.shape())?, Tensor::from_f32(r, &[x.rows()])?))
    }
    fn rmsnorm_backward(&self, x: &Tensor, w: &Tensor, rstd: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        let (dx, dw) = rmsnorm_bwd(x.as_f32()?, w.as_f32()?, rstd.as_f32()?, dy.as_f32()?, x.cols());
        Ok((Tensor::from_f32(dx, x.shape())?, Tensor::from_f32(dw, w.shape())?))
    }
    /// One pass over blocks of rows in parallel: each row's sum, then its norm (the numbers of
    /// the add followed by `rmsnorm`; a serial add was a prefill's largest serial part).
    fn add_rmsnorm(&self, x: &Tensor, r: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
        let (xs, rs, ws, c) = (x.as_f32()?, r.as_f32()?, w.as_f32()?, x.cols());
        let n = xs.len() / c.max(1);
        // The writes below cover h and y only for these lengths (a shorter w would leave y's
        // tails unwritten): checked here too, as this method is callable without the entry point.
        if ws.len() != c || rs.len() != xs.len() || n * c != xs.len() {
            bail!("add_rmsnorm: x {:?}, r {:?}, w {:?} do not fit", x.shape(), r.shape(), w.shape());
        }
        // h and y are written once each, by the task that owns their rows: no zeroing pass
        // first (at 16 threads these MiB-sized passes are bound by memory, not by arithmetic).
        let (mut h, mut y, mut rstd) =
            (crate::par::uninit::<f32>(n * c), crate::par::uninit::<f32>(n * c), vec![0f32; n]);
        let rows = fwd_rows_per_task(n);
        let block = c * rows;
        let (hp, yp) = (crate::par::Pieces::new(&mut h, block), crate::par::Pieces::new(&mut y, block));
        let sp = crate::par::Pieces::new(&mut rstd, rows);
        crate::par::for_each(sp.count(), |b| {
            // SAFETY: task b takes piece b of each output, and only it.
            let (hb, yb, sb) = unsafe { (hp.take(b), yp.take(b), sp.take(b)) };
            let (xb, rb) = (&xs[b * block..][..hb.len()], &rs[b * block..][..hb.len()]);
            for (o, (a, b)) in hb.iter_mut().zip(xb.iter().zip(rb)) {
                o.write(a + b);
            }
            // SAFETY: every element of hb was written just above.
            let hb = unsafe { &*(hb as *const [std::mem::MaybeUninit<f32>] as *const [f32]) };
            rstd_rows(hb, c, eps, sb);
            for ((yr, s), hr) in yb.chunks_mut(c).zip(sb.iter()).zip(hb.chunks(c)) {
                for ((o, &hi), &wi) in yr.iter_mut().zip(hr).zip(ws) {
                    o.write(hi * *s * wi);
                }
            }
        });
        // SAFETY: the pieces cover h and y, and every task wrote all of its piece (for_each
        // returns only when every task ran to its end).
        let (h, y) = unsafe { (crate::par::assume_init(h), crate::par::assume_init(y)) };
        Ok((Tensor::from_f32(h, x.shape())?, Tensor::from_f32(y, x.shape())?, Tensor::from_f32(rstd, &[n])?))
    }
}

/// x: (…, C), w: (C) → (y, rstd (…))
pub fn rmsnorm(x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    check(x, w)?;
    backend::on("rmsnorm", [x, w])?.rmsnorm(x, w, eps)
}

pub fn rmsnorm_backward(x: &Tensor, w: &Tensor, rstd: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    check(x, w)?;
    backend::on("rmsnorm_backward", [x, w, rstd, dy])?.rmsnorm_backward(x, w, rstd, dy)
}

/// add_rmsnorm's backward: (dh, dr, dw), dh = dx + gh (gh: h's own gradient), dr = dh as
/// `r_dtype` (the branch's dtype).
pub fn add_rmsnorm_backward(
    h: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
    gh: &Tensor,
    r_dtype: DType,
) -> Result<(Tensor, Tensor, Tensor)> {
    check(h, w)?;
    if gh.shape() != h.shape() {
        bail!("add_rmsnorm_backward: gradient {:?} for h {:?}", gh.shape(), h.shape());
    }
    backend::on("add_rmsnorm_backward", [h, w, rstd, dy])?.add_rmsnorm_backward(h, w, rstd, dy, gh, r_dtype)
}

/// Fused residual add + RMSNorm: h = x + r, (y, rstd) = rmsnorm(h). Returns (h, y, rstd).
pub fn add_rmsnorm(x: &Tensor, r: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    check(x, w)?;
    if x.shape() != r.shape() {
        bail!("add_rmsnorm: shapes {:?} and {:?} differ", x.shape(), r.shape());
    }
    backend::on("add_rmsnorm", [x, r, w])?.add_rmsnorm(x, r, w, eps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{gradcheck, rand_vec};

    /// The CPU's fused pass gives the bits of the add followed by the norm.
    #[test]
    fn add_rmsnorm_equals_the_add_then_the_norm() {
        use crate::ops::elementwise::ElementwiseKernels;
        let (n, c) = (70, 48);
        let f32s = |n, seed| rand_vec(n, seed).into_iter().map(|v| v as f32).collect::<Vec<f32>>();
        let x = Tensor::from_f32(f32s(n * c, 3), &[2, n / 2, c]).unwrap();
        let r = Tensor::from_f32(f32s(n * c, 4), &[2, n / 2, c]).unwrap();
        let w = Tensor::from_f32(f32s(c, 5), &[c]).unwrap();
        let (h, y, rstd) = Cpu.add_rmsnorm(&x, &r, &w, 1e-5).unwrap();
        let h2 = Cpu.add(&x, &r).unwrap();
        let (y2, rstd2) = Cpu.rmsnorm(&h2, &w, 1e-5).unwrap();
        let bits = |t: &Tensor| t.as_f32().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!((bits(&h), bits(&y), bits(&rstd)), (bits(&h2), bits(&y2), bits(&rstd2)));
        assert_eq!((h.shape(), y.shape(), rstd.shape()), (h2.shape(), y2.shape(), rstd2.shape()));
        // Four rows at a time, each in its own order: `rstd_of`'s bits, the remainder rows too.
        let hs = h.as_f32().unwrap();
        let one: Vec<u32> = hs.chunks(c).map(|r| rstd_of(r, 1e-5).to_bits()).collect();
        assert_eq!(bits(&rstd), one);
        // The kernel called directly with a short weight or residual refuses (its outputs are
        // written only where w and r reach).
        let short = Tensor::from_f32(f32s(c - 1, 5), &[c - 1]).unwrap();
        assert!(Cpu.add_rmsnorm(&x, &r, &short, 1e-5).is_err(), "a weight of {} for rows of {c}", c - 1);
        let r1 = Tensor::from_f32(f32s(c, 4), &[1, 1, c]).unwrap();
        assert!(Cpu.add_rmsnorm(&x, &r1, &w, 1e-5).is_err(), "a residual of one row");
    }

    #[test]
    fn gradcheck_rmsnorm() {
        let c = 6;
        let x = rand_vec(70 * c, 1); // more rows than one task, so partial dw sums are exercised
        let w = rand_vec(c, 2);
        gradcheck(
            &[x, w],
            |v| rmsnorm_fwd(&v[0], &v[1], 1e-5, c).0,
            |v, dy| {
                let (_, r) = rmsnorm_fwd(&v[0], &v[1], 1e-5, c);
                let (dx, dw) = rmsnorm_bwd(&v[0], &v[1], &r, dy, c);
                vec![dx, dw]
            },
        );
    }
}
