#!/usr/bin/env python3
"""Kernel time by name from an ncu CSV of gpu__time_duration (nsys is not on the device machine).

    ncu --csv --metrics gpu__time_duration.sum --clock-control none --cache-control none -c 3000 \
        ./smelt bench --device cuda --size large ... > ncu.csv
    python3 scripts/ncu_sum.py ncu.csv

Every kernel is timed alone (serialised, caches not flushed), so the sum is a step's kernel time
without overlap: docs/PERF.md compares it with torch.profiler's kernel table of torch.compile.
"""
import csv, sys, collections
rows = list(csv.reader(open(sys.argv[1], errors="replace")))
hdr = None; tot = collections.defaultdict(float); cnt = collections.Counter(); unit = "?"
for r in rows:
    if "Kernel Name" in r and "Metric Value" in r: hdr = r; continue
    if hdr is None or len(r) != len(hdr): continue
    d = dict(zip(hdr, r))
    if d.get("Metric Name") != "gpu__time_duration.sum": continue
    unit = d.get("Metric Unit"); v = float(d["Metric Value"].replace(",", ""))
    n = d["Kernel Name"][:110]; tot[n] += v; cnt[n] += 1
s = sum(tot.values()); print(f"total {s:.1f} {unit} over {sum(cnt.values())} kernels")
for n, v in sorted(tot.items(), key=lambda x: -x[1])[:45]: print(f"{v:12.1f} {cnt[n]:5d}  {n}")
