"""CPU prompt processing (prefill) of a Hugging Face f32 model: smelt against PyTorch
(transformers), same folder, same thread count, same work.

- smelt: `smelt bench --model DIR --device cpu --batch-size 1 --seq-len N --no-forward
  --no-train --decode-tokens 0` (`prefill_tok_s`: N tokens into an empty KV cache, logits of the
  last position only; `prefill_cpu_s` its CPU time), RAYON_NUM_THREADS=t.
- PyTorch: `AutoModelForCausalLM.from_pretrained(DIR, torch_dtype=float32)`, under
  `torch.inference_mode()` and `torch.set_num_threads(t)`: `model(ids, use_cache=True,
  logits_to_keep=1)` of the same N ids (a fresh cache each time: the last position's logits
  only, as smelt's prefill).

The sides alternate `--repeats` rounds per thread count (smelt, PyTorch, smelt, ...), so both see
the same load on a shared machine; the table gives each side's best and the per-round ratios.
Per CPU-second figures as in bench/prefill_vs_llama.py (steadier at one thread on a loaded
machine). Nothing here is a test: it prints numbers (docs/PERF.md records them).

    .cache/venv/bin/python bench/hf_prefill_vs_torch.py --threads 1,2 --repeats 2 .cache/inputs/smollm2/hf
"""
import argparse, json, os, subprocess, sys, time

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("model", help="Hugging Face model folder (config.json, model.safetensors)")
ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
ap.add_argument("--repeats", type=int, default=2, help="rounds of alternating runs per thread count")
ap.add_argument("--iters", type=int, default=3, help="timed iterations within one run (median)")
ap.add_argument("--seq-len", type=int, default=512, help="prompt tokens")
ap.add_argument("--smelt", default="target/release/smelt", help="the smelt binary")
a = ap.parse_args()

IDS = [(13 * i + 977) % 40000 + 100 for i in range(a.seq_len)]
TORCH = r"""
import json, sys, time, torch
from transformers import AutoModelForCausalLM
path, threads, iters, ids = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
torch.set_num_threads(threads)
m = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
x = torch.tensor([ids])
wall, cpu = [], []
with torch.inference_mode():
    for _ in range(iters + 1):  # the first is a warm-up
        t, c = time.perf_counter(), time.process_time()
        m(x, use_cache=True, logits_to_keep=1)
        wall.append(len(ids) / (time.perf_counter() - t))
        cpu.append(len(ids) / (time.process_time() - c))
med = lambda v: sorted(v)[len(v) // 2]
print(json.dumps({"prefill_tok_s": med(wall[1:]), "per_cpu_s": med(cpu[1:])}))
"""


def torch_run(threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", TORCH, a.model, str(threads), str(a.iters), json.dumps(IDS)],
                         env=env, check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r["prefill_tok_s"], r["per_cpu_s"]


def smelt_run(threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = [a.smelt, "bench", "--model", a.model, "--device", "cpu", "--batch-size", "1", "--seq-len", str(a.seq_len),
           "--iters", str(a.iters), "--decode-tokens", "0", "--no-forward", "--no-train", "--format", "json"]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r["prefill_tok_s"], a.seq_len / r["prefill_cpu_s"]


print(f"prefill {a.seq_len} tokens, {a.model}; load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
rows = []
for t in [int(x) for x in a.threads.split(",")]:
    s_runs, p_runs = [], []
    for r in range(a.repeats):
        s_runs.append(smelt_run(t))
        p_runs.append(torch_run(t))
        print(f"  threads {t} round {r + 1}: smelt {s_runs[-1][0]:.1f} tok/s ({s_runs[-1][1]:.1f} per CPU-s), "
              f"PyTorch {p_runs[-1][0]:.1f} ({p_runs[-1][1]:.1f}); load {os.getloadavg()[0]:.2f}", flush=True)
    rw = [s[0] / p[0] for s, p in zip(s_runs, p_runs)]
    rc = [s[1] / p[1] for s, p in zip(s_runs, p_runs)]
    rows.append((t, max(s[0] for s in s_runs), max(p[0] for p in p_runs), rw,
                 max(s[1] for s in s_runs), max(p[1] for p in p_runs), rc))

rng = lambda v: f"{min(v):.2f}-{max(v):.2f}"
print()
print("| threads | prefill smelt | prefill PyTorch | ratio (best) | per round | per CPU-s smelt | per CPU-s PyTorch | ratio | per round |")
print("|---:|---:|---:|---:|---|---:|---:|---:|---|")
for t, sb, pb, rw, sc, pc, rc in rows:
    print(f"| {t} | {sb:.1f} | {pb:.1f} | **{sb / pb:.2f}** | {rng(rw)} | {sc:.1f} | {pc:.1f} | {sc / pc:.2f} | {rng(rc)} |")
print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
