#!/usr/bin/env bash
# The AMX path (issue 18) on a CPU that has it: the GPU host's Xeon. Builds nothing: build on the
# dev machine and carry the binaries (docs/GGUF.md, "AMX"):
#
#   cargo test --release -p smelt-core --no-run      # prints the unit-test binary's path
#   cargo build --release -p smelt-core --example qbench
#   [cargo build --release -p smelt-cli]              # only for the end-to-end part
#
#   bench/amx_check.sh TESTBIN QBENCH [SMELT MODEL.gguf ...]
#
# Build in the checkout the device runs (the run tool copies the session's repository, /work/main):
# the test binary reads golden files by that absolute path, and four quant tests fail elsewhere.
#
# 1. The AMX tests with SMELT_REQUIRE_AMX=1: the real tiles against their emulation and the
#    reference order bit for bit (a CPU or OS without usable AMX fails here rather than skip),
#    then every quant test with AMX on (the default) and off.
# 2. qbench's prompt-sized matmuls (512 inputs) at SmolLM2-135M's shapes and its decode matvec,
#    SMELT_AMX=1 against SMELT_AMX=0, at 1 and 16 threads (THREADS="1 16" to change).
# 3. With a smelt binary and GGUF files: `smelt bench` prefill (512 tokens) and decode, both
#    settings, both thread counts.
#
# Prints numbers; exits non-zero if a test failed.
set -u
if [ $# -lt 2 ]; then
    sed -n '2,22p' "$0"
    exit 2
fi
TESTBIN=$1
QBENCH=$2
shift 2
SMELT=${1:-}
[ $# -gt 0 ] && shift
THREADS=${THREADS:-"1 16"}
status=0

echo "== CPU"
grep -m1 'model name' /proc/cpuinfo
grep -m1 -o -w -E 'amx_(tile|int8|bf16)' /proc/cpuinfo | sort -u | tr '\n' ' '
echo
nproc

echo "== 1. AMX tests (SMELT_REQUIRE_AMX=1)"
SMELT_REQUIRE_AMX=1 SMELT_PROFILE=1 "$TESTBIN" quant::amx --nocapture || status=1
echo "== 1b. all quant tests, AMX on (default)"
"$TESTBIN" quant:: 2>&1 | grep -E '^test result|FAILED|panicked' || true
"$TESTBIN" quant:: >/dev/null 2>&1 || status=1
echo "== 1c. all quant tests, SMELT_AMX=0"
SMELT_AMX=0 "$TESTBIN" quant:: 2>&1 | grep -E '^test result|FAILED|panicked' || true
SMELT_AMX=0 "$TESTBIN" quant:: >/dev/null 2>&1 || status=1

echo "== 2. qbench, 512 inputs (Avx512+AMX: the AMX tiles; Avx512: the register tiles)"
for t in $THREADS; do
    for shape in "1536 576" "576 1536" "576 576" "192 576"; do
        set -- $shape
        for amx in 0 1; do
            RAYON_NUM_THREADS=$t SMELT_AMX=$amx QBENCH_N=512 QBENCH_ROWS=$1 QBENCH_COLS=$2 \
                QBENCH_TYPES=q8_0,q4_0,q4_1,q6_k "$QBENCH" | grep -v ' Avx2:'
        done
    done
done
echo "== 2b. qbench decode matvec, 1536x576 and the 49152-row head"
for t in $THREADS; do
    for amx in 0 1; do
        echo "-- $t threads, SMELT_AMX=$amx"
        RAYON_NUM_THREADS=$t SMELT_AMX=$amx QBENCH_TYPES=q8_0,q4_0,q4_1 "$QBENCH" | grep matvec
        RAYON_NUM_THREADS=$t SMELT_AMX=$amx QBENCH_TYPES=q8_0,q4_0,q4_1 QBENCH_ROWS=49152 "$QBENCH" | grep matvec
        # Q6_K needs a multiple of 256 columns: SmolLM2's ffn_down (576 × 1536).
        RAYON_NUM_THREADS=$t SMELT_AMX=$amx QBENCH_TYPES=q6_k QBENCH_ROWS=576 QBENCH_COLS=1536 "$QBENCH" | grep matvec
    done
done

if [ -n "$SMELT" ]; then
    echo "== 3. smelt bench: prefill 512 tokens, decode 64"
    for m in "$@"; do
        for t in $THREADS; do
            for round in 1 2; do
                for amx in 0 1; do
                    r=$(RAYON_NUM_THREADS=$t SMELT_AMX=$amx "$SMELT" bench --model "$m" --device cpu --batch-size 1 \
                        --seq-len 512 --iters 3 --decode-tokens 64 --no-forward --no-train --format json | tail -1)
                    echo "$(basename "$m") threads=$t SMELT_AMX=$amx round=$round:" \
                        $(echo "$r" | grep -oE '"(prefill|decode)_tok_s":[0-9.e+-]+' | tr '\n' ' ')
                done
            done
        done
    done
fi
exit $status
