"""Byte-compares the tensors of two GGUF files: smelt's quantiser against llama.cpp's
(`llama-quantize` on the same f32 GGUF, with or without the same `--imatrix` file), per type.
Also reports tensors whose type differs or that one file lacks, and the quantize.imatrix.*
metadata of both. Exits 1 unless every tensor has the same type and the same bytes.

Run: scripts/venv.sh gguf==0.19.0 && .cache/venv/bin/python scripts/compare_quantized_with_llama_cpp.py SMELT.gguf LLAMA.gguf
"""
import sys
from collections import defaultdict
import numpy as np
import gguf

a, b = (gguf.GGUFReader(p) for p in sys.argv[1:3])
tb = {t.name: t for t in b.tensors}
stats = defaultdict(lambda: [0, 0, 0])  # same, differ, bytes differing
other_type, missing = [], [t.name for t in b.tensors if t.name not in {u.name for u in a.tensors}]
for t in a.tensors:
    u = tb.get(t.name)
    if u is None:
        missing.append(t.name)
        continue
    if u.tensor_type != t.tensor_type:
        other_type.append(f"{t.name} ({t.tensor_type.name} vs {u.tensor_type.name})")
        continue
    x, y = np.asarray(t.data).view(np.uint8).ravel(), np.asarray(u.data).view(np.uint8).ravel()
    s = stats[t.tensor_type.name]
    if x.shape == y.shape and np.array_equal(x, y):
        s[0] += 1
    else:
        s[1] += 1
        s[2] += int((x != y).sum()) if x.shape == y.shape else -1
for k, (same, diff, nb) in sorted(stats.items()):
    print(f"{k:6} tensors identical {same}, differing {diff} ({nb} bytes differ)")
if other_type:
    print(f"{len(other_type)} tensors of another type: {', '.join(other_type)}")
if missing:
    print(f"{len(missing)} tensors in one file only: {', '.join(missing)}")
for r, label in ((a, sys.argv[1]), (b, sys.argv[2])):
    meta = {k: r.fields[k].contents() for k in r.fields if k.startswith("quantize.imatrix.")}
    if meta:
        print(f"{label}: {meta}")
sys.exit(1 if other_type or missing or any(d for _, d, _ in stats.values()) else 0)
