#!/usr/bin/env python3
"""Goldens for the real SmolLM2-135M-Instruct, from transformers in f32 on CPU.

Needs the folder made by scripts/fetch_smollm2.sh (.cache/inputs/smollm2/hf). Writes:
  crates/infer/tests/fixtures/smollm2/golden.safetensors   (committed, ~100 KB)
      input_ids (64,)           a chat prompt tokenised by the model's own tokenizer.json
      logit_cols (K,)           the columns kept: every row's top 8 plus a fixed random set
      logits_sub (64, K)        the logits at those columns
      logits_absmax (1,)        max |logit| over the full (64, 49152) logits
      greedy_ids (64,), greedy_margin (64,)
      ppl_ids (1024,)           the first 1024 tokens of data/linux-doc-slice.txt.gz
      ppl_nll (N,), ppl_mean (1,)   windows of 256
  .cache/inputs/smollm2/golden_full.safetensors   (not committed: full logits, 12 MB)
"""
import gzip
import os

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
HF = os.path.join(ROOT, ".cache/inputs/smollm2/hf")
OUT = os.path.join(ROOT, "crates/infer/tests/fixtures/smollm2")
PROMPT_LEN, GEN_LEN, PPL_LEN, WINDOW, EXTRA_COLS = 64, 64, 1024, 256, 256


@torch.no_grad()
def main():
    tok = AutoTokenizer.from_pretrained(HF)
    model = AutoModelForCausalLM.from_pretrained(HF, dtype=torch.float32).eval()
    question = ("I am planning a short trip to Europe next spring and would like to see a famous city with "
                "museums and good food. What is the capital of France, and what is it known for?")
    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert len(ids) >= PROMPT_LEN, f"chat prompt has {len(ids)} tokens; lengthen the question"
    # Keep the end (the assistant header) so greedy answers the question.
    prompt = torch.tensor(ids[-PROMPT_LEN:])[None]
    logits = model(prompt).logits[0].float()
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=GEN_LEN,
                         min_new_tokens=GEN_LEN, eos_token_id=None, pad_token_id=0, output_scores=True,
                         return_dict_in_generate=True, top_k=None, top_p=None, temperature=None)
    greedy = out.sequences[0, PROMPT_LEN:]
    top2 = torch.stack([s[0].float().topk(2).values for s in out.scores])
    print("prompt:", repr(tok.decode(prompt[0])))
    print("greedy:", repr(tok.decode(greedy)))

    text = gzip.open(os.path.join(ROOT, "data/linux-doc-slice.txt.gz"), "rt").read(20000)
    ppl_ids = torch.tensor(tok(text)["input_ids"][:PPL_LEN])
    assert len(ppl_ids) == PPL_LEN
    nll = []
    for w in ppl_ids.split(WINDOW):
        if len(w) >= 2:
            lw = model(w[None]).logits[0].double()
            nll.append(torch.nn.functional.cross_entropy(lw[:-1], w[1:], reduction="none"))
    nll = torch.cat(nll)

    g = torch.Generator().manual_seed(0)
    cols = torch.cat([logits.topk(8, dim=1).indices.flatten(), torch.randint(0, logits.shape[1], (EXTRA_COLS,), generator=g)])
    cols = torch.unique(cols)
    os.makedirs(OUT, exist_ok=True)
    save_file({
        "input_ids": prompt[0].to(torch.int32),
        "logit_cols": cols.to(torch.int32),
        "logits_sub": logits[:, cols].contiguous(),
        "logits_absmax": logits.abs().max().reshape(1),
        "greedy_ids": greedy.to(torch.int32).contiguous(),
        "greedy_margin": (top2[:, 0] - top2[:, 1]).contiguous(),
        "ppl_ids": ppl_ids.to(torch.int32),
        "ppl_nll": nll.float(),
        "ppl_mean": nll.mean().float().reshape(1),
    }, os.path.join(OUT, "golden.safetensors"), metadata={"window": str(WINDOW)})
    save_file({"logits": logits.contiguous()}, os.path.join(ROOT, ".cache/inputs/smollm2/golden_full.safetensors"))
    print(f"max|logit| {logits.abs().max():.3f}  min greedy margin {(top2[:, 0] - top2[:, 1]).min():.3e}  "
          f"ppl: {len(nll)} scored, mean NLL {nll.mean():.6f} (ppl {nll.mean().exp():.3f})  kept {len(cols)} logit columns")


if __name__ == "__main__":
    main()
