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

use anyhow::Result;
use smelt_core::dist::Collective;
use smelt_core::{DType, Tensor};
use smelt_data::Share;
use std::ops::Range;
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

    /// Replaces the gradients (in parameter order) by their mean over the ranks, bucket by
    /// bucket from the last parameter to the first.
    pub fn average_gradients(&self, grads: &mut [Tensor]) -> Result<()> {
        let bytes: Vec<usize> = grads.iter().map(|g| g.numel() * self.wire.size_in_bytes()).collect();
        for r in buckets(&bytes, FIRST_BUCKET_BYTES.min(self.bucket_bytes), self.bucket_bytes) {
            self.comm.all_reduce_mean(&mut grads[r], self.wire)?;
        }
        Ok(())
    }

    /// Replaces each micro-batch's loss by its mean over the ranks (in f32: what is logged and
    /// what decides a skipped update must agree on every rank).
    pub fn average_losses(&self, losses: &mut [Tensor]) -> Result<()> {
        self.comm.all_reduce_mean(losses, DType::F32)
    }
}

/// Buckets over tensors of `bytes` sizes, from the last tensor to the first (the order the
/// backward pass produces gradients in): the first at most `first` bytes, the others at most
/// `rest`, except that a tensor larger than its bucket makes a bucket of its own. Each is a
/// range of tensor indices; together they cover every tensor once.
pub fn buckets(bytes: &[usize], first: usize, rest: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut end = bytes.len();
    let mut limit = first;
    while end > 0 {
        let mut start = end - 1;
        let mut size = bytes[start];
        while start > 0 && size + bytes[start - 1] <= limit {
            start -= 1;
            size += bytes[start];
        }
        out.push(start..end);
        end = start;
        limit = rest;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_tensor_once_last_first() {
        let sizes = [40, 10, 10, 30, 5, 5, 100, 1, 2];
        let b = buckets(&sizes, 4, 50);
        // The first up to 4 bytes, then up to 50; the 100-byte tensor alone.
        assert_eq!(b, vec![7..9, 6..7, 2..6, 0..2]);
        let mut seen: Vec<usize> = b.iter().flat_map(|r| r.clone()).collect();
        seen.sort();
        assert_eq!(seen, (0..sizes.len()).collect::<Vec<_>>());
        for r in &b[1..] {
            let s: usize = sizes[r.clone()].iter().sum();
            assert!(s <= 50 || r.len() == 1, "{r:?}: {s}");
        }
        assert!(buckets(&[], 1, 1).is_empty());
    }
}
