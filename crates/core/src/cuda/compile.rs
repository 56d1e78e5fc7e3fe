//! NVRTC at first use, PTX cached on disk.
//!
//! A module's PTX is keyed by a hash of (shared prelude + its source + target arch + options),
//! so editing a `.cu` file or moving to another GPU compiles afresh and nothing stale is ever
//! loaded. The driver caches the PTX → machine code step itself (~/.nv/ComputeCache).
//! Cache folder: `$SMELT_KERNEL_CACHE`, else `$XDG_CACHE_HOME/smelt/kernels`, else
//! `~/.cache/smelt/kernels`; if none is writable, kernels are compiled every run.

use anyhow::{anyhow, bail, Result};
use cudarc::nvrtc::{CompileOptions, Ptx};
use std::path::PathBuf;

/// Helpers every kernel file uses (bf16 conversion, warp and block reductions).
pub const PRELUDE: &str = include_str!("common.cuh");

/// A module whose name ends in `_sm90a` uses Hopper's architecture-specific instructions
/// (`wgmma`), which PTX allows only for the `sm_90a` target: it is compiled for `compute_90a`
/// and loads only on compute capability 9.0 (its launchers check the device first).
fn options(name: &str, arch: (i32, i32)) -> Vec<String> {
    let a = if name.ends_with("_sm90a") { "a" } else { "" };
    vec![format!("--gpu-architecture=compute_{}{}{a}", arch.0, arch.1), "--std=c++17".into()]
}

/// FNV-1a: stable across builds and platforms (std's hasher is not promised to be).
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SMELT_KERNEL_CACHE") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("smelt").join("kernels"))
}

/// Compiles `src` (prefixed with the prelude) to PTX for `arch` with NVRTC; no GPU needed.
pub fn compile(name: &str, src: &str, arch: (i32, i32)) -> Result<String> {
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        bail!("NVRTC (libnvrtc.so.13) could not be loaded: it compiles smelt's CUDA kernels; add the CUDA 13 libraries to LD_LIBRARY_PATH");
    }
    let full = format!("{PRELUDE}\n#line 1 \"{name}.cu\"\n{src}");
    let opts = CompileOptions { options: options(name, arch), name: Some(format!("{name}.cu")), ..Default::default() };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(full, opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => {
            anyhow!("compiling {name}.cu:\n{}", log.to_string_lossy())
        }
        e => anyhow!("compiling {name}.cu: {e:?}"),
    })?;
    Ok(ptx.to_src())
}

/// PTX for module `name`, from the disk cache or freshly compiled (and then cached).
pub fn ptx(name: &str, src: &str, arch: (i32, i32)) -> Result<Ptx> {
    let opts = options(name, arch).join(" ");
    let key = fnv(&[PRELUDE, src, &opts]);
    let file = cache_dir().map(|d| d.join(format!("{name}-{key:016x}-sm{}{}.ptx", arch.0, arch.1)));
    if let Some(f) = &file {
        if let Ok(text) = std::fs::read_to_string(f) {
            return Ok(Ptx::from_src(text));
        }
    }
    let text = compile(name, src, arch)?;
    if let Some(f) = &file {
        // Write-then-rename, so a concurrent reader never sees half a file. A failure only
        // costs a recompile next time.
        if let Some(dir) = f.parent() {
            let tmp = f.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::create_dir_all(dir).is_ok() && std::fs::write(&tmp, &text).is_ok() {
                let _ = std::fs::rename(&tmp, f);
            }
        }
    }
    Ok(Ptx::from_src(text))
}

#[cfg(test)]
mod tests {
    #[test]
    fn hash_depends_on_every_part() {
        assert_ne!(super::fnv(&["ab", "c"]), super::fnv(&["a", "bc"]));
        assert_eq!(super::fnv(&["x"]), super::fnv(&["x"]));
    }
}
