#!/usr/bin/env python3
"""Live parity: transformers (f32, CPU) against smelt on the same Hugging Face folders and ids.

Unlike the committed goldens, everything here is computed now, on fresh inputs (--seed picks the
prompt and the perplexity sequence), for every fixture in crates/model/tests/fixtures/hf/ and, when
scripts/fetch_smollm2.sh has run, for SmolLM2-135M-Instruct (a chat prompt and a slice of
data/linux-doc-slice.txt.gz, tokenised by its own tokenizer.json). smelt runs through the
`hf_parity` example of smelt-infer (ids in, logits / greedy ids / mean NLL out).

Prints one table row per model; exit status 1 if any row misses a bound:
max |logit diff| <= 1e-4 x max |logit|, 64 greedy tokens identical, mean NLL within 1e-5 relative.
  python scripts/hf_parity_live.py [--seed N] [--only CASE ...] [--no-smollm2]
"""
import argparse
import gzip
import json
import os
import subprocess
import tempfile

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
FIXTURES = os.path.join(ROOT, "crates/model/tests/fixtures/hf")
SMOL = os.path.join(ROOT, ".cache/inputs/smollm2/hf")
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
GEN = 64


@torch.no_grad()
def reference(model, prompt, ppl_ids, window):
    logits = model(torch.tensor([prompt])).logits[0].float()
    p = torch.tensor([prompt])
    out = model.generate(p, attention_mask=torch.ones_like(p), do_sample=False, max_new_tokens=GEN, min_new_tokens=GEN,
                         eos_token_id=None, pad_token_id=0, top_k=None, top_p=None, temperature=None)
    greedy = out[0, len(prompt):].tolist()
    nll = []
    for w in torch.tensor(ppl_ids).split(window):
        if len(w) >= 2:
            lw = model(w[None]).logits[0].double()
            nll.append(torch.nn.functional.cross_entropy(lw[:-1], w[1:], reduction="none"))
    return logits, greedy, torch.cat(nll).mean().item()


def smelt(folder, prompt, ppl_ids, window):
    with tempfile.TemporaryDirectory() as t:
        req, out = os.path.join(t, "req.json"), os.path.join(t, "out.safetensors")
        with open(req, "w") as f:
            json.dump({"prompt_ids": prompt, "gen_tokens": GEN, "ppl_ids": ppl_ids, "window": window}, f)
        r = subprocess.run([os.path.join(TARGET, "release/examples/hf_parity"), folder, req, out],
                           check=True, capture_output=True, text=True)
        o = load_file(out)
        return o["logits"], o["greedy_ids"].tolist(), json.loads(r.stdout)


def row(name, folder, prompt, ppl_ids, window):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ref_logits, ref_greedy, ref_nll = reference(model, prompt, ppl_ids, window)
    logits, greedy, s = smelt(folder, prompt, ppl_ids, window)
    amax = ref_logits.abs().max().item()
    rel = (logits.reshape(ref_logits.shape) - ref_logits).abs().max().item() / amax
    same = next((i for i, (a, b) in enumerate(zip(greedy, ref_greedy)) if a != b), min(len(greedy), len(ref_greedy)))
    nll_rel = abs(s["mean_nll"] - ref_nll) / abs(ref_nll)
    ok = rel <= 1e-4 and greedy == ref_greedy and nll_rel <= 1e-5
    print(f"| {name:14s} | {type(model).__name__:19s} | {rel:9.2e} | {same:3d}/{GEN} | {ref_nll:9.5f} | {nll_rel:8.1e} | {'ok' if ok else 'FAIL'} |", flush=True)
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--no-smollm2", action="store_true")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-p", "smelt-infer", "--example", "hf_parity"], cwd=ROOT, check=True,
                   env=dict(os.environ, CARGO_TARGET_DIR=TARGET))
    print(f"| {'case':14s} | {'architecture':19s} | max|dl|/max|l| | greedy | mean NLL  | NLL rel  |      |")
    print("|" + "---|" * 7)
    g = torch.Generator().manual_seed(a.seed)
    ok = True
    for case in sorted(os.listdir(FIXTURES)):
        if a.only and case not in a.only:
            continue
        d = os.path.join(FIXTURES, case)
        v = json.load(open(os.path.join(d, "config.json")))["vocab_size"]
        prompt = torch.randint(0, v, (64,), generator=g).tolist()
        ppl_ids = torch.randint(0, v, (200,), generator=g).tolist()
        ok &= row(case, d, prompt, ppl_ids, 64)
    if not a.no_smollm2 and (not a.only or "smollm2" in a.only):
        if not os.path.exists(os.path.join(SMOL, "model.safetensors")):
            print(f"SKIP smollm2: {SMOL} missing (run scripts/fetch_smollm2.sh)")
        else:
            tok = AutoTokenizer.from_pretrained(SMOL)
            chat = tok.apply_chat_template([{"role": "user", "content": "Explain in two sentences what a Linux kernel module is."}],
                                           add_generation_prompt=True, tokenize=False)
            prompt = tok(chat)["input_ids"]
            text = gzip.open(os.path.join(ROOT, "data/linux-doc-slice.txt.gz"), "rt").read(40000)
            ppl_ids = tok(text)["input_ids"][1024 + 256 * a.seed % 2048:][:1024]
            ok &= row("smollm2", SMOL, prompt, ppl_ids, 256)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
