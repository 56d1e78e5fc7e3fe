#!/usr/bin/env bash
# Issue 18 at 16 threads on the GPU machine's CPU (a Xeon with AMX), in one device call: smelt
# against llama.cpp's CPU build (made there, GGML_NATIVE: its AMX and repacked kernels in), prompt
# processing and decode on random SmolLM2-135M-shape GGUFs, smelt with its AMX tiles on (and off with AMX_OFF=1), then a per-op profile.
#
# Here (the dev machine), into a git-ignored folder the call carries (e.g. .devcarry):
#   cargo build --release -p smelt && cp target/release/smelt .devcarry/ && strip .devcarry/smelt
#   scripts/gpu_llama_cpp.sh pack .devcarry/llama
#   cp .cache/inputs/smollm2/hf/tokenizer.json .devcarry/smollm2-tokenizer.json
# There (carry [".devcarry"]; ~30 MB; the run takes ~8 minutes, the llama.cpp build ~3 of them):
#   bash bench/xeon16.sh .devcarry
# Writes its tables to $OUT (or ./out). Prints numbers; nothing here is a test.
set -u
D=${1:?usage: bench/xeon16.sh CARRIED_DIR}
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{ lscpu | grep -E "Model name|^CPU\(s\)"; echo "AMX: $(grep -o 'amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"; } | tee "$OUT/xeon16.txt"
LB=$(bash "$D/llama/gpu_llama_cpp.sh" build-cpu /tmp/llama-cpu 2> "$OUT/llama-build.log" | tail -1)
[ -x "$LB" ] || { echo "llama.cpp CPU build failed (see llama-build.log)"; exit 1; }
# AMX_OFF=1: also the AVX-512 path (SMELT_AMX=0), for the tiles' own gain (adds ~3 minutes).
for amx in 1 $([ "${AMX_OFF:-0}" = 1 ] && echo 0); do
    echo "== SMELT_AMX=$amx" | tee -a "$OUT/xeon16.txt"
    SMELT_AMX=$amx python3 bench/prefill_vs_llama.py --smelt "$D/smelt" --llama-bench "$LB" \
        --random-smollm2 /tmp/pf --tokenizer "$D/smollm2-tokenizer.json" --threads 16 --repeats 2 \
        2>&1 | tee -a "$OUT/xeon16.txt" | grep -E "^\|"
done
# Where a 16-thread prompt and decode go, op by op, with the AMX tiles on (Q4_1 and Q8_0: AMX
# formats; F16: one that is not). PROFILE_TYPES to choose.
for ty in ${PROFILE_TYPES:-q4_1 q8_0 f16}; do
    echo "== SMELT_PROFILE, $ty, 16 threads" | tee -a "$OUT/xeon16.txt"
    RAYON_NUM_THREADS=16 SMELT_PROFILE=1 timeout 120 "$D/smelt" bench --device cpu --model /tmp/pf/smollm2-random-$ty.gguf \
        --batch-size 1 --seq-len 512 --decode-tokens 64 --no-train --no-forward 2>&1 | tee -a "$OUT/xeon16.txt" | tail -30
done
