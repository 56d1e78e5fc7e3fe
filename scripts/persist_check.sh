#!/usr/bin/env bash
# One device call for the persistent decode kernel (`ops::decode_layers`, SMELT_CUDA_PERSIST=1;
# docs/CUDA.md "One persistent kernel a decode token"): exactness first, then batch-1 decode
# timed with and without it at issue 14's decode shapes (bf16, then Q8_0 and Q4_K).
#
# Build here, then carry DIR (scripts/gpu_suite.sh build DIR copies this script, the test
# executables, smelt and bench/; put SmolLM2's tokenizer.json in DIR too, for the bench's GGUFs:
#   cp .cache/inputs/smollm2/hf/tokenizer.json DIR/
# On the device:
#   cd DIR && bash persist_check.sh . [PARTS]     # PARTS: parity,time (default both; ~5 min)
set -uo pipefail
D=${1:-.}
PARTS=${2:-parity,time}
part() { [[ ",$PARTS," == *",$1,"* ]]; }
OUT=${OUT:-./out}
mkdir -p "$OUT"
export SMELT_REQUIRE_GPU=1 SMELT_REPO=${SMELT_REPO:-$PWD}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
if part parity; then
  # The persistent step against the launched one, bit for bit (two shapes, 280-300 steps each).
  timeout 300 "$D/gpu_infer" persistent_decode_steps_equal --test-threads=1 --nocapture >"$OUT/persist_parity.txt" 2>&1
  echo "persistent_decode_steps_equal_the_launched_ones rc $?"; grep -E "equal|differs|panicked|timed out|test result" "$OUT/persist_parity.txt" | tail -8
  # The two-blocks-an-SM instantiation (decode_layers_b2_bf16).
  SMELT_CUDA_PERSIST_BPS=2 timeout 300 "$D/gpu_infer" persistent_decode_steps_equal --test-threads=1 --nocapture >"$OUT/persist_parity_b2.txt" 2>&1
  echo "the same, two blocks an SM, rc $?"; grep -E "equal|differs|panicked|timed out|test result" "$OUT/persist_parity_b2.txt" | tail -8
  # Quantised weights (Q8_0; Q4_K with Q6_K; Q5_0 with Q8_0), bit for bit against the launched step.
  timeout 300 "$D/gpu_infer" persistent_decode_with_quantised --test-threads=1 --nocapture >"$OUT/persist_parity_quant.txt" 2>&1
  echo "persistent_decode_with_quantised_weights_equals_the_launched_steps rc $?"; grep -E "equal|differs|panicked|never ran|test result" "$OUT/persist_parity_quant.txt" | tail -8
  # With the L2 prefetch windows on (they change no value: the same test must pass).
  SMELT_CUDA_PERSIST_L2=16 timeout 300 "$D/gpu_infer" persistent_decode_steps_equal --test-threads=1 --nocapture >"$OUT/persist_parity_l2.txt" 2>&1
  echo "the same, L2 prefetch 16 MiB, rc $?"; grep -E "equal|differs|panicked|timed out|test result" "$OUT/persist_parity_l2.txt" | tail -8
  SMELT_CUDA_PERSIST_L2=16 timeout 300 "$D/gpu_infer" persistent_decode_with_quantised --test-threads=1 --nocapture >"$OUT/persist_parity_quant_l2.txt" 2>&1
  echo "quantised, L2 prefetch 16 MiB, rc $?"; grep -E "equal|differs|panicked|never ran|test result" "$OUT/persist_parity_quant_l2.txt" | tail -8
  # The captured decode test with the persistent kernel in its bf16 captured steps: still equal
  # to the uncaptured steps (host position, the layers' own launches).
  SMELT_CUDA_PERSIST=1 timeout 300 "$D/gpu_infer" captured_decode_steps --test-threads=1 --nocapture >"$OUT/persist_captured.txt" 2>&1
  echo "captured_decode_steps_equal_uncaptured_ones (persistent) rc $?"; grep -E "equal|differs|panicked|test result" "$OUT/persist_captured.txt" | tail -6
fi
# What a grid barrier costs (the old reset-each-time one and this kernel's growing counter).
part time && [ -x "$D/grid_barrier" ] && timeout 60 "$D/grid_barrier" 2>&1 | tail -7
# Timing: smelt's captured decode with the layers' own launches, then with the persistent kernel,
# on the same bf16 GGUF files (llama.cpp's figures at these shapes: docs/PERF.md).
part time && timeout 300 python3 bench/decode_cuda.py --smelt "$D/smelt" --tokenizer "$D/tokenizer.json" \
  --shapes 135m,1b --types bf16 --variants "persist:SMELT_CUDA_PERSIST=1,persist2:SMELT_CUDA_PERSIST=1;SMELT_CUDA_PERSIST_BPS=2,persistL2:SMELT_CUDA_PERSIST=1;SMELT_CUDA_PERSIST_L2=16" \
  --out "$OUT/decode" 2>&1 | tail -8
# The quantised kernels (issue 14's target: ≥ 1.5× llama.cpp for Q8_0 and Q4_K).
part time && timeout 240 python3 bench/decode_cuda.py --smelt "$D/smelt" --tokenizer "$D/tokenizer.json" \
  --shapes 135m,1b --types q8_0,q4_k --variants "persist:SMELT_CUDA_PERSIST=1,persistL2:SMELT_CUDA_PERSIST=1;SMELT_CUDA_PERSIST_L2=16" \
  --out "$OUT/decode-quant" 2>&1 | tail -8
