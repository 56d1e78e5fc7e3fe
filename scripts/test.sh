#!/usr/bin/env bash
# The test command (README's second command; .ci/run calls it). CPU only; GPU tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)"; exit 1; }
# Real inputs (llama.cpp vocabularies, ...) are fetched into .cache/ when the registries are
# reachable; tests that need them skip with a message otherwise.
if [ -x scripts/fetch_inputs.sh ]; then scripts/fetch_inputs.sh || echo "warning: could not fetch real inputs; tests that need them will skip"; fi
cargo test --workspace --release "$@"
