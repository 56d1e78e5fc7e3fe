"""Dump every named intermediate of llama.cpp's forward passes as .npy, for bitwise comparison
with `smelt trace --dump`.

Runs the prompt and then greedy decode steps with exactly the settings of
scripts/gguf_llama_golden.py (same Llama(...) call), with a ggml eval callback (cb_eval) that
copies each computed f32 tensor. Step 0 is the prompt batch, step s ≥ 1 the s-th decode step:
OUT/step<s>/<name>.npy, in numpy order (ggml's ne reversed: e.g. Qcur-0 is (T, H, D) after the
reshape), plus OUT/step<s>/order.txt (names in the order ggml computed them, with op and shape).

Run: PYTHONPATH=/work/llama/peer/py LLAMA_CPP_LIB_PATH=/work/llama/peer/build/bin \
     python3 scripts/llama_dump.py MODEL.gguf OUT_DIR PROMPT_INDEX [N_DECODE]
"""
import ctypes, os, sys
import numpy as np
import llama_cpp
import llama_cpp.llama as llama_mod

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_llama_golden import PROMPTS  # the golden prompts, one list for both scripts

# struct ggml_tensor (ggml.h): type @0, ne @16, nb @48, op @80, data @248, name @256.
class GgmlTensor(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int32), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int32), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64)]

state = {"dir": None, "order": [], "seen": {}}

@llama_cpp.ggml_backend_sched_eval_callback
def cb(t, ask, user):
    if ask:
        return True
    g = GgmlTensor.from_address(t)
    name = g.name.decode()
    if state["dir"] is None or g.type != 0 or not g.data:  # f32 only
        return True
    ne = [g.ne[i] for i in range(4)]
    nb = [g.nb[i] for i in range(4)]
    n = int(np.prod(ne))
    span = sum((ne[i] - 1) * nb[i] for i in range(4)) + 4
    buf = (ctypes.c_char * span).from_address(g.data)
    base = np.frombuffer(buf, dtype=np.uint8)
    arr = np.lib.stride_tricks.as_strided(base.view(np.float32) if span % 4 == 0 else np.frombuffer(bytes(buf), np.float32),
                                          shape=tuple(reversed(ne)), strides=tuple(reversed(nb))).copy()
    k = state["seen"].get(name, 0)
    state["seen"][name] = k + 1
    fname = name if k == 0 else f"{name}#{k}"
    np.save(os.path.join(state["dir"], fname.replace("/", "_") + ".npy"), arr)
    state["order"].append(f"{fname} op={g.op} ne={ne}")
    return True

_orig = llama_mod.llama_cpp.llama_context_default_params
def _params():
    p = _orig()
    p.cb_eval = cb
    return p
llama_mod.llama_cpp.llama_context_default_params = _params

def main():
    path, out, pi = sys.argv[1], sys.argv[2], int(sys.argv[3])
    n_dec = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    llm = llama_cpp.Llama(model_path=path, n_ctx=512, n_batch=512, logits_all=True, n_threads=2, verbose=False,
                          seed=0, type_k=0, type_v=0, flash_attn=False)
    toks = llm.tokenize(PROMPTS[pi].encode(), add_bos=True, special=True)
    llm.reset()
    ids = []
    for step in range(n_dec + 1):
        d = os.path.join(out, f"step{step}")
        os.makedirs(d, exist_ok=True)
        state.update(dir=d, order=[], seen={})
        llm.eval(toks if step == 0 else [ids[-1]])
        open(os.path.join(d, "order.txt"), "w").write("\n".join(state["order"]) + "\n")
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        np.save(os.path.join(d, "logits_last.npy"), logits)
        ids.append(int(np.argmax(logits)))
    open(os.path.join(out, "tokens.txt"), "w").write(" ".join(map(str, toks)) + "\n" + " ".join(map(str, ids)) + "\n")
    print("prompt", toks, "greedy", ids)

main()
