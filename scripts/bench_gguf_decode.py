"""Batch-1 decode speed: smelt against llama.cpp (llama-cpp-python 0.3.36, built from the same
sdist as INPUTS.md §1), same GGUF file, same thread count, same work: a 16-token prompt, then
128 tokens decoded one at a time with a KV cache (logits of the last position only). Each side
runs `--repeats` times, one run of each in turn, and the best run is reported (the machine is
shared). The uptime load average is printed before and after.

Run: PYTHONPATH=.cache/pyllama python3 scripts/bench_gguf_decode.py --threads 2 A.gguf [B.gguf ...]
"""
import argparse, json, os, subprocess, time
from llama_cpp import Llama

ap = argparse.ArgumentParser()
ap.add_argument("models", nargs="+")
ap.add_argument("--threads", type=int, default=os.cpu_count())
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--smelt", default="target/release/smelt")
ap.add_argument("--baseline", help="a second smelt binary (e.g. an older build), run in turn with the others: on a loaded machine its ratio is steadier than the one to llama.cpp")
a = ap.parse_args()

PROMPT = list(range(1000, 1016))
DECODE = [(7 * i + 300) % 40000 + 100 for i in range(128)]

def llama_cpp_run(llm):
    llm.reset()
    llm.eval(PROMPT)
    t = time.perf_counter()
    for tok in DECODE:
        llm.eval([tok])
    return len(DECODE) / (time.perf_counter() - t)

def smelt(path, binary=None):
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    out = subprocess.run([binary or a.smelt, "bench", "--model", path, "--batch-size", "1", "--seq-len", "16", "--iters", "1",
                          "--decode-tokens", str(len(DECODE)), "--format", "json"], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["decode_tok_s"]

print("load average before:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
print(f"threads {a.threads}; 16-token prompt, {len(DECODE)} decoded tokens; best of {a.repeats}")
print(f"{'model':<40} {'smelt tok/s':>12} {'llama.cpp tok/s':>16} {'ratio':>7}" + (f" {'baseline tok/s':>15} {'smelt/baseline':>15}" if a.baseline else ""))
for m in a.models:
    llm = Llama(model_path=m, n_ctx=256, n_batch=64, n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    s = l = b = 0.0
    # One run of each side per repeat, alternating, so that both see the same load.
    for _ in range(a.repeats):
        s = max(s, smelt(m))
        if a.baseline:
            b = max(b, smelt(m, a.baseline))
        l = max(l, llama_cpp_run(llm))
    del llm
    extra = f" {b:>15.1f} {s / b:>15.2f}" if a.baseline else ""
    print(f"{os.path.basename(m):<40} {s:>12.1f} {l:>16.1f} {s / l:>7.2f}{extra}", flush=True)
print("load average after:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
