#!/usr/bin/env python3
"""Builds the Hugging Face parity fixtures under crates/model/tests/fixtures/hf/<case>/.

Each case is a tiny random-init model saved by transformers itself (`save_pretrained`, safetensors)
plus `golden.safetensors` with what transformers computes from that folder, in f32 on CPU:

  input_ids    (64,)      the prompt (fixed, seeded)
  logits       (64, V)    forward logits over the prompt
  greedy_ids   (64,)      generate(do_sample=False, max_new_tokens=64), EOS stopping off
  greedy_margin (64,)     top-1 minus top-2 logit at each greedy step (how robust the argmax is)
  ppl_ids      (200,)     a fixed sequence for perplexity
  ppl_nll      (N,)       NLL of every scored token: windows of 64 (last kept if >= 2 tokens),
                          every token after the first of each window scored
  ppl_mean     (1,)       their mean

Goldens are computed from the folder as reloaded from disk (in f32), so they also check that
transformers reads the config styles we write: transformers 5's `rope_parameters`/`dtype` (most
cases) and the older `rope_theta`/`torch_dtype`/`rope_scaling` (hand-written for three cases).

Run: /path/to/venv/bin/python scripts/make_hf_goldens.py   (torch + transformers >= 5)
"""
import json
import math
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from transformers import (AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "crates/model/tests/fixtures/hf")
V = 128
PROMPT_LEN, GEN_LEN, PPL_LEN, WINDOW = 64, 64, 200, 64

BASE = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)

# name: (model class, config class, config kwargs, storage dtype, shard, old-style config.json)
CASES = {
    "llama_tied": (LlamaForCausalLM, LlamaConfig, dict(tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), torch.float32, False, False),
    "llama3_untied": (LlamaForCausalLM, LlamaConfig, dict(tie_word_embeddings=False, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}), torch.float32, False, True),
    "llama_linear": (LlamaForCausalLM, LlamaConfig, dict(tie_word_embeddings=True, rope_parameters={
        "rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}), torch.bfloat16, False, True),
    "llama_yarn": (LlamaForCausalLM, LlamaConfig, dict(tie_word_embeddings=False, max_position_embeddings=256, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
        "beta_fast": 32.0, "beta_slow": 1.0}), torch.float16, False, False),
    "mistral_swa": (MistralForCausalLM, MistralConfig, dict(tie_word_embeddings=False, sliding_window=16,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), torch.float32, True, False),
    "qwen2_bias": (Qwen2ForCausalLM, Qwen2Config, dict(tie_word_embeddings=False, use_sliding_window=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), torch.float32, False, True),
    "qwen3_qknorm": (Qwen3ForCausalLM, Qwen3Config, dict(tie_word_embeddings=True, head_dim=24, attention_bias=False,
        use_sliding_window=False, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), torch.float32, False, False),
}


def perturb(model, seed):
    """Random weights with useful spread: unit-ish activations, norms and biases far from 1 and 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.4 * r)
            elif name.endswith(".bias"):
                p.copy_(0.5 * r)
            elif "embed_tokens" in name:
                p.copy_(0.25 * r)
            else:
                p.copy_(r / math.sqrt(p.shape[1]) * (2.0 if name == "lm_head.weight" else 1.0))


def old_style(path):
    """Rewrites a transformers-5 config.json the way transformers 4 wrote it."""
    with open(path) as f:
        c = json.load(f)
    rp = c.pop("rope_parameters")
    c["rope_theta"] = rp.pop("rope_theta")
    rtype = rp.pop("rope_type")
    # Llama-3 checkpoints say "rope_type"; older linear-scaled ones only "type".
    c["rope_scaling"] = None if rtype == "default" else ({"type": rtype, **rp} if rtype == "linear" else {"rope_type": rtype, **rp})
    c["torch_dtype"] = c.pop("dtype")
    c["transformers_version"] = "4.46.0"
    with open(path, "w") as f:
        json.dump(c, f, indent=2)


@torch.no_grad()
def goldens(model, seed):
    g = torch.Generator().manual_seed(1000 + seed)
    prompt = torch.randint(0, V, (1, PROMPT_LEN), generator=g)
    logits = model(prompt).logits[0].float()
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=GEN_LEN,
                         min_new_tokens=GEN_LEN, eos_token_id=None, pad_token_id=0, output_scores=True,
                         return_dict_in_generate=True)
    greedy = out.sequences[0, PROMPT_LEN:]
    top2 = torch.stack([s[0].float().topk(2).values for s in out.scores])
    margin = top2[:, 0] - top2[:, 1]
    ppl_ids = torch.randint(0, V, (PPL_LEN,), generator=g)
    nll = []
    for w in ppl_ids.split(WINDOW):
        if len(w) < 2:
            continue
        lw = model(w[None]).logits[0].double()
        nll.append(torch.nn.functional.cross_entropy(lw[:-1], w[1:], reduction="none"))
    nll = torch.cat(nll)
    return {
        "input_ids": prompt[0].to(torch.int32),
        "logits": logits.contiguous(),
        "greedy_ids": greedy.to(torch.int32).contiguous(),
        "greedy_margin": margin.contiguous(),
        "ppl_ids": ppl_ids.to(torch.int32),
        "ppl_nll": nll.float(),
        "ppl_mean": nll.mean().float().reshape(1),
    }


def main():
    torch.manual_seed(0)
    only = sys.argv[1:]
    for seed, (case, (mcls, ccls, kw, dtype, shard, old)) in enumerate(CASES.items()):
        if only and case not in only:
            continue
        d = os.path.join(OUT, case)
        shutil.rmtree(d, ignore_errors=True)
        cfg = ccls(**{**BASE, **kw})
        model = mcls(cfg).eval()
        perturb(model, seed)
        ref_inv = model.model.rotary_emb.inv_freq.clone()
        model.to(dtype).save_pretrained(d, safe_serialization=True, max_shard_size="40KB" if shard else "50GB")
        for extra in ("generation_config.json",):
            p = os.path.join(d, extra)
            if os.path.exists(p):
                os.remove(p)
        if old:
            old_style(os.path.join(d, "config.json"))
        # Goldens from what is on disk, read back in f32 (bf16/f16 weights upcast exactly).
        reloaded = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        assert torch.equal(reloaded.model.rotary_emb.inv_freq, ref_inv), f"{case}: config.json did not round-trip the rope"
        gold = goldens(reloaded, seed)
        save_file(gold, os.path.join(d, "golden.safetensors"), metadata={"window": str(WINDOW), "case": case})
        files = sorted(os.listdir(d))
        size = sum(os.path.getsize(os.path.join(d, f)) for f in files)
        print(f"{case:14s} {str(dtype):15s} {size / 1024:6.0f} KB  {files}  "
              f"max|logit| {gold['logits'].abs().max():.2f}  min greedy margin {gold['greedy_margin'].min():.2e}  "
              f"ppl mean nll {gold['ppl_mean'].item():.5f}")



def rope_tables():
    """transformers' inverse frequencies and attention factor for rope settings the fixtures do
    not cover (YaRN variants, llama3 with original_max_position_embeddings taken from max_position_embeddings)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    base = dict(hidden_size=256, num_attention_heads=4, max_position_embeddings=4096)
    cases = [
        {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 512, "mscale": 1.0, "mscale_all_dim": 0.5},
        {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 4.0, "original_max_position_embeddings": 1024, "truncate": False, "beta_fast": 16.0, "beta_slow": 2.0},
        {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "attention_factor": 1.5},
        {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
        {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 3.0},
        {"rope_type": "default", "rope_theta": 1000000.0},
    ]
    out = []
    for rp in cases:
        cfg = LlamaConfig(**base, rope_parameters=dict(rp))
        emb = LlamaRotaryEmbedding(cfg)
        inv, attn = emb.inv_freq, emb.attention_scaling
        out.append({"config": {**base, "architectures": ["LlamaForCausalLM"], "vocab_size": 8, "num_hidden_layers": 1,
                               "intermediate_size": 8, "rope_parameters": rp},
                    "inv_freq": inv.tolist(), "attention_factor": float(attn)})
    with open(os.path.join(OUT, "rope_tables.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(f"rope_tables.json: {len(out)} settings")


if __name__ == "__main__":
    main()
    if not sys.argv[1:]:
        rope_tables()
