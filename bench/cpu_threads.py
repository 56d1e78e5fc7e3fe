#!/usr/bin/env python3
"""Where CPU prefill and decode stop scaling with threads (issue 18): `smelt bench` on one GGUF at
each thread count, with SMELT_PROFILE=1, and a table per phase of each op's wall time per
iteration and its speed-up over the first thread count. An op whose time does not fall with the
threads is a serial part (or a fork/join that costs more than its work); the "rest" row is the
prefill's wall time that no op accounts for (the graph, allocation, the head). Decode's op times
include each iteration's 16-token prompt, its wall time does not. A program, not a test:

    bench/cpu_threads.py --smelt target/release/smelt --threads 1,2 M.gguf
    bench/cpu_threads.py --smelt ./smelt --threads 1,2,4,8,16 --json out.json M.gguf   # GPU host

Standard library only; each thread count runs `--repeats` times and keeps its fastest run.
"""
import argparse
import json
import os
import re
import subprocess
import sys

PROFILE = re.compile(r"^\s+(\S+)\s+([0-9.]+) ms\s+[0-9.]+%\s+(\d+) calls")


def run(a, model, threads):
    """(bench json, {phase: {op: ms per iteration}}) of one `smelt bench` run."""
    cmd = [a.smelt, "-t", str(threads), "bench", "--model", model, "--device", "cpu", "--batch-size", "1"]
    cmd += ["--seq-len", str(a.seq_len), "--decode-tokens", str(a.decode_tokens), "--iters", str(a.iters)]
    cmd += ["--no-train", "--no-forward", "--format", "json"]
    env = dict(os.environ, SMELT_PROFILE="1", RAYON_NUM_THREADS=str(threads))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr[-2000:]}")
    phases, phase = {}, None
    for line in r.stderr.splitlines():
        m = re.match(r"SMELT_PROFILE (\w+)", line)
        if m:
            phase = phases.setdefault(m.group(1), {})
            continue
        m = PROFILE.match(line)
        if m and phase is not None:
            # Totals are over the timed iterations (and, for decode, over its tokens).
            phase[m.group(1)] = float(m.group(2)) / a.iters
    return json.loads(r.stdout), phases


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a GGUF (or a Hugging Face folder)")
    ap.add_argument("--smelt", default="target/release/smelt")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts, the first the baseline")
    ap.add_argument("--seq-len", type=int, default=512, help="prompt tokens")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="runs per thread count (the fastest prefill kept)")
    ap.add_argument("--json", help="write every figure here")
    a = ap.parse_args()
    counts = [int(t) for t in a.threads.split(",")]
    print(f"load average before: {os.getloadavg()}; {os.cpu_count()} CPUs; {a.model}")
    results = {}
    for rep in range(a.repeats):
        for t in counts:
            bench, phases = run(a, a.model, t)
            best = results.get(t)
            if best is None or bench["prefill_tok_s"] > best[0]["prefill_tok_s"]:
                results[t] = (bench, phases)
    base = counts[0]
    for phase, rate in (("prefill", "prefill_tok_s"), ("decode", "decode_tok_s")):
        # Wall ms per iteration: a prefill of seq_len tokens, or the decode of decode_tokens.
        tokens = a.seq_len if phase == "prefill" else a.decode_tokens
        wall = {t: tokens / results[t][0][rate] * 1e3 for t in counts}
        ops = sorted({op for t in counts for op in results[t][1].get(phase, {})}, key=lambda op: -results[base][1].get(phase, {}).get(op, 0))
        print(f"\n{phase}: ms per iteration ({tokens} tokens), speed-up over {base} thread(s) in brackets")
        print(f"| op | " + " | ".join(f"{t} threads" for t in counts) + " |")
        print("|---|" + "---:|" * len(counts))
        rows = [(op, {t: results[t][1].get(phase, {}).get(op, 0.0) for t in counts}) for op in ops]
        if phase == "prefill":
            # (decode's op times also hold each iteration's 16-token prompt, which its wall
            # time does not: no "rest" there)
            rows.append(("rest", {t: wall[t] - sum(results[t][1].get(phase, {}).values()) for t in counts}))
        rows.append(("**wall**", wall))
        for op, v in rows:
            cells = [f"{v[t]:.1f} ({v[base] / v[t]:.2f}×)" if v[t] > 0 else f"{v[t]:.1f}" for t in counts]
            print(f"| {op} | " + " | ".join(cells) + " |")
        print(f"{phase} tok/s: " + ", ".join(f"{t} threads {results[t][0][rate]:.1f}" for t in counts))
    print(f"\nload average after: {os.getloadavg()}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({str(t): {"bench": results[t][0], "profile": results[t][1]} for t in counts}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
