#!/usr/bin/env bash
# The CUDA test suite and benchmarks, built on a CPU machine and run on a GPU machine.
#
#   scripts/gpu_suite.sh build DIR   # here: build with --features cuda, copy what runs into DIR
#   DIR/gpu_suite.sh run             # there (inside DIR): run everything, print a pass/fail table
#
# The GPU machine needs the NVIDIA driver and the CUDA 13 libraries (NVRTC, cuBLASLt) on
# LD_LIBRARY_PATH (e.g. /usr/local/cuda/lib64), and python3 with PyTorch for the reference
# benchmark. Logs land in $OUT (or ./out) on that machine.
set -uo pipefail

build() {
    local dir=${1:?usage: gpu_suite.sh build DIR}
    local root; root=$(cd "$(dirname "$0")/.." && pwd)
    mkdir -p "$dir"
    cd "$root" || exit 1
    cargo build --release --features cuda -p smelt || exit 1
    # Test executables: libtest prints their paths in its JSON messages.
    cargo test --release --features cuda -p smelt-core -p smelt-train -p smelt-infer -p smelt --no-run --message-format=json 2>/dev/null \
        | python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["target"]["kind"][0], m["executable"])' > "$dir/tests.txt"
    while read -r name kind exe; do
        case "$name:$kind" in
            smelt_core:lib) cp "$exe" "$dir/core_tests" ;;
            gpu_train:test) cp "$exe" "$dir/gpu_train" ;;
            gpu_infer:test) cp "$exe" "$dir/gpu_infer" ;;
            smelt:bin) cp "$exe" "$dir/cli_tests" ;;
        esac
    done < "$dir/tests.txt"
    cp "${CARGO_TARGET_DIR:-target}/release/smelt" "$dir/smelt"
    mkdir -p "$dir/data" "$dir/bench"
    cp data/linux-doc-slice.jsonl.gz data/linux-doc-slice.txt.gz "$dir/data/"
    cp bench/torch_gpu.py "$dir/bench/"
    # The transformers fixtures gpu_infer compares against (found through SMELT_REPO).
    mkdir -p "$dir/crates/model/tests/fixtures"
    cp -r crates/model/tests/fixtures/hf "$dir/crates/model/tests/fixtures/"
    cp scripts/gpu_suite.sh "$dir/gpu_suite.sh"
    ls -la "$dir"
}

run() {
    cd "$(dirname "$0")" || exit 1
    local out=${OUT:-./out}
    mkdir -p "$out"
    export SMELT_REPO=$PWD SMELT_KERNEL_CACHE=${SMELT_KERNEL_CACHE:-/tmp/smelt-kernels}
    local log=$out/suite.log table=$out/table.txt
    : > "$log"; : > "$table"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$log"
    row() { printf '%-58s %s\n' "$1" "$2" >> "$table"; }
    tests() { # label, timeout, command...
        local label=$1 t=$2; shift 2
        echo "== $label" >> "$log"
        # --show-output keeps each "test NAME ... ok|FAILED" on one line and still logs what
        # the tests print (seeds, NMSE values, loss curves).
        timeout "$t" "$@" --test-threads=1 --show-output > "$out/tmp.log" 2>&1
        local rc=$?
        cat "$out/tmp.log" >> "$log"
        grep -E '^test .* \.\.\. ' "$out/tmp.log" | sed -E 's/^test ([^ ]+) \.\.\. .*/\1/' > "$out/names.txt"
        while read -r n; do
            if grep -qE "^test $n \.\.\. ok" "$out/tmp.log"; then
                if grep -q "^SKIP" "$out/tmp.log"; then row "$label $n" SKIP; else row "$label $n" PASS; fi
            else row "$label $n" FAIL; fi
        done < "$out/names.txt"
        [ $rc -eq 0 ] || row "$label (exit $rc)" FAIL
        rm -f "$out/tmp.log" "$out/names.txt"
    }
    tests core 300 ./core_tests parity
    tests cli 60 ./cli_tests device
    tests train 600 ./gpu_train
    tests infer 300 ./gpu_infer
    # The CLI end to end on the GPU: train, generate and perplexity with --device cuda, on the
    # byte-level tokenizer and token files the GPU training test prepared from the corpus.
    echo "== cli end to end" >> "$log"
    local q=/tmp/smelt-gpu-cli d; d=$(ls -td /tmp/smelt-gpu-ckpt-*/ 2>/dev/null | head -1)
    rm -rf "$q"; mkdir -p "$q"
    cli() { # label, command...
        local label=$1; shift
        if timeout 300 "$@" >> "$log" 2>&1; then row "cli $label" PASS; else row "cli $label" FAIL; fi
    }
    cli "train --device cuda" ./smelt train --device cuda --dataset "$d/train.bin" --val-dataset "$d/train.val.bin" --tokenizer "$d/tok.json" \
        --size tiny --batch-size 16 --seq-len 128 --steps 300 --lr 3e-3 --min-lr 3e-4 --warmup 30 --checkpoint-dir $q/model --checkpoint-interval 100 --log-interval 50
    tail -2 "$q/model/metrics.jsonl" >> "$log" 2>/dev/null
    cli "generate --device cuda" ./smelt generate --device cuda --model $q/model/final --prompt "The kernel" --max-tokens 60 --temperature 0.7 --seed 1
    # Sampling runs on the device: with f32 matmuls and one seed it must pick the CPU's tokens.
    local same=FAIL
    if SMELT_CUDA_MATMUL=f32 timeout 300 ./smelt generate --device cuda --model $q/model/final --prompt "The kernel" --max-tokens 60 \
            --temperature 0.8 --repetition-penalty 1.2 --seed 3 --format json > $q/gen_cuda.json 2>> "$log" \
        && timeout 300 ./smelt generate --device cpu --model $q/model/final --prompt "The kernel" --max-tokens 60 \
            --temperature 0.8 --repetition-penalty 1.2 --seed 3 --format json > $q/gen_cpu.json 2>> "$log" \
        && python3 -c 'import json,sys; a,b=(json.load(open(f))["ids"] for f in sys.argv[1:]); n=next((i for i,(x,y) in enumerate(zip(a,b)) if x!=y), min(len(a),len(b))); print("generate cuda vs cpu (f32, sampled): %d/%d ids equal" % (n, len(a))); sys.exit(a!=b)' \
            $q/gen_cuda.json $q/gen_cpu.json >> "$log" 2>&1; then same=PASS; fi
    row "cli generate --device cuda = cpu (f32 matmuls, sampled)" $same
    zcat data/linux-doc-slice.txt.gz 2>/dev/null | head -c 20000 > $q/sample.txt
    cli "perplexity --device cuda" ./smelt perplexity --device cuda --model $q/model/final --input $q/sample.txt --seq-len 128 --format json
    echo "== benchmarks" >> "$log"
    : > "$out/bench.jsonl"
    for shape in "small 4 128" "small 16 512" "medium 8 512"; do
        set -- $shape
        if timeout 300 ./smelt bench --device cuda --size "$1" --batch-size "$2" --seq-len "$3" --format json > "$out/b.json" 2>> "$log"; then
            echo "{\"impl\":\"smelt\",\"size\":\"$1\",$(tail -1 "$out/b.json" | sed 's/^{//')" >> "$out/bench.jsonl"
            row "bench smelt cuda $1 b$2 t$3" PASS
        else row "bench smelt cuda $1 b$2 t$3" FAIL; fi
        if timeout 300 python3 bench/torch_gpu.py --size "$1" --batch-size "$2" --seq-len "$3" > "$out/b.json" 2>> "$log"; then
            echo "{\"size\":\"$1\",$(tail -1 "$out/b.json" | sed 's/^{//')" >> "$out/bench.jsonl"
            row "bench pytorch cuda $1 b$2 t$3" PASS
        else row "bench pytorch cuda $1 b$2 t$3" FAIL; fi
    done
    rm -f "$out/b.json"
    cat "$out/bench.jsonl" >> "$log"
    echo
    echo "benchmarks (tokens/s; peak MiB):"
    python3 - "$out/bench.jsonl" <<'PY' | tee -a "$log"
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print(f"{r.get('impl','?'):8} {r['size']:7} b{r['batch_size']:<3} t{r['seq_len']:<4} fwd {r['forward_tok_s']:>11.0f}  decode {r['decode_tok_s']:>8.1f}  train {r['train_tok_s']:>10.0f}  peak {r['peak_mem_bytes']/2**20:>8.1f}")
PY
    echo
    echo "GPU suite:"
    cat "$table"
    local fails; fails=$(grep -c 'FAIL$' "$table")
    echo "$(grep -c 'PASS$' "$table") passed, $fails failed, $(grep -c 'SKIP$' "$table") skipped"
    [ "$fails" -eq 0 ]
}

case "${1:-}" in
    build) shift; build "$@" ;;
    run) run ;;
    *) echo "usage: $0 build DIR | run" >&2; exit 2 ;;
esac
