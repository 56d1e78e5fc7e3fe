//! Inverted dropout with a seeded, counter-based mask: element i of a tensor is kept iff a hash
//! of (seed, i) clears the drop probability, and kept elements are scaled by 1/(1 − p) (as
//! `torch.nn.Dropout` in training mode). The mask is a pure function of the seed and the
//! position, so a re-run (a checkpointed block's backward, a resumed run) draws the same mask,
//! whatever the thread count.
//!
//! The backward is the same op on the output gradient with the same seed (dx = dy·mask), so
//! no mask is kept. On CUDA the mask is drawn on the device by the same hash (`dropout.cu`):
//! a GPU step drops exactly the elements the CPU step drops.

#[cfg(feature = "cuda")]
pub mod cuda;

use crate::backend::{self, Cpu};
use crate::Tensor;
use anyhow::{bail, Result};
use rayon::prelude::*;

/// One element's draw in [0, 1): the top 24 bits of a splitmix64 finaliser of (seed, i).
#[inline]
fn draw(seed: u64, i: u64) -> f32 {
    let mut z = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
}

/// The mask of `n` elements: 0 where dropped, 1/(1 − p) where kept.
pub fn mask(n: usize, p: f32, seed: u64) -> Result<Vec<f32>> {
    if !(0.0..1.0).contains(&p) {
        bail!("dropout: probability {p} must be in [0, 1)");
    }
    let keep = 1.0 / (1.0 - p);
    let mut m = vec![0f32; n];
    m.par_chunks_mut(1 << 14).enumerate().for_each(|(c, chunk)| {
        let i0 = (c << 14) as u64;
        for (j, v) in chunk.iter_mut().enumerate() {
            *v = if draw(seed, i0 + j as u64) >= p { keep } else { 0.0 };
        }
    });
    Ok(m)
}

/// The dropout kernels a backend provides: x·mask in x's dtype, the mask of (seed, index).
pub trait DropoutKernels {
    fn dropout(&self, x: &Tensor, p: f32, seed: u64) -> Result<Tensor>;
}

impl DropoutKernels for Cpu {
    fn dropout(&self, x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
        let m = Tensor::from_f32(mask(x.numel(), p, seed)?, x.shape())?;
        crate::ops::elementwise::mul(x, &m)
    }
}

/// x · mask, the mask drawn from `seed` (element i kept with probability 1 − p, scaled by
/// 1/(1 − p)), on x's device. Its backward is `dropout(dy, p, seed)`.
pub fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        bail!("dropout: probability {p} must be in [0, 1)");
    }
    backend::on("dropout", [x])?.dropout(x, p, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_seeded_scaled_and_drops_about_p() {
        let (n, p) = (200_000, 0.1f32);
        let a = mask(n, p, 7).unwrap();
        assert_eq!(a, mask(n, p, 7).unwrap(), "same seed, same mask");
        let b = mask(n, p, 8).unwrap();
        assert_ne!(a, b, "another seed, another mask");
        let keep = 1.0 / (1.0 - p);
        assert!(a.iter().all(|&v| v == 0.0 || v == keep));
        let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        // Binomial: σ = sqrt(p(1−p)/n) ≈ 0.00067; 6σ.
        assert!((dropped - p as f64).abs() < 0.004, "dropped {dropped}, want {p}");
        // The mean of x·mask is the mean of x (inverted dropout).
        let mean: f64 = a.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.005, "mean {mean}");
        assert!(mask(4, 0.0, 1).unwrap().iter().all(|&v| v == 1.0), "p = 0 keeps everything");
        assert!(mask(4, 1.0, 1).is_err() && mask(4, -0.1, 1).is_err() && mask(4, f32::NAN, 1).is_err());
    }

    #[test]
    fn dropout_multiplies_by_its_mask() {
        let x = Tensor::from_f32((0..64).map(|i| i as f32 - 20.0).collect(), &[8, 8]).unwrap();
        let y = dropout(&x, 0.5, 3).unwrap();
        let (xs, ys, ms) = (x.as_f32().unwrap(), y.as_f32().unwrap(), mask(64, 0.5, 3).unwrap());
        for i in 0..64 {
            assert_eq!(ys[i], xs[i] * ms[i]);
        }
    }
}
