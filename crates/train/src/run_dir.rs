//! The checkpoint directory of a run: one writer at a time (an advisory lock), no debris of
//! interrupted runs (their temporaries are swept), and never two runs mixed in it. A fresh run
//! needs an empty directory; a resume needs one that holds only its own lineage at or before
//! the step it resumes. Anything else is refused with what is there, unless `overwrite` says
//! to delete it.

use crate::checkpoint::{self, Found};
use anyhow::{bail, Result};
use smelt_files::staging::{sweep_stale, DirLock};
use std::path::{Path, PathBuf};

/// A checkpoint directory held by this run (the lock is released on drop).
pub struct RunDir {
    _lock: DirLock,
}

/// What the run continues: its lineage, the step it starts from and the checkpoint it loaded.
pub struct Resumed<'a> {
    pub run_id: &'a str,
    pub step: u64,
    pub from: &'a Path,
}

fn names(paths: &[PathBuf]) -> String {
    let mut v: Vec<String> = paths
        .iter()
        .take(6)
        .map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
        .collect();
    if paths.len() > 6 {
        v.push(format!("and {} more", paths.len() - 6));
    }
    v.join(", ")
}

fn remove(paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        let r = if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
        r.map_err(|e| anyhow::anyhow!("removing {}: {e}", p.display()))?;
    }
    Ok(())
}

/// Refuses to delete a path that holds something the run reads (`sft --model out/final --output
/// out --overwrite` would delete the model it is training from).
fn spare_inputs(doomed: &[PathBuf], inputs: &[&Path]) -> Result<()> {
    for d in doomed {
        let Ok(c) = d.canonicalize() else { continue };
        if let Some(i) = inputs.iter().find(|i| i.canonicalize().is_ok_and(|i| i.starts_with(&c))) {
            bail!(
                "--overwrite would delete {}, which holds {} that this run reads; choose another --checkpoint-dir",
                d.display(),
                i.display()
            );
        }
    }
    Ok(())
}

fn same(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

impl RunDir {
    /// Locks `root` (creating it), sweeps dead runs' temporaries and checks what it holds;
    /// `inputs` (what the run reads) are never among what `overwrite` deletes.
    pub fn open(root: &Path, resumed: Option<Resumed>, overwrite: bool, inputs: &[&Path]) -> Result<RunDir> {
        let lock = DirLock::acquire(root, "smelt train run")?;
        let swept = sweep_stale(root, None);
        if !swept.is_empty() {
            eprintln!(
                "removed {} temporaries of interrupted runs from {} ({})",
                swept.len(),
                root.display(),
                names(&swept)
            );
        }
        let found = checkpoint::list(root)?;
        let metrics = root.join("metrics.jsonl");
        let d = root.display();
        match resumed {
            None => {
                // Everything visible is an earlier run's (hidden names: the lock, live temporaries),
                // except an empty metrics.jsonl (a run that stopped before its first step).
                let empty_metrics = |e: &std::fs::DirEntry| {
                    e.file_name() == "metrics.jsonl" && e.metadata().is_ok_and(|m| m.len() == 0)
                };
                let mut there: Vec<PathBuf> = std::fs::read_dir(root)?
                    .flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.') && !empty_metrics(e))
                    .map(|e| e.path())
                    .collect();
                there.sort();
                if there.is_empty() {
                    return Ok(RunDir { _lock: lock });
                }
                if !overwrite {
                    bail!("--checkpoint-dir {d} already holds {}: continue that run with --resume {d}/final (or a step-* folder), \
                           choose another --checkpoint-dir, or pass --overwrite to delete its checkpoints and metrics", names(&there));
                }
                let mut doomed: Vec<PathBuf> = found.into_iter().map(|f| f.path).collect();
                if metrics.exists() {
                    doomed.push(metrics);
                }
                spare_inputs(&doomed, inputs)?;
                eprintln!("--overwrite: deleting {} from {d}", names(&doomed));
                remove(&doomed)?;
            }
            Some(r) => {
                let ours = |f: &Found| f.state.as_ref().is_some_and(|(id, _)| id == r.run_id);
                let foreign: Vec<PathBuf> =
                    found.iter().filter(|f| !ours(f) && !same(&f.path, r.from)).map(|f| f.path.clone()).collect();
                let newer: Vec<PathBuf> = found
                    .iter()
                    .filter(|f| ours(f) && f.state.as_ref().is_some_and(|s| s.1 > r.step))
                    .map(|f| f.path.clone())
                    .collect();
                // Metrics with no checkpoint of this lineage beside them are another run's.
                let foreign_metrics = metrics.exists() && !found.iter().any(ours);
                if !overwrite {
                    if !foreign.is_empty() || foreign_metrics {
                        let mut what = foreign.clone();
                        if foreign_metrics {
                            what.push(metrics.clone());
                        }
                        bail!(
                            "--checkpoint-dir {d} holds another run's {}: resuming {} into it would mix the two; \
                               choose another --checkpoint-dir or pass --overwrite to delete them",
                            names(&what),
                            r.from.display()
                        );
                    }
                    if !newer.is_empty() {
                        bail!("--checkpoint-dir {d} holds checkpoints of this run newer than step {} ({}): continuing from {} would mix \
                               two trajectories; resume from the newest one, choose another --checkpoint-dir, or pass --overwrite to \
                               delete them", r.step, names(&newer), r.from.display());
                    }
                }
                let mut doomed: Vec<PathBuf> = foreign.into_iter().chain(newer).filter(|p| !same(p, r.from)).collect();
                if foreign_metrics {
                    doomed.push(metrics);
                }
                if !doomed.is_empty() {
                    spare_inputs(&doomed, inputs)?;
                    eprintln!("--overwrite: deleting {} from {d}", names(&doomed));
                    remove(&doomed)?;
                }
            }
        }
        Ok(RunDir { _lock: lock })
    }
}
