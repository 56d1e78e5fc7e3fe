#!/usr/bin/env python3
"""Kernel time by name from an ncu CSV of gpu__time_duration (nsys is not on the device machine).

    ncu --csv --metrics gpu__time_duration.sum --clock-control none --cache-control none -c 3000 \\
        ./smelt bench --device cuda --size large ... --iters 1 --no-forward --decode-tokens 0 > ncu.csv
    python3 scripts/ncu_sum.py ncu.csv [--step]

Every kernel is timed alone (serialised, caches not flushed), so the sum is kernel time without
overlap: docs/PERF.md compares it with torch.profiler's kernel table of torch.compile. --step:
only the last training step (the kernels after the next-to-last AdamW launch up to the last).
The file may be gzipped.
"""
import collections
import csv
import gzip
import sys

path = sys.argv[1]
step = "--step" in sys.argv[2:]
opener = gzip.open if path.endswith(".gz") else open
hdr, seq, unit = None, [], "?"
with opener(path, "rt", errors="replace") as f:
    for r in csv.reader(f):
        if "Kernel Name" in r and "Metric Value" in r:
            hdr = r
            continue
        if hdr is None or len(r) != len(hdr):
            continue
        d = dict(zip(hdr, r))
        if d.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = d.get("Metric Unit", "?")
        seq.append((d["Kernel Name"][:110], float(d["Metric Value"].replace(",", ""))))
if step:
    at = [i for i, (n, _) in enumerate(seq) if n.startswith("adamw")]
    if len(at) < 2:
        sys.exit("--step: fewer than two AdamW launches in the profile")
    seq = seq[at[-2] + 1 : at[-1] + 1]
tot, cnt = collections.defaultdict(float), collections.Counter()
for n, v in seq:
    tot[n] += v
    cnt[n] += 1
print(f"total {sum(tot.values()):.1f} {unit} over {len(seq)} kernels")
for n, v in sorted(tot.items(), key=lambda x: -x[1])[:45]:
    print(f"{v:12.1f} {cnt[n]:5d} {v / cnt[n]:10.1f}  {n}")
