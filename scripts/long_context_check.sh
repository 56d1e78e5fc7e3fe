#!/usr/bin/env bash
# Issue 14's long-context item, in one device call: the 1B shape (d 2048, 16 layers, 32 heads,
# 8 kv, ffn 8192, V 32000) trained at T = 4096 and 8192 on one GPU with --grad-checkpoint, its
# tok/s and peak memory beside torch.compile's at the same shape (PyTorch's own activation
# memory, no checkpointing; where it runs out of memory the table says so).
#
# From the GPU suite's folder (scripts/gpu_suite.sh build DIR copies this script and bench/):
#   cd DIR && bash long_context_check.sh .            # ~6-8 minutes
set -uo pipefail
D=${1:-.}
OUT=${OUT:-./out}
mkdir -p "$OUT"
M=/tmp/smelt-bench-models/1b
S="--dim 2048 --layers 16 --heads 32 --kv-heads 8 --ffn 8192 --vocab-size 32000"
[ -f "$M/model.safetensors" ] || timeout 300 python3 bench/torch_gpu.py $S --seq-len 2048 --save-hf "$M" >/dev/null 2>&1
for bt in "2 4096" "1 8192"; do
  set -- $bt
  b=$1 t=$2
  for ck in "--grad-checkpoint" ""; do
    echo "== smelt 1b B $b T $t ${ck:-(no checkpointing)}"
    timeout 240 "$D/smelt" bench --device cuda --model "$M" --vocab-size 32000 --batch-size "$b" --seq-len "$t" \
      --iters 2 --decode-tokens 1 --no-forward $ck --format json 2>"$OUT/long-$t-${ck:+ckpt}.stderr" | tail -1
  done
  echo "== torch.compile 1b B $b T $t"
  timeout 300 python3 bench/torch_gpu.py $S --batch-size "$b" --seq-len "$t" --iters 2 --compile --no-decode 2>&1 | tail -1
done
