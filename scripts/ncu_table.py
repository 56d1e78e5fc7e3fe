#!/usr/bin/env python3
"""One line per kernel from an `ncu --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__grid_size,launch__block_size` file: time, DRAM bytes read, achieved read rate, launch shape; then the total. Usage: scripts/ncu_table.py FILE.csv"""
import csv, sys, collections
rows = list(csv.reader(open(sys.argv[1])))
i0 = next(i for i, r in enumerate(rows) if r[:1] == ["ID"])
h = rows[i0]; k = h.index("Kernel Name"); mn = h.index("Metric Name"); mv = h.index("Metric Value"); idc = h.index("ID")
per = collections.OrderedDict()
for r in rows[i0 + 1:]:
    if len(r) == len(h):
        per.setdefault((r[idc], r[k][:44]), {})[r[mn]] = r[mv].replace(",", "")
tot = 0
for (i, name), m in per.items():
    t = float(m.get('gpu__time_duration.sum', 0)); tot += t
    b = float(m.get('dram__bytes_read.sum', 0))
    print(f"{i:>4} {name:44s} {t/1000:7.2f} us {b/1e3:9.1f} KB {b/t if t else 0:7.1f} GB/s grid {m.get('launch__grid_size','?')} x {m.get('launch__block_size','?')}")
print(f"total {tot/1000:.1f} us over {len(per)} kernels")
