"""Byte-compares the tensors of two GGUF files where both hold the same type: smelt's quantiser
against llama.cpp's (`llama_model_quantize` on the same f32 GGUF), per type.

Run: PYTHONPATH=.cache/pydeps python3 scripts/compare_quantized_with_llama_cpp.py SMELT.gguf LLAMA.gguf
"""
import sys
from collections import defaultdict
import numpy as np
import gguf

a, b = (gguf.GGUFReader(p) for p in sys.argv[1:3])
tb = {t.name: t for t in b.tensors}
stats = defaultdict(lambda: [0, 0, 0])  # same, differ, bytes differing
for t in a.tensors:
    u = tb.get(t.name)
    if u is None or u.tensor_type != t.tensor_type:
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
