#!/usr/bin/env bash
# One device call for the pipelined wgmma attention (branch wg2; docs/CUDA.md "wgmma"):
# parity first, then timing, smelt only (torch.compile's figures at these shapes are in
# docs/PERF.md: 124M 427k tok/s, 1B 75.5k; cuDNN's attention 24 ms of its 1B step).
#
# Build here (x86-64), then carry DIR:
#   cargo test --release --features cuda -p smelt-core --no-run    # copy the smelt_core test
#       executable it names to DIR/core_tests
#   cargo build --release --features cuda -p smelt && cp target/release/smelt DIR/
# On the device (repo root; OUT set by the device tool):
#   bash scripts/wgmma_check.sh DIR [PARTS]   # PARTS: graph,parity,train,profile,lora (default all)
# or, from the GPU suite's folder (scripts/gpu_suite.sh build DIR copies this script and bench/):
#   cd DIR && bash wgmma_check.sh . [PARTS]
# All four take ~8-12 minutes, past one device call's 600 s: run "parity,train" in one call and
# "profile,lora" in the next (or stop after parity if it fails).
set -uo pipefail
D=${1:-.devq}
PARTS=${2:-graph,parity,train,profile,lora}
part() { [[ ",$PARTS," == *",$1,"* ]]; }
OUT=${OUT:-./out}
mkdir -p "$OUT"
export SMELT_REQUIRE_GPU=1
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
ALL="SMELT_CUDA_ATTN_FWD=attn_wgp_fwd_d64,SMELT_CUDA_ATTN_DQ=attn_wgp_dq_d64,SMELT_CUDA_ATTN_DKDV=attn_wgp_dkdv_d64"
ONE="SMELT_CUDA_ATTN_FWD=attn_wgp1_fwd_d64,SMELT_CUDA_ATTN_DQ=attn_wgp1_dq_d64,SMELT_CUDA_ATTN_DKDV=attn_wgp1_dkdv_d64"
SHALLOW="SMELT_CUDA_ATTN_FWD=attn_wgps_fwd_d64,SMELT_CUDA_ATTN_DQ=attn_wgps_dq_d64,SMELT_CUDA_ATTN_DKDV=attn_wgps_dkdv_d64"
# 0. The captured training update (SMELT_CUDA_GRAPH_STEP=1, smelt_train::captured; written
#    2026-12-05, never run on a GPU): its kernels' parity (embedding backward with device ids
#    bit for bit the host-sorted one; AdamW reading its scalars from a device tensor), the
#    captured updates bit for bit the plain ones, then the step timed both ways at 124M and 1B.
if part graph; then
timeout 200 "$D/core_tests" parity_elementwise_and_embedding parity_adamw parity_bf16_elementwise --test-threads=1 \
  >"$OUT/parity_graph_ops.txt" 2>&1
echo "graph ops parity rc $?"; grep -E "embedding bwd|device scalars|FAILED|panicked|test result" "$OUT/parity_graph_ops.txt" | tail -20
timeout 300 "$D/gpu_train" gpu_captured_updates_equal_the_plain_ones --test-threads=1 --nocapture >"$OUT/captured_step.txt" 2>&1
echo "gpu_captured_updates_equal_the_plain_ones rc $?"; grep -E "update|FAILED|panicked|Error|error|test result" "$OUT/captured_step.txt" | tail -20
timeout 420 python3 bench/cuda_vs_torch.py --smelt "$D/smelt" --shapes 124m,1b --no-peers \
  --variants "graph:SMELT_CUDA_GRAPH_STEP=1" --out "$OUT/bench-graph" 2>&1 | tail -8
fi
# 1. Parity: every pipelined kernel (WG_D64_FWD / _DQ / _DKDV) against the mma.sync ones
#    (each comparison made and reported before the test fails), then the probe of both
#    operand layouts and the synchronous wgmma kernels.
if part parity; then
timeout 300 "$D/core_tests" parity_wgmma_pipelined_kernels --test-threads=1 --nocapture >"$OUT/parity_wgmma_pipelined.txt" 2>&1
echo "parity_wgmma_pipelined_kernels rc $?"; grep -E "NMSE|nmse|failed|panicked|test result" "$OUT/parity_wgmma_pipelined.txt" | tail -40
timeout 300 "$D/core_tests" parity_wgmma_attention_layouts --test-threads=1 --nocapture >"$OUT/parity_wgmma.txt" 2>&1
echo "parity_wgmma_attention_layouts_and_kernels rc $?"; tail -25 "$OUT/parity_wgmma.txt"
timeout 300 "$D/core_tests" parity_bf16_attention --test-threads=1 >"$OUT/parity_bf16_attention.txt" 2>&1
echo "parity_bf16_attention rc $?"; tail -4 "$OUT/parity_bf16_attention.txt"
# The bf16 attention tests against the CPU (plain, GQA, windows, offsets, packed rows) with the
# pipelined kernels as the defaults (the head-dim-128 cases keep the mma.sync ones).
env ${ALL//,/ } timeout 300 "$D/core_tests" parity_bf16_attention --test-threads=1 >"$OUT/parity_bf16_attention_wgp.txt" 2>&1
echo "parity_bf16_attention with the pipelined kernels rc $?"; grep -E "FAILED|panicked|test result" "$OUT/parity_bf16_attention_wgp.txt" | tail -6
fi
# 2. Timing at 124M and 1B: the default kernels, then the pipelined ones (all three: copies two
#    tiles ahead; one tile ahead, `wgps`; one warpgroup a block, `wgp1`), and the default with
#    each dx a product then an add (`dx0`: before the products accumulated, 2026-12-04).
part train && timeout 480 python3 bench/cuda_vs_torch.py --smelt "$D/smelt" --shapes 124m,1b --no-peers \
  --variants "wgp:$ALL;wgps:$SHALLOW;wgp1:$ONE;dx0:SMELT_CUDA_DX_ACC=0" --out "$OUT/bench" 2>&1 | tail -14
# 3. Per kernel (SMELT_CUDA_PROFILE) at 1B: default and all pipelined.
M=/tmp/smelt-bench-models/1b
part profile && [ ! -f "$M/model.safetensors" ] && timeout 300 python3 bench/torch_gpu.py --dim 2048 --layers 16 --heads 32 \
  --kv-heads 8 --ffn 8192 --vocab-size 32000 --seq-len 2048 --save-hf "$M" >/dev/null 2>&1
part profile && for v in default "$ALL"; do
  env_args=(); [ "$v" = default ] || env_args=(${v//,/ })
  env SMELT_CUDA_PROFILE=1 "${env_args[@]}" timeout 200 "$D/smelt" bench --device cuda --model "$M" --vocab-size 32000 \
    --batch-size 8 --seq-len 2048 --iters 1 --decode-tokens 4 --format json >/dev/null 2>"$OUT/profile-1b-${v:0:7}.txt"
  echo "== profile 1b ${v:0:40}"; grep -i -E "attn|total" "$OUT/profile-1b-${v:0:7}.txt" | head -12
done
# 3b. The 1B step's products shape by shape (SMELT_CUDA_PROFILE=gemm: each cuBLASLt shape's ms
#     and TFLOP/s), against torch.compile's 135 ms of GEMMs (docs/gpu-runs/2026-12-04-torch-compile-profile-1b.txt).
part profile && SMELT_CUDA_PROFILE=gemm timeout 200 "$D/smelt" bench --device cuda --model "$M" --vocab-size 32000 \
  --batch-size 8 --seq-len 2048 --iters 1 --decode-tokens 4 --format json >/dev/null 2>"$OUT/profile-1b-gemm.txt" \
  && grep -A42 "profile train" "$OUT/profile-1b-gemm.txt" | head -44
# 4. LoRA at issue 16's shape (Qwen2.5-0.5B, 8 × 2048, head dim 64): smelt's step with the
#    default and with the pipelined attention (the model folder in /tmp: it is ~1 GB).
if part lora; then
timeout 420 python3 bench/lora_cuda.py --smelt "$D/smelt" --skip smelt-ckpt,e2e,eager,compile --iters 3 --out /tmp/lora 2>&1 | tail -5
cp /tmp/lora/lora_cuda.md "$OUT/" 2>/dev/null
echo "== LoRA with each dx a product then an add (SMELT_CUDA_DX_ACC=0)"
SMELT_CUDA_DX_ACC=0 timeout 240 "$D/smelt" bench --model /tmp/lora/model --adapter /tmp/lora/adapter --device cuda \
  --batch-size 8 --seq-len 2048 --iters 3 --decode-tokens 1 --no-forward --format json 2>"$OUT/lora-dx0.stderr" | tail -1
echo "== LoRA with one A product per projection (SMELT_LORA_FUSE=0)"
SMELT_LORA_FUSE=0 timeout 240 "$D/smelt" bench --model /tmp/lora/model --adapter /tmp/lora/adapter --device cuda \
  --batch-size 8 --seq-len 2048 --iters 3 --decode-tokens 1 --no-forward --format json 2>"$OUT/lora-fuse0.stderr" | tail -1
echo "== LoRA with the update captured as a CUDA graph (SMELT_CUDA_GRAPH_STEP=1)"
SMELT_CUDA_GRAPH_STEP=1 timeout 240 "$D/smelt" bench --model /tmp/lora/model --adapter /tmp/lora/adapter --device cuda \
  --batch-size 8 --seq-len 2048 --iters 3 --decode-tokens 1 --no-forward --format json 2>"$OUT/lora-graph.stderr" | tail -1
echo "== LoRA with the pipelined attention"
env ${ALL//,/ } timeout 240 "$D/smelt" bench --model /tmp/lora/model --adapter /tmp/lora/adapter --device cuda \
  --batch-size 8 --seq-len 2048 --iters 3 --decode-tokens 1 --no-forward --format json 2>"$OUT/lora-wgp.stderr" | tail -1
fi
