#!/usr/bin/env bash
# Writes crates/convert/tests/data/imatrix_llama_golden.gguf: llama.cpp's llama-imatrix on
# SmolLM2-135M-Instruct (the published Q4_1 file, exported to f32 by smelt) over the first two
# 512-token chunks of the bundled corpus (data/linux-doc-slice.txt.gz, decompressed), with an
# f32 KV cache and no flash attention (llama.cpp's CPU flash attention rounds through f16),
# trimmed to layers 0, 15 and 29 to stay small. crates/convert/tests/imatrix.rs compares smelt's
# collection against it.
#
# Needs: target/release/smelt, the llama.cpp peer build (LLAMA_BIN, default
# /work/llama/peer/build/bin), .cache/inputs/smollm2/DL/SmolLM2-135M-Instruct.Q4_1.gguf; gguf-py goes
# into the project venv (scripts/venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_BIN=${LLAMA_BIN:-/work/llama/peer/build/bin}
PY=$(scripts/venv.sh gguf==0.19.0 numpy)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
./target/release/smelt export-gguf --model .cache/inputs/smollm2/DL/SmolLM2-135M-Instruct.Q4_1.gguf --type f32 --output "$tmp/f32.gguf"
zcat data/linux-doc-slice.txt.gz > "$tmp/linux-doc-slice.txt"
LD_LIBRARY_PATH="$LLAMA_BIN" "$LLAMA_BIN/llama-imatrix" -m "$tmp/f32.gguf" -f "$tmp/linux-doc-slice.txt" -o "$tmp/imatrix.gguf" \
  --chunks 2 -c 512 --no-ppl -ctk f32 -ctv f32 -fa off > "$tmp/log" 2>&1 || { cat "$tmp/log"; exit 1; }
"$PY" - "$tmp/imatrix.gguf" crates/convert/tests/data/imatrix_llama_golden.gguf <<'PY'
import sys
import numpy as np
import gguf
r = gguf.GGUFReader(sys.argv[1])
w = gguf.GGUFWriter(sys.argv[2], "imatrix")
w.add_string("general.type", "imatrix")
w.add_array("imatrix.datasets", ["data/linux-doc-slice.txt.gz"])
w.add_uint32("imatrix.chunk_count", int(r.fields["imatrix.chunk_count"].contents()))
w.add_uint32("imatrix.chunk_size", int(r.fields["imatrix.chunk_size"].contents()))
for t in sorted(r.tensors, key=lambda t: t.name):
    if t.name.startswith(("blk.0.", "blk.15.", "blk.29.")):
        w.add_tensor(t.name, np.asarray(t.data, dtype=np.float32).copy())
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print("wrote", sys.argv[2])
PY
