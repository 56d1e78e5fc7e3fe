//! [`ThreadGroup`]: a [`Collective`] whose ranks are threads of one process, on the CPU. The
//! mean is summed in rank order and divided once, in f32, which is what NCCL's average gives
//! for two ranks; for more it is the readable reference, not NCCL's ring order.

use super::Collective;
use crate::{DType, Device, Tensor};
use anyhow::{anyhow, bail, Result};
use std::sync::{Arc, Barrier, Mutex};

/// What the ranks of a group share: each rank's deposit for the current call.
#[derive(Debug)]
struct Shared {
    barrier: Barrier,
    slots: Mutex<Vec<Option<Vec<Vec<f32>>>>>,
}

#[derive(Debug)]
pub struct ThreadGroup {
    rank: usize,
    world: usize,
    shared: Arc<Shared>,
}

impl ThreadGroup {
    /// `world` members, one for each rank's thread (member r is rank r).
    pub fn new(world: usize) -> Vec<ThreadGroup> {
        let shared = Arc::new(Shared { barrier: Barrier::new(world), slots: Mutex::new(vec![None; world]) });
        (0..world).map(|rank| ThreadGroup { rank, world, shared: shared.clone() }).collect()
    }
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_mean(&self, bucket: &mut [Tensor], wire: DType) -> Result<()> {
        let round = |v: Vec<f32>| match wire {
            DType::F32 => Ok(v),
            DType::BF16 => Ok(v.into_iter().map(|x| half::bf16::from_f32(x).to_f32()).collect()),
            d => bail!("all_reduce_mean: gradients travel as f32 or bf16, not {d:?}"),
        };
        let mine: Vec<Vec<f32>> = bucket.iter().map(|t| round(t.to_vec_f32()?)).collect::<Result<_>>()?;
        let poisoned = || anyhow!("a rank of the thread group panicked");
        self.shared.slots.lock().map_err(|_| poisoned())?[self.rank] = Some(mine);
        self.shared.barrier.wait();
        let mean: Vec<Vec<f32>> = {
            let slots = self.shared.slots.lock().map_err(|_| poisoned())?;
            let all: Vec<&Vec<Vec<f32>>> =
                slots.iter().map(|s| s.as_ref().ok_or_else(poisoned)).collect::<Result<_>>()?;
            (0..bucket.len())
                .map(|i| {
                    let n = all[0][i].len();
                    if all.iter().any(|r| r[i].len() != n) {
                        bail!("all_reduce_mean: tensor {i} of the bucket differs in size between ranks");
                    }
                    let mut sum = all[0][i].clone();
                    for r in &all[1..] {
                        for (s, x) in sum.iter_mut().zip(&r[i]) {
                            *s += x;
                        }
                    }
                    let k = self.world as f32;
                    round(sum.into_iter().map(|s| s / k).collect())
                })
                .collect::<Result<_>>()?
        };
        // Everyone has read every deposit before any is replaced by the next call's.
        self.shared.barrier.wait();
        for (t, m) in bucket.iter_mut().zip(mean) {
            let out = Tensor::from_f32(m, t.shape())?;
            *t = match (t.device(), t.dtype()) {
                (Device::Cpu, DType::F32) => out,
                (d, dt) => out.to_device(d)?.to_dtype(dt)?,
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_average_in_f32_and_bf16() {
        let handles: Vec<_> = ThreadGroup::new(3)
            .into_iter()
            .map(|g| {
                std::thread::spawn(move || {
                    let r = g.rank() as f32;
                    let mut b = vec![
                        Tensor::from_f32(vec![r, 2.0 * r, 1.0 + r / 3.0], &[3]).unwrap(),
                        Tensor::from_f32(vec![10.0 * r], &[1]).unwrap(),
                    ];
                    g.all_reduce_mean(&mut b, DType::F32).unwrap();
                    let f32s: Vec<Vec<f32>> = b.iter().map(|t| t.to_vec_f32().unwrap()).collect();
                    g.all_reduce_mean(&mut b, DType::BF16).unwrap();
                    (f32s, b[0].to_vec_f32().unwrap())
                })
            })
            .collect();
        let outs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for (f, b) in &outs {
            assert_eq!(f, &outs[0].0, "every rank holds the same mean");
            assert_eq!(f[0][..2], [1.0, 2.0]);
            assert_eq!(f[0][2], (1.0f32 + (1.0 + 1.0 / 3.0) + (1.0 + 2.0 / 3.0)) / 3.0);
            assert_eq!(f[1], [10.0]);
            // 4/3 is not a bf16: the bf16 mean is its rounding.
            assert_eq!(b[2], half::bf16::from_f32(half::bf16::from_f32(f[0][2]).to_f32()).to_f32());
        }
    }
}
