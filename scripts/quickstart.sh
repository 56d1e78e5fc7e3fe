#!/usr/bin/env bash
# The quickstart (README's first command): on CPU, train a BPE tokenizer and a tiny model on the
# bundled Linux-docs corpus, then generate from it. About 3-5 minutes on 2 cores after the build.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust first (https://rustup.rs)"; exit 1; }
cargo build --release -p smelt
smelt=target/release/smelt
out=runs/quickstart
mkdir -p "$out"
corpus=data/linux-doc-slice.jsonl.gz

echo "== 1/4 tokenizer: byte-level BPE, 4096 tokens"
$smelt tokenizer --input "$corpus" --field text --vocab-size 4096 --output "$out/tokenizer.json"

echo "== 2/4 prepare: text -> token files (5% of documents held out for validation)"
$smelt prepare --input "$corpus" --field text --tokenizer "$out/tokenizer.json" --output "$out/train.bin" --val-fraction 0.05

echo "== 3/4 train: tiny model (~1.6M parameters), 800 steps"
# --overwrite: this folder is the quickstart's own, so a rerun replaces its earlier model (smelt
# otherwise refuses to train into a checkpoint directory that holds another run).
$smelt train --overwrite --dataset "$out/train.bin" --val-dataset "$out/train.val.bin" --tokenizer "$out/tokenizer.json" \
  --size tiny --batch-size 16 --seq-len 128 --steps 800 --lr 3e-3 --min-lr 3e-4 --warmup 50 \
  --checkpoint-dir "$out/model" --checkpoint-interval 200 --log-interval 10

echo "== 4/4 generate"
$smelt generate --model "$out/model/final" --prompt "The kernel" --max-tokens 120 --temperature 0.7 --seed 1
echo
echo "model: $out/model/final (a Hugging Face folder); metrics: $out/model/metrics.jsonl"
