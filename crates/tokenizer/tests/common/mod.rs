//! Shared helpers for the parity tests: where the fetched real inputs live.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn repo_root() -> PathBuf { PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..") }

/// A fetched input under `.cache/inputs/`, or None after printing a SKIP line.
pub fn input(rel: &str) -> Option<PathBuf> {
    let p = repo_root().join(".cache/inputs").join(rel);
    if p.exists() { Some(p) } else {
        println!("SKIP: {} missing; run scripts/fetch_inputs.sh", p.display());
        None
    }
}
