#!/usr/bin/env bash
# Throughput of `smelt prepare` against Hugging Face `tokenizers` (`encode_batch`) on the same
# documents and the same tokenizer.json. Prints MB/s and tokens/s for both, and checks that the two
# produced the same number of tokens (they must, for the comparison to mean anything).
#
# Needs a byte-level BPE tokenizer.json that both can load: the real BPE lands with the tokenizer
# branch; the byte-level stub tokenizer of smelt cannot be read by `tokenizers`, so until then
# this script cannot be run end to end. Needs `tokenizers` (scripts/venv.sh tokenizers).
#
# Usage: bench/prepare.sh TOKENIZER_JSON [COPIES]
#   The corpus is data/linux-doc-slice.txt.gz cut into documents of 6 paragraphs, as JSONL,
#   repeated COPIES times (default 100, about 100 MB).
# What is timed: smelt's whole run (read JSONL, tokenise on all cores, write the token file)
# against tokenizers' encode_batch alone (JSONL already parsed in memory, nothing written),
# so the comparison is, if anything, tilted towards tokenizers.
set -euo pipefail
tok=${1:?usage: bench/prepare.sh TOKENIZER_JSON [COPIES]}
copies=${2:-100}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}

cargo build -q --release -p smelt --manifest-path "$root/Cargo.toml"
smelt=$CARGO_TARGET_DIR/release/smelt
py=$("$root/scripts/venv.sh" tokenizers)

python3 - "$root/data/linux-doc-slice.txt.gz" "$work/docs.jsonl" "$copies" <<'PY'
import gzip, json, sys
src, out, copies = sys.argv[1], sys.argv[2], int(sys.argv[3])
paras = [p for p in gzip.open(src, "rt", encoding="utf-8").read().split("\n\n") if p.strip()]
docs = ["\n\n".join(paras[i:i + 6]) for i in range(0, len(paras), 6)]
with open(out, "w", encoding="utf-8") as f:
    for _ in range(copies):
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
PY
echo "corpus: $(du -h "$work/docs.jsonl" | cut -f1) JSONL, $(wc -l < "$work/docs.jsonl") documents, $(nproc) cores"

echo "== smelt prepare"
start=$(date +%s.%N)
"$smelt" prepare --input "$work/docs.jsonl" --tokenizer "$tok" --output "$work/out.bin" | tee "$work/smelt.txt"
end=$(date +%s.%N)
smelt_tokens=$(awk '/^  tokens/ {print $2}' "$work/smelt.txt")
smelt_docs=$(awk '/^  documents/ {print $2}' "$work/smelt.txt")

echo "== tokenizers encode_batch"
"$py" - "$work/docs.jsonl" "$tok" "$smelt_tokens" "$smelt_docs" "$start" "$end" <<'PY'
import json, sys, time
from tokenizers import Tokenizer
path, tok_path, smelt_tokens, smelt_docs, s0, s1 = sys.argv[1:]
docs = [json.loads(l)["text"] for l in open(path, encoding="utf-8")]
mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
tok = Tokenizer.from_file(tok_path)
t0 = time.perf_counter()
n = 0
for i in range(0, len(docs), 4096):
    n += sum(len(e.ids) for e in tok.encode_batch(docs[i:i + 4096], add_special_tokens=False))
dt = time.perf_counter() - t0
st = float(s1) - float(s0)
print(f"tokenizers: {mb / dt:8.1f} MB/s {n / dt:12.0f} tokens/s ({dt:.2f}s, {n} tokens)")
# smelt's count includes one EOS per document
ours = int(smelt_tokens) - int(smelt_docs)
print(f"smelt:      {mb / st:8.1f} MB/s {ours / st:12.0f} tokens/s ({st:.2f}s wall, whole command, {ours} tokens)")
if ours != n:
    print(f"WARNING: token counts differ (smelt {ours}, tokenizers {n}): not the same tokenisation")
PY
