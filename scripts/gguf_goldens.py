"""Writes crates/core/tests/data/quant_golden.gguf: block-format goldens from gguf-py (the
reference GGUF library, gguf==0.19.0 in the project venv).

For every type smelt supports: `deq.<type>` holds random blocks of that type (scales kept
finite) and `deq.<type>.f32` what gguf-py's numpy dequantiser makes of them; `qsrc` holds random
f32 rows and `q.<type>` gguf-py's quantisation of them (for the types gguf-py can quantise).

Run: scripts/venv.sh gguf==0.19.0 && .cache/venv/bin/python scripts/gguf_goldens.py
"""
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

rng = np.random.default_rng(5)
ROWS, COLS = 4, 512

def random_blocks(t):
    bs, ts = gguf.GGML_QUANT_SIZES[t]
    nb = ROWS * COLS // bs
    raw = rng.integers(0, 256, size=(nb, ts), dtype=np.uint8)
    def f16(shape, lo=-0.05, hi=0.05):
        return rng.uniform(lo, hi, size=shape).astype(np.float16).view(np.uint8).reshape(nb, -1)
    if t == T.F16:
        raw = rng.normal(size=(nb, 1)).astype(np.float16).view(np.uint8).reshape(nb, 2)
    elif t == T.BF16:
        raw = (rng.normal(size=(nb,)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(nb, 2)
    elif t == T.F32:
        raw = rng.normal(size=(nb,)).astype(np.float32).view(np.uint8).reshape(nb, 4)
    elif t in (T.Q8_0, T.Q4_0, T.Q5_0):
        raw[:, 0:2] = f16(nb)
    elif t == T.Q4_1:
        raw[:, 0:4] = f16((nb, 2))
    elif t == T.Q4_K:
        raw[:, 0:4] = f16((nb, 2), 0, 0.01)
    elif t == T.Q6_K:
        raw[:, 208:210] = f16(nb, -0.002, 0.002)
    return raw.reshape(ROWS, -1)

w = gguf.GGUFWriter("crates/core/tests/data/quant_golden.gguf", "golden")
for t in (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q4_K, T.Q6_K):
    raw = random_blocks(t)
    if t == T.F32:
        w.add_tensor(f"deq.{t.name}", raw.view(np.float32))
    elif t == T.F16:
        w.add_tensor(f"deq.{t.name}", raw.view(np.float16))
    else:
        w.add_tensor(f"deq.{t.name}", raw, raw_dtype=t)
    w.add_tensor(f"deq.{t.name}.f32", dequantize(raw, t).astype(np.float32).reshape(ROWS, COLS))
src = (rng.normal(size=(ROWS, COLS)) * rng.uniform(0.01, 2.0, size=(ROWS, 1))).astype(np.float32)
src[0, :32] = 0.0  # an all-zero block
w.add_tensor("qsrc", src)
for t in (T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0):
    q = quantize(src, t)
    if t == T.F16:
        w.add_tensor(f"q.{t.name}", q)
    else:
        w.add_tensor(f"q.{t.name}", q, raw_dtype=t)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print("wrote crates/core/tests/data/quant_golden.gguf")
