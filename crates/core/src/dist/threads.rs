//! [`ThreadGroup`]: a [`Collective`] whose ranks are threads of one process, on the CPU. The
//! mean is summed in rank order and divided once, in f32, which is what NCCL's average gives
//! for two ranks; for more it is the readable reference, not NCCL's ring order.

use super::{Collective, Pending};
use crate::{DType, Device, Tensor};
use anyhow::{anyhow, bail, Result};
use std::sync::{Arc, Barrier, Mutex};

/// What the ranks of a group share: each rank's deposit for the current call.
#[derive(Debug)]
struct Shared {
    barrier: Barrier,
    slots: Mutex<Vec<Option<Deposit>>>,
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

impl ThreadGroup {
    /// Deposits `mine` and returns every rank's deposit, in rank order (all ranks call it).
    fn exchange<T: Clone>(
        &self,
        mine: Vec<Vec<T>>,
        wrap: fn(Vec<Vec<T>>) -> Deposit,
        unwrap: fn(&Deposit) -> Option<&Vec<Vec<T>>>,
    ) -> Result<Vec<Vec<Vec<T>>>> {
        let poisoned = || anyhow!("a rank of the thread group panicked");
        self.shared.slots.lock().map_err(|_| poisoned())?[self.rank] = Some(wrap(mine));
        self.shared.barrier.wait();
        let all = {
            let slots = self.shared.slots.lock().map_err(|_| poisoned())?;
            slots
                .iter()
                .map(|s| {
                    s.as_ref()
                        .and_then(unwrap)
                        .cloned()
                        .ok_or_else(|| anyhow!("the ranks of the thread group called different collectives"))
                })
                .collect::<Result<Vec<_>>>()
        };
        // Everyone has read every deposit before any is replaced by the next call's.
        self.shared.barrier.wait();
        all
    }

    /// The sum of every rank's tensor `i` (in rank order), checking the sizes agree.
    fn rank_sum(all: &[Vec<Vec<f32>>], i: usize, what: &str) -> Result<Vec<f32>> {
        let n = all[0][i].len();
        if all.iter().any(|r| r[i].len() != n) {
            bail!("{what}: tensor {i} of the bucket differs in size between ranks");
        }
        let mut sum = all[0][i].clone();
        for r in &all[1..] {
            for (s, x) in sum.iter_mut().zip(&r[i]) {
                *s += x;
            }
        }
        Ok(sum)
    }

    /// The mean of every rank's tensors, each rounded to `wire` before and after.
    fn mean(&self, bucket: &[Tensor], wire: DType, what: &str) -> Result<Vec<Vec<f32>>> {
        let round = |v: Vec<f32>| match wire {
            DType::F32 => Ok(v),
            DType::BF16 => Ok(v.into_iter().map(|x| half::bf16::from_f32(x).to_f32()).collect()),
            d => bail!("{what}: gradients travel as f32 or bf16, not {d:?}"),
        };
        let mine: Vec<Vec<f32>> = bucket.iter().map(|t| round(t.to_vec_f32()?)).collect::<Result<_>>()?;
        let all = self.exchange(mine, Deposit::F32, Deposit::f32s)?;
        let k = self.world as f32;
        (0..bucket.len()).map(|i| round(Self::rank_sum(&all, i, what)?.into_iter().map(|s| s / k).collect())).collect()
    }
}

/// `values` as a tensor shaped `shape` of `like`'s device and dtype.
fn like(values: Vec<f32>, shape: &[usize], like: &Tensor) -> Result<Tensor> {
    let out = Tensor::from_f32(values, shape)?;
    match (like.device(), like.dtype()) {
        (Device::Cpu, DType::F32) => Ok(out),
        (d, dt) => out.to_device(d)?.to_dtype(dt),
    }
}

/// What a rank deposits for one call.
#[derive(Clone, Debug)]
enum Deposit {
    F32(Vec<Vec<f32>>),
    F64(Vec<Vec<f64>>),
}

impl Deposit {
    fn f32s(&self) -> Option<&Vec<Vec<f32>>> {
        match self {
            Deposit::F32(v) => Some(v),
            Deposit::F64(_) => None,
        }
    }
    fn f64s(&self) -> Option<&Vec<Vec<f64>>> {
        match self {
            Deposit::F64(v) => Some(v),
            Deposit::F32(_) => None,
        }
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
        let mean = self.mean(bucket, wire, "all_reduce_mean")?;
        for (t, m) in bucket.iter_mut().zip(mean) {
            *t = like(m, t.shape(), t)?;
        }
        Ok(())
    }

    /// The same mean as `all_reduce_mean` (so ZeRO-1 on threads sees the very gradients the
    /// plain data-parallel step does), then this rank's piece of it.
    fn start_scatter_mean(&self, bucket: Vec<Tensor>, wire: DType) -> Result<Pending> {
        for t in &bucket {
            if t.numel() % self.world != 0 {
                bail!("scatter_mean: {} elements do not split among {} ranks", t.numel(), self.world);
            }
        }
        let mean = self.mean(&bucket, wire, "scatter_mean")?;
        let pieces = bucket
            .iter()
            .zip(mean)
            .map(|(t, m)| {
                let c = t.numel() / self.world;
                like(m[self.rank * c..(self.rank + 1) * c].to_vec(), &[c], t)
            })
            .collect::<Result<_>>()?;
        Ok(Pending::done(pieces))
    }

    fn all_gather_into(&self, pieces: &[Tensor], outs: &mut [Tensor]) -> Result<()> {
        if pieces.len() != outs.len() {
            bail!("all_gather: {} pieces, {} outputs", pieces.len(), outs.len());
        }
        for (p, o) in pieces.iter().zip(outs.iter()) {
            if o.numel() != p.numel() * self.world || o.dtype() != p.dtype() {
                bail!(
                    "all_gather: a {:?} piece of {} into a {:?} output of {} ({} ranks)",
                    p.dtype(),
                    p.numel(),
                    o.dtype(),
                    o.numel(),
                    self.world
                );
            }
        }
        let mine: Vec<Vec<f32>> = pieces.iter().map(Tensor::to_vec_f32).collect::<Result<_>>()?;
        let all = self.exchange(mine, Deposit::F32, Deposit::f32s)?;
        for (i, o) in outs.iter_mut().enumerate() {
            if all.iter().any(|r| r[i].len() != pieces[i].numel()) {
                bail!("all_gather: piece {i} differs in size between ranks");
            }
            let whole: Vec<f32> = all.iter().flat_map(|r| r[i].iter().copied()).collect();
            *o = like(whole, o.shape(), o)?;
        }
        Ok(())
    }

    fn all_reduce_sum_f64(&self, t: &mut Tensor) -> Result<()> {
        let all = self.exchange(vec![super::f64_values(t)?], Deposit::F64, Deposit::f64s)?;
        let mut sum = all[0][0].clone();
        for r in &all[1..] {
            if r[0].len() != sum.len() {
                bail!("all_reduce_sum_f64: the ranks sum {} and {} values", sum.len(), r[0].len());
            }
            for (s, x) in sum.iter_mut().zip(&r[0]) {
                *s += x;
            }
        }
        *t = super::f64_words(&sum, t.device())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reduce-scatter gives each rank its piece of `all_reduce_mean`'s mean; all-gather puts the
    /// pieces back in rank order; the f64 sum is exact in f64.
    #[test]
    fn threads_scatter_gather_and_sum_f64() {
        let handles: Vec<_> = ThreadGroup::new(2)
            .into_iter()
            .map(|g| {
                std::thread::spawn(move || {
                    let r = g.rank() as f32;
                    let t = Tensor::from_f32(vec![r, 1.0 + r, 2.0 * r, 3.0], &[4]).unwrap();
                    let piece = g.start_scatter_mean(vec![t], DType::F32).unwrap().finish().unwrap().remove(0);
                    let mut whole = [Tensor::zeros(&[4])];
                    g.all_gather_into(std::slice::from_ref(&piece), &mut whole).unwrap();
                    let mut s = super::super::f64_words(&[0.1 + g.rank() as f64, 1e300], Device::Cpu).unwrap();
                    g.all_reduce_sum_f64(&mut s).unwrap();
                    (
                        g.rank(),
                        piece.to_vec_f32().unwrap(),
                        whole[0].to_vec_f32().unwrap(),
                        super::super::f64_values(&s).unwrap(),
                    )
                })
            })
            .collect();
        for h in handles {
            let (rank, piece, whole, sum) = h.join().unwrap();
            assert_eq!(whole, [0.5, 1.5, 1.0, 3.0]);
            assert_eq!(piece, whole[2 * rank..2 * rank + 2]);
            assert_eq!(sum, [0.1 + 1.1, 2e300]);
        }
    }

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
