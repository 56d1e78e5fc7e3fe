#!/usr/bin/env python3
"""PEFT's side of smelt's LoRA tests (docs/FINETUNE.md, "LoRA"). Three modes, all f32 on CPU:

  goldens              Builds crates/model/tests/fixtures/lora/<case>/: a PEFT adapter (random,
                       non-zero B) on each tiny Hugging Face fixture (fixtures/hf/<case>), saved
                       by PEFT's save_pretrained, and golden.safetensors with what PEFT computes:
                         input_ids (T,)    the prompt
                         logits (T, V)     PeftModel's logits (eval mode)
                         merged (T, V)     logits of merge_and_unload()
                         loss (1,)         mean next-token cross-entropy over the prompt
                         grad.<name>       d loss / d each lora_A / lora_B (PEFT's names)
  make BASE OUT IDS    A PEFT adapter with random non-zero B on the model folder BASE (all
                       linear layers, r 8), written to OUT, with OUT/golden.safetensors as above
                       for the comma-separated token ids IDS (no gradients).
  check BASE ADAPTER IDS OUT [BASE ADAPTER IDS OUT ...]
                       Loads ADAPTER with PeftModel.from_pretrained, prints a JSON report line
                       (missing and unexpected adapter keys, PEFT's own state-dict names
                       against the file's) and writes OUT (safetensors: logits, merged); for
                       each group of four arguments, in one process.

Run: .cache/venv/bin/python scripts/peft_lora.py goldens   (torch, transformers, peft:
scripts/install_torch.sh, then scripts/venv.sh peft)
"""
import json
import os
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIX = os.path.join(ROOT, "crates/model/tests/fixtures")

# case: (lora settings); the base is fixtures/hf/<case>.
CASES = {
    "llama_tied": dict(r=4, lora_alpha=8, target_modules="all-linear"),
    "mistral_swa": dict(r=3, lora_alpha=5, target_modules=["q_proj", "v_proj"], lora_dropout=0.1),
    "qwen2_bias": dict(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "o_proj", "up_proj", "down_proj"]),
    "qwen3_qknorm": dict(r=8, lora_alpha=4, target_modules="all-linear", use_rslora=True),
}
T = 32


def load_base(path):
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    m.eval()
    return m


def randomise_b(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def goldens_of(model, ids, grads):
    out = {"input_ids": ids.to(torch.int32)}
    x = ids[None]
    model.eval()
    if grads:
        # Dropout off (eval) so the gradient is deterministic; LoRA factors require grad.
        logits = model(x).logits[0]
        loss = torch.nn.functional.cross_entropy(logits[:-1], ids[1:])
        loss.backward()
        out["loss"] = loss.detach().reshape(1)
        for n, p in model.named_parameters():
            if "lora_" in n and p.grad is not None:
                out["grad." + n.replace(".default", "")] = p.grad.detach().clone()
    with torch.no_grad():
        out["logits"] = model(x).logits[0].detach().clone()
        merged = model.merge_and_unload()
        out["merged"] = merged(x).logits[0].detach().clone()
    return {k: v.contiguous() for k, v in out.items()}


def make(base_dir, out_dir, ids, settings, seed, grads):
    base = load_base(base_dir)
    cfg = LoraConfig(task_type="CAUSAL_LM", **settings)
    model = get_peft_model(base, cfg)
    randomise_b(model, seed)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    os.remove(os.path.join(out_dir, "README.md"))  # PEFT's model-card template
    save_file(goldens_of(model, ids, grads), os.path.join(out_dir, "golden.safetensors"))


def goldens():
    for i, (case, settings) in enumerate(CASES.items()):
        base_dir = os.path.join(FIX, "hf", case)
        v = json.load(open(os.path.join(base_dir, "config.json")))["vocab_size"]
        ids = torch.randint(3, v, (T,), generator=torch.Generator().manual_seed(100 + i))
        out = os.path.join(FIX, "lora", case)
        make(base_dir, out, ids, settings, seed=i + 1, grads=True)
        # The base is recorded by path relative to the repository, not this machine's.
        p = os.path.join(out, "adapter_config.json")
        c = json.load(open(p))
        c["base_model_name_or_path"] = f"crates/model/tests/fixtures/hf/{case}"
        json.dump(c, open(p, "w"), indent=2, sort_keys=True)
        print(case, sorted(os.listdir(out)))


def check(base_dir, adapter_dir, ids, out):
    base = load_base(base_dir)
    model = PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    # What the file holds against what PEFT expects: reload the weights into the model and
    # collect the keys it lacks or does not know (base keys are not the adapter's business).
    weights = load_peft_weights(adapter_dir)
    res = set_peft_model_state_dict(model, weights)
    missing = [k for k in res.missing_keys if "lora_" in k]
    expected = sorted(get_peft_model_state_dict(model).keys())
    report = {
        "missing": missing,
        "unexpected": list(res.unexpected_keys),
        "file_keys": sorted(weights.keys()),
        "peft_keys": expected,
    }
    x = torch.tensor(ids)[None]
    with torch.no_grad():
        logits = model(x).logits[0].clone()
        merged = model.merge_and_unload()(x).logits[0].clone()
    save_file({"logits": logits.contiguous(), "merged": merged.contiguous()}, out)
    print(json.dumps(report))


if __name__ == "__main__":
    torch.manual_seed(0)
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "goldens":
        goldens()
    elif mode == "make":
        ids = torch.tensor([int(t) for t in sys.argv[4].split(",")])
        make(sys.argv[2], sys.argv[3], ids, dict(r=8, lora_alpha=16, target_modules="all-linear"), seed=7, grads=False)
    elif mode == "check" and len(sys.argv) > 2 and (len(sys.argv) - 2) % 4 == 0:
        # Several checks in one process: torch and transformers load once.
        for i in range(2, len(sys.argv), 4):
            base, adapter, ids, out = sys.argv[i:i + 4]
            check(base, adapter, [int(t) for t in ids.split(",")], out)
    else:
        sys.exit(__doc__)
