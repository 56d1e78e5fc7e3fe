//! What the test suites of every crate share, so that no test passes without testing:
//!
//! - [`skip`]: a test that cannot run here (an input not fetched, no GPU) says so where a log
//!   shows it, and fails instead when the run demands it: `SMELT_REQUIRE_INPUTS=1` (set by
//!   `scripts/test.sh` once the inputs are fetched) for [`Need::Input`], `SMELT_REQUIRE_GPU=1`
//!   (set by `scripts/gpu_suite.sh run`) for [`Need::Gpu`], `SMELT_REQUIRE_MULTI_GPU=1` (set
//!   by the suite where it sees two or more GPUs) for [`Need::MultiGpu`], `SMELT_REQUIRE_AMX=1`
//!   (set by `bench/amx_check.sh` on the AMX host) for [`Need::Amx`];
//! - where things are: [`repo_root`], [`input`] (fetched inputs under `.cache/inputs/`),
//!   [`fixture`] (the goldens under `crates/model/tests/fixtures/`, read by several crates);
//! - [`peer_python`]: the venv's python for the PyTorch/transformers peer tests, or a skip;
//! - [`nmse`], the error measure of the device-against-CPU tests;
//! - with the `cuda` feature, [`gpu`]: device 0, or a skip;
//! - [`http`]: a minimal HTTP/1.1 client for the server tests.
//!
//! Where a skip is reported: every skip prints `SKIP: <reason>` into the test's own captured
//! output (what `--show-output` and a failure show). With `SMELT_SKIP_LOG=FILE` it also appends
//! `SMELT-SKIP <package>/<binary>::<test>: <reason>` to FILE (`scripts/test.sh` prints that list and its
//! count after the run); without it that line goes straight to the process's stderr, which
//! libtest does not capture, so a plain `cargo test` shows it too.
//!
//! A dev-dependency only. Without `cuda` it depends on nothing, so smelt-core's own tests use it
//! without a dependency cycle.

pub mod http;

use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a skipped test lacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A real input that `scripts/fetch_inputs.sh` fetches or makes; fatal under
    /// `SMELT_REQUIRE_INPUTS=1`.
    Input,
    /// A CUDA device or its libraries; fatal under `SMELT_REQUIRE_GPU=1`.
    Gpu,
    /// More GPUs than this machine has (the several-GPU tests); fatal under
    /// `SMELT_REQUIRE_MULTI_GPU=1`, so a one-GPU suite run reports it without failing.
    MultiGpu,
    /// An instruction-set extension this CPU lacks (AVX2, AVX-512, …): reported, never fatal,
    /// since no setting gives a machine the instructions.
    Cpu,
    /// Intel AMX-INT8 tiles usable by this process (the CPU has them, Linux grants them, and
    /// `SMELT_AMX=0` is not set); fatal under `SMELT_REQUIRE_AMX=1`, the run on the AMX host
    /// whose point is to test them.
    Amx,
}

impl Need {
    /// The environment variable that turns this kind of skip into a failure.
    pub fn require_var(self) -> Option<&'static str> {
        match self {
            Need::Input => Some("SMELT_REQUIRE_INPUTS"),
            Need::Gpu => Some("SMELT_REQUIRE_GPU"),
            Need::MultiGpu => Some("SMELT_REQUIRE_MULTI_GPU"),
            Need::Amx => Some("SMELT_REQUIRE_AMX"),
            Need::Cpu => None,
        }
    }
}

/// Whether the environment variable `var` is set to something other than empty or `0`.
pub fn flag(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `package/binary::test` for the running test: cargo runs tests with `CARGO_PKG_NAME` set
/// (left out where it is not, as in the GPU suite), the binary is the test file (cargo's
/// `-<hash>` suffix dropped), and libtest names each test's thread after the test.
pub fn test_name() -> String {
    let exe = std::env::current_exe().ok();
    let stem = exe.as_deref().and_then(Path::file_stem).and_then(|s| s.to_str()).unwrap_or("?");
    let binary = match stem.rsplit_once('-') {
        Some((b, h)) if h.len() == 16 && h.bytes().all(|c| c.is_ascii_hexdigit()) => b,
        _ => stem,
    };
    let package = std::env::var("CARGO_PKG_NAME").map(|p| format!("{p}/")).unwrap_or_default();
    let thread = std::thread::current();
    format!("{package}{binary}::{}", thread.name().unwrap_or("?"))
}

/// Reports that the calling test skips (see the crate doc for where the line goes), or panics
/// with the reason when `need`'s `SMELT_REQUIRE_*` variable is set.
pub fn skip(need: Need, reason: impl Display) {
    let name = test_name();
    if let Some(var) = need.require_var().filter(|v| flag(v)) {
        panic!("{var}=1, but {name} would skip: {reason}");
    }
    println!("SKIP: {reason}");
    let line = format!("SMELT-SKIP {name}: {reason}\n");
    match std::env::var_os("SMELT_SKIP_LOG") {
        Some(log) => {
            // One write of one line in append mode: lines of parallel tests do not interleave.
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if let Err(e) = written {
                panic!("SMELT_SKIP_LOG={}: {e}", Path::new(&log).display());
            }
        }
        None => {
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }
}

/// The repository: `$SMELT_REPO` (the GPU suite runs its tests from a copy of the parts they
/// read), else this source tree.
pub fn repo_root() -> PathBuf {
    match std::env::var_os("SMELT_REPO") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
    }
}

/// The folder `scripts/fetch_inputs.sh` fills: `.cache/inputs/`.
pub fn inputs_dir() -> PathBuf {
    repo_root().join(".cache/inputs")
}

/// `.cache/inputs/<rel>` when it exists; otherwise a [`Need::Input`] skip and None.
pub fn input(rel: &str) -> Option<PathBuf> {
    require_input(&inputs_dir().join(rel), "run scripts/fetch_inputs.sh")
}

/// `path` when it exists; otherwise a [`Need::Input`] skip saying `how` to get it, and None.
pub fn require_input(path: &Path, how: &str) -> Option<PathBuf> {
    if path.exists() {
        Some(path.to_path_buf())
    } else {
        skip(Need::Input, format!("{} missing ({how})", path.display()));
        None
    }
}

/// The project venv's python (`scripts/venv.sh`) when it imports every module of `modules`
/// (e.g. "torch, transformers, safetensors"): the peer the PyTorch comparisons run. Otherwise a
/// [`Need::Input`] skip naming what is missing, and None.
pub fn peer_python(modules: &str) -> Option<String> {
    let venv = std::process::Command::new(repo_root().join("scripts/venv.sh")).output().ok();
    let py = venv.as_ref().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    let ok = venv.is_some_and(|o| o.status.success())
        && std::process::Command::new(&py)
            .args(["-c", &format!("import {modules}")])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        skip(Need::Input, format!("the project's venv cannot import {modules} (run scripts/install_torch.sh)"));
        return None;
    }
    Some(py)
}

/// `crates/model/tests/fixtures/<rel>`: the committed goldens several crates test against.
pub fn fixture(rel: &str) -> PathBuf {
    repo_root().join("crates/model/tests/fixtures").join(rel)
}

/// Normalised mean squared error Σ(got − want)² / Σ want², in f64. A NaN or infinity in `got`
/// makes it NaN or infinite, which fails any `nmse <= tol`.
pub fn nmse<A: Copy + Into<f64>, B: Copy + Into<f64>>(got: &[A], want: &[B]) -> f64 {
    assert_eq!(got.len(), want.len(), "nmse: {} values against {}", got.len(), want.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        let (g, w): (f64, f64) = (g.into(), w.into());
        num += (g - w).powi(2);
        den += w * w;
    }
    num / den.max(1e-30)
}

/// CUDA device 0, or a [`Need::Gpu`] skip (naming why) and None.
#[cfg(feature = "cuda")]
pub fn gpu() -> Option<smelt_core::Device> {
    match smelt_core::cuda::gpu(0) {
        Ok(_) => Some(smelt_core::Device::Cuda(0)),
        Err(e) => {
            skip(Need::Gpu, format!("no CUDA device ({e:#})"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nmse_measures_and_refuses_nan() {
        assert_eq!(nmse(&[1f32, 2.0], &[1f32, 2.0]), 0.0);
        assert!((nmse(&[2f32], &[1f64]) - 1.0).abs() < 1e-12);
        assert!(nmse(&[f32::NAN], &[1f32]).is_nan());
        assert_eq!(nmse(&[f32::INFINITY], &[1f32]), f64::INFINITY);
    }

    #[test]
    fn names_the_test_after_its_thread() {
        assert!(test_name().ends_with("::tests::names_the_test_after_its_thread"), "{}", test_name());
    }
}
