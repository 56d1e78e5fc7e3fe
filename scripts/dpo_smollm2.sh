#!/usr/bin/env bash
# The DPO demonstration of docs/FINETUNE.md: a small LoRA SFT of SmolLM2-135M-Instruct on the
# "last word of this sentence" instruction set (scripts/sft_make_data.py), then DPO with a LoRA
# adapter on base + that SFT adapter, on preference pairs built from the same set
# (scripts/dpo_make_pairs.py: chosen = the last word, rejected = another word of the sentence),
# with held-out pairs from held-out documents; then the task's exact-match accuracy of the SFT
# model and of the DPO model on held-out test prompts.
#
#   scripts/dpo_smollm2.sh [OUT]          # default OUT: runs/dpo-smollm2
#
# Sizes through the environment (defaults: what docs/FINETUNE.md records, sized for 2 CPU cores):
#   SFT_N=96 SFT_STEPS=12 DPO_N=48 DPO_VAL=40 DPO_STEPS=12 DPO_BATCH=4 DPO_LR=1e-3 BETA=0.1
#   N_TEST=20 DEVICE=cpu. SMELT=path/to/smelt picks a binary.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/dpo-smollm2}
SFT_N=${SFT_N:-96} SFT_STEPS=${SFT_STEPS:-12} DPO_N=${DPO_N:-48} DPO_VAL=${DPO_VAL:-40}
DPO_STEPS=${DPO_STEPS:-12} DPO_BATCH=${DPO_BATCH:-4} DPO_LR=${DPO_LR:-1e-3} BETA=${BETA:-0.1}
N_TEST=${N_TEST:-20} DEVICE=${DEVICE:-cpu}
smelt=${SMELT:-}
if [ -z "$smelt" ]; then
  cargo build --release -q -p smelt
  smelt=${CARGO_TARGET_DIR:-target}/release/smelt
fi
SMELT=$smelt scripts/fetch_smollm2.sh
BASE=.cache/inputs/smollm2/hf
mkdir -p "$OUT"
python3 scripts/sft_make_data.py "$OUT/data" 600 60 "$N_TEST"
head -"$SFT_N" "$OUT/data/train.jsonl" > "$OUT/sft_train.jsonl"
# DPO's training pairs come from training sentences the SFT run did not see; its held-out pairs
# from the validation sentences (held-out documents).
python3 scripts/dpo_make_pairs.py "$OUT/data/train.jsonl" "$OUT/pairs_train.jsonl" "$SFT_N" "$DPO_N"
python3 scripts/dpo_make_pairs.py "$OUT/data/val.jsonl" "$OUT/pairs_val.jsonl" 0 "$DPO_VAL" 1

"$smelt" sft --model "$BASE" --data "$OUT/sft_train.jsonl" --output "$OUT/sft" --overwrite --steps "$SFT_STEPS" \
  --batch-size 8 --lr 1e-3 --warmup 2 --seq-len 128 --lora-r 16 --lora-alpha 32 --checkpoint-interval 0 \
  --device "$DEVICE"
"$smelt" dpo --model "$BASE" --adapter "$OUT/sft/final" --data "$OUT/pairs_train.jsonl" \
  --val-data "$OUT/pairs_val.jsonl" --output "$OUT/dpo" --overwrite --beta "$BETA" --steps "$DPO_STEPS" \
  --batch-size "$DPO_BATCH" --lr "$DPO_LR" --warmup 2 --seq-len 128 --lora-r 16 --lora-alpha 32 \
  --checkpoint-interval $(( DPO_STEPS / 2 )) --val-batches 10 --device "$DEVICE"

# The task metric: the SFT model (base + SFT merged) and the DPO model (that + the DPO adapter).
"$smelt" merge --model "$BASE" --adapter "$OUT/sft/final" --output "$OUT/sft-merged"
"$smelt" merge --model "$OUT/sft-merged" --adapter "$OUT/dpo/final" --output "$OUT/dpo-merged"
python3 scripts/sft_eval_task.py "$smelt" "$OUT/sft-merged" "$OUT/data/test.jsonl" > "$OUT/sft_replies.jsonl"
python3 scripts/sft_eval_task.py "$smelt" "$OUT/dpo-merged" "$OUT/data/test.jsonl" > "$OUT/dpo_replies.jsonl"
grep val_ "$OUT/dpo/metrics.jsonl"
tail -1 "$OUT/sft_replies.jsonl"
tail -1 "$OUT/dpo_replies.jsonl"
