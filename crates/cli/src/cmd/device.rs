//! `--device cpu|cuda[:N]|auto`, shared by every command that computes.
//!
//! `auto` (the default) picks CUDA when this smelt was built with it and a GPU answers, and
//! says which it picked; an explicit `cuda` that cannot be had is an error, never a silent
//! fallback to the CPU.

use anyhow::{bail, Result};
pub use smelt_core::Device;

pub fn resolve(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(auto()),
        d if d == "cuda" || d.starts_with("cuda:") => cuda(d),
        d => bail!("--device {d:?}: expected cpu, cuda, cuda:N or auto"),
    }
}

#[cfg(feature = "cuda")]
fn auto() -> Device {
    match smelt_core::cuda::gpu(0) {
        Ok(g) => {
            eprintln!("device: cuda:0 ({})", g.name);
            Device::Cuda(0)
        }
        Err(e) => {
            eprintln!("device: cpu (CUDA unavailable: {e:#})");
            Device::Cpu
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn auto() -> Device {
    Device::Cpu
}

#[cfg(feature = "cuda")]
fn cuda(d: &str) -> Result<Device> {
    let n = match d.strip_prefix("cuda:") {
        None => 0,
        Some(n) => {
            n.parse::<usize>().map_err(|_| anyhow::anyhow!("--device {d}: expected cuda:N with N a GPU number"))?
        }
    };
    match smelt_core::cuda::gpu(n) {
        Ok(_) => Ok(Device::Cuda(n)),
        Err(e) => bail!("--device {d}: {e:#}; use --device cpu to run on the CPU"),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda(d: &str) -> Result<Device> {
    bail!("--device {d}: this smelt was built without the CUDA backend (build with --features cuda); use --device cpu")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_clearly() {
        assert_eq!(resolve("cpu").unwrap(), Device::Cpu);
        assert!(resolve("tpu").unwrap_err().to_string().contains("expected cpu"));
        // Without a GPU (CI), cuda is an error that says what to do, not a panic.
        if let Err(e) = resolve("cuda:0") {
            assert!(e.to_string().contains("--device cpu"), "{e}");
        }
        assert!(resolve("cuda:x").is_err());
    }
}
