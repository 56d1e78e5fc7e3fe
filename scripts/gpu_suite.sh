#!/usr/bin/env bash
# The CUDA test suite and benchmarks, built on a CPU machine and run on a GPU machine.
#
#   scripts/gpu_suite.sh build DIR   # here: build with --features cuda, copy what runs into DIR
#   DIR/gpu_suite.sh run             # there (inside DIR): run everything, print a pass/fail table
#
# `build` strips the executables (SMELT_SUITE_STRIP=0 keeps their symbols) and also writes
# DIR.tgz: the whole folder is ~90 MB, stripped ~68 MB, packed ~28 MB, under the device tool's
# 64 MiB a call. Carry DIR.tgz and unpack it there first: `tar xzf DIR.tgz -C /tmp && cd /tmp/DIR`
# (DIR's last component; the tar holds that folder).
#
# The GPU machine needs the NVIDIA driver and the CUDA 13 libraries (NVRTC, cuBLASLt) on
# LD_LIBRARY_PATH (e.g. /usr/local/cuda/lib64), and python3 with PyTorch for the reference
# benchmark. Logs land in $OUT (or ./out) on that machine. SMELT_SMOLLM2_GGUF, if set there, names
# SmolLM2-135M-Instruct.Q4_1.gguf (98 MB, carried separately): the GGUF tests and CLI runs use it.
# `run` sets SMELT_REQUIRE_GPU=1: a GPU test that would skip (no device, no NVRTC) fails instead;
# the skips that remain (inputs not carried) are listed after the table (SMELT_SKIP_LOG).
# Several-GPU training needs libnccl.so.2: found on the loader's path, else in python3's
# nvidia-nccl wheel (torch's), else named by SMELT_NCCL_LIB. With two or more GPUs visible,
# `run` sets SMELT_REQUIRE_MULTI_GPU=1 too, so the two-GPU tests cannot skip there.
set -uo pipefail

build() {
    local dir=${1:?usage: gpu_suite.sh build DIR}
    local root; root=$(cd "$(dirname "$0")/.." && pwd)
    mkdir -p "$dir"
    cd "$root" || exit 1
    cargo build --release --features cuda -p smelt || exit 1
    # Test executables: libtest prints their paths in its JSON messages.
    cargo test --release --features cuda -p smelt-core -p smelt-train -p smelt-infer -p smelt-serve -p smelt --no-run --message-format=json 2>/dev/null \
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
            gpu_nccl:test) cp "$exe" "$dir/gpu_nccl" ;;
            gpu_infer:test) cp "$exe" "$dir/gpu_infer" ;;
            gpu_serve:test) cp "$exe" "$dir/gpu_serve" ;;
            gpu_quant:test) cp "$exe" "$dir/gpu_quant" ;;
            smelt:bin) cp "$exe" "$dir/cli_tests" ;;
        esac
    done < "$dir/tests.txt"
    cp "${CARGO_TARGET_DIR:-target}/release/smelt" "$dir/smelt"
    mkdir -p "$dir/data" "$dir/bench"
    cp data/linux-doc-slice.jsonl.gz data/linux-doc-slice.txt.gz "$dir/data/"
    cp bench/torch_gpu.py bench/cuda_vs_torch.py bench/decode_cuda.py bench/lora_cuda.py bench/serve_bench.py bench/attn_vs_torch.py "$dir/bench/"
    # The transformers fixtures gpu_infer compares against (found through SMELT_REPO).
    mkdir -p "$dir/crates/model/tests/fixtures"
    cp -r crates/model/tests/fixtures/hf "$dir/crates/model/tests/fixtures/"
    cp scripts/gpu_suite.sh "$dir/gpu_suite.sh"
    cp scripts/multi_gpu_verify.sh "$dir/multi_gpu_verify.sh"
    cp scripts/wgmma_check.sh "$dir/wgmma_check.sh"  # the pipelined wgmma attention: (cd DIR && bash wgmma_check.sh .)
    cp scripts/persist_check.sh "$dir/persist_check.sh"  # the persistent decode kernel: (cd DIR && bash persist_check.sh .)
    cp scripts/long_context_check.sh "$dir/long_context_check.sh"  # 1B at T 4096/8192 with --grad-checkpoint vs torch.compile
    cp scripts/ncu_details.py "$dir/ncu_details.py"  # ds_check.sh's ncu parts read ncu's details page with it
    cp scripts/sass_stalls.py "$dir/sass_stalls.py"  # and its source page (stall samples per SASS instruction)
    cp scripts/ncu_sum.py "$dir/ncu_sum.py"  # kernel time by name over a step (ds_check.sh ncusteps)
    # SMELT_BASE_BIN: an earlier build of smelt, carried as DIR/smelt-base for ds_check.sh's `ab` part.
    [ -n "${SMELT_BASE_BIN:-}" ] && cp "$SMELT_BASE_BIN" "$dir/smelt-base"
    cp scripts/ds_check.sh "$dir/ds_check.sh"  # the attention backward's dS path: (cd DIR && bash ds_check.sh . PARTS)
    cargo build --release --features cuda -p smelt-core --example grid_barrier --example attn_bench --example cluster_probe --example wgmma_probe
    for e in grid_barrier attn_bench cluster_probe wgmma_probe; do cp "${CARGO_TARGET_DIR:-target}/release/examples/$e" "$dir/"; done
    cp .cache/inputs/smollm2/hf/tokenizer.json "$dir/tokenizer.json" 2>/dev/null || echo "no SmolLM2 tokenizer.json (scripts/fetch_inputs.sh): persist_check.sh time needs one"
    if [ "${SMELT_SUITE_STRIP:-1}" != 0 ] && command -v strip >/dev/null; then
        for f in "$dir"/core_tests "$dir"/gpu_* "$dir"/cli_tests "$dir"/smelt "$dir"/smelt-base "$dir"/grid_barrier "$dir"/attn_bench "$dir"/cluster_probe "$dir"/wgmma_probe; do
            [ -f "$f" ] && [ -x "$f" ] && case "$f" in *.sh) ;; *) strip "$f" ;; esac
        done
    fi
    tar -C "$(dirname "$dir")" -czf "$dir.tgz" "$(basename "$dir")"
    ls -la "$dir"
    echo "packed: $dir.tgz ($(du -h "$dir.tgz" | cut -f1)); on the device: tar xzf $(basename "$dir").tgz -C /tmp && cd /tmp/$(basename "$dir")"
}

run() {
    cd "$(dirname "$0")" || exit 1
    local out=${OUT:-./out}
    mkdir -p "$out"
    export SMELT_REPO=$PWD SMELT_KERNEL_CACHE=${SMELT_KERNEL_CACHE:-/tmp/smelt-kernels}
    export SMELT_REQUIRE_GPU=1 SMELT_SKIP_LOG=$out/skips.log
    local log=$out/suite.log table=$out/table.txt
    : > "$log"; : > "$table"; : > "$SMELT_SKIP_LOG"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$log"
    local ngpu; ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
    [ "$ngpu" -ge 2 ] && export SMELT_REQUIRE_MULTI_GPU=1
    if [ -z "${SMELT_NCCL_LIB:-}" ] && ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so\.2'; then
        local nccl_dir
        nccl_dir=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
        [ -f "$nccl_dir/libnccl.so.2" ] && export SMELT_NCCL_LIB=$nccl_dir/libnccl.so.2
    fi
    echo "GPUs: $ngpu; NCCL: ${SMELT_NCCL_LIB:-on the library path}" | tee -a "$log"
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
        # A test skipped when its own output (libtest's "---- NAME stdout ----" section) says SKIP.
        skipped() { awk -v h="---- $1 stdout ----" '$0 == h { f = 1; next } /^---- .* stdout ----$/ || /^successes:$/ { f = 0 } f && /^SKIP/ { s = 1 } END { exit !s }' "$out/tmp.log"; }
        while read -r n; do
            if grep -qE "^test $n \.\.\. ok" "$out/tmp.log"; then
                if skipped "$n"; then row "$label $n" SKIP; else row "$label $n" PASS; fi
            else row "$label $n" FAIL; fi
        done < "$out/names.txt"
        [ $rc -eq 0 ] || row "$label (exit $rc)" FAIL
        rm -f "$out/tmp.log" "$out/names.txt"
    }
    tests core 300 ./core_tests parity
    tests quant 120 ./gpu_quant
    tests cli 60 ./cli_tests device
    tests train 600 ./gpu_train
    tests nccl-lib 60 ./core_tests nccl
    tests nccl 600 ./gpu_nccl
    tests infer 300 ./gpu_infer
    tests serve 300 ./gpu_serve
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
    # Data parallel through the CLI: --nproc 1 (one rank, the NCCL path) must repeat the plain
    # run bit for bit; --nproc 2 (two GPUs, same global batch) must follow it.
    local dp="--dataset $d/train.bin --val-dataset $d/train.val.bin --tokenizer $d/tok.json --size tiny --batch-size 16 --seq-len 128 --steps 60 --lr 3e-3 --min-lr 3e-4 --warmup 10 --checkpoint-interval 30 --log-interval 1"
    same_losses() { # label, tolerance, metrics a, metrics b
        if python3 -c 'import json,sys
tol=float(sys.argv[1]); a,b=([json.loads(l)["loss"] for l in open(f)] for f in sys.argv[2:])
rel=max(abs(x-y)/abs(y) for x,y in zip(a,b)) if len(a)==len(b) else float("inf")
print("%s: %d steps, largest relative loss difference %.3g" % (sys.argv[2], len(a), rel)); sys.exit(not rel<=tol)' "$2" "$3" "$4" >> "$log" 2>&1
        then row "$1" PASS; else row "$1" FAIL; fi
    }
    cli "train --device cuda (the one-GPU reference)" ./smelt train --device cuda $dp --checkpoint-dir $q/dp-plain
    cli "train --nproc 1" ./smelt train --nproc 1 $dp --checkpoint-dir $q/dp-nproc1
    same_losses "cli train --nproc 1 = --device cuda (bit for bit)" 0 $q/dp-nproc1/metrics.jsonl $q/dp-plain/metrics.jsonl
    cli "train --nproc 1 --zero 1" ./smelt train --nproc 1 --zero 1 $dp --checkpoint-dir $q/dp-nproc1-zero1
    same_losses "cli train --nproc 1 --zero 1 = --device cuda (bit for bit)" 0 $q/dp-nproc1-zero1/metrics.jsonl $q/dp-plain/metrics.jsonl
    if [ "$ngpu" -ge 2 ]; then
        cli "train --nproc 2" ./smelt train --nproc 2 $dp --checkpoint-dir $q/dp-nproc2
        same_losses "cli train --nproc 2 follows one GPU (bf16 tolerance)" 0.02 $q/dp-nproc2/metrics.jsonl $q/dp-plain/metrics.jsonl
        cli "train --nproc 2 checkpoint resumes on one GPU" ./smelt train --device cuda --resume $q/dp-nproc2/step-000030 --steps 60 --checkpoint-dir $q/dp-resumed
        cli "train --nproc 2 --zero 0" ./smelt train --nproc 2 --zero 0 $dp --checkpoint-dir $q/dp-nproc2-zero0
        same_losses "cli train --nproc 2 --zero 0 follows one GPU (bf16 tolerance)" 0.02 $q/dp-nproc2-zero0/metrics.jsonl $q/dp-plain/metrics.jsonl
    else
        row "cli train --nproc 2 ($ngpu GPU visible)" SKIP
    fi
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
    # GGUF weights kept quantised on the GPU: the trained model exported (Q4_K_M mix: Q5_0 for
    # its 128-wide rows, Q4_K/Q6_K for ffn_down, Q8_0 for the tied head), then run from the file.
    cli "export-gguf q4_k (cpu)" ./smelt export-gguf --model $q/model/final --output $q/model.q4_k.gguf --type q4_k --pre gpt-2
    cli "generate gguf q4_k --device cuda" ./smelt generate --device cuda --model $q/model.q4_k.gguf --prompt "The kernel" --max-tokens 60 --temperature 0
    cli "perplexity gguf q4_k --device cuda" ./smelt perplexity --device cuda --model $q/model.q4_k.gguf --input $q/sample.txt --seq-len 128 --format json
    : > "$out/bench_gguf.jsonl"
    gguf_bench() { # label, file
        if timeout 300 ./smelt bench --device cuda --model "$2" --batch-size 4 --seq-len 128 --format json > "$out/b.json" 2>> "$log"; then
            echo "{\"model\":\"$1\",$(tail -1 "$out/b.json" | sed 's/^{//')" >> "$out/bench_gguf.jsonl"
            row "bench gguf $1 --device cuda" PASS
        else row "bench gguf $1 --device cuda" FAIL; fi
    }
    gguf_bench "tiny q4_k" $q/model.q4_k.gguf
    if [ -n "${SMELT_SMOLLM2_GGUF:-}" ] && [ -f "$SMELT_SMOLLM2_GGUF" ]; then
        local ans
        ans=$(timeout 300 ./smelt generate --device cuda --model "$SMELT_SMOLLM2_GGUF" --chat "What is the capital of France?" --temperature 0 --max-tokens 24 2>> "$log")
        echo "smollm2 q4_1 --device cuda: $ans" >> "$log"
        if [ "$ans" = "The capital of France is Paris." ]; then row "cli generate smollm2 q4_1 --device cuda (Paris)" PASS; else row "cli generate smollm2 q4_1 --device cuda (Paris)" FAIL; fi
        gguf_bench "smollm2 q4_1" "$SMELT_SMOLLM2_GGUF"
    else
        row "cli generate smollm2 q4_1 --device cuda (SMELT_SMOLLM2_GGUF unset)" SKIP
    fi
    echo "== benchmarks" >> "$log"
    : > "$out/bench.jsonl"
    for shape in "small 4 128" "small 16 512" "medium 8 512"; do
        set -- $shape
        if timeout 300 ./smelt bench --device cuda --size "$1" --batch-size "$2" --seq-len "$3" --format json > "$out/b.json" 2>> "$log"; then
            echo "{\"impl\":\"smelt\",\"size\":\"$1\",$(tail -1 "$out/b.json" | sed 's/^{//')" >> "$out/bench.jsonl"
            row "bench smelt cuda $1 b$2 t$3" PASS
        else row "bench smelt cuda $1 b$2 t$3" FAIL; fi
        if [ "$1 $2 $3" = "small 16 512" ]; then
            # The same shape all in f32: what mixed precision saves in memory and time.
            if SMELT_CUDA_MATMUL=f32 timeout 300 ./smelt bench --device cuda --size "$1" --batch-size "$2" --seq-len "$3" --format json > "$out/b.json" 2>> "$log"; then
                echo "{\"impl\":\"smelt-f32\",\"size\":\"$1\",$(tail -1 "$out/b.json" | sed 's/^{//')" >> "$out/bench.jsonl"
                row "bench smelt cuda f32 $1 b$2 t$3" PASS
            else row "bench smelt cuda f32 $1 b$2 t$3" FAIL; fi
        fi
        if timeout 300 python3 bench/torch_gpu.py --size "$1" --batch-size "$2" --seq-len "$3" > "$out/b.json" 2>> "$log"; then
            echo "{\"size\":\"$1\",$(tail -1 "$out/b.json" | sed 's/^{//')" >> "$out/bench.jsonl"
            row "bench pytorch cuda $1 b$2 t$3" PASS
        else row "bench pytorch cuda $1 b$2 t$3" FAIL; fi
    done
    rm -f "$out/b.json"
    cat "$out/bench.jsonl" "$out/bench_gguf.jsonl" >> "$log"
    echo
    echo "benchmarks (tokens/s; peak MiB):"
    python3 - "$out/bench.jsonl" <<'PY' | tee -a "$log"
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print(f"{r.get('impl','?'):9} {r['size']:7} b{r['batch_size']:<3} t{r['seq_len']:<4} fwd {r['forward_tok_s']:>11.0f}  decode {r['decode_tok_s']:>8.1f}  train {r['train_tok_s']:>10.0f}  peak {r['peak_mem_bytes']/2**20:>8.1f}")
PY
    echo "GGUF, weights quantised on the GPU (tokens/s; peak MiB):"
    python3 - "$out/bench_gguf.jsonl" <<'PY' | tee -a "$log"
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print(f"{r['model']:14} b{r['batch_size']:<3} t{r['seq_len']:<4} fwd {r['forward_tok_s']:>11.0f}  decode {r['decode_tok_s']:>8.1f}  peak {r['peak_mem_bytes']/2**20:>8.1f}")
PY
    echo
    echo "GPU suite:"
    cat "$table"
    local fails; fails=$(grep -c 'FAIL$' "$table")
    if [ -s "$SMELT_SKIP_LOG" ]; then echo "skipped, and why:"; sed 's/^SMELT-SKIP /  /' "$SMELT_SKIP_LOG"; fi
    echo "$(grep -c 'PASS$' "$table") passed, $fails failed, $(grep -c 'SKIP$' "$table") skipped"
    [ "$fails" -eq 0 ]
}

case "${1:-}" in
    build) shift; build "$@" ;;
    run) run ;;
    *) echo "usage: $0 build DIR | run" >&2; exit 2 ;;
esac
