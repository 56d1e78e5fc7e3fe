#!/usr/bin/env python3
"""Round trip: smelt fine-tunes each HF fixture (`smelt_train::run` with `init`), saves, and
transformers must load the saved folder with logits identical to smelt's.

Runs `cargo test -p smelt-train --test hf_roundtrip` with SMELT_HF_ROUNDTRIP_DIR=target/hf-roundtrip
(skip with --no-build when it already ran), then loads every <case>/ckpt/final with
AutoModelForCausalLM in f32 and compares against the smelt_logits.safetensors smelt wrote there.
Exit status 1 if any case differs by more than 1e-4 x max |logit|.
"""
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OUT = os.path.join(ROOT, "target/hf-roundtrip")


def main():
    if "--no-build" not in sys.argv:
        env = dict(os.environ, SMELT_HF_ROUNDTRIP_DIR=OUT, CARGO_TARGET_DIR=os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")))
        subprocess.run(["cargo", "test", "--release", "-p", "smelt-train", "--test", "hf_roundtrip", "--", "--nocapture"],
                       cwd=ROOT, env=env, check=True)
    ok = True
    print(f"{'case':14s} {'architecture':20s} {'max|dlogit|':>12s} {'max|logit|':>10s} {'rel':>9s}")
    for case in sorted(os.listdir(OUT)):
        d = os.path.join(OUT, case, "ckpt/final")
        s = load_file(os.path.join(d, "smelt_logits.safetensors"))
        m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        with torch.no_grad():
            ref = m(s["input_ids"].long()[None]).logits[0]
        diff = (ref - s["logits"]).abs().max().item()
        amax = ref.abs().max().item()
        rel = diff / amax
        ok &= rel <= 1e-4
        print(f"{case:14s} {type(m).__name__:20s} {diff:12.3e} {amax:10.3f} {rel:9.2e}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
