#!/usr/bin/env python3
"""Golden fixtures for smelt's model crate.

A Llama-style decoder written out by hand in plain PyTorch, computed in float64 on the CPU with a
fixed seed, exactly as Hugging Face's LlamaForCausalLM computes it (see README in the fixtures
folder). For each config it writes crates/model/tests/fixtures/golden_<name>/:

  config.json         Hugging Face LlamaConfig dict
  model.safetensors   initial weights (float32, HF names)
  golden.safetensors  inputs, logits, loss, gradients, 5 AdamW steps (float32 / int32)
  hyper.json          optimizer and init hyperparameters

The float64 computation is the reference; every stored float tensor is rounded to float32 once,
at the end. The model runs from the float32-rounded initial weights (so what smelt loads from
model.safetensors is exactly what the reference started from).

If `transformers` is importable, the hand-written model is cross-checked against
LlamaForCausalLM in float64 (logits, loss and every gradient).

Regenerate: scripts/install_torch.sh && .cache/venv/bin/python scripts/make_golden.py
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates" / "model" / "tests" / "fixtures"

DTYPE = torch.float64
B, T = 2, 12
SEED = 20240607

# Initialisation. Standard deviations are larger than the usual 0.02 on purpose: with hidden 64,
# 0.02 makes q.k scores ~0.01 (near-uniform attention), which would let e.g. a RoPE-layout bug hide
# under a float32 tolerance. 1/sqrt(fan_in) keeps attention peaked and every block contributing.
INIT = {
    "embed_std": 0.5,  # model.embed_tokens (and the tied head)
    "lm_head_std": 0.2,  # untied lm_head
    "matrix_std": "1/sqrt(fan_in)",  # q,k,v,o,gate,up,down
    "norm_weight": "1 + 0.1*randn",  # every RMSNorm weight, so norm gradients are exercised
}

HYPER = {
    "optimizer": "torch.optim.AdamW",
    "lr": 1e-2,
    "betas": [0.9, 0.95],
    "eps": 1e-8,
    "weight_decay": 0.1,
    "weight_decay_applies_to": "2-D parameters only (embeddings and matrices); 0.0 for 1-D norm weights",
    "clip_grad_norm_max": 1.0,
    "clip": "torch.nn.utils.clip_grad_norm_(all params, max_norm=1.0) after backward, before each step",
    "steps": 5,
    "batch": B,
    "seq": T,
    "loss": "mean cross-entropy over all B*T positions against `labels` (no shift)",
    "seed": SEED,
    "init": INIT,
    "compute_dtype": "float64 (stored tensors rounded once to float32)",
}

CONFIGS = {
    "gqa_untied": dict(
        vocab_size=96,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=160,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
    "gqa_tied": dict(
        vocab_size=96,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=96,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
}


def hf_config(c: dict) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c["hidden_size"],
        "intermediate_size": c["intermediate_size"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_attention_heads": c["num_attention_heads"],
        "num_key_value_heads": c["num_key_value_heads"],
        "head_dim": c["head_dim"],
        "vocab_size": c["vocab_size"],
        "max_position_embeddings": 128,
        "rms_norm_eps": c["rms_norm_eps"],
        "rope_theta": c["rope_theta"],
        "rope_scaling": None,
        "tie_word_embeddings": c["tie_word_embeddings"],
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "torch_dtype": "float32",
        "bos_token_id": 0,
        "eos_token_id": 1,
    }


# ----------------------------------------------------------------------------------------------
# Parameters


def param_names(c: dict) -> list[str]:
    names = ["model.embed_tokens.weight"]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names += [
            p + "input_layernorm.weight",
            p + "self_attn.q_proj.weight",
            p + "self_attn.k_proj.weight",
            p + "self_attn.v_proj.weight",
            p + "self_attn.o_proj.weight",
            p + "post_attention_layernorm.weight",
            p + "mlp.gate_proj.weight",
            p + "mlp.up_proj.weight",
            p + "mlp.down_proj.weight",
        ]
    names.append("model.norm.weight")
    if not c["tie_word_embeddings"]:
        names.append("lm_head.weight")
    return names


def param_shape(c: dict, name: str) -> tuple[int, ...]:
    d, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd, h, kvh = c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"]
    if name.endswith("layernorm.weight") or name == "model.norm.weight":
        return (d,)
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return (v, d)
    suffix = name.split(".", 3)[3]
    return {
        "self_attn.q_proj.weight": (h * hd, d),
        "self_attn.k_proj.weight": (kvh * hd, d),
        "self_attn.v_proj.weight": (kvh * hd, d),
        "self_attn.o_proj.weight": (d, h * hd),
        "mlp.gate_proj.weight": (f, d),
        "mlp.up_proj.weight": (f, d),
        "mlp.down_proj.weight": (d, f),
    }[suffix]


def init_params(c: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """float64 tensors holding float32-representable values."""
    out = {}
    for name in param_names(c):
        shape = param_shape(c, name)
        z = torch.randn(shape, generator=gen, dtype=DTYPE)
        if len(shape) == 1:
            w = 1.0 + 0.1 * z
        elif name == "model.embed_tokens.weight":
            w = INIT["embed_std"] * z
        elif name == "lm_head.weight":
            w = INIT["lm_head_std"] * z
        else:
            w = z / math.sqrt(shape[1])
        out[name] = w.to(torch.float32).to(DTYPE)
    return out


# ----------------------------------------------------------------------------------------------
# The model (functional, HF Llama math)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope_cos_sin(t: int, d: int, theta: float, offset: int = 0, dtype=DTYPE):
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=dtype) / d))  # (D/2,)
    pos = torch.arange(offset, offset + t, dtype=dtype)
    freqs = pos[:, None] * inv_freq[None, :]  # (T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, D)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, D); cos/sin: (T, D)
    return x * cos + rotate_half(x) * sin


def rope_interleaved(x, cos, sin):
    """The GPT-J / Meta-original layout (pairs (2i, 2i+1)): used only to prove the fixtures tell
    the two layouts apart."""
    d = x.shape[-1]
    c, s = cos[..., : d // 2], sin[..., : d // 2]
    xe, xo = x[..., 0::2], x[..., 1::2]
    return torch.stack((xe * c - xo * s, xe * s + xo * c), dim=-1).flatten(-2)


def forward(p: dict, c: dict, ids: torch.Tensor, variant: str = "hf", dtype=DTYPE) -> torch.Tensor:
    """Returns logits (B, T, V). `variant` != "hf" deliberately breaks one detail (sensitivity)."""
    bsz, t = ids.shape
    h_, kvh, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    eps = c["rms_norm_eps"]
    x = p["model.embed_tokens.weight"][ids]  # (B, T, D)
    cos, sin = rope_cos_sin(t, hd, c["rope_theta"], dtype=dtype)
    rope = rope_interleaved if variant == "rope_interleaved" else apply_rope
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    for i in range(c["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        h = rms_norm(x, p[pre + "input_layernorm.weight"], eps)
        q = (h @ p[pre + "self_attn.q_proj.weight"].T).view(bsz, t, h_, hd).transpose(1, 2)
        k = (h @ p[pre + "self_attn.k_proj.weight"].T).view(bsz, t, kvh, hd).transpose(1, 2)
        v = (h @ p[pre + "self_attn.v_proj.weight"].T).view(bsz, t, kvh, hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        rep = h_ // kvh
        if variant == "kv_tile":  # wrong GQA grouping: query head j -> kv head j % kvh
            k, v = k.repeat(1, rep, 1, 1), v.repeat(1, rep, 1, 1)
        else:  # HF repeat_kv: query head j -> kv head j // rep
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)  # (B, H, T, T)
        scores = scores.masked_fill(~causal, float("-inf"))
        attn = torch.softmax(scores, dim=-1) @ v  # (B, H, T, D)
        attn = attn.transpose(1, 2).reshape(bsz, t, h_ * hd)
        x = x + attn @ p[pre + "self_attn.o_proj.weight"].T
        h = rms_norm(x, p[pre + "post_attention_layernorm.weight"], eps)
        g = h @ p[pre + "mlp.gate_proj.weight"].T
        u = h @ p[pre + "mlp.up_proj.weight"].T
        x = x + (F.silu(g) * u) @ p[pre + "mlp.down_proj.weight"].T
    h = rms_norm(x, p["model.norm.weight"], eps)
    head = p["model.embed_tokens.weight"] if c["tie_word_embeddings"] else p["lm_head.weight"]
    return h @ head.T


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


# ----------------------------------------------------------------------------------------------
# Cross-check against transformers


def hf_cross_check(c: dict, init: dict, ids, labels, logits_ref, loss_ref, grads_ref) -> dict:
    try:
        import transformers
        from transformers import LlamaConfig, LlamaForCausalLM
    except Exception as e:  # noqa: BLE001
        print(f"  transformers not importable ({e.__class__.__name__}); cross-check skipped")
        return {"ran": False}

    def build(attn_impl: str):
        cfg = LlamaConfig(**{k: v for k, v in hf_config(c).items() if k != "architectures"})
        cfg._attn_implementation = attn_impl
        torch.manual_seed(0)
        m = LlamaForCausalLM(cfg).to(DTYPE)
        sd = {k: v.clone() for k, v in init.items()}
        missing, unexpected = m.load_state_dict(sd, strict=False)
        allowed_missing = {"lm_head.weight"} if c["tie_word_embeddings"] else set()
        assert not unexpected and set(missing) <= allowed_missing, (missing, unexpected)
        if c["tie_word_embeddings"]:
            assert m.lm_head.weight is m.model.embed_tokens.weight
        m.eval()
        return m

    def run(m):
        m.zero_grad()
        out = m(input_ids=ids.long(), use_cache=False)
        lg = out.logits
        loss = loss_fn(lg, labels.long())
        loss.backward()
        named = dict(m.named_parameters())
        grads = {n: named[n].grad for n in grads_ref}
        gdiff = max((grads[n] - grads_ref[n]).abs().max().item() for n in grads_ref)
        return (lg - logits_ref).abs().max().item(), abs(loss.item() - loss_ref.item()), gdiff

    # 1) Stock LlamaForCausalLM in float64. HF keeps float32 islands even in a float64 model
    #    (RMSNorm upcasts to float32, RoPE cos/sin are computed in float32, eager softmax runs in
    #    float32), so agreement is only to float32 precision here.
    stock = run(build("eager"))
    print(f"  transformers {transformers.__version__} stock (eager, its float32 islands): "
          f"max|dlogits| {stock[0]:.3e}  |dloss| {stock[1]:.3e}  max|dgrad| {stock[2]:.3e}")
    assert stock[0] < 1e-4 and stock[2] < 1e-4, stock

    # 2) The same model with those islands lifted to float64 (precision only; the layout,
    #    RoPE formula and GQA grouping are still HF's): must agree to 1e-10.
    m = build("sdpa")
    from transformers.models.llama import modeling_llama as ml

    eps = c["rms_norm_eps"]
    for mod in m.modules():
        if isinstance(mod, ml.LlamaRMSNorm):
            mod.forward = (lambda self: (lambda x: self.weight * (
                x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))))(mod)
            assert mod.variance_epsilon == eps
    rot = m.model.rotary_emb
    hd, theta = c["head_dim"], c["rope_theta"]
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=DTYPE) / hd))

    def rot_forward(x, position_ids):
        freqs = position_ids[..., None].to(DTYPE) * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * rot.attention_scaling).to(x.dtype), (emb.sin() * rot.attention_scaling).to(x.dtype)

    rot.forward = rot_forward
    exact = run(m)
    print(f"  transformers float64 throughout (sdpa):         "
          f"max|dlogits| {exact[0]:.3e}  |dloss| {exact[1]:.3e}  max|dgrad| {exact[2]:.3e}")
    assert exact[0] < 1e-10, f"logits differ from LlamaForCausalLM by {exact[0]}"
    assert exact[1] < 1e-10 and exact[2] < 1e-10, exact
    return {
        "ran": True,
        "transformers": transformers.__version__,
        "stock_max_logit_diff": stock[0],
        "float64_max_logit_diff": exact[0],
        "float64_max_grad_diff": exact[2],
    }


# ----------------------------------------------------------------------------------------------


def f32(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float32).contiguous()


def train(init: dict, c: dict, ids, labels, dtype) -> tuple[dict, list[float], list[float], object]:
    """Five AdamW steps on the same batch (in `dtype`). Returns (params, losses, norms, grads0)."""
    params = {n: w.to(dtype).clone().requires_grad_(True) for n, w in init.items()}
    plist = [params[n] for n in param_names(c)]
    decay = [p for p in plist if p.ndim >= 2]
    no_decay = [p for p in plist if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": HYPER["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=HYPER["lr"], betas=tuple(HYPER["betas"]), eps=HYPER["eps"],
        foreach=False,
    )
    losses, norms, grads0 = [], [], None
    for s in range(HYPER["steps"]):
        opt.zero_grad(set_to_none=True)
        logits = forward(params, c, ids, dtype=dtype)
        l = loss_fn(logits, labels)
        l.backward()
        if s == 0:
            grads0 = (logits.detach(), {n: params[n].grad.detach().clone() for n in params})
        gn = torch.nn.utils.clip_grad_norm_(plist, max_norm=HYPER["clip_grad_norm_max"], foreach=False)
        opt.step()
        losses.append(l.item())
        norms.append(gn.item())
    return params, losses, norms, grads0


def make(name: str, c: dict, seed: int) -> dict:
    print(f"== {name}")
    gen = torch.Generator().manual_seed(seed)
    init = init_params(c, gen)
    ids = torch.randint(0, c["vocab_size"], (B, T), generator=gen, dtype=torch.int64)
    labels = torch.randint(0, c["vocab_size"], (B, T), generator=gen, dtype=torch.int64)

    # Forward + gradient at the initial weights.
    params = {n: w.clone().requires_grad_(True) for n, w in init.items()}
    logits = forward(params, c, ids)
    loss = loss_fn(logits, labels)
    loss.backward()
    grads = {n: params[n].grad.detach().clone() for n in params}
    logits, loss = logits.detach(), loss.detach()
    print(f"  loss {loss.item():.6f} (ln V = {math.log(c['vocab_size']):.4f}), logits std "
          f"{logits.std().item():.3f}")

    # Sensitivity: the fixtures must tell apart the usual ways to get Llama wrong.
    with torch.no_grad():
        for variant in ("rope_interleaved", "kv_tile"):
            d = (forward(init, c, ids, variant) - logits).abs().max().item()
            print(f"  sensitivity: {variant:17s} max|dlogits| {d:.3e}")
            assert d > 1e-2, f"{variant} barely changes the logits ({d}); fixtures too weak"
        for n in params:
            g = grads[n].abs().max().item()
            assert g > 1e-6, f"gradient of {n} is negligible ({g})"

    check = hf_cross_check(c, init, ids, labels, logits, loss, grads)

    # Five AdamW steps on the same batch.
    params, losses, norms, _ = train(init, c, ids, labels, DTYPE)
    assert losses[0] == loss.item()
    print("  adamw losses     " + " ".join(f"{v:.6f}" for v in losses))
    print("  adamw grad norms " + " ".join(f"{v:.6f}" for v in norms))

    # What a float32 engine can hope for: the same computation replayed in float32 by torch.
    p32, l32, n32, (lg32, g32) = train(init, c, ids, labels, torch.float32)
    tol = {
        "logits_max_abs": (lg32.double() - logits).abs().max().item(),
        "grad_max_abs": max((g32[n].double() - grads[n]).abs().max().item() for n in grads),
        "grad_max_rel_to_tensor_max": max(((g32[n].double() - grads[n]).abs().max()
                                           / grads[n].abs().max()).item() for n in grads),
        "adamw_losses_max_abs": max(abs(a - b) for a, b in zip(l32, losses)),
        "adamw_grad_norms_max_rel": max(abs(a - b) / b for a, b in zip(n32, norms)),
        "after_max_abs": max((p32[n].detach().double() - params[n].detach()).abs().max().item()
                             for n in params),
    }
    print("  float32 torch replay vs this reference: "
          + ", ".join(f"{k} {v:.2e}" for k, v in tol.items()))
    check["float32_replay"] = tol

    out = FIXTURES / f"golden_{name}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config(c), indent=2) + "\n")
    (out / "hyper.json").write_text(json.dumps(HYPER, indent=2) + "\n")
    save_file({n: f32(w) for n, w in init.items()}, out / "model.safetensors",
              metadata={"format": "pt"})
    golden = {
        "input_ids": ids.to(torch.int32).contiguous(),
        "labels": labels.to(torch.int32).contiguous(),
        "logits": f32(logits),
        "loss": f32(loss.reshape(1)),
        "adamw_losses": f32(torch.tensor(losses, dtype=DTYPE)),
        "adamw_grad_norms": f32(torch.tensor(norms, dtype=DTYPE)),
    }
    for n in param_names(c):
        golden["grad." + n] = f32(grads[n])
        golden["after." + n] = f32(params[n])
    save_file(golden, out / "golden.safetensors",
              # one key only: safetensors writes metadata from a hash map, so several keys come out in
              # a random order and the file would not be byte-reproducible
              metadata={"generator": f"scripts/make_golden.py (torch {torch.__version__})"})
    for f in sorted(out.iterdir()):
        print(f"  wrote {f.relative_to(ROOT)} ({f.stat().st_size} bytes)")
    return check


def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)
    checks = {}
    for k, (name, c) in enumerate(CONFIGS.items()):
        checks[name] = make(name, c, SEED + k)
    print(json.dumps(checks, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
