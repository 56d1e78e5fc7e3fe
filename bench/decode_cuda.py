#!/usr/bin/env python3
"""Batch-1 decode on CUDA: smelt against llama.cpp's CUDA build (`llama-bench`, tg), on the same
GGUF files, in one run on one GPU, at issue 14's decode shapes; and the bandwidth bound.

    python3 bench/decode_cuda.py --smelt ./smelt --llama-bench DIR/llama-bench --tokenizer T.json
    (llama-bench: scripts/gpu_llama_cpp.sh build, on the GPU machine; T.json: SmolLM2's tokenizer)
        [--shapes 135m,1b] [--types bf16,q8_0,q4_k] [--tokens 128] [--out DIR]

For each shape it writes a random-init Hugging Face folder (bench/torch_gpu.py --save-hf, the
model the training benchmark times) with the given tokenizer.json (SmolLM2's: V 49152), exports
it with smelt's own `export-gguf` at each type, then times on each file:
  smelt     `smelt bench --device cuda --model F.gguf --decode-tokens N` (decode steps captured
            as one CUDA graph and replayed; the capture is inside the timed run)
  variants  the same with environment settings (--variants; default `nog:SMELT_CUDA_GRAPH=0`,
            every kernel launched from the host; e.g. `int0:SMELT_CUDA_MMVQ=0` times the
            dequantising f32 matvec instead of the integer one)
  llama.cpp `llama-bench -m F.gguf -ngl 99 -p 0 -n N -r 3` (tg N; its CUDA graphs on, default)
and prints one table with the ratios and each file's bandwidth bound (weight bytes read per token
÷ the copy bandwidth torch measures on this GPU). JSON lines go to OUT/decode_cuda.jsonl.
"""
import argparse, json, os, shutil, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH = os.path.join(HERE, "torch_gpu.py")
SHAPES = {
    # SmolLM2-135M's shape and a 1B Llama shape, both at SmolLM2's vocabulary (tied embeddings).
    "135m": {"dim": 576, "layers": 30, "heads": 9, "kv-heads": 3, "ffn": 1536},
    "1b": {"dim": 2048, "layers": 16, "heads": 32, "kv-heads": 8, "ffn": 8192},
}


def run(cmd, env=None, timeout=300):
    t = time.time()
    try:
        p = subprocess.run(cmd, env=dict(os.environ, **(env or {})), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  TIMEOUT {timeout}s: {' '.join(cmd)}", flush=True)
        return None
    print(f"  {time.time() - t:6.1f}s rc {p.returncode}: {' '.join(cmd)} {env or ''}", flush=True)
    if p.returncode != 0:
        print(p.stdout[-2000:], p.stderr[-3000:], flush=True)
        return None
    return p.stdout


def last_json(out):
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError, AttributeError):
        return None


def copy_bandwidth():
    """HBM traffic of a device-to-device copy of 2 GiB (bytes read + written per second), best of
    10: a decode step that reads each weight byte once takes file bytes ÷ this at best."""
    import torch
    x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    best = 1e9
    for _ in range(10):
        torch.cuda.synchronize()
        t = time.perf_counter()
        y.copy_(x)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * x.numel() / best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smelt", default="./smelt")
    ap.add_argument("--llama-bench", default="")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--shapes", default="135m,1b")
    ap.add_argument("--types", default="bf16,q8_0,q4_k")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--models", default="/tmp/smelt-decode-models")
    ap.add_argument("--variants", default="nog:SMELT_CUDA_GRAPH=0",
                    help="extra smelt runs, NAME:VAR=VALUE[;VAR=VALUE] comma-separated (each a column; '' for none)")
    ap.add_argument("--no-smelt", action="store_true", help="time llama.cpp only (the files made by an earlier run)")
    ap.add_argument("--smelt-base", default="", help="another smelt build, timed as the column `base` (an A/B of two builds in one call)")
    a = ap.parse_args()
    variants = [("base", {}, a.smelt_base)] if a.smelt_base else []
    for v in filter(None, a.variants.split(",")):
        name, _, env = v.partition(":")
        variants.append((name, dict(kv.split("=", 1) for kv in env.split(";") if kv), a.smelt))
    os.makedirs(a.out, exist_ok=True)
    log = open(os.path.join(a.out, "decode_cuda.jsonl"), "w")
    bw = copy_bandwidth()
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s", flush=True)
    log.write(json.dumps({"copy_bandwidth_bytes_s": bw}) + "\n")
    rows = []
    for name in a.shapes.split(","):
        d = os.path.join(a.models, name)
        if not os.path.exists(os.path.join(d, "model.safetensors")):
            flags = [x for k, v in SHAPES[name].items() for x in (f"--{k}", str(v))]
            run([sys.executable, TORCH, *flags, "--vocab-size", "49152", "--save-hf", d])
            shutil.copy(a.tokenizer, os.path.join(d, "tokenizer.json"))
        for ty in a.types.split(","):
            f = os.path.join(a.models, f"{name}-{ty}.gguf")
            if not os.path.exists(f) and run([a.smelt, "export-gguf", "--model", d, "--output", f, "--type", ty, "--pre", "smollm"]) is None:
                continue
            size = os.path.getsize(f)
            r = {"shape": name, "type": ty, "file_bytes": size, "bound_tok_s": bw / size}
            common = ["bench", "--device", "cuda", "--model", f, "--batch-size", "1", "--seq-len", "16", "--iters", "3",
                      "--decode-tokens", str(a.tokens), "--no-train", "--no-forward", "--format", "json"]
            if not a.no_smelt:
                s = last_json(run([a.smelt, *common]))
                r["smelt"] = s and s["decode_tok_s"]
                for vname, env, exe in variants:
                    s = last_json(run([exe, *common], env=env))
                    r[f"smelt_{vname}"] = s and s["decode_tok_s"]
                    # Whether the run decoded in the persistent kernel (SMELT_CUDA_PERSIST=1 asks;
                    # a step it cannot take runs the launched kernels).
                    r[f"smelt_{vname}_persistent"] = bool(s and s.get("decode_persistent"))
            if a.llama_bench:
                out = run([a.llama_bench, "-m", f, "-ngl", "99", "-p", "0", "-n", str(a.tokens), "-r", "3", "-o", "jsonl"])
                tg = [json.loads(l) for l in (out or "").splitlines() if l.startswith("{")]
                r["llama_cpp"] = tg[0]["avg_ts"] if tg else None
            rows.append(r)
            log.write(json.dumps(r) + "\n")
            log.flush()
    fmt = lambda x: "–" if x is None else f"{x:,.0f}"
    ratio = lambda x, y: "–" if not x or not y else f"{x / y:.2f}×"
    names = [n for n, _, _ in variants]
    lines = ["| shape | type | file MB | bound tok/s | smelt tok/s | " + "".join(f"{n} | " for n in names)
             + "llama.cpp tok/s | smelt ÷ llama.cpp | smelt ÷ bound |",
             "|---|---|---|---|---|" + "---|" * len(names) + "---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['type']} | {r['file_bytes'] / 1e6:.0f} | {fmt(r['bound_tok_s'])} | {fmt(r.get('smelt'))} | "
                     + "".join(f"{fmt(r.get('smelt_' + n))}{' (persistent)' if r.get('smelt_' + n + '_persistent') else ''} | "
                               for n in names)
                     + f"{fmt(r.get('llama_cpp'))} | {ratio(r.get('smelt'), r.get('llama_cpp'))} | "
                     f"{ratio(r.get('smelt'), r['bound_tok_s'])} |")
    print("\n".join(lines))
    open(os.path.join(a.out, "decode_cuda.md"), "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
