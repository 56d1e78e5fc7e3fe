//! Data-parallel training on the CPU, ranks as threads (`smelt_core::dist::ThreadGroup`, the
//! reference `Collective`), against the one-process run at the same global batch:
//! - one rank is the plain run bit for bit, with and without ZeRO-1 (the GPU's NCCL form is in
//!   gpu_nccl.rs);
//! - two and four ranks follow the one-process loss curve to f32 rounding, with the optimizer
//!   state whole on every rank and sharded among them (ZeRO-1), and the ranks end with
//!   identical weights;
//! - a checkpoint written by two ranks (ZeRO-1, the default) resumes on one process, and the
//!   reverse, continuing the curve.

mod common;
use common::{max_rel, run_ranks};

use smelt_core::dist::ThreadGroup;
use smelt_core::DType;
use smelt_model::Model;
use smelt_train::{DataParallel, TrainConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn workdir(name: &str) -> PathBuf {
    common::workdir("dp", name)
}

fn setup(d: &Path) -> TrainConfig {
    TrainConfig { batch_size: 4, steps: 8, checkpoint_interval: 4, ..common::tiny_run(d) }
}

fn losses(metrics: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn one_rank_is_the_plain_run_bit_for_bit() {
    let d = workdir("one");
    let cfg = setup(&d);
    smelt_train::run(cfg.clone(), None).unwrap();
    for (zero, name) in [(None, "one"), (Some(true), "one-zero1")] {
        let mut one = cfg.clone();
        one.checkpoint_dir = d.join(name);
        run_ranks(&one, 1, zero, None);
        let (a, b) = (losses(&d.join("ckpt/metrics.jsonl")), losses(&one.checkpoint_dir.join("metrics.jsonl")));
        assert_eq!(
            a.iter().map(|x| x.1.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|x| x.1.to_bits()).collect::<Vec<_>>(),
            "{name}"
        );
        let (ma, mb) =
            (Model::load(&d.join("ckpt/final")).unwrap(), Model::load(&one.checkpoint_dir.join("final")).unwrap());
        for (x, y) in ma.params.iter().zip(&mb.params) {
            assert_eq!(x.as_f32().unwrap(), y.as_f32().unwrap(), "{name}");
        }
        // The optimizer state written is the plain run's, bit for bit.
        let opt = |dir: &Path| smelt_model::io::read_safetensors(&dir.join("final/optimizer.safetensors")).unwrap();
        let (oa, ob) = (opt(&d.join("ckpt")), opt(&one.checkpoint_dir));
        assert_eq!(oa.len(), ob.len());
        for (k, x) in &oa {
            assert_eq!(x.shape(), ob[k].shape(), "{name}: {k}");
            assert_eq!(x.as_f32().unwrap(), ob[k].as_f32().unwrap(), "{name}: {k}");
        }
    }
}

#[test]
fn ranks_follow_the_one_process_run_at_the_same_global_batch() {
    let d = workdir("many");
    let cfg = setup(&d);
    smelt_train::run(cfg.clone(), None).unwrap();
    let single = losses(&d.join("ckpt/metrics.jsonl"));
    let want = Model::load(&d.join("ckpt/final")).unwrap();
    for (world, zero) in [(2, Some(false)), (4, Some(false)), (2, None), (4, None)] {
        let mut c = cfg.clone();
        let tag = if zero.is_none() { "-zero1" } else { "" };
        c.checkpoint_dir = d.join(format!("world{world}{tag}"));
        run_ranks(&c, world, zero, None);
        let got = losses(&c.checkpoint_dir.join("metrics.jsonl"));
        let rel = max_rel(&got, &single);
        println!("{world} ranks{tag}: largest relative loss difference over {} steps {rel:.2e}", got.len());
        // Only the order of the sums differs (per-rank means, then their mean).
        assert!(rel < 1e-5, "{world} ranks: {got:?}\n1 process: {single:?}");
        let m = Model::load(&c.checkpoint_dir.join("final")).unwrap();
        for (x, y) in m.params.iter().zip(&want.params) {
            let e = smelt_testing::nmse(&x.to_vec_f32().unwrap(), &y.to_vec_f32().unwrap());
            assert!(e < 1e-9, "{world} ranks: final weights NMSE {e:e}");
        }
        // Only rank 0 wrote: one metrics line per step, one final checkpoint.
        assert_eq!(got.len() as u64, cfg.steps);
    }
    // A global batch that does not split evenly is refused, naming the flag.
    let mut c = cfg.clone();
    c.checkpoint_dir = d.join("world3");
    let g = ThreadGroup::new(1).pop().unwrap();
    c.parallel = Some(DataParallel::new(Arc::new(RankOf3(g)), DType::F32, 1 << 20));
    let e = smelt_train::run(c, None).err().expect("4 rows over 3 ranks").to_string();
    assert!(e.contains("--batch-size 4") && e.contains("3 ranks"), "{e}");
}

/// A one-thread group that claims to be rank 0 of 3 (only to reach the batch check).
#[derive(Debug)]
struct RankOf3(ThreadGroup);
impl smelt_core::dist::Collective for RankOf3 {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        3
    }
    fn all_reduce_mean(&self, b: &mut [smelt_core::Tensor], w: DType) -> anyhow::Result<()> {
        self.0.all_reduce_mean(b, w)
    }
    fn start_scatter_mean(&self, b: Vec<smelt_core::Tensor>, w: DType) -> anyhow::Result<smelt_core::dist::Pending> {
        self.0.start_scatter_mean(b, w)
    }
    fn all_gather_into(&self, p: &[smelt_core::Tensor], o: &mut [smelt_core::Tensor]) -> anyhow::Result<()> {
        self.0.all_gather_into(p, o)
    }
    fn all_reduce_sum_f64(&self, t: &mut smelt_core::Tensor) -> anyhow::Result<()> {
        self.0.all_reduce_sum_f64(t)
    }
}

#[test]
fn checkpoints_move_between_two_ranks_and_one_process() {
    let d = workdir("resume");
    let cfg = setup(&d);
    smelt_train::run(cfg.clone(), None).unwrap();
    let single = losses(&d.join("ckpt/metrics.jsonl"));
    let mut two = cfg.clone();
    two.checkpoint_dir = d.join("two");
    run_ranks(&two, 2, None, None);
    let straight2 = losses(&d.join("two/metrics.jsonl"));

    // Two ranks' step 4 resumed on one process continues the curve.
    let mut c = cfg.clone();
    c.checkpoint_dir = d.join("two-then-one");
    smelt_train::run(c.clone(), Some(&d.join("two/step-000004"))).unwrap();
    let got = losses(&c.checkpoint_dir.join("metrics.jsonl"));
    assert!(max_rel(&got, &straight2[4..]) < 1e-5, "{got:?} vs {:?}", &straight2[4..]);

    // One process's step 4 resumed on two ranks, too.
    let mut c = cfg.clone();
    c.checkpoint_dir = d.join("one-then-two");
    run_ranks(&c, 2, None, Some(&d.join("ckpt/step-000004")));
    let got = losses(&c.checkpoint_dir.join("metrics.jsonl"));
    assert!(max_rel(&got, &single[4..]) < 1e-5, "{got:?} vs {:?}", &single[4..]);
}
