//! Data-parallel training's policy: what is averaged across the ranks, when, and in what
//! pieces. Every rank holds the whole model and its optimizer state, reads its own rows of each
//! batch (`smelt_data::Share`), and after the last micro-batch of an update (never between
//! micro-batches) averages the update's gradients and losses with the other ranks, so every
//! rank takes the same AdamW step and the models stay identical without ever being sent.
//!
//! The gradients go in buckets of about `bucket_bytes` (25 MB by default; the first, which
//! holds the last layers' gradients, 1 MB), in reverse parameter order, as PyTorch's DDP does:
//! each bucket is one NCCL group, a few large messages instead of hundreds of small ones.
//! The communication itself is `smelt_core::dist::Collective` (NCCL on GPUs).
//!
//! ZeRO-1 (`DataParallel::zero`, on by default with more than one rank): the optimizer state
//! is cut in pieces, one per rank, so AdamW's moments take 1/N of the memory on each GPU. Every
//! parameter tensor, taken flat and zero-padded to a multiple of N elements, is cut into N equal
//! contiguous pieces; rank r owns piece r of each. The buckets are then reduce-scattered
//! instead of all-reduced (each rank receives the mean of its pieces of the gradients only),
//! each rank runs AdamW on its pieces of the parameters with its pieces of the moments, the
//! global gradient norm is the root of the ranks' sums of squares added up (in f64), and the
//! updated pieces are all-gathered back into every rank's whole parameters. Checkpoints gather
//! the moments first, so they hold the same files as a one-process run.

use crate::optim::{AdamWState, Hyper, Optimizer};
use anyhow::{bail, Context, Result};
use smelt_core::dist::{Collective, Pending};
use smelt_core::ops::adamw::GradNorm;
use smelt_core::{DType, Device, Tensor};
use smelt_data::Share;
use std::sync::Arc;

/// The first bucket's size: small, so the first all-reduce can start early.
pub const FIRST_BUCKET_BYTES: usize = 1 << 20;
/// The default bucket size (`--bucket-mb 25`).
pub const BUCKET_BYTES: usize = 25 << 20;

#[derive(Clone, Debug)]
pub struct DataParallel {
    comm: Arc<dyn Collective>,
    /// The dtype gradients travel in: F32 (the sum exact to f32 rounding) or BF16.
    pub wire: DType,
    pub bucket_bytes: usize,
    /// ZeRO-1 (see the module's text): `Some(true)` on, `Some(false)` off, `None` on with more
    /// than one rank (it saves memory), off with one.
    pub zero: Option<bool>,
}

impl DataParallel {
    pub fn new(comm: Arc<dyn Collective>, wire: DType, bucket_bytes: usize) -> Self {
        DataParallel { comm, wire, bucket_bytes: bucket_bytes.max(1), zero: None }
    }

    /// The same, with ZeRO-1 asked on or off (`None`: the default, see `zero`).
    pub fn with_zero(self, zero: Option<bool>) -> Self {
        DataParallel { zero, ..self }
    }

    /// Whether the optimizer state is sharded among the ranks (ZeRO-1).
    pub fn zero(&self) -> bool {
        self.zero.unwrap_or(self.world_size() > 1)
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }
    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }
    /// Rank 0: the one that writes checkpoints and metrics and evaluates.
    pub fn is_lead(&self) -> bool {
        self.rank() == 0
    }
    /// Which rows of each batch this rank reads.
    pub fn share(&self) -> Share {
        Share { rank: self.rank(), world: self.world_size() }
    }

    /// Replaces each micro-batch's loss by its mean over the ranks (in f32: what is logged and
    /// what decides a skipped update must agree on every rank).
    pub fn average_losses(&self, losses: &mut [Tensor]) -> Result<()> {
        self.comm.all_reduce_mean(losses, DType::F32)
    }

    /// Elements in each rank's piece of a tensor of `n` elements (ZeRO-1).
    pub fn piece_len(&self, n: usize) -> usize {
        n.div_ceil(self.world_size())
    }

    /// `t` flat and zero-padded to `world · piece_len` elements (itself, reshaped, when no
    /// padding is needed).
    fn padded(&self, t: &Tensor) -> Result<Tensor> {
        let (n, full) = (t.numel(), self.piece_len(t.numel()) * self.world_size());
        if n == full {
            return t.reshape(&[n]);
        }
        let mut out = Tensor::zeros_typed(&[full], t.device(), t.dtype())?;
        out.write_at(0, &t.reshape(&[n])?)?;
        Ok(out)
    }

    /// This rank's piece of the whole tensor `t` (flat, a copy; the last rank's may end in
    /// padding zeros).
    pub fn piece(&self, t: &Tensor) -> Result<Tensor> {
        let c = self.piece_len(t.numel());
        let p = self.padded(t)?;
        p.reshape(&[p.numel(), 1])?.narrow_rows(self.rank() * c, c)?.reshape(&[c])
    }

    /// Overwrites each flat tensor `wholes[i]` with every rank's `pieces[i]`, in rank order,
    /// cut to its length (ZeRO-1's all-gather: one round of messages); in place when no padding
    /// is needed.
    fn gather_into(&self, pieces: &[Tensor], wholes: &mut [Tensor]) -> Result<()> {
        let lens: Vec<usize> = wholes.iter().map(Tensor::numel).collect();
        let mut outs: Vec<Tensor> = pieces
            .iter()
            .zip(wholes.iter_mut())
            .map(|(p, w)| {
                let full = p.numel() * self.world_size();
                match w.numel() == full {
                    // Taken out of `wholes`, so that nothing else holds it and the write is in place.
                    true => Ok(std::mem::replace(w, Tensor::zeros(&[0]))),
                    false => Tensor::zeros_typed(&[full], p.device(), p.dtype()),
                }
            })
            .collect::<Result<_>>()?;
        self.comm.all_gather_into(pieces, &mut outs)?;
        for ((w, o), &n) in wholes.iter_mut().zip(outs).zip(&lens) {
            *w = match o.numel() == n {
                true => o,
                false => o.reshape(&[o.numel(), 1])?.narrow_rows(0, n)?.reshape(&[n])?,
            };
        }
        Ok(())
    }

    /// ZeRO-1's update of the whole `params` from this rank's pieces of their gradients:
    /// AdamW (`opt`, sharded by `shard_optimizer`) on this rank's pieces, clipped and skipped as
    /// `norm` (`adamw::grad_norm_across`) says, then the pieces all-gathered.
    pub(crate) fn zero_step(
        &self,
        opt: &mut Optimizer,
        hp: &Hyper,
        params: &mut [Tensor],
        grads: &[Tensor],
        decay: &[bool],
        norm: &mut GradNorm,
    ) -> Result<()> {
        let mut pieces: Vec<Tensor> = params.iter().map(|p| self.piece(p)).collect::<Result<_>>()?;
        opt.step(hp, &mut pieces, grads, decay, Some(norm))?;
        norm.share_nonfinite_flag(|f| self.comm.all_reduce_mean(f, DType::F32))?;
        let shapes: Vec<Vec<usize>> = params.iter().map(|p| p.shape().to_vec()).collect();
        // Flat while gathered (moved, not shared: the gather writes them in place).
        let mut wholes: Vec<Tensor> = params
            .iter_mut()
            .map(|p| std::mem::replace(p, Tensor::zeros(&[0])))
            .map(|w| w.reshape(&[w.numel()]))
            .collect::<Result<_>>()?;
        self.gather_into(&pieces, &mut wholes)?;
        for ((p, w), shape) in params.iter_mut().zip(wholes).zip(&shapes) {
            *p = w.reshape(shape)?;
        }
        Ok(())
    }

    /// `opt`, AdamW's state over whole parameters (fresh, or read from any checkpoint), cut to
    /// this rank's pieces (on the host, before it moves to the device).
    pub(crate) fn shard_optimizer(&self, opt: Optimizer) -> Result<Optimizer> {
        if !opt.is_adamw_only() {
            bail!("ZeRO-1 shards AdamW's state; Muon updates whole matrices (use --zero 0 with --optimizer muon)");
        }
        let a = opt.adamw;
        let cut = |ts: Vec<Tensor>| ts.iter().map(|t| self.piece(t)).collect::<Result<Vec<_>>>();
        Ok(Optimizer::from_adamw(AdamWState { m: cut(a.m)?, v: cut(a.v)?, t: a.t, scalars: None }))
    }

    /// The whole AdamW state for `params`, gathered from every rank's pieces: every rank takes
    /// part, rank 0 gets it (on the host, for a checkpoint), the others `None`. One tensor at a
    /// time, so a GPU holds one whole moment tensor more at most.
    pub(crate) fn gather_optimizer(&self, opt: &Optimizer, params: &[Tensor]) -> Result<Option<Optimizer>> {
        let a = &opt.adamw;
        if a.m.len() != params.len() {
            bail!("ZeRO-1: optimizer state for {} tensors, {} parameters", a.m.len(), params.len());
        }
        let whole = |pieces: &[Tensor]| -> Result<Vec<Tensor>> {
            pieces
                .iter()
                .zip(params)
                .map(|(piece, p)| {
                    let n = p.numel();
                    let mut out =
                        [Tensor::zeros_typed(&[piece.numel() * self.world_size()], piece.device(), piece.dtype())?];
                    self.comm.all_gather_into(std::slice::from_ref(piece), &mut out)?;
                    let [o] = out;
                    match self.is_lead() {
                        true => {
                            o.reshape(&[o.numel(), 1])?.narrow_rows(0, n)?.reshape(p.shape())?.to_device(Device::Cpu)
                        }
                        false => Ok(Tensor::zeros(&[0])),
                    }
                })
                .collect()
        };
        let (m, v) = (whole(&a.m)?, whole(&a.v)?);
        Ok(self.is_lead().then(|| Optimizer::from_adamw(AdamWState { m, v, t: a.t, scalars: None })))
    }

    /// Adds the f64 values of `t` (`smelt_core::dist::f64_words`) over the ranks.
    pub(crate) fn sum_over_ranks(&self, t: &mut Tensor) -> Result<()> {
        self.comm.all_reduce_sum_f64(t)
    }
}

/// Averages gradients over the ranks bucket by bucket, as the backward hands them over
/// (`Graph::backward_watching`, from the last layer to the first): a bucket is started
/// (`Collective::start_mean`, on a GPU on its own stream) as soon as it is full, while the
/// backward of the layers below goes on. The first bucket holds at most 1 MB, the others
/// `bucket_bytes`; a gradient larger than that travels alone. Under ZeRO-1 the buckets are
/// reduce-scattered instead (`Collective::start_scatter_mean`), each gradient padded to a
/// multiple of the world size, and what comes back is this rank's piece of each gradient.
pub(crate) struct Averager<'a> {
    dp: &'a DataParallel,
    bucket: Vec<(usize, Tensor)>,
    bytes: usize,
    limit: usize,
    started: Vec<(Vec<usize>, Pending)>,
}

impl<'a> Averager<'a> {
    pub(crate) fn new(dp: &'a DataParallel) -> Self {
        let limit = FIRST_BUCKET_BYTES.min(dp.bucket_bytes);
        Averager { dp, bucket: Vec::new(), bytes: 0, limit, started: Vec::new() }
    }

    /// Gradient `i` (in parameter order) is final.
    pub(crate) fn push(&mut self, i: usize, g: Tensor) -> Result<()> {
        let g = if self.dp.zero() { self.dp.padded(&g)? } else { g };
        let b = g.numel() * self.dp.wire.size_in_bytes();
        if !self.bucket.is_empty() && self.bytes + b > self.limit {
            self.start()?;
        }
        self.bucket.push((i, g));
        self.bytes += b;
        Ok(())
    }

    fn start(&mut self) -> Result<()> {
        let (idx, ts): (Vec<usize>, Vec<Tensor>) = std::mem::take(&mut self.bucket).into_iter().unzip();
        if !idx.is_empty() {
            let pending = match self.dp.zero() {
                true => self.dp.comm.start_scatter_mean(ts, self.dp.wire)?,
                false => self.dp.comm.start_mean(ts, self.dp.wire)?,
            };
            self.started.push((idx, pending));
        }
        (self.bytes, self.limit) = (0, self.dp.bucket_bytes);
        Ok(())
    }

    /// The `n` averaged gradients (ZeRO-1: this rank's pieces of them) in parameter order (each
    /// must have been pushed once), and
    /// the index lists of the buckets they travelled in.
    pub(crate) fn finish(mut self, n: usize) -> Result<(Vec<Tensor>, Vec<Vec<usize>>)> {
        self.start()?;
        let mut out: Vec<Option<Tensor>> = vec![None; n];
        let mut buckets = Vec::with_capacity(self.started.len());
        for (idx, p) in self.started {
            for (&i, t) in idx.iter().zip(p.finish()?) {
                out[i] = Some(t);
            }
            buckets.push(idx);
        }
        let grads = out
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.with_context(|| format!("gradient {i} was never averaged")))
            .collect::<Result<_>>()?;
        Ok((grads, buckets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smelt_core::dist::ThreadGroup;

    /// Three ranks (threads) cut tensors whose sizes do not divide by 3 into pieces, hold 1/3
    /// of AdamW's state each, and gather pieces and state back whole, as they were.
    #[test]
    fn zero1_pieces_and_state_gather_back_whole() {
        const SIZES: [usize; 4] = [7, 9, 1, 12];
        let sizes = SIZES;
        let whole = |i: usize| Tensor::from_f32((0..SIZES[i]).map(|k| (100 * i + k) as f32).collect(), &[SIZES[i]]);
        let handles: Vec<_> = ThreadGroup::new(3)
            .into_iter()
            .map(|g| {
                std::thread::spawn(move || {
                    let dp = DataParallel::new(Arc::new(g), DType::F32, 1 << 20);
                    assert!(dp.zero(), "on by default with more than one rank");
                    let params: Vec<Tensor> = (0..sizes.len()).map(|i| whole(i).unwrap()).collect();
                    let mut opt =
                        Optimizer::from_adamw(AdamWState { m: params.clone(), v: params.clone(), t: 5, scalars: None });
                    opt = dp.shard_optimizer(opt).unwrap();
                    let held: usize = opt.adamw.m.iter().map(Tensor::numel).sum();
                    assert_eq!(held, sizes.iter().map(|&n| n.div_ceil(3)).sum::<usize>());
                    // Rank r's piece of the 7-element tensor: elements 3r..3r+3, zero past the end.
                    let want: Vec<f32> =
                        (3 * dp.rank()..3 * dp.rank() + 3).map(|k| if k < 7 { k as f32 } else { 0.0 }).collect();
                    assert_eq!(opt.adamw.m[0].as_f32().unwrap(), want);
                    let back = dp.gather_optimizer(&opt, &params).unwrap();
                    assert_eq!(back.is_some(), dp.is_lead(), "rank 0 alone gets the whole state");
                    if let Some(back) = back {
                        assert_eq!(back.adamw.t, 5);
                        for (a, b) in back.adamw.m.iter().chain(&back.adamw.v).zip(params.iter().chain(&params)) {
                            assert_eq!((a.shape(), a.as_f32().unwrap()), (b.shape(), b.as_f32().unwrap()));
                        }
                    }
                    let pieces: Vec<Tensor> = params.iter().map(|p| dp.piece(p).unwrap()).collect();
                    let mut wholes: Vec<Tensor> = sizes.iter().map(|&n| Tensor::zeros(&[n])).collect();
                    dp.gather_into(&pieces, &mut wholes).unwrap();
                    for (a, b) in wholes.iter().zip(&params) {
                        assert_eq!(a.as_f32().unwrap(), b.as_f32().unwrap());
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn buckets_fill_in_the_order_gradients_arrive() {
        let g = ThreadGroup::new(1).pop().unwrap();
        // f32: 4 bytes an element. The first bucket takes ≤ 1 MB, the others ≤ 2 MB.
        let dp = DataParallel::new(Arc::new(g), DType::F32, 2 << 20);
        let mut avg = Averager::new(&dp);
        let mb = 1 << 18; // elements in 1 MB
        let sizes = [mb / 2, mb / 2, mb / 4, 3 * mb, mb, mb, 1];
        // Arrival order: the last parameters first, as the backward hands them over.
        for i in (0..sizes.len()).rev() {
            avg.push(i, Tensor::full(&[sizes[i]], i as f32)).unwrap();
        }
        let (grads, buckets) = avg.finish(sizes.len()).unwrap();
        assert_eq!(buckets, vec![vec![6], vec![5, 4], vec![3], vec![2, 1, 0]]);
        for (i, t) in grads.iter().enumerate() {
            assert_eq!(t.numel(), sizes[i]);
            assert_eq!(t.to_vec_f32().unwrap()[0], i as f32);
        }
    }
}
