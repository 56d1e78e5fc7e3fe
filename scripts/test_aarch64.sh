#!/usr/bin/env bash
# Run a crate's tests as aarch64 (64-bit Arm, NEON) code under qemu-user on an x86-64 machine,
# so the NEON kernels are tested against the scalar reference here and in CI-like setups.
#
#   scripts/test_aarch64.sh [cargo test args...]     # default: -p smelt-core --lib quant
#
# Installs (once, needs root + Debian's registry): the Rust aarch64 std, gcc-aarch64-linux-gnu
# (the linker) and qemu-user. Not part of scripts/test.sh (slow: qemu emulates every instruction).
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target list --installed | grep -q aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
[ $# -gt 0 ] || set -- -p smelt-core --lib quant
exec cargo test --release --target aarch64-unknown-linux-gnu "$@"
