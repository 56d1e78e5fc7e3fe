"""Perplexity of a GGUF model on llama.cpp's runtime (the peer's Python bindings), scored as
`smelt perplexity` scores it: non-overlapping windows of 512 tokens, every prediction after the
first of each window (and, for comparison with llama-perplexity, the second halves only). The
KV cache is f32 and flash attention off, as in scripts/gguf_llama_golden.py.

Run: smelt tokenize --tokenizer M.gguf --input heldout.txt > ids.json
     PYTHONPATH=/work/llama/peer/py python3 scripts/llama_cpp_perplexity.py M.gguf ids.json [max_tokens=8192]
"""
import json
import math
import sys
import numpy as np
from llama_cpp import Llama

ids = json.load(open(sys.argv[2]))[: int(sys.argv[3]) if len(sys.argv) > 3 else 8192]
llm = Llama(model_path=sys.argv[1], n_ctx=512, n_batch=512, logits_all=True, n_threads=2, verbose=False, seed=0,
            type_k=0, type_v=0, flash_attn=False)
tot, n, tot2, n2 = 0.0, 0, 0.0, 0
for w in range(0, len(ids), 512):
    win = ids[w:w + 512]
    if len(win) < 2:
        continue
    llm.reset()
    llm.eval(win)
    lg = np.array(llm.scores[:len(win)], dtype=np.float64)
    m = lg.max(1, keepdims=True)
    lse = np.log(np.exp(lg - m).sum(1)) + m[:, 0]
    nll = lse[:-1] - lg[np.arange(len(win) - 1), win[1:]]
    tot += nll.sum()
    n += len(nll)
    tot2 += nll[256:].sum()
    n2 += len(nll[256:])
print(f"{sys.argv[1]}: perplexity {math.exp(tot / n):.4f} ({n} predictions), second halves {math.exp(tot2 / n2):.4f} ({n2})")
