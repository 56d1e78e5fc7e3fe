#!/bin/bash
# One device call for a CUDA decode change (issue 14): llama.cpp's CUDA llama-bench built in the
# background, the quantised/GEMV/decode GPU tests, then batch-1 decode of smelt (with variants)
# and of llama.cpp on the same GGUF files, and an ncu table of one 1B q4_k step if time is left.
#
#   here:  CARGO_TARGET_DIR=target-cuda scripts/gpu_suite.sh build .devcarry/suite
#          (then strip the binaries, drop gpu_nccl/gpu_train/cli_tests (and gpu_serve unless
#          SERVE=1), and `gzip -9` the rest: the carry and the tracked tree together must stay
#          under 64 MiB; this script gunzips them), scripts/gpu_llama_cpp.sh pack .devcarry/llama,
#          cp SmolLM2's tokenizer.json .devcarry/suite/bench/smollm2-tokenizer.json,
#          cp scripts/gpu_decode_check.sh scripts/ncu_table.py .devcarry/
#   there: bash .devcarry/gpu_decode_check.sh     (device tool, carry [".devcarry"])
#
# VARIANTS (decode_cuda.py --variants) defaults to the kernels' comparison switches; END is the
# seconds the script may take (leave the device call's limit some room); SERVE=1 adds gpu_serve
# (keep it in the carry then); NCU_MODELS (default 1b-q4_k) the decode models ncu profiles;
# LLAMA=0 skips llama.cpp; SHAPES and TYPES narrow the models smelt is timed on (decode_cuda.py); ../smelt-base.gz, when carried, is timed too (an A/B of two builds).
cd "$(dirname "$0")" || exit 1
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH
export SMELT_KERNEL_CACHE=/tmp/smelt-kernels PYTHONUNBUFFERED=1
OUT=${OUT:-./out}; mkdir -p "$OUT"
VARIANTS=${VARIANTS:-"old:SMELT_CUDA_MV=old,nofuse:SMELT_CUDA_MV_FUSE=0"}
t0=$(date +%s); END=${END:-540}
left() { echo $(( END - ($(date +%s) - t0) )); }
stamp() { echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a "$OUT/timeline.txt"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
LL=/tmp/ll
# LLAMA=0: no llama.cpp build or run (its figures from an earlier call of the same session).
[ "${LLAMA:-1}" = 1 ] && rm -rf $LL && mkdir -p $LL && tar xzf llama/llama-src.tgz -C $LL && tar xzf llama/models.tgz -C $LL &&
( cd $LL/src && cmake -B build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=ON -DCMAKE_BUILD_TYPE=Release \
  && nice cmake --build build -j 12 --target llama-bench ) > "$OUT/llama-build.log" 2>&1 &
cd suite || exit 1
# Binaries carried gzipped (the carry and the tracked tree together must stay under 64 MiB).
for z in *.gz; do [ -e "$z" ] && gunzip -f "$z" && chmod +x "${z%.gz}"; done
export SMELT_REQUIRE_GPU=1 SMELT_REPO=$PWD
# Timing examples carried beside this script (optional): examples/grid_barrier (a grid barrier
# against a kernel launch) and examples/decode_chain (kernel boundaries in a graph, with memory
# nodes and with programmatic dependent launch), for docs/CUDA.md's decode designs.
for ex in grid_barrier decode_chain; do
  [ -e ../$ex.gz ] && gunzip -f ../$ex.gz && chmod +x ../$ex
  [ -x ../$ex ] && { timeout 60 ../$ex 2>&1 | tee "$OUT/$ex.txt"; }
done
stamp "tests"
# QUANT_TESTS: a filter for gpu_quant (its four tests take ~50 s; a short call may run one).
TESTS=("gpu_quant${QUANT_TESTS:+:$QUANT_TESTS} 120" "core_tests:parity_gemv:parity_bf16_linear:parity_linear:parity_attention_decode:parity_rope_attention_decode:parity_paged_attention:kernels_compile:parity_rope_and_swiglu 120" "gpu_infer 150")
# SERVE=1: the CUDA serving tests too (paged steps, graphs per key class; a decode change reaches
# them through a one-sequence step).
[ "${SERVE:-0}" = 1 ] && [ -x gpu_serve ] && TESTS+=("gpu_serve 240")
for t in "${TESTS[@]}"; do
  set -- $t; IFS=: read -r exe filters <<< "$1"
  [ -x "$exe" ] || { echo "$exe not carried: not run"; continue; }
  timeout "$2" ./"$exe" ${filters//:/ } --test-threads=1 > "$OUT/$exe.txt" 2>&1; echo "$exe rc $?"
  grep -E "^test |test result|panicked" "$OUT/$exe.txt"
done
stamp "decode (smelt)"
timeout $(( $(left) - 110 )) python3 bench/decode_cuda.py --smelt ./smelt --tokenizer bench/smollm2-tokenizer.json \
   --shapes "${SHAPES:-135m,1b}" --types "${TYPES:-bf16,q8_0,q4_k}" --variants "$VARIANTS" --out "$OUT/decode" > "$OUT/decode.txt" 2>&1
grep -E "^\||rc [1-9]|TIMEOUT" "$OUT/decode.txt"
stamp "llama build wait (left $(left)s)"
while [ "${LLAMA:-1}" = 1 ] && [ ! -x $LL/src/build/bin/llama-bench ] && [ "$(left)" -gt 40 ]; do sleep 5; done
[ "${LLAMA:-1}" = 1 ] && tail -2 "$OUT/llama-build.log"
if [ "${LLAMA:-1}" = 1 ] && [ -x $LL/src/build/bin/llama-bench ]; then
  stamp "decode (llama.cpp)"
  timeout $(( $(left) - 15 )) python3 bench/decode_cuda.py --no-smelt --llama-bench $LL/src/build/bin/llama-bench \
     --tokenizer bench/smollm2-tokenizer.json --types bf16,q8_0,q4_k --out "$OUT/decode-llama" > "$OUT/decode-llama.txt" 2>&1
  grep -E "^\|" "$OUT/decode-llama.txt"
fi
# ../smelt-base(.gz) carried beside this script (optional): another build (main's, before a
# change) timed on the same files in the same call, for an A/B of the binaries themselves
# (after llama.cpp, whose figures the ratios need first).
[ -e ../smelt-base.gz ] && gunzip -f ../smelt-base.gz && chmod +x ../smelt-base
if [ -x ../smelt-base ] && [ "$(left)" -gt 120 ]; then
  stamp "decode (smelt-base)"
  timeout $(( $(left) - 110 )) python3 bench/decode_cuda.py --smelt ../smelt-base --tokenizer bench/smollm2-tokenizer.json \
     --types bf16,q8_0,q4_k --variants "" --out "$OUT/decode-base" > "$OUT/decode-base.txt" 2>&1
  grep -E "^\||rc [1-9]|TIMEOUT" "$OUT/decode-base.txt"
fi
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)
# NCU_MODELS: the decode models profiled kernel by kernel (the captured step's nodes, as the
# bench replays them, past the prefills and the uncaptured first step; caches not flushed between
# kernels: ncu's default flush gives cold-cache times, which misjudged the decode attention,
# docs/PERF.md), as long as time is left.
for m in ${NCU_MODELS:-1b-q4_k}; do
  [ -n "$NCU" ] && [ "$(left)" -gt 40 ] || break
  stamp "ncu $m"
  timeout $(( $(left) - 10 )) "$NCU" --csv --clock-control none --cache-control none --launch-skip 2000 --launch-count 160 \
     --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__grid_size,launch__block_size \
     ./smelt bench --device cuda --model /tmp/smelt-decode-models/$m.gguf --batch-size 1 --seq-len 16 --iters 3 \
     --decode-tokens 128 --no-train --no-forward > "$OUT/ncu-$m.csv" 2> "$OUT/ncu-$m.err"
  python3 ../ncu_table.py "$OUT/ncu-$m.csv" > "$OUT/ncu-$m.txt" 2>&1; head -40 "$OUT/ncu-$m.txt"
done
stamp end
