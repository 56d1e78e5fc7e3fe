//! Several GPUs for `smelt train` (and `sft`, `dpo`, `distill`): `--nproc N` starts N copies of this very command,
//! one per GPU, with the environment torchrun would give them (`RANK`, `LOCAL_RANK`,
//! `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), and waits for them; a copy
//! (or a process torchrun or srun started) reads that environment and joins the job over NCCL.
//! docs/MULTI_GPU.md tells how to launch and what is reduced when.

use anyhow::{bail, Context, Result};
use smelt_core::dist::{self, DistEnv};
use smelt_core::{DType, Device};
use smelt_train::DataParallel;
use std::ffi::OsString;
use std::process::{Child, Command};
use std::time::Duration;

/// The flags of a data-parallel run, shared by `train`, `sft`, `dpo` and `distill` through `RunFlags`.
#[derive(clap::Args, Debug)]
pub struct ParallelFlags {
    /// Train on N GPUs of this machine: smelt starts N processes of itself (cuda:0 … cuda:N-1)
    /// that average their gradients over NCCL. --batch-size stays the global batch, split
    /// among them. Under torchrun or srun leave it out: RANK, WORLD_SIZE, LOCAL_RANK,
    /// LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT are read from the environment.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub nproc: Option<u32>,
    /// The dtype gradients are averaged in across GPUs: f32 (exact to f32 rounding) or bf16
    /// (half the traffic, each gradient rounded to bf16 on the way).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub reduce_dtype: String,
    /// Size of the gradient buckets averaged together, in MB (the first is 1 MB).
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..))]
    pub bucket_mb: u64,
    /// ZeRO-1: 1 shards AdamW's moments among the GPUs (each keeps 1/N of them: the gradients
    /// are reduce-scattered, each GPU updates its piece of the weights, and the pieces are
    /// all-gathered), 0 keeps the whole state on every GPU. Default: 1 with more than one
    /// process (not with --optimizer muon, which updates whole matrices). Checkpoints are the
    /// same either way. Ignored by a plain run (no --nproc, no launcher's WORLD_SIZE).
    #[arg(long, value_name = "0|1", value_parser = clap::value_parser!(u8).range(0..=1))]
    pub zero: Option<u8>,
}

impl ParallelFlags {
    /// With `--nproc` (and no launcher's environment), starts the ranks, waits for them and
    /// returns true: the caller has nothing left to do. Otherwise false.
    pub fn spawn_ranks(&self, device: &str) -> Result<bool> {
        let Some(n) = self.nproc else {
            return Ok(false);
        };
        if std::env::var_os("WORLD_SIZE").is_some() {
            bail!(
                "--nproc {n} with WORLD_SIZE set: a launcher (torchrun, srun) already started the ranks; drop --nproc"
            );
        }
        if device == "cpu" {
            bail!("--nproc {n} --device cpu: several processes train on GPUs (NCCL), not on the CPU; drop --nproc to train on the CPU");
        }
        if !cfg!(feature = "cuda") {
            bail!("--nproc {n}: this smelt was built without the CUDA backend (build with --features cuda)");
        }
        if device != "auto" && device != "cuda" {
            bail!("--nproc {n} --device {device}: each rank drives cuda:LOCAL_RANK; leave --device out (or say cuda)");
        }
        check_gpus(n as usize)?;
        let port = dist::rendezvous::free_port()?;
        let args = without_nproc(std::env::args_os().skip(1).collect());
        let exe = std::env::current_exe().context("finding the smelt executable to start the ranks")?;
        eprintln!("starting {n} ranks (cuda:0..cuda:{}), rendezvous at 127.0.0.1:{port}", n - 1);
        let mut children: Vec<Child> = Vec::new();
        for rank in 0..n as usize {
            let env = DistEnv {
                rank,
                local_rank: rank,
                world_size: n as usize,
                local_world_size: n as usize,
                master_addr: "127.0.0.1".into(),
                master_port: port,
            };
            let child = Command::new(&exe).args(&args).envs(env.vars()).spawn();
            match child {
                Ok(c) => children.push(c),
                Err(e) => {
                    stop(&mut children);
                    bail!("starting rank {rank} ({}): {e}", exe.display());
                }
            }
        }
        wait_all(children)?;
        Ok(true)
    }

    /// This process's part in a job: None for a plain run; with a launcher's environment the
    /// device `cuda:LOCAL_RANK` and the communicator (after the rendezvous). `device` is the
    /// `--device` flag. WORLD_SIZE=1 runs the NCCL path too (a one-rank communicator), except
    /// on the CPU, where it is a plain run.
    pub fn join(&self, device: &str) -> Result<Option<(Device, DataParallel)>> {
        let Some(env) = DistEnv::from_env()? else {
            return Ok(None);
        };
        let d = match device {
            "cpu" if env.world_size == 1 => return Ok(None),
            "cpu" => bail!(
                "--device cpu under WORLD_SIZE={}: several processes train on GPUs (NCCL), not on the CPU",
                env.world_size
            ),
            _ if !cfg!(feature = "cuda") => bail!(
                "WORLD_SIZE={}: several processes train on GPUs over NCCL, and this smelt was built without the CUDA backend (build with --features cuda)",
                env.world_size
            ),
            "auto" | "cuda" => super::device::resolve(&format!("cuda:{}", env.local_rank))?,
            d if env.world_size > 1 => {
                bail!("--device {d} under WORLD_SIZE={}: each rank drives cuda:LOCAL_RANK; leave --device out", env.world_size)
            }
            d => super::device::resolve(d)?,
        };
        let comm = dist::connect(&env, d)?;
        let wire = if self.reduce_dtype == "bf16" { DType::BF16 } else { DType::F32 };
        let dp = DataParallel::new(comm, wire, (self.bucket_mb as usize) << 20).with_zero(self.zero.map(|z| z == 1));
        Ok(Some((d, dp)))
    }
}

#[cfg(feature = "cuda")]
fn check_gpus(n: usize) -> Result<()> {
    let have = smelt_core::cuda::device_count()?;
    if n > have {
        bail!("--nproc {n}: this machine has {have} CUDA device(s)");
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn check_gpus(_: usize) -> Result<()> {
    Ok(())
}

/// The command line with `--nproc N` / `--nproc=N` taken out (what each rank runs).
fn without_nproc(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--nproc" {
            it.next();
        } else if !a.to_string_lossy().starts_with("--nproc=") {
            out.push(a);
        }
    }
    out
}

fn stop(children: &mut [Child]) {
    for c in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Waits for every rank; when one fails, stops the others (they would wait for it forever in
/// the next all-reduce) and names it.
fn wait_all(mut children: Vec<Child>) -> Result<()> {
    let mut done = vec![false; children.len()];
    while done.iter().any(|d| !d) {
        for (rank, c) in children.iter_mut().enumerate() {
            if done[rank] {
                continue;
            }
            if let Some(status) = c.try_wait()? {
                done[rank] = true;
                if !status.success() {
                    stop(&mut children);
                    bail!("rank {rank} failed ({status}); the other ranks were stopped");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nproc_is_taken_out_of_the_ranks_command_line() {
        let v = |s: &[&str]| s.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            without_nproc(v(&["train", "--nproc", "2", "--steps", "5", "--nproc=3", "--seed", "1"])),
            v(&["train", "--steps", "5", "--seed", "1"])
        );
    }
}
