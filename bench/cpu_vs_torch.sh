#!/usr/bin/env bash
# smelt vs PyTorch on CPU, same model and shapes, back to back in one run (alternating, best of
# ROUNDS each, since the two-core machines this runs on are often shared).
#   bench/cpu_vs_torch.sh [ROUNDS]      (needs scripts/install_torch.sh once)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
py=.cache/venv/bin/python
[ -x "$py" ] || { echo "run scripts/install_torch.sh first"; exit 1; }
cargo build --release -q -p smelt
shape=(--batch-size 4 --seq-len 128)
: > /tmp/smelt_bench.jsonl; : > /tmp/torch_bench.jsonl
for r in $(seq "$rounds"); do
  "$py" bench/torch_cpu.py --threads 2 --batch 4 --seq 128 >> /tmp/torch_bench.jsonl
  RAYON_NUM_THREADS=2 target/release/smelt bench --size small "${shape[@]}" --iters 10 --format json >> /tmp/smelt_bench.jsonl
done
python3 - "$rounds" <<'PY'
import json, sys
def objs(path):
    text, out, i, dec = open(path).read(), [], 0, json.JSONDecoder()
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        o, i = dec.raw_decode(text, i)
        out.append(o)
S, T = objs('/tmp/smelt_bench.jsonl'), objs('/tmp/torch_bench.jsonl')
print(f"small preset, batch 4 x seq 128, 2 threads, best of {sys.argv[1]} alternating rounds")
print(f"{'metric':<16}{'smelt':>12}{'pytorch':>12}{'smelt/pytorch':>15}")
for k in ["forward_tok_s", "train_tok_s", "decode_tok_s"]:
    s, t = max(x[k] for x in S), max(x[k] for x in T)
    print(f"{k:<16}{s:>12.0f}{t:>12.0f}{s/t:>15.2f}")
s, t = min(x["peak_mem_bytes"] for x in S), min(x["peak_mem_bytes"] for x in T)
print(f"{'peak_mem_MiB':<16}{s/2**20:>12.0f}{t/2**20:>12.0f}{s/t:>15.2f}")
print("load average before/after each PyTorch run:", [(x.get("loadavg_1m_before"), x.get("loadavg_1m_after")) for x in T])
PY
