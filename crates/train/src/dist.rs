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

use anyhow::{Context, Result};
use smelt_core::dist::{Collective, Pending};
use smelt_core::{DType, Tensor};
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
}

impl DataParallel {
    pub fn new(comm: Arc<dyn Collective>, wire: DType, bucket_bytes: usize) -> Self {
        DataParallel { comm, wire, bucket_bytes: bucket_bytes.max(1) }
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
}

/// Averages gradients over the ranks bucket by bucket, as the backward hands them over
/// (`Graph::backward_watching`, from the last layer to the first): a bucket is started
/// (`Collective::start_mean`, on a GPU on its own stream) as soon as it is full, while the
/// backward of the layers below goes on. The first bucket holds at most 1 MB, the others
/// `bucket_bytes`; a gradient larger than that travels alone.
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
            self.started.push((idx, self.dp.comm.start_mean(ts, self.dp.wire)?));
        }
        (self.bytes, self.limit) = (0, self.dp.bucket_bytes);
        Ok(())
    }

    /// The `n` averaged gradients in parameter order (each must have been pushed once), and
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
