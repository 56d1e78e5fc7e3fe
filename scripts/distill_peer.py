"""The PyTorch side of crates/train/tests/distill_peer.rs: the distillation loss and its
gradients, computed by transformers on the same student, teacher and batch, in float64.

    .cache/venv/bin/python scripts/distill_peer.py DIR

DIR holds `student/` and `teacher/` (Hugging Face folders smelt saved) and `cases.json`:
{"temperature", "alpha", "inputs": [[ids] per row], "targets": [[ids, -100 outside the loss]
per row], "cases": [{"name", "topk": null | {"ids": [[K ids] per position], "logits": [[K]]}}]}.
For each case the loss is

    tau^2 * mean over loss positions of KL(p_teacher || p_student) + alpha * mean cross-entropy
    p_student = softmax(student logits / tau) over the vocabulary
    p_teacher = softmax(teacher logits / tau): the teacher model's (topk null; F.kl_div with
                log_target) or the given top-k logits renormalised over their K ids

Writes `ref_<name>.safetensors` (every student parameter's gradient, float32) and
`ref_loss.json`.
"""

import json
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM


def main(d):
    spec = json.load(open(f"{d}/cases.json"))
    load = lambda name: AutoModelForCausalLM.from_pretrained(f"{d}/{name}", attn_implementation="eager").double()
    student, teacher = load("student"), load("teacher")
    tau, alpha = spec["temperature"], spec["alpha"]
    x, y = torch.tensor(spec["inputs"]), torch.tensor(spec["targets"]).flatten()
    mask = y != -100
    with torch.no_grad():
        t_full = teacher(input_ids=x).logits.flatten(0, 1)
    losses = {}
    for case in spec["cases"]:
        student.zero_grad()
        z = student(input_ids=x).logits.flatten(0, 1)
        log_ps = F.log_softmax(z / tau, dim=-1)[mask]
        if case["topk"] is None:
            log_pt = F.log_softmax(t_full / tau, dim=-1)[mask]
            kl = F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean")
        else:
            ids = torch.tensor(case["topk"]["ids"])[mask]
            log_pt = F.log_softmax(torch.tensor(case["topk"]["logits"], dtype=torch.float64)[mask] / tau, dim=-1)
            kl = (log_pt.exp() * (log_pt - log_ps.gather(-1, ids))).sum(-1).mean()
        ce = F.cross_entropy(z, y, ignore_index=-100)
        loss = tau * tau * kl + alpha * ce
        loss.backward()
        save_file({n: p.grad.float().contiguous() for n, p in student.named_parameters()}, f"{d}/ref_{case['name']}.safetensors")
        losses[case["name"]] = loss.item()
        print(f"{case['name']}: {int(mask.sum())} loss positions, KL {kl.item():.8f}, CE {ce.item():.8f}, loss {loss.item():.10f}")
    json.dump(losses, open(f"{d}/ref_loss.json", "w"))


if __name__ == "__main__":
    main(sys.argv[1])
