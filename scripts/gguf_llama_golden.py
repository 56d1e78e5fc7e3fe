"""Greedy decoding goldens from llama.cpp (llama-cpp-python 0.3.36) for a GGUF model.

For each prompt: the prompt tokens as llama.cpp tokenises them for that file (BOS per
tokenizer.ggml.add_bos_token, special tokens parsed), 64 greedy tokens, and at every step the
top-20 logits (ids and values). Writes JSON (small enough to commit).

The KV cache is f32 (type_k = type_v = GGML_TYPE_F32, no flash attention), like smelt's:
llama.cpp's default f16 cache alone moves the logits of this model by up to ~0.9.

Run: PYTHONPATH=.cache/llama.cpp-peer/py python3   # (scripts/build_llama_cpp.sh makes it)
     scripts/gguf_llama_golden.py MODEL.gguf OUT.json [N_TOKENS [TOP_K]]
"""
import json, sys
import numpy as np
from llama_cpp import Llama

PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
]

def main():
    path, out = sys.argv[1], sys.argv[2]
    n_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    top_k = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    llm = Llama(model_path=path, n_ctx=512, n_batch=512, logits_all=True, n_threads=2, verbose=False, seed=0,
                type_k=0, type_v=0, flash_attn=False)
    cases = []
    for prompt in PROMPTS:
        toks = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        llm.reset()
        llm.eval(toks)
        ids, top = [], []
        for _ in range(n_tokens):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            order = np.argsort(-logits, kind="stable")[:top_k]
            top.append({"ids": order.tolist(), "logits": [float(logits[i]) for i in order]})
            nxt = int(order[0])
            ids.append(nxt)
            if nxt == llm.token_eos():
                break
            llm.eval([nxt])
        cases.append({"prompt": prompt, "prompt_ids": toks, "ids": ids, "top": top,
                      "text": llm.detokenize(ids).decode("utf-8", "replace")})
        print(repr(prompt[:40]), len(toks), "prompt tokens ->", repr(cases[-1]["text"][:60]))
    json.dump({"model": path.split("/")[-1], "llama_cpp_python": "0.3.36", "cases": cases}, open(out, "w"))

if __name__ == "__main__":
    main()
