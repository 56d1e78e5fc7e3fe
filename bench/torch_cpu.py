#!/usr/bin/env python3
"""PyTorch side of smelt's CPU benchmark: a Llama-style decoder in plain PyTorch float32.

Same model family as scripts/make_golden.py (RMSNorm, half-split RoPE, GQA, SiLU-gated MLP, no
biases), written for speed: F.scaled_dot_product_attention (is_causal=True) and a preallocated
KV cache for decode.

Measures, after warm-up, the median of several timed iterations of:
  forward_tok_s  B*T tokens per forward pass (no grad)
  train_tok_s    B*T tokens per step: forward + mean cross-entropy + backward + AdamW step
  decode_tok_s   batch 1, greedy, KV cache: prefill 16 tokens, then 128 tokens one at a time
                 (tokens/s of the 128 single-token steps; prefill time is reported separately)
  peak_mem_bytes peak RSS of the process (getrusage ru_maxrss), torch's own footprint included

Prints one JSON object. Run with the venv from scripts/install_torch.sh:
  .cache/venv/bin/python bench/torch_cpu.py            # the "small" preset
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.h, self.kvh, self.hd = a.heads, a.kv_heads, a.dim // a.heads
        self.eps = 1e-5
        self.attn_norm = nn.Parameter(torch.ones(a.dim))
        self.q = nn.Linear(a.dim, self.h * self.hd, bias=False)
        self.k = nn.Linear(a.dim, self.kvh * self.hd, bias=False)
        self.v = nn.Linear(a.dim, self.kvh * self.hd, bias=False)
        self.o = nn.Linear(self.h * self.hd, a.dim, bias=False)
        self.mlp_norm = nn.Parameter(torch.ones(a.dim))
        self.gate = nn.Linear(a.dim, a.ffn, bias=False)
        self.up = nn.Linear(a.dim, a.ffn, bias=False)
        self.down = nn.Linear(a.ffn, a.dim, bias=False)

    def forward(self, x, cos, sin, cache=None, pos=0):
        b, t, _ = x.shape
        h = F.rms_norm(x, (x.shape[-1],), self.attn_norm, self.eps)
        q = self.q(h).view(b, t, self.h, self.hd).transpose(1, 2)
        k = self.k(h).view(b, t, self.kvh, self.hd).transpose(1, 2)
        v = self.v(h).view(b, t, self.kvh, self.hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if cache is not None:
            ck, cv = cache
            ck[:, :, pos:pos + t] = k
            cv[:, :, pos:pos + t] = v
            k, v = ck[:, :, :pos + t], cv[:, :, :pos + t]
        gqa = self.kvh != self.h
        # a single new token attends to the whole cache; a block (prefill/training) is causal
        a = F.scaled_dot_product_attention(q, k, v, is_causal=(t > 1), enable_gqa=gqa)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, self.h * self.hd))
        h = F.rms_norm(x, (x.shape[-1],), self.mlp_norm, self.eps)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def rope(x, cos, sin):
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Model(nn.Module):
    def __init__(self, a, max_pos):
        super().__init__()
        self.a = a
        self.embed = nn.Embedding(a.vocab, a.dim)
        self.blocks = nn.ModuleList(Block(a) for _ in range(a.layers))
        self.norm = nn.Parameter(torch.ones(a.dim))
        self.head = None if a.tied else nn.Linear(a.dim, a.vocab, bias=False)
        hd = a.dim // a.heads
        inv = 1.0 / (a.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        ang = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv[None, :]
        ang = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)
        for p in self.parameters():
            if p.ndim == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids, caches=None, pos=0):
        t = ids.shape[1]
        x = self.embed(ids)
        cos, sin = self.cos[pos:pos + t], self.sin[pos:pos + t]
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, None if caches is None else caches[i], pos)
        x = F.rms_norm(x, (x.shape[-1],), self.norm, 1e-5)
        w = self.embed.weight if self.head is None else self.head.weight
        return x @ w.T

    def new_cache(self, b, max_t):
        hd = self.a.dim // self.a.heads
        return [(torch.zeros(b, self.a.kv_heads, max_t, hd), torch.zeros(b, self.a.kv_heads, max_t, hd))
                for _ in self.blocks]


def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts


def cpu_busy_s():
    """Seconds of CPU time all processes spent busy (from /proc/stat), and this process's own."""
    try:
        f = [int(v) for v in open("/proc/stat").readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
        busy = (sum(f[:8]) - f[3] - f[4]) / hz  # all but idle and iowait
    except OSError:
        busy = float("nan")
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return busy, ru.ru_utime + ru.ru_stime


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--untied", dest="tied", action="store_false", help="separate lm_head (default: tied)")
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=16)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--iters", type=int, default=10, help="timed forward/train iterations")
    ap.add_argument("--decode-iters", type=int, default=5, help="timed decode runs")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    assert a.dim % a.heads == 0 and a.heads % a.kv_heads == 0

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    load_before = os.getloadavg()
    busy0, own0, wall0 = *cpu_busy_s(), time.perf_counter()
    model = Model(a, max_pos=max(a.seq, a.prefill + a.decode))
    n_params = sum(p.numel() for p in model.parameters())
    B, T = a.batch, a.seq
    ids = torch.randint(0, a.vocab, (B, T))
    labels = torch.randint(0, a.vocab, (B, T))

    # forward (no grad)
    model.eval()
    with torch.inference_mode():
        fwd_s, _ = timed(lambda: model(ids), warmup=2, iters=a.iters)

    # decode: batch 1, greedy, KV cache
    prompt = torch.randint(0, a.vocab, (1, a.prefill))

    def decode():
        caches = model.new_cache(1, a.prefill + a.decode)
        t0 = time.perf_counter()
        logits = model(prompt, caches, 0)
        t1 = time.perf_counter()
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out = []
        for i in range(a.decode):
            logits = model(nxt, caches, a.prefill + i)
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out.append(nxt)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    with torch.inference_mode():
        decode()
        runs = [decode() for _ in range(a.decode_iters)]
    prefill_s = statistics.median(r[0] for r in runs)
    decode_s = statistics.median(r[1] for r in runs)

    # train: forward + mean CE + backward + AdamW
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(ids)
        loss = F.cross_entropy(logits.view(-1, a.vocab), labels.view(-1))
        loss.backward()
        opt.step()
        return loss

    train_s, _ = timed(step, warmup=2, iters=a.iters)

    busy1, own1, wall1 = *cpu_busy_s(), time.perf_counter()
    others = max(0.0, (busy1 - busy0) - (own1 - own0)) / ((wall1 - wall0) * (os.cpu_count() or 1))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({
        "forward_tok_s": round(B * T / fwd_s, 1),
        "decode_tok_s": round(a.decode / decode_s, 1),
        "train_tok_s": round(B * T / train_s, 1),
        "peak_mem_bytes": peak,
        "prefill_tok_s": round(a.prefill / prefill_s, 1),
        "forward_s": fwd_s,
        "train_step_s": train_s,
        "decode_s": decode_s,
        "params": n_params,
        "config": {k: getattr(a, k) for k in ("dim", "layers", "heads", "kv_heads", "ffn", "vocab",
                                              "tied", "batch", "seq", "prefill", "decode")},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        # other processes on a 2-core machine wreck the 2-thread figures: check these are ~0
        "loadavg_1m_before": round(load_before[0], 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "other_processes_cpu_share": round(others, 3),  # of all cores, during the measurements
    }, indent=2))


if __name__ == "__main__":
    main()
