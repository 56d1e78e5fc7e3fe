#!/usr/bin/env bash
# The test command (README's second command; .ci/run calls it). CPU only; GPU tests skip.
#
# It first fetches the real inputs (scripts/fetch_inputs.sh: llama.cpp's vocabularies and test
# vectors, SmolLM2's GGUF and the Hugging Face folder smelt writes from it, Qwen3's tokenizer)
# into .cache/. When that succeeds it sets SMELT_REQUIRE_INPUTS=1, so a test that would skip
# for a missing input fails instead (set SMELT_REQUIRE_INPUTS=0 to allow skips). Every skip
# is listed, with its reason, after the run (SMELT_SKIP_LOG collects them).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)"; exit 1; }
if scripts/fetch_inputs.sh; then
  export SMELT_REQUIRE_INPUTS=${SMELT_REQUIRE_INPUTS:-1}
else
  echo "warning: some real inputs could not be fetched (above); tests that need them will skip"
fi
# NVRTC from PyPI (fetch_inputs.sh), so kernels_compile compiles every CUDA kernel here too.
if [ -f .cache/inputs/cuda/lib/libnvrtc.so.13 ]; then
  export LD_LIBRARY_PATH="$PWD/.cache/inputs/cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export SMELT_SKIP_LOG=${SMELT_SKIP_LOG:-$PWD/${CARGO_TARGET_DIR:-target}/smelt-skips.log}
mkdir -p "$(dirname "$SMELT_SKIP_LOG")"
: > "$SMELT_SKIP_LOG"
status=0
cargo test --workspace --release "$@" || status=$?
# Every CUDA kernel compiled by NVRTC and every kernel name a launcher asks for present (no GPU
# needed; the cuda feature's `kernels_compile`), when fetch_inputs.sh brought NVRTC.
if [ $# -eq 0 ] && [ -f .cache/inputs/cuda/lib/libnvrtc.so.13 ]; then
  cargo test --release --features cuda -p smelt-core --lib -- ops::parity_tests::kernels_compile || status=$?
fi
# The skips, by test file ("SMELT-SKIP package/binary::test: reason" lines).
echo
if [ -s "$SMELT_SKIP_LOG" ]; then
  echo "SKIPPED: $(wc -l < "$SMELT_SKIP_LOG") test(s) did not run here (SMELT_REQUIRE_INPUTS=${SMELT_REQUIRE_INPUTS:-0}):"
  sed 's/^SMELT-SKIP //' "$SMELT_SKIP_LOG" | LC_ALL=C sort | awk -F'::' '{ if ($1 != f) { f = $1; print "  " f } sub(/^[^:]*::/, ""); print "    " $0 }'
else
  echo "SKIPPED: none (every test ran)"
fi
exit $status
