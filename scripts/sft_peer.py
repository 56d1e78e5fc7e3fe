"""The PyTorch side of crates/train/tests/sft_peer.rs: SFT's masked loss and its gradients,
computed by transformers on the same model and the same examples, each example on its own.

    .cache/venv/bin/python scripts/sft_peer.py DIR

DIR holds `model/` (a Hugging Face folder smelt saved) and `cases.json`:
{"cases": [{"name": ..., "examples": [[inputs], [targets]], ...]}]}, targets -100 where a token
is not in the loss. For each case the reference loss is

    sum over the case's examples of the summed cross-entropy of their loss targets
    / the number of loss targets in the case

which is what one update over those examples must compute however smelt batches them (padded
rows, packed rows, micro-batches of gradient accumulation). Each example runs alone through
LlamaForCausalLM in float64 with positions from 0 and no padding, so packing's restarted
positions and blocked attention, padding, masking and the accumulation's token-count
normalisation are all checked against this one plain definition. Writes `ref_<name>.safetensors`
(the gradient of every parameter, under its Hugging Face name, float32) and `ref_loss.json`.
"""

import json
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM


def main(d):
    spec = json.load(open(f"{d}/cases.json"))
    model = AutoModelForCausalLM.from_pretrained(f"{d}/model", attn_implementation="eager").double()
    losses = {}
    for case in spec["cases"]:
        model.zero_grad()
        total, count = 0.0, 0
        for x, y in case["examples"]:
            logits = model(input_ids=torch.tensor([x])).logits[0]
            y = torch.tensor(y)
            total = total + torch.nn.functional.cross_entropy(logits, y, ignore_index=-100, reduction="sum")
            count += int((y != -100).sum())
        loss = total / count
        loss.backward()
        grads = {n: p.grad.float().contiguous() for n, p in model.named_parameters()}
        save_file(grads, f"{d}/ref_{case['name']}.safetensors")
        losses[case["name"]] = loss.item()
        print(f"{case['name']}: {len(case['examples'])} examples, {count} loss tokens, loss {loss.item():.10f}")
    json.dump(losses, open(f"{d}/ref_loss.json", "w"))


if __name__ == "__main__":
    main(sys.argv[1])
