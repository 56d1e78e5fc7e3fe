#!/usr/bin/env python3
"""The training attention alone, smelt beside PyTorch's SDPA at the same shapes in one call.

smelt: `attn_bench` (crates/core/examples/attn_bench.rs; the forms the environment picks, as in
training). PyTorch: `F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=...)` on
bf16 tensors laid out as the model lays them out ((B, T, H, D) viewed as (B, H, T, D)), the call
bench/torch_gpu.py's model makes, so the backend torch.compile's training step used (cuDNN's
Hopper kernels with PyTorch 2.11 on the H200). Backward is timed as (forward + backward) −
forward. TFLOP/s in FlashAttention's accounting (causal forward 2·B·H·T²·D, backward 2.5×).

    python3 bench/attn_vs_torch.py --attn-bench ./attn_bench [--shapes 124m,large,1b,lora] \\
        [--variants "wgp:SMELT_CUDA_ATTN_FWD=attn_wgp_fwd_d64"] [--out DIR]
"""
import argparse, json, os, subprocess, sys

SHAPES = {"124m": (16, 1024, 12, 12), "large": (16, 1024, 16, 16), "1b": (8, 2048, 32, 8), "lora": (8, 2048, 14, 2)}
D = 64


def torch_times(b, t, h, kvh, iters):
    import torch
    import torch.nn.functional as F
    dev = "cuda"
    q = torch.randn(b, t, h, D, device=dev, dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
    k = torch.randn(b, t, kvh, D, device=dev, dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
    v = torch.randn(b, t, kvh, D, device=dev, dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
    dout = torch.randn(b, h, t, D, device=dev, dtype=torch.bfloat16)
    gqa = kvh != h

    def fwd():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

    def both():
        # The gradients returned, not accumulated into .grad (no extra add per iteration).
        torch.autograd.grad(fwd(), (q, k, v), dout)

    def timed(f):
        f()
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(iters):
            f()
        e1.record()
        torch.cuda.synchronize()
        return e0.elapsed_time(e1) / iters

    f_ms = timed(fwd)  # with autograd on, as the training forward runs (it keeps what backward needs)
    fb_ms = timed(both)
    return f_ms, fb_ms - f_ms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--attn-bench", default="./attn_bench")
    ap.add_argument("--shapes", default="124m,large,1b,lora")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--variants", default="", help="NAME:VAR=VAL,VAR=VAL;… smelt runs again under each")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rows = []
    runs = [("smelt", {})]
    for v in filter(None, a.variants.split(";")):
        name, _, env = v.partition(":")
        runs.append((f"smelt-{name}", dict(kv.split("=", 1) for kv in env.split(",") if kv)))
    for label, env in runs:
        p = subprocess.run([a.attn_bench, "--shapes", a.shapes, "--iters", str(a.iters)], capture_output=True, text=True,
                           env={**os.environ, **env}, timeout=600)
        if p.returncode != 0:
            print(f"{label}: attn_bench failed ({p.returncode}): {p.stderr[-2000:]}", file=sys.stderr)
            continue
        for line in p.stdout.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                r["impl"] = label
                rows.append(r)
    if not a.no_peers:
        for s in a.shapes.split(","):
            b, t, h, kvh = SHAPES[s]
            f_ms, b_ms = torch_times(b, t, h, kvh, a.iters)
            flop = 2.0 * b * h * t * t * D
            rows.append({"shape": s, "impl": "torch-sdpa", "b": b, "t": t, "h": h, "kvh": kvh, "d": D,
                         "fwd_ms": f_ms, "bwd_ms": b_ms, "fwd_tflops": flop / f_ms / 1e9, "bwd_tflops": 2.5 * flop / b_ms / 1e9})
    print(f"{'shape':6} {'impl':18} {'fwd ms':>8} {'bwd ms':>8} {'fwd TF/s':>9} {'bwd TF/s':>9} {'total ÷ torch':>13}")
    torch_total = {r["shape"]: r["fwd_ms"] + r["bwd_ms"] for r in rows if r["impl"] == "torch-sdpa"}
    for r in sorted(rows, key=lambda r: (list(SHAPES).index(r["shape"]), r["impl"])):
        tot = r["fwd_ms"] + r["bwd_ms"]
        ratio = f"{tot / torch_total[r['shape']]:.2f}×" if r["shape"] in torch_total else "-"
        print(f"{r['shape']:6} {r['impl']:18} {r['fwd_ms']:8.3f} {r['bwd_ms']:8.3f} {r['fwd_tflops']:9.1f} {r['bwd_tflops']:9.1f} {ratio:>13}")
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "attn_vs_torch.jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
