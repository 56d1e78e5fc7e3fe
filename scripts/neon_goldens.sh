#!/usr/bin/env bash
# Writes crates/core/tests/data/neon_golden.bin (records) and neon_golden_dotprod.bin (the same
# records' dots from the dotprod build): llama.cpp's own ARM NEON kernels
# (ggml-cpu/arch/arm/quants.c from the llama.cpp peer's source) run on random rows, so smelt's
# NEON kernels can be checked bit for bit (crates/core/src/quant/tests.rs, run under qemu by
# scripts/test_aarch64.sh). Built twice as llama.cpp's CMake builds it for Arm (gcc, -O3,
# gnu11): -march=armv8-a (plain NEON, llama.cpp's vmull/vpaddl ggml_vdotq_s32) and
# -march=armv8.2-a+dotprod (sdot). Needs gcc-aarch64-linux-gnu and qemu-user (test_aarch64.sh
# installs them).
#
#   scripts/neon_goldens.sh [LLAMA_SRC]     # default /work/llama/peer/src
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-/work/llama/peer/src}
G=$SRC/ggml
[ -f "$G/src/ggml-cpu/arch/arm/quants.c" ] || { echo "no llama.cpp source at $SRC (ggml/src/ggml-cpu/arch/arm/quants.c)" >&2; exit 1; }
OUT=crates/core/tests/data
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
CC="aarch64-linux-gnu-gcc -std=gnu11 -O3 -DNDEBUG -D_GNU_SOURCE -I$G/include -I$G/src -I$G/src/ggml-cpu"
for v in neon:armv8-a dotprod:armv8.2-a+dotprod; do
  name=${v%%:*}; arch=${v#*:}
  $CC -march=$arch -w -c "$G/src/ggml-cpu/arch/arm/quants.c" -o "$TMP/arm_quants.o"
  $CC -march=$arch -w -c "$G/src/ggml-quants.c" -o "$TMP/ggml_quants.o"
  $CC -march=$arch scripts/neon_goldens.c "$TMP/arm_quants.o" "$TMP/ggml_quants.o" -lm -o "$TMP/gen_$name"
  if [ $name = neon ]; then f=$OUT/neon_golden.bin; args=(); else f=$OUT/neon_golden_dotprod.bin; args=(--dots); fi
  qemu-aarch64 -cpu max -L /usr/aarch64-linux-gnu "$TMP/gen_$name" "${args[@]}" "$f"
  echo "wrote $f ($(stat -c %s "$f") bytes, $arch)"
done
