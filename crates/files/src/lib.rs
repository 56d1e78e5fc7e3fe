//! Writing files so that an interrupted write never destroys what was there: stage beside the
//! target under a name of its own (`staging::Temp`: pid + random, removed on error and on
//! Ctrl-C), then rename over it (atomic on one filesystem). Every stage that writes an output
//! (token files, reports, tokenizers, safetensors) goes through here. Reading side:
//! `expand_inputs`, the one expander of `--input` values (files, directories, globs).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub mod staging;
pub use crate::staging::Temp;

/// Writes `bytes` to `path` through a temporary beside it (removed if the write fails, e.g.
/// on a full disk; the error names `path`).
pub fn write_atomic(path: &Path, bytes: impl AsRef<[u8]>) -> Result<()> {
    let tmp = Temp::new(path);
    std::fs::write(tmp.path(), bytes).with_context(|| format!("writing {}", path.display()))?;
    tmp.commit(path)
}

/// Refuses, before any work, an output path that cannot take the file: an existing directory
/// (the rename at the end would fail after all the work), or one of the `inputs` itself (the
/// rename would replace the data being read: `prepare -i a.txt -o a.txt`). `flag` names the
/// output in the message.
pub fn check_output(output: &Path, inputs: &[PathBuf], flag: &str) -> Result<()> {
    if output.is_dir() {
        bail!("{flag} {}: is a directory; give the path of the file to write", output.display());
    }
    if let Some(input) = inputs.iter().find(|i| same_file(output, i)) {
        bail!(
            "{flag} {}: is also an input ({}); writing it would destroy what is being read, choose another path",
            output.display(),
            input.display()
        );
    }
    Ok(())
}

/// Whether the file at `path` begins with `magic` (false when it cannot be read): formats are
/// told apart by name, and this says what a misnamed file is (a GGUF without `.gguf`).
pub fn starts_with(path: &Path, magic: &[u8]) -> bool {
    use std::io::Read;
    let mut head = vec![0u8; magic.len()];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head == magic
}

/// Whether two paths name one existing file (through links and relative paths alike).
#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(a: &Path, b: &Path) -> bool {
    matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(a), Ok(b)) if a == b)
}

/// Expand `--input` values into an ordered file list. Order is the order given, and within a
/// directory or glob, sorted by path, so that output never depends on directory listing order.
/// Hidden entries (names starting with `.`) inside directories are skipped.
pub fn expand_inputs(inputs: &[String]) -> Result<Vec<PathBuf>> {
    if inputs.is_empty() {
        bail!("no --input given");
    }
    let mut files = Vec::new();
    for spec in inputs {
        let before = files.len();
        if spec.contains(['*', '?', '[']) && !Path::new(spec).exists() {
            let paths = glob::glob(spec).with_context(|| format!("input {spec:?}: invalid glob pattern"))?;
            let mut matched = Vec::new();
            for p in paths {
                let p = p.with_context(|| format!("input {spec:?}: reading a glob match"))?;
                if p.is_dir() {
                    walk(&p, &mut matched)?
                } else {
                    matched.push(p)
                }
            }
            matched.sort();
            files.extend(matched);
            if files.len() == before {
                bail!("input {spec:?}: the pattern matched no files");
            }
        } else {
            let p = PathBuf::from(spec);
            let meta = std::fs::metadata(&p).with_context(|| format!("input {}: cannot read it", p.display()))?;
            if meta.is_dir() {
                walk(&p, &mut files)?;
                if files.len() == before {
                    bail!("input {}: the directory holds no files", p.display());
                }
            } else {
                files.push(p);
            }
        }
    }
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing directory {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("listing directory {}", dir.display()))?;
    entries.sort();
    for p in entries {
        if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        if p.is_dir() {
            walk(&p, out)?
        } else {
            out.push(p)
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_output_refuses_an_input_and_a_directory() {
        let d = std::env::temp_dir().join(format!("smelt-files-check-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let (a, b) = (d.join("a.txt"), d.join("b.txt"));
        std::fs::write(&a, "x").unwrap();
        let link = d.join("l.txt");
        let _ = std::fs::remove_file(&link);
        std::fs::hard_link(&a, &link).unwrap();
        let e = check_output(&a, &[b.clone(), a.clone()], "--output").unwrap_err().to_string();
        assert!(e.contains("--output") && e.contains("is also an input"), "{e}");
        assert!(check_output(&link, std::slice::from_ref(&a), "-o").is_err(), "a hard link is the same file");
        let e = check_output(&d, std::slice::from_ref(&a), "-o").unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        check_output(&b, std::slice::from_ref(&a), "-o").unwrap();
        std::fs::write(&b, "y").unwrap();
        check_output(&b, &[a], "-o").unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }
}
