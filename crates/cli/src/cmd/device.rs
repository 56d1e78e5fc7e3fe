//! `--device cpu|cuda[:N]|auto`, shared by every command that computes.

use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
}

/// Resolves a `--device` value. This build has only the CPU backend: `auto` means CPU, and
/// asking for CUDA is an error rather than a silent fallback.
pub fn resolve(s: &str) -> Result<Device> {
    match s {
        "cpu" | "auto" => Ok(Device::Cpu),
        d if d == "cuda" || d.starts_with("cuda:") => {
            bail!("--device {d}: this smelt was built without the CUDA backend; use --device cpu")
        }
        d => bail!("--device {d:?}: expected cpu, cuda, cuda:N or auto"),
    }
}
