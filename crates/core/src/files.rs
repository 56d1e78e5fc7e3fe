//! Writing files so that an interrupted write never destroys what was there: stage beside the
//! target, then rename over it (atomic on one filesystem). Every stage that writes an output
//! (token files, reports, tokenizers, safetensors) goes through here.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Where a write of `p` is staged: `<p>.tmp`.
pub fn tmp_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Renames with an error that names both paths.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).with_context(|| format!("renaming {} to {}", from.display(), to.display()))
}

/// Writes `bytes` to `path` through `tmp_path(path)`.
pub fn write_atomic(path: &Path, bytes: impl AsRef<[u8]>) -> Result<()> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    rename(&tmp, path)
}
