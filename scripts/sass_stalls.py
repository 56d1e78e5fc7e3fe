#!/usr/bin/env python3
"""Where a kernel's warps wait, instruction by instruction, from `ncu --csv --page source
--print-source sass --section SourceCounters --section WarpStateStats` output (scripts/ds_check.sh's
ncubwd part): the stall samples summed by opcode with their main reasons, the instructions
executed by opcode, shared-memory wavefronts beyond the ideal (bank conflicts) by instruction, and
the hottest instructions with their reasons.

Usage: scripts/sass_stalls.py FILE.csv [--top 20]
"""
import argparse, collections, csv


def num(x):
    try:
        return int(str(x).replace(",", ""))
    except ValueError:
        return 0


def opcode(src):
    t = src.strip().split()
    if not t:
        return "?"
    op = t[1] if t[0].startswith("@") and len(t) > 1 else t[0]
    return op.split(".")[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=20)
    a = ap.parse_args()
    with open(a.csv) as f:
        rows = list(csv.reader(f))
    hi = next((i for i, r in enumerate(rows) if r[:1] == ["Address"]), None)
    if hi is None:
        print(f"{a.csv}: no source table (did ncu run? see its .err file)")
        return
    h = rows[hi]
    data = [r for r in rows[hi + 1:] if len(r) > 5 and r[0].startswith("0x")]
    col = {n: i for i, n in enumerate(h)}
    samp, execd = col["Warp Stall Sampling (All Samples)"], col["Instructions Executed"]
    stalls = [i for i, n in enumerate(h) if n.startswith("stall_") and "Not Issued" not in n]
    by, cnt = collections.defaultdict(collections.Counter), collections.Counter()
    for r in data:
        op = opcode(r[col["Source"]])
        cnt[op] += num(r[execd])
        for i in stalls:
            by[op][h[i][6:]] += num(r[i])
    total = sum(num(r[samp]) for r in data)
    print(f"{len(data)} SASS instructions, {total} stall samples, {sum(cnt.values())} warp instructions executed")
    print("by opcode (samples; executed; main reasons):")
    for op, c in sorted(by.items(), key=lambda x: -sum(x[1].values()))[:16]:
        reasons = " ".join(f"{k}:{v}" for k, v in c.most_common(3))
        print(f"  {op:10s} {sum(c.values()):7d} {cnt[op]:11d}  {reasons}")
    ex = col.get("L1 Wavefronts Shared Excessive")
    if ex is not None:
        waste = sorted(((num(r[ex]), r[col["Source"]].strip()) for r in data), reverse=True)
        print(f"shared-memory wavefronts beyond the ideal: {sum(w for w, _ in waste)}; the largest:")
        for w, src in waste[:6]:
            if w:
                print(f"  {w:9d}  {src[:80]}")
    print(f"the {a.top} instructions with the most samples:")
    for i, r in sorted(enumerate(data), key=lambda x: -num(x[1][samp]))[: a.top]:
        reasons = sorted(((num(r[j]), h[j][6:]) for j in stalls), reverse=True)[:3]
        why = " ".join(f"{n}:{c}" for c, n in reasons if c)
        print(f"  #{i:5d} {num(r[samp]):6d} exec {num(r[execd]):9d}  {r[col['Source']].strip()[:60]:60s} {why}")


if __name__ == "__main__":
    main()
