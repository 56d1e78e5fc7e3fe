#!/usr/bin/env python3
"""Serving benchmark: `smelt serve` against llama.cpp's `llama-server`, same GGUF, same machine,
vLLM's metrics (benchmarks/benchmark_serving.py):

- TTFT: time from sending a request to its first streamed token;
- TPOT: (latency - TTFT) / (output tokens - 1), per request;
- ITL: the gaps between consecutive streamed chunks;
- output tok/s: all output tokens / wall time of the level.

At each concurrency level C, C clients each send requests back to back (streamed
/v1/completions, greedy, a fixed max_tokens) until the level's requests are done. Standard
library only (no client library between the socket and the clock). A program, not a test:

    bench/serve_bench.py --model .cache/inputs/smollm2/DL/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --smelt target/release/smelt --llama-server .cache/llama.cpp-peer/build/bin/llama-server

On the GPU machine (`--device cuda`: smelt serves with `--device cuda`, llama-server offloads
every layer with `-ngl 99`), on random-init models of SmolLM2-135M's and a 1B Llama shape made
as bench/decode_cuda.py makes them (bench/torch_gpu.py --save-hf, then smelt's export-gguf):

    bench/serve_bench.py --device cuda --smelt ./smelt --llama-server /tmp/llama-cuda/.../llama-server \
        --random 135m,1b --type bf16 --tokenizer smollm2-tokenizer.json --json $OUT/serve_cuda.json

Prints a table per server and model and, with --json FILE, writes every figure.
"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time

PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a hash table works, step by step.",
    "What are the main causes of the French Revolution?",
    "List some tips for writing clean and readable code.",
    "Describe the water cycle to a ten-year-old.",
    "Why is the sky blue? Give a physical explanation.",
    "Summarise the plot of a detective novel you invent.",
    "How do vaccines train the immune system?",
]


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, proc, what, timeout=600):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} was not ready after {timeout} s")


# --ignore-eos: every request asks for `ignore_eos` (both servers take it), so every answer is
# max_tokens long whatever the model says, as vLLM's benchmark does for its random prompts.
IGNORE_EOS = False


def one_request(port, model, prompt, max_tokens):
    """Streams one completion; returns (ttft, latency, chunk times, output tokens)."""
    req = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if IGNORE_EOS:
        req["ignore_eos"] = True
    body = json.dumps(req)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
    times, chunks, usage = [], 0, None
    for raw in r:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        v = json.loads(data)
        if v.get("usage"):
            usage = v["usage"]
        for ch in v.get("choices") or []:
            if ch.get("text"):
                times.append(time.perf_counter())
                chunks += 1
    end = time.perf_counter()
    c.close()
    out = usage["completion_tokens"] if usage else chunks
    ttft = (times[0] if times else end) - t0
    return ttft, end - t0, times, out


def run_level(port, model, clients, requests, max_tokens):
    results, lock = [], threading.Lock()
    todo = list(range(requests))

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            res = one_request(port, model, PROMPTS[i % len(PROMPTS)], max_tokens)
            with lock:
                results.append(res)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = [r[0] for r in results]
    tpot = [(r[1] - r[0]) / (r[3] - 1) for r in results if r[3] > 1]
    itl = [b - a for r in results for a, b in zip(r[2], r[2][1:])]
    out = sum(r[3] for r in results)

    def stats(xs):
        if not xs:
            return {"mean": None, "median": None, "p99": None}
        xs = sorted(xs)
        return {
            "mean": statistics.fmean(xs) * 1000,
            "median": statistics.median(xs) * 1000,
            "p99": xs[min(len(xs) - 1, int(0.99 * len(xs)))] * 1000,
        }

    return {
        "clients": clients,
        "requests": len(results),
        "wall_s": wall,
        "output_tokens": out,
        "output_tok_s": out / wall,
        "ttft_ms": stats(ttft),
        "tpot_ms": stats(tpot),
        "itl_ms": stats(itl),
    }


def bench_server(name, cmd, port, model, levels, per_client, min_requests, max_tokens):
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    log = open(f"/tmp/serve_bench_{name}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(port, proc, name)
        one_request(port, model, "warm up", 4)
        rows = []
        for c in levels:
            before = engine_counters(port)
            row = run_level(port, model, c, max(min_requests, per_client * c), max_tokens)
            after = engine_counters(port)
            if before and after and after[0] > before[0]:
                # smelt's own forward time per decode-only step in this level (/metrics): TPOT
                # against it is what serving adds per token, measured in the same minutes.
                row["engine_steps"] = after[0] - before[0]
                row["engine_forward_ms"] = (after[1] - before[1]) / 1e3 / (after[0] - before[0])
            rows.append(row)
            f = lambda d: "-" if d is None else f"{d:8.1f}"
            print(
                f"{name:>12} C={c:<3} req={row['requests']:<4} out tok/s={row['output_tok_s']:8.1f}  "
                f"TTFT ms mean/med/p99={f(row['ttft_ms']['mean'])}/{f(row['ttft_ms']['median'])}/{f(row['ttft_ms']['p99'])}  "
                f"TPOT ms mean/med={f(row['tpot_ms']['mean'])}/{f(row['tpot_ms']['median'])}  "
                f"ITL ms mean/med/p99={f(row['itl_ms']['mean'])}/{f(row['itl_ms']['median'])}/{f(row['itl_ms']['p99'])}",
                flush=True,
            )
            if "engine_forward_ms" in row:
                print(
                    f"{'':>12} C={c:<3} engine: {row['engine_steps']} decode steps, forward {row['engine_forward_ms']:.3f} ms a step"
                    + (f"; TPOT / forward {row['tpot_ms']['mean'] / row['engine_forward_ms']:.2f}x" if c == 1 and row["tpot_ms"]["mean"] else ""),
                    flush=True,
                )
        return rows
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="the GGUF both servers load (or --random)")
    ap.add_argument("--random", help="instead of --model: random-init models of these shapes (decode_cuda.py's: 135m, 1b)")
    ap.add_argument("--type", default="bf16", help="with --random: the GGUF type smelt exports them as")
    ap.add_argument("--tokenizer", help="with --random: the tokenizer.json the models get (SmolLM2's)")
    ap.add_argument("--models", default="/tmp/smelt-decode-models", help="with --random: where the models go")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both servers run")
    ap.add_argument("--smelt", help="the smelt binary (skip smelt if absent)")
    ap.add_argument("--llama-server", help="llama.cpp's llama-server binary (skip it if absent)")
    ap.add_argument("--levels", default="1,8,32,64", help="concurrent clients per level")
    ap.add_argument("--per-client", type=int, default=2, help="requests per client at each level")
    ap.add_argument("--min-requests", type=int, default=8, help="requests at least per level")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument(
        "--ignore-eos",
        action="store_true",
        help="every answer max_tokens long (`ignore_eos`): the same work on both servers whatever "
        "they generate (by default answers end at the model's end-of-sequence token)",
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--ctx", type=int, default=16384, help="KV positions for all slots together")
    ap.add_argument(
        "--kv-type",
        choices=["f32", "f16", "bf16", "q8_0"],
        help="the KV cache type of both servers (smelt --kv-cache-type, llama-server -ctk/-ctv); by "
        "default each keeps its own (smelt: the activation dtype, f32 on the CPU; llama-server: f16)",
    )
    ap.add_argument(
        "--llama-kv",
        choices=["unified", "per-slot"],
        default="unified",
        help="llama-server's KV layout: one buffer all slots share (--kv-unified, so a slot may use more "
        "than ctx/np positions, as smelt's paged pool allows) or ctx/np positions a slot (-no-kvu)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the pair (smelt, then llama-server) this many times in turn and print each round's "
        "ratio and the median per level (a shared machine's speed moves between minutes)",
    )
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument(
        "--raw-step",
        action="store_true",
        help="also time smelt's raw one-sequence paged decode step (`smelt bench --paged-batch 1`, "
        "on a GPU the replayed graph) and print the 1-client TPOT against it (issue 15: <= 1.1x)",
    )
    a = ap.parse_args()
    global IGNORE_EOS
    IGNORE_EOS = a.ignore_eos
    if bool(a.model) == bool(a.random):
        ap.error("give --model or --random")
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    models = [a.model] if a.model else random_models(a)
    levels = [int(x) for x in a.levels.split(",")]
    par = max(levels)
    # models[name]: one {server: figures} per round; ratios[name][clients]: each round's smelt / llama-server.
    out = {"device": a.device, "threads": a.threads, "max_tokens": a.max_tokens, "ignore_eos": a.ignore_eos,
           "rounds": a.rounds, "llama_kv": a.llama_kv, "models": {}, "ratios": {}}
    for model in models:
        name = os.path.basename(model)
        ratios = {}
        out["ratios"][name] = ratios
        for rnd in range(a.rounds):
            # Every other round llama-server goes first, so a machine that drifts over the
            # minutes favours neither side.
            servers = run_pair(a, model, name, levels, par, llama_first=rnd % 2 == 1)
            out["models"].setdefault(name, []).append(servers)
            if "smelt" in servers and "llama-server" in servers:
                for s, l in zip(servers["smelt"], servers["llama-server"]):
                    r = s["output_tok_s"] / l["output_tok_s"]
                    ratios.setdefault(s["clients"], []).append(r)
                    at = f" (round {rnd + 1} of {a.rounds})" if a.rounds > 1 else ""
                    print(f"{name} C={s['clients']:<3} smelt / llama-server output tok/s: {r:.2f}x{at}")
        for c, rs in ratios.items():
            if len(rs) > 1:
                print(
                    f"{name} C={c:<3} smelt / llama-server over {len(rs)} rounds: median {statistics.median(rs):.2f}x, "
                    f"range {min(rs):.2f}-{max(rs):.2f}x ({', '.join(f'{r:.2f}' for r in rs)})"
                )
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=1)
    return 0


def run_pair(a, model, name, levels, par, llama_first=False):
    """smelt's and llama-server's figures on `model` (each that is given), one after the other."""
    servers = {}
    if llama_first:
        run_llama_server(a, model, name, levels, par, servers)
    if a.smelt:
        port = free_port()
        cmd = [a.smelt, "-t", str(a.threads), "serve", "--model", model, "--port", str(port), "--device", a.device]
        cmd += ["--parallel", str(par), "--ctx-size", str(a.ctx), "--queue-size", str(4 * par)]
        if a.kv_type:
            cmd += ["--kv-cache-type", a.kv_type]
        servers["smelt"] = bench_server("smelt", cmd, port, name, levels, a.per_client, a.min_requests, a.max_tokens)
        if a.raw_step:
            raw = raw_step_ms(a, model)
            servers["smelt_raw_step_ms"] = raw
            one = [r for r in servers["smelt"] if r["clients"] == 1]
            if raw and one:
                tpot = one[0]["tpot_ms"]["mean"]
                print(f"{name}: raw paged decode step {raw:.3f} ms; 1-client TPOT {tpot:.3f} ms = {tpot / raw:.2f}x (target <= 1.1x)")
    if not llama_first:
        run_llama_server(a, model, name, levels, par, servers)
    return servers


def run_llama_server(a, model, name, levels, par, servers):
    """llama-server's figures on `model` into servers["llama-server"] (when --llama-server is given)."""
    if a.llama_server:
        if a.llama_kv == "per-slot" and a.ctx // par < a.max_tokens + 128:
            sys.exit(f"--llama-kv per-slot: {a.ctx} // {par} = {a.ctx // par} positions a slot cannot hold a prompt and "
                     f"{a.max_tokens} tokens; raise --ctx")
        port = free_port()
        # -np slots share -c positions (a unified KV cache so one slot may use more than c/np).
        cmd = [a.llama_server, "-m", model, "--port", str(port), "-t", str(a.threads), "-np", str(par)]
        cmd += ["-c", str(a.ctx), "--kv-unified" if a.llama_kv == "unified" else "-no-kvu", "--no-webui"]
        if a.kv_type:
            cmd += ["-ctk", a.kv_type, "-ctv", a.kv_type]
        if a.device == "cuda":
            cmd += ["-ngl", "99"]
        servers["llama-server"] = bench_server(
            "llama-server", cmd, port, name, levels, a.per_client, a.min_requests, a.max_tokens
        )


def engine_counters(port):
    """smelt's decode-only (engine steps, forward microseconds) from /metrics, or None
    (llama-server). On a GPU the forward's time is its launch (the sampling waits for it)."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/metrics")
        r = c.getresponse()
        text = r.read().decode("utf-8", "replace")
    except OSError:
        return None
    vals = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("smelt_engine_decode_steps_total", "smelt_engine_decode_forward_microseconds_total"):
            vals[parts[0]] = float(parts[1])
    if len(vals) < 2:
        return None
    return vals["smelt_engine_decode_steps_total"], vals["smelt_engine_decode_forward_microseconds_total"]


def raw_step_ms(a, model):
    """smelt's one-sequence paged decode step in ms (`smelt bench --paged-batch 1`: the step
    `smelt serve` runs at one client, replayed from a CUDA graph on a GPU), or None."""
    cmd = [a.smelt, "-t", str(a.threads), "bench", "--model", model, "--device", a.device, "--paged-batch", "1"]
    cmd += ["--decode-tokens", "64", "--iters", "1", "--no-forward", "--format", "json"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        return json.loads(r.stdout)["paged_decode"][0]["step_ms"]
    except Exception as e:  # a figure missing is reported, not fatal
        print(f"raw step: {' '.join(cmd)} failed: {e}", file=sys.stderr)
        return None


def random_models(a):
    """decode_cuda.py's random-init folders (bench/torch_gpu.py --save-hf, SmolLM2's vocabulary),
    exported by smelt as --type: the GGUF paths."""
    import shutil

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import decode_cuda

    if not a.smelt or not a.tokenizer:
        sys.exit("--random needs --smelt (to export) and --tokenizer")
    out = []
    for shape in a.random.split(","):
        d = os.path.join(a.models, shape)
        if not os.path.exists(os.path.join(d, "model.safetensors")):
            flags = [x for k, v in decode_cuda.SHAPES[shape].items() for x in (f"--{k}", str(v))]
            if decode_cuda.run([sys.executable, decode_cuda.TORCH, *flags, "--vocab-size", "49152", "--save-hf", d]) is None:
                sys.exit(f"could not make the {shape} model")
            shutil.copy(a.tokenizer, os.path.join(d, "tokenizer.json"))
        f = os.path.join(a.models, f"{shape}-{a.type}.gguf")
        if not os.path.exists(f):
            cmd = [a.smelt, "export-gguf", "--model", d, "--output", f, "--type", a.type, "--pre", "smollm"]
            if decode_cuda.run(cmd) is None:
                sys.exit(f"could not export {f}")
        out.append(f)
    return out


if __name__ == "__main__":
    sys.exit(main())
