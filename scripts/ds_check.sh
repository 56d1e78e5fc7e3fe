#!/usr/bin/env bash
# The device plan's measurements (docs/CUDA.md "Device plan"), in device calls of under 10
# minutes each, from the GPU suite's folder (scripts/gpu_suite.sh build DIR copies this script,
# bench/ and the examples). It began as the dS path's checks (the attention backward's default;
# SMELT_CUDA_ATTN_DS=0 turns it off, =1 its unstaged form; docs/CUDA.md "The dS path"):
#   cd DIR && bash ds_check.sh . parity,train     # ~5 min: parity, then 1B and large A/B (off, unstaged, default)
#   cd DIR && bash ds_check.sh . profile,lora     # ~5 min: per-kernel profile at 1B, LoRA shape A/B
#   cd DIR && bash ds_check.sh . fixes,swiglu,peers124   # ~5 min: re-runs, SwiGLU A/B at the LoRA shape, 124M vs torch
#   cd DIR && bash ds_check.sh . attn,norm,ncuattn # ~7 min: attention alone vs SDPA, RMSNorm rows in registers A/B, ncu of the attention kernels
#   cd DIR && bash ds_check.sh . prefetch          # ~4 min: batch-1 decode with and without the L2 prefetch hints
#   cd DIR && bash ds_check.sh . ab                # ~5 min: this build against DIR/smelt-base, training at 1B and large
#   cd DIR && bash ds_check.sh . ab2               # ~6 min: the same at the LoRA shape and in 135M/1B bf16 decode
#   cd DIR && bash ds_check.sh . gemm              # ~5 min: cuBLASLt timing 32 (and 1) candidates against 8, 1B and large
#   cd DIR && bash ds_check.sh . loraprof          # ~2 min: the LoRA shape's profile, kernels and cuBLASLt shapes
#   cd DIR && bash ds_check.sh . probe             # ~20 s: one SM's read bandwidth, a cluster barrier (135M decode design)
#   cd DIR && bash ds_check.sh . tma               # ~3 min: the TMA forwards' parity, then the attention alone beside SDPA
#   cd DIR && bash ds_check.sh . tmatrain          # ~5 min: large and 1B training with the TMA forwards beside the default
#   cd DIR && bash ds_check.sh . dsw2,dsw2train     # ~6 min: the wgmma dk/dv after its instruction cut: parity, attention alone, training
#   cd DIR && bash ds_check.sh . ea,eatrain          # ~7 min: the end-aligned forward and the one-warpgroup wgmma dk/dv: parity, alone, training
#   cd DIR && bash ds_check.sh . lora2             # ~3 min: the LoRA shape with the new attention defaults, the mma.sync dk/dv, larger loss chunks
#   cd DIR && bash ds_check.sh . ncusteps          # ~6 min: the LoRA shape's step kernel by kernel (ncu)
#   cd DIR && bash ds_check.sh . ncubwd            # ~3 min: ncu of large's forward and backward kernels, default and wgmma, with SASS stall samples
# PARTS: parity (the dS path against the three-product dq kernel, and the bf16 attention tests
# against the CPU with it on), train (smelt alone at 1B and large, dS path off and on in one
# call), profile (SMELT_CUDA_PROFILE=1 at 1B both ways; SMELT_CUDA_PROFILE=gemm: cuBLASLt shape
# by shape), lora (issue 16's LoRA shape, Qwen2.5-0.5B 8 × 2048, both ways, and its profile),
# fixes, swiglu, peers124, norm, attn, ncuattn, ncubwd, ncusteps, lora2, dsw2, dsw2train, ea, eatrain, ab, ab2, gemm, prefetch, probe, loraprof, wgprobe, wgz, wgztrain, tma, tmatrain (each described
# where it runs, below). A part name that matches none runs nothing.
set -uo pipefail
D=${1:-.}
PARTS=${2:-parity,train}
part() { [[ ",$PARTS," == *",$1,"* ]]; }
# parity_wgmma TAG: every pipelined wgmma kernel against the mma.sync ones (the test names each
# kernel before launching it: a trap loses the context), log in $OUT/parity_TAG.txt.
parity_wgmma() {
  timeout 150 "$D/core_tests" parity_wgmma_pipelined_kernels --test-threads=1 --nocapture >"$OUT/parity_$1.txt" 2>&1
  echo "parity_wgmma_pipelined_kernels rc $?"
  grep -E "panicked|test result|FAIL" "$OUT/parity_$1.txt" | cut -c1-200 | head -12
}
# attn_alone DIR "NAME:ENV;…": the attention alone (attn_bench) at every shape with each variant
# beside the defaults and PyTorch's SDPA. train_ab DIR "NAME:ENV;…": large and 1B training with
# each beside the defaults, no peers.
attn_alone() {
  timeout 240 python3 bench/attn_vs_torch.py --attn-bench "$D/attn_bench" --out "$OUT/$1" --shapes 124m,large,1b,lora \
    --variants "$2" 2>&1 | tail -26
}
train_ab() {
  timeout 500 python3 bench/cuda_vs_torch.py --smelt "$D/smelt" --shapes large,1b --no-peers --variants "$2" \
    --out "$OUT/$1" 2>&1 | tail -12
}
# parity_as_default "NAME:ENV;…": each form as the default for the bf16 attention tests against
# the CPU (packed rows, windows, GQA, T 2048; head dim 128 on the mma.sync kernels): what making
# it the default would run. (A comparison there that wants the mma.sync kernels' bits may fail by
# design: wgmma sums a k16 step in its own order; the CPU comparisons are the ones that count.)
parity_as_default() {
  local v
  for v in ${1//;/ }; do
    env "${v#*:}" timeout 150 "$D/core_tests" parity_bf16_attention --test-threads=1 >"$OUT/parity_attn_${v%%:*}.txt" 2>&1
    echo "parity_bf16_attention* with ${v#*:} rc $?"; grep -E "panicked|test result" "$OUT/parity_attn_${v%%:*}.txt" | cut -c1-160 | head -4
  done
}
OUT=${OUT:-./out}
mkdir -p "$OUT"
export SMELT_REPO=${SMELT_REPO:-$PWD} SMELT_REQUIRE_GPU=1 SMELT_KERNEL_CACHE=${SMELT_KERNEL_CACHE:-/tmp/smelt-kernels}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
if part parity; then
  timeout 240 "$D/core_tests" parity_bf16_attention --test-threads=1 --nocapture >"$OUT/parity_attn.txt" 2>&1
  echo "parity_bf16_attention* (default kernels) rc $?"
  grep -E "^test |panicked|FAILED" "$OUT/parity_attn.txt" | head -20
  grep -E "dS path" "$OUT/parity_attn.txt" | grep -v "differs in 0 of" | head -20
  echo "comparisons bit for bit: $(grep -c 'differs in 0 of' "$OUT/parity_attn.txt")"
  SMELT_CUDA_ATTN_DS=0 timeout 200 "$D/core_tests" parity_bf16_attention --test-threads=1 >"$OUT/parity_attn_ds.txt" 2>&1
  echo "parity_bf16_attention* with SMELT_CUDA_ATTN_DS=0 rc $?"; grep -E "panicked|FAILED|test result" "$OUT/parity_attn_ds.txt" | head
  timeout 200 "$D/gpu_train" gpu_mixed gpu_bf16_follows gpu_resume --test-threads=1 >"$OUT/gpu_train_ds.txt" 2>&1
  echo "gpu_train gpu_mixed*, gpu_bf16_follows*, gpu_resume* (dS path) rc $?"; grep -E "^test |panicked|test result" "$OUT/gpu_train_ds.txt" | head
fi
part train && timeout 420 python3 bench/cuda_vs_torch.py --smelt "$D/smelt" --shapes 1b,large --no-peers \
  --variants "ds0:SMELT_CUDA_ATTN_DS=0;ds1:SMELT_CUDA_ATTN_DS=1" --out "$OUT/bench" 2>&1 | tail -10
M=/tmp/smelt-bench-models/1b
if part profile; then
  [ -f "$M/model.safetensors" ] || timeout 300 python3 bench/torch_gpu.py --dim 2048 --layers 16 --heads 32 \
    --kv-heads 8 --ffn 8192 --vocab-size 32000 --seq-len 2048 --save-hf "$M" >/dev/null 2>&1
  for v in 0 1; do
    SMELT_CUDA_ATTN_DS=$v SMELT_CUDA_PROFILE=1 timeout 200 "$D/smelt" bench --device cuda --model "$M" --vocab-size 32000 \
      --batch-size 8 --seq-len 2048 --iters 1 --decode-tokens 4 --no-forward --format json >/dev/null 2>"$OUT/profile-1b-ds$v.txt"
    echo "== profile 1b SMELT_CUDA_ATTN_DS=$v"; grep -A12 "profile train" "$OUT/profile-1b-ds$v.txt" | head -13
  done
  SMELT_CUDA_PROFILE=gemm timeout 200 "$D/smelt" bench --device cuda --model "$M" --vocab-size 32000 \
    --batch-size 8 --seq-len 2048 --iters 1 --decode-tokens 4 --no-forward --format json >/dev/null 2>"$OUT/profile-1b-gemm.txt"
  grep -A30 "profile train" "$OUT/profile-1b-gemm.txt" | head -32
fi
if part lora; then
  timeout 300 python3 bench/lora_cuda.py --smelt "$D/smelt" --skip smelt-ckpt,e2e,eager,compile --iters 3 --out /tmp/lora 2>&1 | tail -4
  cp /tmp/lora/lora_cuda.md "$OUT/" 2>/dev/null
  L="--model /tmp/lora/model --adapter /tmp/lora/adapter --device cuda --batch-size 8 --seq-len 2048 --decode-tokens 1 --no-forward --format json"
  echo "== LoRA without the dS path"
  SMELT_CUDA_ATTN_DS=0 timeout 200 "$D/smelt" bench $L --iters 3 2>"$OUT/lora-ds0.stderr" | tail -1
  for v in 0 1; do
    SMELT_CUDA_ATTN_DS=$v SMELT_CUDA_PROFILE=1 timeout 200 "$D/smelt" bench $L --iters 1 >/dev/null 2>"$OUT/profile-lora-ds$v.txt"
    echo "== profile LoRA SMELT_CUDA_ATTN_DS=$v"; grep -A30 "profile train" "$OUT/profile-lora-ds$v.txt" | head -31
  done
fi
# fixes: the two tests the 2026-12-05 suite run failed (parity_linear_dx_accumulated, the
# synchronous wgmma comparisons), the dS path's and the accumulating SwiGLU backward's parity,
# then the LoRA shape with the SwiGLU backward adding into the gradient sums
# (SMELT_CUDA_SWIGLU_ACC=1, opt-in until this runs) and without, and 124M beside torch.compile.
if part fixes; then
  timeout 150 "$D/core_tests" parity_linear_dx parity_bf16_attention parity_wgmma_attention parity_swiglu_backward \
    --test-threads=1 >"$OUT/parity_fixes.txt" 2>&1
  echo "parity (fixes) rc $?"; grep -E "^test |panicked|test result|KNOWN" "$OUT/parity_fixes.txt" | cut -c1-160
  timeout 200 "$D/gpu_train" lora qlora --test-threads=1 >"$OUT/gpu_train_lora.txt" 2>&1
  echo "gpu_train lora* rc $?"; grep -E "^test |panicked|test result" "$OUT/gpu_train_lora.txt" | head
fi
if part swiglu; then
  [ -f /tmp/lora/model/model.safetensors ] || timeout 200 python3 bench/lora_cuda.py --smelt "$D/smelt" \
    --skip smelt,smelt-ckpt,e2e,eager,compile --iters 1 --out /tmp/lora >/dev/null 2>&1
  L="--model /tmp/lora/model --adapter /tmp/lora/adapter --device cuda --batch-size 8 --seq-len 2048 --decode-tokens 1 --no-forward --format json"
  for v in 1 0 1; do
    echo "== LoRA SMELT_CUDA_SWIGLU_ACC=$v"
    SMELT_CUDA_SWIGLU_ACC=$v timeout 120 "$D/smelt" bench $L --iters 3 2>/dev/null | tail -1 | python3 -c 'import json,sys; j=json.loads(sys.stdin.read()); print("train tok/s", round(j["train_tok_s"]), "peak GiB", round(j["peak_mem_bytes"]/2**30, 2))'
  done
fi
# norm: RMSNorm rows read once into registers (the default since 2026-12-05 evening, written
# without a GPU; SMELT_CUDA_NORM_RES=0 keeps the two-pass kernels): the op's parity tests against
# the CPU (f32 and bf16 storage, fused add, backward), the GPU training tests, then 1B and the
# LoRA shape both ways and a 1B profile with it (rmsnorm_fwd 5.7 ms, rmsnorm_bwd_dx_add 6.0 ms
# of the 239 ms serialised step before; predicted 3.5-4.5 ms less together).
if part norm; then
  timeout 150 "$D/core_tests" rmsnorm --test-threads=1 >"$OUT/parity_norm.txt" 2>&1
  echo "core_tests rmsnorm* rc $?"; grep -E "panicked|test result" "$OUT/parity_norm.txt" | head -5
  timeout 200 "$D/gpu_train" gpu_mixed gpu_resume --test-threads=1 >"$OUT/gpu_train_norm.txt" 2>&1
  echo "gpu_train gpu_mixed*, gpu_resume* rc $?"; grep -E "panicked|test result" "$OUT/gpu_train_norm.txt" | head -5
  timeout 300 python3 bench/cuda_vs_torch.py --smelt "$D/smelt" --shapes 1b --no-peers \
    --variants "res0:SMELT_CUDA_NORM_RES=0" --out "$OUT/bench-norm" 2>&1 | tail -4
  M=/tmp/smelt-bench-models/1b
  SMELT_CUDA_PROFILE=1 timeout 200 "$D/smelt" bench --device cuda --model "$M" --vocab-size 32000 \
    --batch-size 8 --seq-len 2048 --iters 1 --decode-tokens 4 --no-forward --format json >/dev/null 2>"$OUT/profile-1b-norm.txt"
  grep -A16 "profile train" "$OUT/profile-1b-norm.txt" | grep -E "profile train|rmsnorm|sum_partials"
fi
# attn: the training attention alone beside PyTorch's SDPA (cuDNN) at 124M, large, 1B and the
# LoRA shape (bench/attn_vs_torch.py over attn_bench): the default forms, the dS path off, the
# dS path's dk/dv split over 2, 4 or 7 parts of each GQA group (SMELT_CUDA_ATTN_HSPLIT: the LoRA
# shape's 7 query heads a KV head over 32 key tiles × 2 KV heads × 8 make 512 long blocks), the
# pipelined wgmma kernels, and their forwards alone beside the default backward (fwdp: 64-key
# tiles; fwdn, fwdn1: 128-key tiles, one m64n128 wgmma a k16 step for S, two or one warpgroups).
# Kernel time against the peer's, without the rest of the step.
part attn && timeout 300 python3 bench/attn_vs_torch.py --attn-bench "$D/attn_bench" --out "$OUT/attn" \
  --variants "ds0:SMELT_CUDA_ATTN_DS=0;hs2:SMELT_CUDA_ATTN_HSPLIT=2;hs4:SMELT_CUDA_ATTN_HSPLIT=4;hs7:SMELT_CUDA_ATTN_HSPLIT=7;wgp:SMELT_CUDA_ATTN_FWD=attn_wgp_fwd_d64,SMELT_CUDA_ATTN_DQ=attn_wgp_dq_d64,SMELT_CUDA_ATTN_DKDV=attn_wgp_dkdv_d64,SMELT_CUDA_ATTN_DS=0;fwdp:SMELT_CUDA_ATTN_FWD=attn_wgp_fwd_d64;fwdn:SMELT_CUDA_ATTN_FWD=attn_wgpn_fwd_d64;fwdn1:SMELT_CUDA_ATTN_FWD=attn_wgpn1_fwd_d64" 2>&1 | tail -40
# ncuattn: why the attention kernels run at 150-230 TFLOP/s (and the pipelined wgmma ones
# slower): ncu's throughput, occupancy, scheduler and warp-state sections plus stall reasons,
# tensor-pipe activity and shared-memory bank conflicts for the first backward launches at the
# 1B shape, default kernels then the pipelined wgmma ones (scripts/ncu_details.py reads it). Only
# the backward's kernels: the bench's prefill runs the forward first (40 launches of it at batch
# 1, which is all a forward filter caught on 2026-12-05; docs/PERF.md has that forward's figures).
if part ncuattn; then
  NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)
  M=/tmp/smelt-bench-models/1b
  [ -f "$M/model.safetensors" ] || timeout 300 python3 bench/torch_gpu.py --dim 2048 --layers 16 --heads 32 \
    --kv-heads 8 --ffn 8192 --vocab-size 32000 --seq-len 2048 --save-hf "$M" >/dev/null 2>&1
  for v in default wgp; do
    env=()
    [ $v = wgp ] && env=(SMELT_CUDA_ATTN_FWD=attn_wgp_fwd_d64 SMELT_CUDA_ATTN_DQ=attn_wgp_dq_d64 SMELT_CUDA_ATTN_DKDV=attn_wgp_dkdv_d64 SMELT_CUDA_ATTN_DS=0)
    env "${env[@]}" timeout 240 "$NCU" --csv --page details --clock-control none -k 'regex:attn_(tc|wgp)_(dq|dkdv).*' \
      --launch-count 6 --section SpeedOfLight --section Occupancy --section WarpStateStats \
      --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section SchedulerStats \
      --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum' \
      "$D/smelt" bench --device cuda --model "$M" --vocab-size 32000 --batch-size 8 --seq-len 2048 --iters 1 \
      --decode-tokens 1 --no-forward --format json >"$OUT/ncu-attn-$v.csv" 2>"$OUT/ncu-attn-$v.err"
    echo "== ncu attention ($v) rc $?"
    python3 ncu_details.py "$OUT/ncu-attn-$v.csv" --min-us 200 --per-name 1
  done
fi
# ab, ab2: this build against smelt-base (an earlier main's build carried beside it, e.g. 650ab17's:
# `CARGO_TARGET_DIR=... cargo build --release --features cuda -p smelt` in a worktree of it,
# stripped, copied to DIR/smelt-base): 1B and large training, the LoRA shape, 135M and 1B bf16
# decode, every default of each build, in one call. What changed between them shows as a whole
# (the kernels without their own switch: AdamW's 16-byte accesses, RoPE's 32-bit indexing).
(part ab || part ab2) && [ ! -x "$D/smelt-base" ] && echo "ab: no $D/smelt-base carried: skipped"
part ab && [ -x "$D/smelt-base" ] && timeout 500 python3 bench/cuda_vs_torch.py --smelt "$D/smelt" \
  --smelt-base "$D/smelt-base" --shapes 1b,large --no-peers --out "$OUT/ab" 2>&1 | tail -8
if part ab2 && [ -x "$D/smelt-base" ]; then
  [ -f /tmp/lora/model/model.safetensors ] || timeout 200 python3 bench/lora_cuda.py --smelt "$D/smelt" \
    --skip smelt,smelt-ckpt,e2e,eager,compile --iters 1 --out /tmp/lora >/dev/null 2>&1
  L="--model /tmp/lora/model --adapter /tmp/lora/adapter --device cuda --batch-size 8 --seq-len 2048 --decode-tokens 1 --no-forward --format json"
  # The LoRA shape: both builds twice, alternating; this build without the one-product LoRA
  # form (SMELT_LORA_SIDE=0: the separate adapter products), and with the dS path's dk/dv over
  # its 7-head GQA groups in 7 parts (SMELT_CUDA_ATTN_HSPLIT=7).
  for run in smelt-base smelt smelt-base smelt side0 hs7; do
    exe=$run; envs=()
    [ "$run" = side0 ] && exe=smelt && envs=(SMELT_LORA_SIDE=0)
    [ "$run" = hs7 ] && exe=smelt && envs=(SMELT_CUDA_ATTN_HSPLIT=7)
    echo "== LoRA shape, $run"
    env "${envs[@]}" timeout 120 "$D/$exe" bench $L --iters 3 2>/dev/null | tail -1 | python3 -c 'import json,sys; j=json.loads(sys.stdin.read()); print("train tok/s", round(j["train_tok_s"]), "peak GiB", round(j["peak_mem_bytes"]/2**30, 2))'
  done
  timeout 300 python3 bench/decode_cuda.py --smelt "$D/smelt" --smelt-base "$D/smelt-base" --tokenizer "$D/tokenizer.json" \
    --shapes 135m,1b --types bf16 --variants "" --out "$OUT/decode-ab" 2>&1 | tail -5
fi
# probe: one SM's streaming bandwidth and a thread-block cluster's barrier (examples/cluster_probe;
# docs/CUDA.md "What 135M's ≤ 0.25 ms would take"), beside the grid barrier measured before.
if part probe; then
  timeout 60 "$D/cluster_probe" 2>&1 | tail -20
  timeout 60 "$D/grid_barrier" 2>&1 | tail -8
fi
# wgprobe: wgmma's rate from shared memory in the attention kernels' un-swizzled core-matrix
# layout against the 128-byte swizzle (examples/wgmma_probe), then ncu of the training forward
# alone at the 1B shape (attn_bench), the mma.sync kernel beside the pipelined wgmma ones: stall
# reasons, tensor-pipe activity, shared-memory bank conflicts.
if part wgprobe; then
  timeout 90 "$D/wgmma_probe" 2>&1 | tail -20
  NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)
  for v in default wgp wgpz; do
    env=()
    [ $v = wgp ] && env=(SMELT_CUDA_ATTN_FWD=attn_wgp_fwd_d64)
    [ $v = wgpz ] && env=(SMELT_CUDA_ATTN_FWD=attn_wgpz_fwd_d64)
    env "${env[@]}" timeout 120 "$NCU" --csv --page details --clock-control none -k 'regex:attn_(tc|wgp|wgpz)_fwd.*' \
      --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats \
      --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section SchedulerStats \
      --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum' \
      "$D/attn_bench" --shapes 1b --iters 1 >"$OUT/ncu-fwd-$v.csv" 2>"$OUT/ncu-fwd-$v.err"
    echo "== ncu forward ($v) rc $?"
    python3 ncu_details.py "$OUT/ncu-fwd-$v.csv" --min-us 100 --per-name 1
  done
fi
# wgz: the pipelined wgmma forwards with their K and V tiles in the 128-byte swizzled layout
# (`attn_wgpz_fwd_d64`, `attn_wgpzn_fwd_d64`) and the copying-warp forms (`attn_wgw*_fwd_d64`;
# `wgwt`: K and V by TMA):
# their parity against the mma.sync kernels, then the attention alone at large and 1B beside the
# core-matrix forms (fwdp, fwdn).
if part wgz; then
  timeout 150 "$D/core_tests" parity_wgmma_pipelined_kernels --test-threads=1 >"$OUT/parity_wgz.txt" 2>&1
  echo "parity_wgmma_pipelined_kernels rc $?"; grep -E "wgpz|panicked|test result" "$OUT/parity_wgz.txt" | cut -c1-200 | head -12
  timeout 240 python3 bench/attn_vs_torch.py --attn-bench "$D/attn_bench" --out "$OUT/attnz" --shapes large,1b --no-peers \
    --variants "fwdp:SMELT_CUDA_ATTN_FWD=attn_wgp_fwd_d64;fwdz:SMELT_CUDA_ATTN_FWD=attn_wgpz_fwd_d64;fwdn:SMELT_CUDA_ATTN_FWD=attn_wgpn_fwd_d64;fwdzn:SMELT_CUDA_ATTN_FWD=attn_wgpzn_fwd_d64;fwdw:SMELT_CUDA_ATTN_FWD=attn_wgw_fwd_d64;fwdwp:SMELT_CUDA_ATTN_FWD=attn_wgwp_fwd_d64;fwdwn:SMELT_CUDA_ATTN_FWD=attn_wgwn_fwd_d64;fwdwnp:SMELT_CUDA_ATTN_FWD=attn_wgwnp_fwd_d64;fwdwt:SMELT_CUDA_ATTN_FWD=attn_wgwt_fwd_d64;fwdwtp:SMELT_CUDA_ATTN_FWD=attn_wgwtp_fwd_d64;fwdwt3:SMELT_CUDA_ATTN_FWD=attn_wgwt3_fwd_d64;fwdwq:SMELT_CUDA_ATTN_FWD=attn_wgwq_fwd_d64;fwdwq3:SMELT_CUDA_ATTN_FWD=attn_wgwq3_fwd_d64;wgp:SMELT_CUDA_ATTN_FWD=attn_wgp_fwd_d64,SMELT_CUDA_ATTN_DQ=attn_wgp_dq_d64,SMELT_CUDA_ATTN_DKDV=attn_wgp_dkdv_d64,SMELT_CUDA_ATTN_DS=0;wgz:SMELT_CUDA_ATTN_FWD=attn_wgpz_fwd_d64,SMELT_CUDA_ATTN_DQ=attn_wgpz_dq_d64,SMELT_CUDA_ATTN_DKDV=attn_wgpz_dkdv_d64,SMELT_CUDA_ATTN_DS=0" 2>&1 | tail -16
fi
# wgztrain: the large preset's training step with the swizzled wgmma forward and the
# copying-warp forwards beside the default (the attention alone is `wgz`; run that first).
part wgztrain && timeout 200 python3 bench/cuda_vs_torch.py --smelt "$D/smelt" --shapes large --no-peers \
  --variants "fwdz:SMELT_CUDA_ATTN_FWD=attn_wgpz_fwd_d64;fwdw:SMELT_CUDA_ATTN_FWD=attn_wgw_fwd_d64;fwdwp:SMELT_CUDA_ATTN_FWD=attn_wgwp_fwd_d64;fwdwn:SMELT_CUDA_ATTN_FWD=attn_wgwn_fwd_d64;fwdwnp:SMELT_CUDA_ATTN_FWD=attn_wgwnp_fwd_d64" \
  --out "$OUT/wgztrain" 2>&1 | tail -6
# tma: the forwards whose K and V come by TMA (`attn_wgwt_fwd_d64`, three computing warpgroups
# `wgwt3`, persistent `wgwq`/`wgwq3`) and the dS-path dk/dv on wgmma with Q and dO by TMA
# (`dsw`: `attn_wgtds_dkdv_d64`, its dq the default's): parity against the mma.sync kernels (the
# test names each kernel before launching it: a trap loses the context), then the attention
# alone at every shape beside SDPA. tmatrain: large and 1B training with each beside the
# default, no peers.
TMA_FWD="wt:SMELT_CUDA_ATTN_FWD=attn_wgwt_fwd_d64;wt3:SMELT_CUDA_ATTN_FWD=attn_wgwt3_fwd_d64;wq:SMELT_CUDA_ATTN_FWD=attn_wgwq_fwd_d64;wq3:SMELT_CUDA_ATTN_FWD=attn_wgwq3_fwd_d64;dsw:SMELT_CUDA_ATTN_DKDV=attn_wgtds_dkdv_d64"
if part tma; then
  parity_wgmma tma
  parity_as_default "$TMA_FWD"
  attn_alone attntma "$TMA_FWD"
fi
part tmatrain && train_ab tmatrain "$TMA_FWD"
# ncubwd: where the attention kernels at the large shape wait: ncu's sections and stall reasons
# for attn_bench's first forward, dk/dv and dq launches — the defaults (on Hopper the wgmma dS
# dk/dv since d0cc117), the mma.sync dk/dv (SMELT_CUDA_ATTN_WGDS=0), the TMA forward — then the
# SASS of both dk/dv kernels with stall samples per instruction (`--page source`). First run
# (2026-12-05, before the wgmma dk/dv's instruction cut): docs/PERF.md "the wgmma dk/dv after its
# instruction cut".
if part ncubwd; then
  NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)
  for v in default mma wt; do
    env=()
    [ $v = mma ] && env=(SMELT_CUDA_ATTN_WGDS=0)
    [ $v = wt ] && env=(SMELT_CUDA_ATTN_FWD=attn_wgwt_fwd_d64)
    env "${env[@]}" timeout 150 "$NCU" --csv --page details --clock-control none \
      -k 'regex:attn_(tc_fwd_d64|tc_dkdvdsb|wgtds_dkdv|wgwt_fwd|tc_dqdsz)' --launch-count 3 \
      --section SpeedOfLight --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis \
      --section MemoryWorkloadAnalysis --section SchedulerStats --section LaunchStats \
      --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_uniform.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_bytes.sum' \
      "$D/attn_bench" --shapes large --iters 1 >"$OUT/ncu-bwd-$v.csv" 2>"$OUT/ncu-bwd-$v.err"
    echo "== ncu large attention ($v) rc $?"
    python3 ncu_details.py "$OUT/ncu-bwd-$v.csv" --min-us 50 --per-name 1
  done
  for v in default mma; do
    env=(); k=wgtds_dkdv
    [ $v = mma ] && env=(SMELT_CUDA_ATTN_WGDS=0) && k=tc_dkdvdsb
    env "${env[@]}" timeout 150 "$NCU" --csv --page source --print-source sass --clock-control none \
      --section SourceCounters --section WarpStateStats -k "regex:attn_$k" --launch-count 1 \
      "$D/attn_bench" --shapes large --iters 1 >"$OUT/ncu-src-$v.csv" 2>"$OUT/ncu-src-$v.err"
    echo "== ncu source ($v) rc $? lines $(wc -l <"$OUT/ncu-src-$v.csv")"
    python3 sass_stalls.py "$OUT/ncu-src-$v.csv" | head -40
  done
fi
# dsw2: the dS-path wgmma dk/dv after its instruction cut (f369e42, and the descriptors): its
# parity against the mma.sync kernels and, as the default, against the CPU; the attention alone
# at every shape beside SDPA (with the TMA forwards); large and 1B training with it, no peers.
DSW="dsw:SMELT_CUDA_ATTN_DKDV=attn_wgtds_dkdv_d64"
if part dsw2; then
  parity_wgmma dsw2
  parity_as_default "$DSW"
  attn_alone attndsw2 "$DSW;wt:SMELT_CUDA_ATTN_FWD=attn_wgwt_fwd_d64;wt3:SMELT_CUDA_ATTN_FWD=attn_wgwt3_fwd_d64;wg3off:SMELT_CUDA_ATTN_WG3=0"
fi
part dsw2train && train_ab dsw2train "$DSW"
# ea: the kernels written on 2026-12-05 evening, not yet run — the three-warpgroup TMA forward
# with end-aligned blocks (`attn_wgwt3e_fwd_d64`: at T 1024 its short 64-row block is the first
# instead of the longest), the one-warpgroup TMA forward at three blocks an SM
# (`attn_wgwt1_fwd_d64`) and the wgmma dS dk/dv with one warpgroup a block, two blocks an
# SM (`attn_wgtds1_dkdv_d64`): parity against the mma.sync kernels and, each as the default,
# against the CPU; the attention alone at every shape beside the defaults (wt3 from T 2048, the
# two-warpgroup wgmma dk/dv), the mma.sync dk/dv (wgds0) and SDPA. eatrain: large and 1B training
# with each. A winner becomes the default: `default_fwd`'s rule (cuda.rs WG3_FWD, WG3_MIN_T) or
# WG_DS_DKDV.
EA="wt3e:SMELT_CUDA_ATTN_FWD=attn_wgwt3e_fwd_d64;wt1:SMELT_CUDA_ATTN_FWD=attn_wgwt1_fwd_d64;dsw1:SMELT_CUDA_ATTN_DKDV=attn_wgtds1_dkdv_d64"
if part ea; then
  parity_wgmma ea
  parity_as_default "$EA"
  attn_alone attnea "$EA;wt3:SMELT_CUDA_ATTN_FWD=attn_wgwt3_fwd_d64;wg3off:SMELT_CUDA_ATTN_WG3=0;wgds0:SMELT_CUDA_ATTN_WGDS=0"
fi
part eatrain && train_ab eatrain "$EA"
# ncusteps: issue 16's LoRA shape (Qwen2.5-0.5B, r 16 on all seven projections, 8 × 2048) kernel
# by kernel over one training step, each kernel timed alone by ncu (not SMELT_CUDA_PROFILE's
# serialised launches, whose fixed cost per launch swamps the small kernels), summed by name with
# scripts/ncu_sum.py --step (as large's step was, docs/PERF.md "where large's step goes").
if part ncusteps; then
  NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)
  [ -f /tmp/lora/model/model.safetensors ] || timeout 200 python3 bench/lora_cuda.py --smelt "$D/smelt" \
    --skip smelt,smelt-ckpt,e2e,eager,compile --iters 1 --out /tmp/lora >/dev/null 2>&1
  L="--model /tmp/lora/model --adapter /tmp/lora/adapter --device cuda --batch-size 8 --seq-len 2048 --decode-tokens 0 --no-forward --format json"
  timeout 420 "$NCU" --csv --metrics gpu__time_duration.sum --clock-control none --cache-control none -c 6000 \
    "$D/smelt" bench $L --iters 2 >"$OUT/ncu-lora-step.csv" 2>"$OUT/ncu-lora-step.err"
  echo "== ncu LoRA step rc $?"
  python3 ncu_sum.py "$OUT/ncu-lora-step.csv" --step | head -45
  gzip -f "$OUT/ncu-lora-step.csv"
fi
# lora2: issue 16's LoRA shape (smelt bench, 3 steps each, alternating where it matters) with
# the defaults (the wgmma dS dk/dv and the three-warpgroup forward since 2026-12-05 evening), the
# mma.sync dk/dv (SMELT_CUDA_ATTN_WGDS=0), the one-warpgroup wgmma dk/dv (not yet run), and the
# loss's chunks four times larger (1 << 28 logits: 1,766 rows a chunk at V 151,936 instead of
# 441; the head's products ran at 565 and 662 TFLOP/s in 441-row chunks, 2026-12-05 H200 profile).
if part lora2; then
  [ -f /tmp/lora/model/model.safetensors ] || timeout 200 python3 bench/lora_cuda.py --smelt "$D/smelt" \
    --skip smelt,smelt-ckpt,e2e,eager,compile --iters 1 --out /tmp/lora >/dev/null 2>&1
  L="--model /tmp/lora/model --adapter /tmp/lora/adapter --device cuda --batch-size 8 --seq-len 2048 --decode-tokens 1 --no-forward --format json"
  for run in default wgds0 default dsw1 ce28; do
    envs=()
    [ "$run" = wgds0 ] && envs=(SMELT_CUDA_ATTN_WGDS=0)
    [ "$run" = dsw1 ] && envs=(SMELT_CUDA_ATTN_DKDV=attn_wgtds1_dkdv_d64)
    [ "$run" = ce28 ] && envs=(SMELT_LOSS_CHUNK_ELEMS=268435456)
    echo "== LoRA shape, $run"
    env "${envs[@]}" timeout 120 "$D/smelt" bench $L --iters 3 2>/dev/null | tail -1 | python3 -c 'import json,sys; j=json.loads(sys.stdin.read()); print("train tok/s", round(j["train_tok_s"]), "peak GiB", round(j["peak_mem_bytes"]/2**30, 2))'
  done
fi
# gemm: cuBLASLt timing more of its heuristic's candidates (8 by default; the 1B step's products
# took 141 ms serialised against torch.compile's 135), 1B and large, one call; each variant with
# a kernel cache of its own, since the chosen algorithms are kept there (cublaslt-tune.tsv).
part gemm && timeout 400 python3 bench/cuda_vs_torch.py --smelt "$D/smelt" --shapes 1b,large --no-peers \
  --variants "tune32:SMELT_CUBLASLT_TUNE=32,SMELT_KERNEL_CACHE=/tmp/smelt-k-tune32;tune1:SMELT_CUBLASLT_TUNE=1,SMELT_KERNEL_CACHE=/tmp/smelt-k-tune1" --out "$OUT/gemm" 2>&1 | tail -8
# prefetch: batch-1 decode with the L2 prefetch hints (the q/k/v launch prefetches o, o's the
# first 12 MiB of gate's and up's, the down launch the next layer's q/k/v; cuda::prefetch, off
# since it measured 8% slower at 1B bf16 on 2026-12-05) with SMELT_CUDA_PREFETCH=1, 135M
# and 1B in bf16, Q8_0 and Q4_K; first the captured-decode tests (a prefetch changes no value,
# and a captured step replays the hints) and the count of bytes each step hands out.
if part prefetch; then
  timeout 200 "$D/gpu_infer" captured_decode paged_decode decode_steps_hand --test-threads=1 >"$OUT/gpu_infer_pf.txt" 2>&1
  echo "gpu_infer captured_decode*, paged_decode*, decode_steps_hand* rc $?"; grep -E "panicked|test result" "$OUT/gpu_infer_pf.txt" | head -5
  timeout 400 python3 bench/decode_cuda.py --smelt "$D/smelt" --tokenizer "$D/tokenizer.json" --shapes 135m,1b \
    --types bf16,q8_0,q4_k --variants "pf:SMELT_CUDA_PREFETCH=1" --out "$OUT/decode-pf" 2>&1 | tail -10
fi
# loraprof: the LoRA shape's serialised step with this build's defaults (the one-product form,
# the down branch's checkpoint_given), kernel by kernel and cuBLASLt shape by shape: which of the
# adapters' products are far from their memory floor (issue 16's 165k needs a ~99 ms step).
if part loraprof; then
  [ -f /tmp/lora/model/model.safetensors ] || timeout 200 python3 bench/lora_cuda.py --smelt "$D/smelt" \
    --skip smelt,smelt-ckpt,e2e,eager,compile --iters 1 --out /tmp/lora >/dev/null 2>&1
  L="--model /tmp/lora/model --adapter /tmp/lora/adapter --device cuda --batch-size 8 --seq-len 2048 --decode-tokens 1 --no-forward --format json"
  for p in 1 gemm; do
    SMELT_CUDA_PROFILE=$p timeout 200 "$D/smelt" bench $L --iters 1 >/dev/null 2>"$OUT/profile-lora-$p.txt"
    echo "== profile LoRA SMELT_CUDA_PROFILE=$p"; grep -A40 "profile train" "$OUT/profile-lora-$p.txt" | head -41
  done
fi
part peers124 && timeout 330 python3 bench/cuda_vs_torch.py --smelt "$D/smelt" --shapes 124m --out "$OUT/peers124" 2>&1 | tail -5
