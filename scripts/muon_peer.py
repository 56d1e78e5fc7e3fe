"""The PyTorch side of crates/train/tests/muon_peer.rs: Muon steps as Keller Jordan's reference
(github.com/KellerJordan/Muon, muon.py: `zeropower_via_newtonschulz5`, `muon_update`, and
`MuonWithAuxAdam`'s split: Muon for hidden matrices, AdamW for the rest), in float32 throughout
(the reference casts the Newton-Schulz iterate to bfloat16; smelt keeps f32, so this does too).

    .cache/venv/bin/python scripts/muon_peer.py DIR

DIR/case.json: {"muon": {lr, momentum, weight_decay}, "adamw": {lr, betas, eps, weight_decay},
"params": [{"name", "shape", "data", "muon": bool}], "grads": [[flat per param] per step],
"clip": max_norm}. Each step: torch.nn.utils.clip_grad_norm_, then the updates. Writes
DIR/ref.json: {name: flat values after the last step}.
"""

import json
import sys

import torch


def zeropower_via_newtonschulz5(G, steps):
    assert G.ndim >= 2
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.float()  # the reference: G.bfloat16()
    if G.size(-2) > G.size(-1):
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    if G.size(-2) > G.size(-1):
        X = X.mT
    return X


def muon_update(grad, momentum, beta=0.95, ns_steps=5, nesterov=True):
    momentum.lerp_(grad, 1 - beta)
    update = grad.lerp_(momentum, beta) if nesterov else momentum
    update = zeropower_via_newtonschulz5(update, steps=ns_steps)
    update *= max(1, grad.size(-2) / grad.size(-1)) ** 0.5
    return update


def main(d):
    case = json.load(open(f"{d}/case.json"))
    mu, ad = case["muon"], case["adamw"]
    params = [torch.nn.Parameter(torch.tensor(p["data"], dtype=torch.float32).reshape(p["shape"])) for p in case["params"]]
    is_muon = [p["muon"] for p in case["params"]]
    aux = [p for p, m in zip(params, is_muon) if not m]
    adamw = torch.optim.AdamW(aux, lr=ad["lr"], betas=tuple(ad["betas"]), eps=ad["eps"], weight_decay=ad["weight_decay"])
    buffers = [torch.zeros_like(p) if m else None for p, m in zip(params, is_muon)]
    for grads in case["grads"]:
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g, dtype=torch.float32).reshape(p.shape)
        torch.nn.utils.clip_grad_norm_(params, case["clip"])
        adamw.step()
        with torch.no_grad():
            for p, m, buf in zip(params, is_muon, buffers):
                if m:
                    update = muon_update(p.grad.clone(), buf, beta=mu["momentum"])
                    p.mul_(1 - mu["lr"] * mu["weight_decay"])
                    p.add_(update.reshape(p.shape), alpha=-mu["lr"])
    out = {c["name"]: p.detach().flatten().tolist() for c, p in zip(case["params"], params)}
    out.update({c["name"] + ".momentum_buffer": b.flatten().tolist() for c, b in zip(case["params"], buffers) if b is not None})
    json.dump(out, open(f"{d}/ref.json", "w"))


if __name__ == "__main__":
    main(sys.argv[1])
