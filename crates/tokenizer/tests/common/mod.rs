//! Shared helpers for the parity tests: where the fetched real inputs live.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn repo_root() -> PathBuf {
    smelt_testing::repo_root()
}

/// A fetched input under `.cache/inputs/`, or None after reporting the skip
/// (a failure under SMELT_REQUIRE_INPUTS=1).
pub fn input(rel: &str) -> Option<PathBuf> {
    smelt_testing::input(rel)
}
