"""Bitwise comparison of llama.cpp's intermediates (scripts/llama_dump.py) with smelt's
(`smelt trace MODEL PROMPT --decode N --dump DIR`), step by step, in graph order.

For each tensor both sides name: elements that differ, max ulp distance, max |Δ|. smelt's
names follow llama.cpp's; the shapes are flattened (llama.cpp's Qcur after RoPE, etc.).
Where llama.cpp keeps all prompt rows and smelt only the last (result_norm/result_output
with only the last logits), the last row is compared.

Run: python3 scripts/compare_dumps.py LLAMA_DIR SMELT_DIR [STEPS] [--all]
"""
import os, sys
import numpy as np

# llama.cpp name (first occurrence, or '#k') -> smelt name
ALIASES = {
    "embd": "inp_embd",
    "Qcur-{l}#2": "Qcur_rope-{l}",
    "Kcur-{l}#2": "Kcur_rope-{l}",
    "kqv_out-{l}": "kqv_out-{l}",
}

def ulp(a, b):
    ia = a.view(np.int32).astype(np.int64)
    ib = b.view(np.int32).astype(np.int64)
    ia = np.where(ia < 0, np.int64(-2**31) - ia, ia)
    ib = np.where(ib < 0, np.int64(-2**31) - ib, ib)
    return np.abs(ia - ib)

def main():
    ld, sd = sys.argv[1], sys.argv[2]
    steps = int(sys.argv[3]) if len(sys.argv) > 3 and not sys.argv[3].startswith("-") else 1
    show_all = "--all" in sys.argv
    for st in range(steps):
        L, S = os.path.join(ld, f"step{st}"), os.path.join(sd, f"step{st}")
        order = [l.split(" op=")[0] for l in open(os.path.join(L, "order.txt")).read().splitlines()]
        first = None
        print(f"== step {st}")
        for name in order:
            sname = name
            for k, v in ALIASES.items():
                for l in range(64):
                    if name == k.format(l=l):
                        sname = v.format(l=l)
            if "#" in sname or "(" in sname:
                continue
            sp = os.path.join(S, sname + ".npy")
            if not os.path.exists(sp):
                continue
            a = np.load(os.path.join(L, name.replace("/", "_") + ".npy")).reshape(-1)
            b = np.load(sp).reshape(-1)
            if a.size != b.size:
                if a.size > b.size and a.size % b.size == 0:
                    a = a[-b.size:]
                else:
                    print(f"  {name:<22} size {a.size} vs {b.size}")
                    continue
            a = a.astype(np.float32); b = b.astype(np.float32)
            fin = np.isfinite(a) & np.isfinite(b)
            nd = int(np.sum(a.view(np.int32) != b.view(np.int32)))
            mu = int(ulp(a[fin], b[fin]).max()) if fin.any() else 0
            md = float(np.abs(a[fin] - b[fin]).max()) if fin.any() else 0.0
            if nd and first is None:
                first = name
            if show_all or nd or name.endswith("-0") or name.startswith("result"):
                print(f"  {name:<22} n={a.size:<7} differ={nd:<7} max_ulp={mu:<10} max|d|={md:.3e}")
        print(f"  first differing: {first}")

main()
