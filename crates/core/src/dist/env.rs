//! Where this process stands in a data-parallel job: the environment torchrun and Slurm
//! wrappers set (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT`), parsed and checked, with errors that name the variable.
//!
//! `smelt train --nproc N` sets the same variables for the copies of itself it starts, so one
//! code path reads them whoever launched the job.

use anyhow::{bail, Context, Result};

/// The port torchrun uses when none is given.
pub const DEFAULT_PORT: u16 = 29500;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    /// This process's rank among all of the job's processes (0 = the lead: it writes).
    pub rank: usize,
    /// Its rank on this machine: the GPU it drives (`cuda:LOCAL_RANK`).
    pub local_rank: usize,
    pub world_size: usize,
    pub local_world_size: usize,
    /// Where rank 0 listens for the rendezvous (a host name or address).
    pub master_addr: String,
    pub master_port: u16,
}

impl DistEnv {
    /// The job this process belongs to, or None when `WORLD_SIZE` is unset (a plain run).
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// As `from_env`, reading the variables through `get` (tests pass a map).
    /// `LOCAL_RANK` defaults to `RANK` and `LOCAL_WORLD_SIZE` to `WORLD_SIZE` (one machine);
    /// `MASTER_ADDR` is required when there is more than one rank, `MASTER_PORT` defaults to
    /// 29500 as in torchrun.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let Some(world) = get("WORLD_SIZE") else {
            return Ok(None);
        };
        let num = |name: &str, v: &str| -> Result<usize> {
            v.trim().parse::<usize>().with_context(|| format!("{name}={v:?}: expected a whole number"))
        };
        let world_size = num("WORLD_SIZE", &world)?;
        if world_size == 0 {
            bail!("WORLD_SIZE=0: a job has at least one process");
        }
        let rank = match get("RANK") {
            Some(v) => num("RANK", &v)?,
            None if world_size == 1 => 0,
            None => bail!(
                "WORLD_SIZE={world_size} is set but RANK is not (launch with torchrun, srun or smelt train --nproc)"
            ),
        };
        if rank >= world_size {
            bail!("RANK={rank}: must be below WORLD_SIZE={world_size}");
        }
        let local_world_size = match get("LOCAL_WORLD_SIZE") {
            Some(v) => num("LOCAL_WORLD_SIZE", &v)?,
            None => world_size,
        };
        if local_world_size == 0 || local_world_size > world_size {
            bail!("LOCAL_WORLD_SIZE={local_world_size}: must be between 1 and WORLD_SIZE={world_size}");
        }
        let local_rank = match get("LOCAL_RANK") {
            Some(v) => num("LOCAL_RANK", &v)?,
            None => rank,
        };
        if local_rank >= local_world_size {
            bail!("LOCAL_RANK={local_rank}: must be below LOCAL_WORLD_SIZE={local_world_size}");
        }
        let master_addr = match get("MASTER_ADDR").filter(|a| !a.trim().is_empty()) {
            Some(a) => a.trim().to_string(),
            None if world_size == 1 => "127.0.0.1".into(),
            None => bail!("WORLD_SIZE={world_size} but MASTER_ADDR is not set: the address where rank 0 listens"),
        };
        let master_port = match get("MASTER_PORT") {
            Some(v) => v
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .with_context(|| format!("MASTER_PORT={v:?}: expected a TCP port (1-65535)"))?,
            None => DEFAULT_PORT,
        };
        Ok(Some(DistEnv { rank, local_rank, world_size, local_world_size, master_addr, master_port }))
    }

    /// The variables that describe this process (what `--nproc` sets for each copy).
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("RANK", self.rank.to_string()),
            ("LOCAL_RANK", self.local_rank.to_string()),
            ("WORLD_SIZE", self.world_size.to_string()),
            ("LOCAL_WORLD_SIZE", self.local_world_size.to_string()),
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", self.master_port.to_string()),
        ]
    }

    /// `MASTER_ADDR:MASTER_PORT`, as messages name it.
    pub fn master(&self) -> String {
        format!("{}:{}", self.master_addr, self.master_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<Option<DistEnv>> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        DistEnv::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn torchrun_variables_parse_and_round_trip() {
        assert_eq!(parse(&[]).unwrap(), None);
        let e = parse(&[
            ("RANK", "5"),
            ("LOCAL_RANK", "1"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_WORLD_SIZE", "4"),
            ("MASTER_ADDR", "node-3"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((e.rank, e.local_rank, e.world_size, e.local_world_size), (5, 1, 8, 4));
        assert_eq!(e.master(), "node-3:1234");
        let vars = e.vars();
        let back = DistEnv::from_vars(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())).unwrap();
        assert_eq!(back, Some(e));
        // One process needs nothing but WORLD_SIZE; the port defaults to torchrun's.
        let one = parse(&[("WORLD_SIZE", "1")]).unwrap().unwrap();
        assert_eq!((one.rank, one.local_rank, one.master_port), (0, 0, DEFAULT_PORT));
    }

    #[test]
    fn bad_variables_are_named() {
        let err = |p: &[(&str, &str)]| parse(p).unwrap_err().to_string();
        assert!(err(&[("WORLD_SIZE", "two")]).contains("WORLD_SIZE=\"two\""));
        assert!(err(&[("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")]).contains("RANK is not"));
        assert!(err(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_ADDR", "h")]).contains("RANK=2"));
        assert!(err(&[("WORLD_SIZE", "2"), ("RANK", "1")]).contains("MASTER_ADDR"));
        let e = err(&[("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "99999")]);
        assert!(e.contains("MASTER_PORT=\"99999\""), "{e}");
        let e = err(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "1"),
            ("MASTER_ADDR", "h"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("LOCAL_RANK", "2"),
        ]);
        assert!(e.contains("LOCAL_RANK=2"), "{e}");
    }
}
