#!/usr/bin/env python3
"""smelt on CUDA against PyTorch (eager and torch.compile) at issue 14's training shapes, in one
run on one GPU: builds the random-init Hugging Face folders (from bench/torch_gpu.py's model,
so both sides time the same weights), runs `smelt bench --device cuda --model DIR --format json`
and bench/torch_gpu.py at each shape, and prints one table of ratios.

    python3 bench/cuda_vs_torch.py --smelt ./smelt [--shapes 124m,large] [--out DIR]
        (shapes: medium, large, 124m, 1b, and 1b-4k / 1b-8k: the 1B shape at T 4096 / 8192,
        smelt with and without --grad-checkpoint)
        [--scalar]     # also time smelt with SMELT_CUDA_ATTN=scalar (the pre-tensor-core
                       # attention kernels): before/after in the same run
        [--profile 124m]  # also SMELT_CUDA_PROFILE=1 runs at that shape (stderr kept in --out)
        [--torch-profile 124m]  # also torch.compile's step under torch.profiler at that shape:
                       # its kernels by time a step (stderr kept in --out as torch-profile-SHAPE.txt)
        [--variants "pc1:SMELT_CUDA_ATTN_PC=1;smem:SMELT_CUDA_ATTN_DKDV=smem"]  # smelt again under
                       # these environments (rows named smelt-NAME), in the same run

Every run is its own process (GPU memory freed between them) under a time limit; a failed or
timed-out run is a row marked so, never the end of the table. JSON lines go to
OUT/cuda_vs_torch.jsonl, the table to stdout and OUT/cuda_vs_torch.md.
"""
import argparse, json, os, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH = os.path.join(HERE, "torch_gpu.py")

# name: (preset or None, dict of torch_gpu.py shape flags, vocab, B, T, which peers, iters)
SHAPES = {
    "medium": ("medium", {}, 8192, 4, 128, ("eager",), 5),
    "large": ("large", {}, 8192, 16, 1024, ("eager", "compile"), 5),
    "124m": (None, {"dim": 768, "layers": 12, "heads": 12, "kv-heads": 12, "ffn": 2048}, 32000, 16, 1024, ("eager", "compile"), 5),
    "1b": (None, {"dim": 2048, "layers": 16, "heads": 32, "kv-heads": 8, "ffn": 8192}, 32000, 8, 2048, ("compile",), 3),
    # Long context (issue 14): the 1B shape at T 4096 and 8192, the same tokens a step; smelt
    # also with --grad-checkpoint (a "smelt-ckpt" row).
    "1b-4k": (None, {"dim": 2048, "layers": 16, "heads": 32, "kv-heads": 8, "ffn": 8192}, 32000, 4, 4096, ("compile",), 3),
    "1b-8k": (None, {"dim": 2048, "layers": 16, "heads": 32, "kv-heads": 8, "ffn": 8192}, 32000, 2, 8192, ("compile",), 3),
}
CKPT = ("1b-4k", "1b-8k")


def run(cmd, env=None, timeout=300, stderr_to=None):
    t = time.time()
    e = dict(os.environ, **(env or {}))
    try:
        p = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  TIMEOUT after {timeout}s: {' '.join(cmd)}", flush=True)
        return None
    if stderr_to:
        with open(stderr_to, "w") as f:
            f.write(p.stderr)
    print(f"  {time.time() - t:6.1f}s rc {p.returncode}: {' '.join(cmd)} {' '.join(f'{k}={v}' for k, v in (env or {}).items())}", flush=True)
    if p.returncode != 0:
        print(p.stderr[-3000:], flush=True)
        return None
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(p.stdout[-2000:], p.stderr[-2000:], flush=True)
        return None


def shape_flags(flags):
    out = []
    for k, v in flags.items():
        out += [f"--{k}", str(v)]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smelt", default="./smelt")
    ap.add_argument("--shapes", default="medium,large,124m,1b")
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--models", default="/tmp/smelt-bench-models")
    ap.add_argument("--scalar", action="store_true")
    ap.add_argument("--profile", default="")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--torch-profile", default="")
    ap.add_argument("--variants", default="")
    ap.add_argument("--smelt-base", default="", help="another smelt build, timed the same way as `smelt-base` (an A/B of two builds in one call)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rows = []
    log = open(os.path.join(a.out, "cuda_vs_torch.jsonl"), "w")

    def keep(shape, impl, r):
        rows.append((shape, impl, r))
        log.write(json.dumps({"shape": shape, "impl": impl, **(r or {"failed": True})}) + "\n")
        log.flush()

    for name in a.shapes.split(","):
        preset, flags, vocab, b, t, peers, iters = SHAPES[name]
        print(f"== {name}: B {b} x T {t}", flush=True)
        common = ["--vocab-size", str(vocab), "--batch-size", str(b), "--seq-len", str(t), "--iters", str(iters)]
        if preset:
            sm_model = ["--size", preset]
            tflags = ["--size", preset]
        else:
            d = os.path.join(a.models, name)
            if not os.path.exists(os.path.join(d, "model.safetensors")):
                run([sys.executable, TORCH, *shape_flags(flags), "--vocab-size", str(vocab), "--seq-len", str(t), "--save-hf", d], timeout=300)
            sm_model = ["--model", d]
            tflags = shape_flags(flags)
        sm = [a.smelt, "bench", "--device", "cuda", *sm_model, *common, "--format", "json"]
        keep(name, "smelt", run(sm, timeout=400))
        if name in CKPT:
            keep(name, "smelt-ckpt", run(sm + ["--grad-checkpoint"], timeout=400))
        if a.scalar:
            keep(name, "smelt-scalar-attn", run(sm, env={"SMELT_CUDA_ATTN": "scalar"}, timeout=400))
        if a.smelt_base:
            keep(name, "smelt-base", run([a.smelt_base, *sm[1:]], timeout=400))
        for v in filter(None, a.variants.split(";")):
            vname, _, envs = v.partition(":")
            env = dict(e.split("=", 1) for e in envs.split(",") if e)
            keep(name, f"smelt-{vname}", run(sm, env=env, timeout=400))
        if name in a.profile.split(","):
            prof = [a.smelt, "bench", "--device", "cuda", *sm_model, *common[:-2], "--iters", "1", "--decode-tokens", "4", "--format", "json"]
            run(prof, env={"SMELT_CUDA_PROFILE": "1"}, timeout=300, stderr_to=os.path.join(a.out, f"profile-{name}.txt"))
            if a.scalar:
                run(prof, env={"SMELT_CUDA_PROFILE": "1", "SMELT_CUDA_ATTN": "scalar"}, timeout=300,
                    stderr_to=os.path.join(a.out, f"profile-{name}-scalar.txt"))
        if a.no_peers:
            continue
        tc = [sys.executable, TORCH, *tflags, *common]
        if "eager" in peers:
            keep(name, "pytorch", run(tc, timeout=400))
        if "compile" in peers:
            keep(name, "pytorch-compile", run(tc + ["--compile"], timeout=500))
        if name in a.torch_profile.split(","):
            run(tc + ["--compile", "--profile", "--iters", "2"], timeout=500,
                stderr_to=os.path.join(a.out, f"torch-profile-{name}.txt"))

    def f(x, k):
        v = (x or {}).get(k)
        return f"{v:,.0f}" if isinstance(v, (int, float)) else "–"

    lines = ["| shape | B × T | impl | forward tok/s | decode tok/s | train tok/s | peak MiB | smelt train ÷ this |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in a.shapes.split(","):
        _, _, _, b, t, _, _ = SHAPES[name]
        mine = next((r for s, i, r in rows if s == name and i == "smelt"), None)
        for s, impl, r in rows:
            if s != name:
                continue
            peak = f"{r['peak_mem_bytes'] / 2**20:,.0f}" if r else "–"
            ratio = "–"
            if r and mine and impl != "smelt":
                ratio = f"smelt {mine['train_tok_s'] / r['train_tok_s']:.2f}×"
            # A smelt row whose update was replayed from a CUDA graph (SMELT_CUDA_GRAPH_STEP=1)
            # says so, so that an A/B cannot time the plain step twice unnoticed.
            if r and r.get("train_captured"):
                impl += " (captured)"
            lines.append(f"| {name} | {b} × {t} | {impl}{'' if r else ' (failed)'} | {f(r, 'forward_tok_s')} | {f(r, 'decode_tok_s')} | {f(r, 'train_tok_s')} | {peak} | {ratio} |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(a.out, "cuda_vs_torch.md"), "w") as fh:
        fh.write(table + "\n")


if __name__ == "__main__":
    main()
