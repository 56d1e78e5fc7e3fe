"""Compares two imatrix files (llama.cpp's GGUF format): the same entries, token counts, and
the per-column Σx² within a relative tolerance (float sums of activations from two engines
cannot be bit-identical). Prints the worst relative difference per tensor kind.

Run: scripts/venv.sh gguf==0.19.0 && .cache/venv/bin/python scripts/compare_imatrix.py A.gguf B.gguf
"""
import sys
from collections import defaultdict
import numpy as np
import gguf


def load(p):
    r = gguf.GGUFReader(p)
    kv = {f.name: f for f in r.fields.values()}
    meta = {k: r.fields[k].contents() for k in ("imatrix.chunk_count", "imatrix.chunk_size", "imatrix.datasets") if k in r.fields}
    t = {x.name: np.asarray(x.data, dtype=np.float64).ravel() for x in r.tensors}
    return meta, t


(ma, a), (mb, b) = load(sys.argv[1]), load(sys.argv[2])
print("metadata:", ma, "|", mb)
names = sorted(n[: -len(".in_sum2")] for n in a if n.endswith(".in_sum2"))
other = sorted(n[: -len(".in_sum2")] for n in b if n.endswith(".in_sum2"))
assert names == other, (set(names) ^ set(other))
worst = defaultdict(lambda: (0.0, ""))
worst_l2 = defaultdict(float)
for n in names:
    ca, cb = a[n + ".counts"], b[n + ".counts"]
    assert np.array_equal(ca, cb), (n, ca, cb)
    sa, sb = a[n + ".in_sum2"], b[n + ".in_sum2"]
    rel = float(np.max(np.abs(sa - sb) / np.maximum(np.abs(sb), 1e-30)))
    kind = n.split(".")[-2]
    worst_l2[kind] = max(worst_l2[kind], float(np.linalg.norm(sa - sb) / np.linalg.norm(sb)))
    if rel > worst[kind][0]:
        worst[kind] = (rel, n)
for k, (rel, n) in sorted(worst.items()):
    print(f"{k:12} max relative difference of Σx² per column {rel:.2e} ({n}); per tensor (L2) {worst_l2[k]:.2e}")
print(f"{len(names)} entries, counts identical")
