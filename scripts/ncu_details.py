#!/usr/bin/env python3
"""The few figures that say why a compute kernel is slow, from `ncu --csv --page details` output
(sections SpeedOfLight, Occupancy, WarpStateStats, ComputeWorkloadAnalysis,
MemoryWorkloadAnalysis, SchedulerStats, and the stall-reason, tensor-pipe and bank-conflict
metrics scripts/ds_check.sh asks for): one block per kernel launch longer than --min-us, the
first --per-name launches of each kernel name.

Usage: scripts/ncu_details.py FILE.csv [--min-us 200] [--per-name 1]
"""
import argparse, collections, csv

# Metric names as ncu's details page prints them: the lines worth reading.
WANT = [
    "Duration", "Compute (SM) Throughput", "Memory Throughput", "DRAM Throughput",
    "Registers Per Thread", "Dynamic Shared Memory Per Block", "Theoretical Occupancy", "Achieved Occupancy",
    "Block Limit Registers", "Block Limit Shared Mem",
    "Executed Ipc Active", "Issue Slots Busy", "SM Busy",
    "No Eligible", "Active Warps Per Scheduler", "Eligible Warps Per Scheduler",
    "Warp Cycles Per Issued Instruction", "Avg. Active Threads Per Warp",
    "Shared Memory Bank Conflicts", "L1/TEX Hit Rate", "L2 Hit Rate", "Mem Busy", "Max Bandwidth",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--min-us", type=float, default=200.0)
    ap.add_argument("--per-name", type=int, default=1)
    a = ap.parse_args()
    with open(a.csv) as f:
        rows = list(csv.reader(f))
    i0 = next((i for i, r in enumerate(rows) if r[:1] == ["ID"]), None)
    if i0 is None:
        print(f"{a.csv}: no ncu details table (did ncu run? see its .err file)")
        return
    h = rows[i0]
    col = {n: h.index(n) for n in ("ID", "Kernel Name", "Metric Name", "Metric Unit", "Metric Value")}
    per = collections.OrderedDict()
    for r in rows[i0 + 1:]:
        # Rows without the rule columns are shorter than the header (newer ncu): keep any that
        # reach the value.
        if len(r) <= col["Metric Value"]:
            continue
        k = (r[col["ID"]], r[col["Kernel Name"]].split("(")[0])
        per.setdefault(k, {})[r[col["Metric Name"]]] = (r[col["Metric Value"]], r[col["Metric Unit"]])
    seen = collections.Counter()
    for (kid, name), m in per.items():
        dur, unit = m.get("Duration", ("0", "us"))
        us = float(dur.replace(",", "")) * {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}.get(unit, 1.0)
        if us < a.min_us or seen[name] >= a.per_name:
            continue
        seen[name] += 1
        print(f"== {name} (launch {kid}): {us:.1f} us")
        for w in WANT:
            if w in m:
                v, u = m[w]
                print(f"   {w:40s} {v} {u}")
        for metric, (v, u) in m.items():
            if metric.startswith("sm__pipe_tensor") or metric.startswith("l1tex__data_bank_conflicts"):
                print(f"   {metric:40s} {v} {u}")
        # Stall reasons (--metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active):
        # cycles a warp spends in each state per issued instruction, largest first.
        stalls = []
        for metric, (v, u) in m.items():
            if "issue_stalled" in metric:
                try:
                    stalls.append((float(v.replace(",", "")), metric.split("issue_stalled_")[1].split("_per_")[0]))
                except (ValueError, IndexError):
                    pass
        if stalls:
            print("   stalls per issued instruction: " + ", ".join(f"{n} {v:.2f}" for v, n in sorted(stalls, reverse=True)[:8]))


if __name__ == "__main__":
    main()
