"""Golden for smelt's perplexity on a GGUF against llama.cpp's runtime (the peer's Python
bindings): the bundled corpus's first characters tokenised by llama.cpp, scored in windows
as `smelt perplexity --seq-len W` scores them (every prediction after the first of a window),
with all logits of each window from one batch (f32 KV cache, no flash attention).

Run: PYTHONPATH=/work/llama/peer/py python3 scripts/gguf_ppl_golden.py MODEL.gguf OUT.json [W=128] [N=512]
"""
import gzip
import json
import os
import sys
import numpy as np
from llama_cpp import Llama

path, out = sys.argv[1], sys.argv[2]
W = int(sys.argv[3]) if len(sys.argv) > 3 else 128
N = int(sys.argv[4]) if len(sys.argv) > 4 else 512
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
text = gzip.open(os.path.join(root, "data/linux-doc-slice.txt.gz"), "rt", encoding="utf-8").read(20000)
llm = Llama(model_path=path, n_ctx=W, n_batch=W, logits_all=True, n_threads=2, verbose=False, seed=0,
            type_k=0, type_v=0, flash_attn=False)
ids = llm.tokenize(text.encode(), add_bos=False, special=False)[:N]
assert len(ids) == N, f"text gives only {len(ids)} tokens"
nlls = []
for w in range(0, N, W):
    win = ids[w:w + W]
    llm.reset()
    llm.eval(win)
    lg = np.array(llm.scores[:len(win)], dtype=np.float64)
    m = lg.max(1, keepdims=True)
    lse = np.log(np.exp(lg - m).sum(1)) + m[:, 0]
    nlls.append(float((lse[:-1] - lg[np.arange(len(win) - 1), win[1:]]).mean()))
json.dump({"model": os.path.basename(path), "seq_len": W, "ids": ids, "window_mean_nll": nlls}, open(out, "w"))
print(out, nlls)
