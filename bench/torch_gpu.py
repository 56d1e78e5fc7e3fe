#!/usr/bin/env python3
"""PyTorch reference for `smelt bench --device cuda`: the same Llama-style model (preset sizes
as crates/model/src/presets.rs), bf16 autocast with f32 master weights and AdamW(fused), and
the same three measurements and JSON keys: forward_tok_s, decode_tok_s (batch 1, KV cache, a
16-token prompt), train_tok_s (forward + backward + AdamW), peak_mem_bytes.

    python3 bench/torch_gpu.py --size small --batch-size 4 --seq-len 128
    python3 bench/torch_gpu.py --dim 768 --layers 12 --heads 12 --ffn 2048 --vocab-size 32000 \
        --batch-size 16 --seq-len 1024 --compile      # any shape; torch.compile'd forward and step
    python3 bench/torch_gpu.py --dim 768 ... --save-hf DIR   # write the random-init model as a
        # Hugging Face folder (config.json + bf16 model.safetensors) for `smelt bench --model DIR`

--compile times the compiled model (forward and training; decode is not timed then: null).
--profile then runs two training steps under torch.profiler and prints to stderr the GPU
kernels by time a step (grouped: attention, matmul, the rest by name), to set beside
`SMELT_CUDA_PROFILE=1`'s table.
"""
import argparse, json, time
import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {"tiny": (128, 4, 4, 4, 512), "small": (256, 6, 4, 4, 768), "medium": (512, 12, 8, 8, 1536),
           "large": (1024, 16, 16, 16, 2816)}


def rope(x, cos, sin):  # x: (B, H, T, D), half-split pairs as Hugging Face
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Block(nn.Module):
    def __init__(s, dim, heads, kv, ffn):
        super().__init__()
        s.h, s.kv, s.hd = heads, kv, dim // heads
        s.attn_norm, s.ffn_norm = nn.RMSNorm(dim, eps=1e-5), nn.RMSNorm(dim, eps=1e-5)
        s.wq = nn.Linear(dim, heads * s.hd, bias=False)
        s.wk = nn.Linear(dim, kv * s.hd, bias=False)
        s.wv = nn.Linear(dim, kv * s.hd, bias=False)
        s.wo = nn.Linear(heads * s.hd, dim, bias=False)
        s.gate = nn.Linear(dim, ffn, bias=False)
        s.up = nn.Linear(dim, ffn, bias=False)
        s.down = nn.Linear(ffn, dim, bias=False)

    def forward(s, x, cos, sin, cache=None):
        B, T, _ = x.shape
        h = s.attn_norm(x)
        q = s.wq(h).view(B, T, s.h, s.hd).transpose(1, 2)
        k = s.wk(h).view(B, T, s.kv, s.hd).transpose(1, 2)
        v = s.wv(h).view(B, T, s.kv, s.hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if cache is not None:
            kc, vc, pos = cache
            kc[:, :, pos:pos + T] = k
            vc[:, :, pos:pos + T] = v
            k, v = kc[:, :, :pos + T], vc[:, :, :pos + T]
        o = F.scaled_dot_product_attention(q, k, v, is_causal=(T > 1), enable_gqa=s.kv != s.h)
        x = x + s.wo(o.transpose(1, 2).reshape(B, T, -1))
        h = s.ffn_norm(x)
        return x + s.down(F.silu(s.gate(h)) * s.up(h))


class Model(nn.Module):
    def __init__(s, vocab, dim, layers, heads, kv, ffn):
        super().__init__()
        s.embed = nn.Embedding(vocab, dim)
        s.blocks = nn.ModuleList([Block(dim, heads, kv, ffn) for _ in range(layers)])
        s.norm = nn.RMSNorm(dim, eps=1e-5)
        s.hd = dim // heads
        inv = 1.0 / (10000.0 ** (torch.arange(0, s.hd, 2).float() / s.hd))
        s.register_buffer("inv", inv, persistent=False)

    def forward(s, ids, caches=None, pos=0, last=False):
        T = ids.shape[1]
        ang = torch.outer(torch.arange(pos, pos + T, device=ids.device).float(), s.inv)
        cos, sin = ang.cos(), ang.sin()
        x = s.embed(ids)
        for i, b in enumerate(s.blocks):
            x = b(x, cos, sin, None if caches is None else (*caches[i], pos))
        x = s.norm(x)
        if last:
            x = x[:, -1:]
        return x @ s.embed.weight.t()  # tied head


def median_time(fn, iters):
    fn(); torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        t = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


def profile(train, steps=2):
    """GPU kernel time a step under torch.profiler, by kernel name, to stderr."""
    import sys
    from torch.profiler import profile as tprof, ProfilerActivity
    for _ in range(3):
        train()
    torch.cuda.synchronize()
    with tprof(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(steps):
            train()
        torch.cuda.synchronize()
    by = {}
    for e in p.events():
        if e.device_type.name != "CUDA":
            continue
        t = getattr(e, "device_time", None)
        if t is None:
            t = e.cuda_time
        by.setdefault(e.name, [0.0, 0])
        by[e.name][0] += t / 1000.0 / steps
        by[e.name][1] += 1
    total = sum(v[0] for v in by.values())
    groups = {"attention (flash/sdpa)": 0.0, "matmul (gemm/cutlass/cublas)": 0.0, "other": 0.0}
    for n, (ms, _) in by.items():
        ln = n.lower()
        if "flash" in ln or "fmha" in ln or "attention" in ln or "sdpa" in ln:
            groups["attention (flash/sdpa)"] += ms
        elif "gemm" in ln or "cutlass" in ln or "sm90" in ln or "cublas" in ln or "nvjet" in ln:
            groups["matmul (gemm/cutlass/cublas)"] += ms
        else:
            groups["other"] += ms
    print(f"torch profile: {total:.2f} ms of GPU kernels a step", file=sys.stderr)
    for g, ms in groups.items():
        print(f"  {g:34s} {ms:9.3f} ms {100 * ms / max(total, 1e-9):5.1f}%", file=sys.stderr)
    for n, (ms, c) in sorted(by.items(), key=lambda kv: -kv[1][0])[:40]:
        print(f"  {ms:9.3f} ms {c // steps:5d}x  {n[:150]}", file=sys.stderr)


def save_hf(m, a, dim, layers, heads, kv, ffn):
    """config.json + model.safetensors (bf16) in Hugging Face Llama naming, tied embeddings."""
    import os
    from safetensors.torch import save_file
    os.makedirs(a.save_hf, exist_ok=True)
    names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "wq": "self_attn.q_proj",
             "wk": "self_attn.k_proj", "wv": "self_attn.v_proj", "wo": "self_attn.o_proj", "gate": "mlp.gate_proj",
             "up": "mlp.up_proj", "down": "mlp.down_proj"}
    w = {"model.embed_tokens.weight": m.embed.weight, "model.norm.weight": m.norm.weight}
    for i, b in enumerate(m.blocks):
        for k, hf in names.items():
            w[f"model.layers.{i}.{hf}.weight"] = getattr(b, k).weight
    save_file({k: v.detach().to(torch.bfloat16).contiguous().cpu() for k, v in w.items()}, os.path.join(a.save_hf, "model.safetensors"))
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dim, "intermediate_size": ffn,
           "num_attention_heads": heads, "num_hidden_layers": layers, "num_key_value_heads": kv,
           "vocab_size": a.vocab_size, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
           "max_position_embeddings": max(4096, a.seq_len), "hidden_act": "silu", "torch_dtype": "bfloat16"}
    with open(os.path.join(a.save_hf, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--decode-tokens", type=int, default=128)
    # A shape other than the presets' (each overrides the preset's value).
    ap.add_argument("--dim", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--ffn", type=int)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (decode not timed)")
    ap.add_argument("--profile", action="store_true", help="kernel times of two training steps, to stderr")
    ap.add_argument("--no-decode", action="store_true")
    ap.add_argument("--save-hf", help="write the random-init model as a Hugging Face folder and exit")
    a = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(1)
    dim, layers, heads, kv, ffn = PRESETS[a.size]
    dim, layers, heads, ffn = a.dim or dim, a.layers or layers, a.heads or heads, a.ffn or ffn
    kv = a.kv_heads or (heads if a.heads else kv)
    m = Model(a.vocab_size, dim, layers, heads, kv, ffn).to(dev)
    # Hugging Face's initialisation (normal, std 0.02): logits of a sane size through the tied head.
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
    if a.save_hf:
        save_hf(m, a, dim, layers, heads, kv, ffn)
        return
    fm = torch.compile(m) if a.compile else m
    B, T = a.batch_size, a.seq_len
    x = torch.randint(0, a.vocab_size, (B, T), device=dev)
    y = torch.randint(0, a.vocab_size, (B, T), device=dev)
    ac = lambda: torch.autocast("cuda", dtype=torch.bfloat16)

    @torch.no_grad()
    def fwd():
        with ac():
            fm(x)

    prompt = torch.randint(0, a.vocab_size, (1, 16), device=dev)
    dec_ids = torch.randint(0, a.vocab_size, (a.decode_tokens, 1), device=dev)

    @torch.no_grad()
    def decode():
        cap = 16 + a.decode_tokens
        caches = [(torch.zeros(1, kv, cap, dim // heads, device=dev, dtype=torch.bfloat16),
                   torch.zeros(1, kv, cap, dim // heads, device=dev, dtype=torch.bfloat16)) for _ in range(layers)]
        with ac():
            m(prompt, caches, 0, last=True)
            for i in range(a.decode_tokens):
                m(dec_ids[i:i + 1], caches, 16 + i, last=True)

    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, fused=True)

    def train():
        with ac():
            loss = F.cross_entropy(fm(x).float().view(-1, a.vocab_size), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if a.profile:
        profile(train)
        return
    torch.cuda.reset_peak_memory_stats()
    f = median_time(fwd, a.iters)
    d = None if (a.compile or a.no_decode) else median_time(decode, min(a.iters, 3))
    t = median_time(train, a.iters)
    print(json.dumps({
        "impl": "pytorch-compile" if a.compile else "pytorch", "torch": torch.__version__, "device": torch.cuda.get_device_name(),
        "params": sum(p.numel() for p in m.parameters()), "batch_size": B, "seq_len": T,
        "forward_tok_s": B * T / f, "decode_tok_s": None if d is None else a.decode_tokens / d, "train_tok_s": B * T / t,
        "peak_mem_bytes": torch.cuda.max_memory_allocated(),
    }))


if __name__ == "__main__":
    main()
