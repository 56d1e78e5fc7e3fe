"""Writes crates/core/tests/data/imatrix_golden.gguf: goldens for the importance-weighted
quantisers, made by llama.cpp itself (ggml's `ggml_quantize_chunk` with an imatrix, called
through ctypes from the peer build's libggml-base.so), written with gguf-py.

Tensors: `src.<cols>` random f32 rows (normal, heavy-tailed, rows on a Q4_1-like grid as in a
dequantised checkpoint, an all-zero block, a tiny-valued row, a constant row), `imatrix.<cols>`
one importance weight per column (log-normal over six decades, some zeros), and
`q.<TYPE>.<cols>` llama.cpp's quantisation of the rows with those weights, for Q4_0, Q4_1,
Q5_0, Q8_0 (which ignores the weights), Q4_K and Q6_K (the K-quants only at 512 columns).

Run: scripts/venv.sh gguf==0.19.0 && .cache/venv/bin/python scripts/gguf_imatrix_goldens.py [path/to/libggml-base.so]
"""
import ctypes
import sys
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

lib = ctypes.CDLL(sys.argv[1] if len(sys.argv) > 1 else "/work/llama/peer/build/bin/libggml-base.so")
lib.ggml_quantize_chunk.restype = ctypes.c_size_t
lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                    ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
lib.ggml_row_size.restype = ctypes.c_size_t
lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]


def quantize(t, x, w):
    rows, cols = x.shape
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    out = np.zeros(rows * lib.ggml_row_size(int(t), cols), dtype=np.uint8)
    n = lib.ggml_quantize_chunk(int(t), x.ctypes.data, out.ctypes.data, 0, rows, cols, w.ctypes.data)
    assert n == out.size, (t, n, out.size)
    return out.reshape(rows, -1)


rng = np.random.default_rng(11)


def rows(cols):
    r = [rng.normal(size=cols) * s for s in (0.02, 0.1, 1.0, 3.0)]
    r += [rng.standard_t(3, size=cols) * 0.05 for _ in range(3)]
    for _ in range(3):  # values on a 4-bit grid per 32-block, as a dequantised Q4_1 checkpoint has
        d, m = rng.uniform(0.002, 0.01, size=cols // 32), rng.uniform(-0.08, 0.0, size=cols // 32)
        r.append((np.repeat(d, 32) * rng.integers(0, 16, size=cols) + np.repeat(m, 32)).astype(np.float16).astype(np.float64))
    z = rng.normal(size=cols) * 0.05
    z[32:64] = 0.0  # an all-zero block
    r += [z, rng.normal(size=cols) * 1e-6, np.full(cols, 0.25), np.abs(rng.normal(size=cols)) * 0.1]
    return np.stack(r).astype(np.float32)


def weights(cols):
    w = np.exp(rng.normal(size=cols) * 2.3)
    w[rng.integers(0, cols, size=cols // 16)] = 0.0
    return w.astype(np.float32)


out = "crates/core/tests/data/imatrix_golden.gguf"
wr = gguf.GGUFWriter(out, "golden")
for cols, types in ((512, (T.Q4_0, T.Q4_1, T.Q5_0, T.Q8_0, T.Q4_K, T.Q6_K)), (576, (T.Q4_0, T.Q4_1, T.Q5_0, T.Q8_0))):
    x, w = rows(cols), weights(cols)
    wr.add_tensor(f"src.{cols}", x)
    wr.add_tensor(f"imatrix.{cols}", w)
    for t in types:
        wr.add_tensor(f"q.{t.name}.{cols}", quantize(t, x, w), raw_dtype=t)
wr.write_header_to_file()
wr.write_kv_data_to_file()
wr.write_tensors_to_file()
wr.close()
print("wrote", out)
