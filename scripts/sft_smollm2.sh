#!/usr/bin/env bash
# The SFT demonstration of docs/FINETUNE.md: full fine-tune of SmolLM2-135M-Instruct on an
# instruction set built from real text (scripts/sft_make_data.py: "what is the last word of this
# sentence?" over the bundled Linux documentation slice, split by document), with the held-out
# loss and the task's exact-match accuracy measured before and after.
#
#   scripts/sft_smollm2.sh [OUT]          # default OUT: runs/sft-smollm2
#
# Sizes through the environment (defaults: the full run, for a GPU or a patient CPU):
#   N_TRAIN=2000 N_VAL=100 N_TEST=50 STEPS=200 BATCH=16 ACCUM=1 LR=5e-5 SEQ=128 DEVICE=auto
#   PACKING=0 (1 adds --packing; CPU only). SMELT=path/to/smelt picks a binary.
# Writes OUT/data/{train,val,test}.jsonl, OUT/run/ (checkpoints, metrics.jsonl, final/),
# OUT/{before,after}_replies.jsonl and OUT/results.json.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/sft-smollm2}
N_TRAIN=${N_TRAIN:-2000} N_VAL=${N_VAL:-100} N_TEST=${N_TEST:-50}
STEPS=${STEPS:-200} BATCH=${BATCH:-16} ACCUM=${ACCUM:-1} LR=${LR:-5e-5} SEQ=${SEQ:-128} DEVICE=${DEVICE:-auto}
smelt=${SMELT:-}
if [ -z "$smelt" ]; then
  cargo build --release -q -p smelt
  smelt=${CARGO_TARGET_DIR:-target}/release/smelt
fi
SMELT=$smelt scripts/fetch_smollm2.sh
BASE=.cache/inputs/smollm2/hf
mkdir -p "$OUT"
python3 scripts/sft_make_data.py "$OUT/data" "$N_TRAIN" "$N_VAL" "$N_TEST"
extra=()
[ "${PACKING:-0}" = 1 ] && extra+=(--packing)

# Before: one update at learning rate 0 leaves the weights as they are and logs the held-out loss.
"$smelt" sft --model "$BASE" --data "$OUT/data/val.jsonl" --val-data "$OUT/data/val.jsonl" --output "$OUT/before" \
  --overwrite --steps 1 --lr 0 --warmup 0 --batch-size "$BATCH" --seq-len "$SEQ" --checkpoint-interval 0 \
  --val-batches 1000 --device "$DEVICE" "${extra[@]}"
before_loss=$(tail -1 "$OUT/before/metrics.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["val_loss"])')
rm -rf "$OUT/before"
python3 scripts/sft_eval_task.py "$smelt" "$BASE" "$OUT/data/test.jsonl" > "$OUT/before_replies.jsonl"

"$smelt" sft --model "$BASE" --data "$OUT/data/train.jsonl" --val-data "$OUT/data/val.jsonl" --output "$OUT/run" \
  --overwrite --steps "$STEPS" --batch-size "$BATCH" --grad-accum "$ACCUM" --lr "$LR" --seq-len "$SEQ" \
  --checkpoint-interval "$(( STEPS / 2 > 0 ? STEPS / 2 : 1 ))" --keep-checkpoints 1 --val-batches 1000 \
  --device "$DEVICE" "${extra[@]}"
after_loss=$(tail -1 "$OUT/run/metrics.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["val_loss"])')
python3 scripts/sft_eval_task.py "$smelt" "$OUT/run/final" "$OUT/data/test.jsonl" > "$OUT/after_replies.jsonl"

acc() { tail -1 "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"; }
cat > "$OUT/results.json" <<JSON
{"steps": $STEPS, "batch": $BATCH, "grad_accum": $ACCUM, "lr": $LR, "seq_len": $SEQ, "n_train": $N_TRAIN,
 "n_val": $N_VAL, "n_test": $N_TEST, "val_loss_before": $before_loss, "val_loss_after": $after_loss,
 "accuracy_before": $(acc "$OUT/before_replies.jsonl" accuracy), "accuracy_after": $(acc "$OUT/after_replies.jsonl" accuracy),
 "contains_before": $(acc "$OUT/before_replies.jsonl" contains), "contains_after": $(acc "$OUT/after_replies.jsonl" contains)}
JSON
cat "$OUT/results.json"
