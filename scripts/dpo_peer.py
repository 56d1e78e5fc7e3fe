"""The PyTorch side of crates/train/tests/dpo_peer.rs: the DPO loss, TRL's logged rewards and
the loss's gradients, computed by transformers on the same pairs with the same policy and
reference models.

    .cache/venv/bin/python scripts/dpo_peer.py DIR

DIR holds `policy/` and `reference/` (Hugging Face folders smelt saved) and `cases.json`:
{"beta": b, "cases": [{"name": ..., "pairs": [[[x], [y]], [[x], [y]]], ...}]}: each pair's
chosen then rejected completion as (inputs, targets), targets -100 outside the completion.
Each sequence runs alone through LlamaForCausalLM in float64 (no padding); its log-probability
is the sum of log p over its scored targets. The loss is TRL's sigmoid DPO loss
(`DPOTrainer.dpo_loss`, loss_type "sigmoid", no label smoothing), averaged over the case's pairs:

    -logsigmoid(beta * ((pi_c - pi_r) - (ref_c - ref_r)))

and the metrics are TRL's: rewards/chosen = beta * (pi_c - ref_c), rewards/rejected,
rewards/margins, rewards/accuracies (chosen > rejected), logps/chosen, logps/rejected, each the
mean over the pairs. Writes `ref_<name>.safetensors` (the policy's gradients under their
Hugging Face names, float32) and `ref.json` (per case: loss, metrics, reference log-probs).
"""

import json
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM


def logp(model, x, y):
    logits = model(input_ids=torch.tensor([x])).logits[0]
    y = torch.tensor(y)
    return -F.cross_entropy(logits, y, ignore_index=-100, reduction="sum")


def main(d):
    spec = json.load(open(f"{d}/cases.json"))
    beta = spec["beta"]
    load = lambda p: AutoModelForCausalLM.from_pretrained(f"{d}/{p}", attn_implementation="eager").double()
    policy, ref = load("policy"), load("reference")
    out = {}
    for case in spec["cases"]:
        policy.zero_grad()
        pc, pr, rc, rr = [], [], [], []
        for (cx, cy), (rx, ry) in case["pairs"]:
            pc.append(logp(policy, cx, cy))
            pr.append(logp(policy, rx, ry))
            with torch.no_grad():
                rc.append(logp(ref, cx, cy))
                rr.append(logp(ref, rx, ry))
        pc, pr, rc, rr = map(torch.stack, (pc, pr, rc, rr))
        logits = (pc - pr) - (rc - rr)
        losses = -F.logsigmoid(beta * logits)
        loss = losses.mean()
        loss.backward()
        chosen_rewards = beta * (pc - rc).detach()
        rejected_rewards = beta * (pr - rr).detach()
        out[case["name"]] = {
            "loss": loss.item(),
            "rewards/chosen": chosen_rewards.mean().item(),
            "rewards/rejected": rejected_rewards.mean().item(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).double().mean().item(),
            "logps/chosen": pc.detach().mean().item(),
            "logps/rejected": pr.detach().mean().item(),
            "reference": [[a.item(), b.item()] for a, b in zip(rc, rr)],
        }
        grads = {n: p.grad.float().contiguous() for n, p in policy.named_parameters()}
        save_file(grads, f"{d}/ref_{case['name']}.safetensors")
        print(f"{case['name']}: {len(case['pairs'])} pairs, loss {loss.item():.10f}, "
              f"accuracy {out[case['name']]['rewards/accuracies']:.3f}")
    json.dump(out, open(f"{d}/ref.json", "w"))


if __name__ == "__main__":
    main(sys.argv[1])
