"""CPU prompt processing (prefill) and batch-1 decode: smelt against llama.cpp (llama-cpp-python
0.3.36 built by scripts/build_llama_cpp.sh), same GGUF file, same thread count, same work.

- prefill: `smelt bench --model F --device cpu --batch-size 1 --seq-len N` (`prefill_tok_s`: N
  tokens into an empty KV cache, logits of the last position only) against llama.cpp's
  `Llama(n_threads=t, n_threads_batch=t, n_batch=N).eval(ids)` of N ids after `reset()` (which
  computes the last position's logits only, as smelt's prefill does). The ids differ (smelt's
  bench draws its own); neither engine's speed depends on them.
- decode: `--decode-tokens D` single tokens after a 16-token prompt, on both sides.

For each file and thread count the sides run in turn, `--repeats` times (smelt, llama.cpp,
smelt, ...), so both see the same load on a shared machine; the table gives each side's best
run and the range of the per-round ratios (the noise). Prefill is also given per CPU-second
(tokens / CPU time of the process's threads: smelt's `prefill_cpu_s`, llama.cpp's
`time.process_time()`): on a machine whose cores other work shares, a one-thread run's CPU
time does not count the time others held the core, so that ratio is the steadier one at one
thread. (At more threads it is not comparable: llama.cpp's idle threads spin.) The thread count is a list, so the same
program runs at 16 threads on a larger CPU (carry the smelt binary and the built peer):

    PYTHONPATH=.cache/llama.cpp-peer/py .cache/venv/bin/python bench/prefill_vs_llama.py \\
        --threads 1,2 --repeats 3 A.gguf [B.gguf ...]

On a machine without the SmolLM2 files and llama-cpp-python (the GPU machine, whose 16-core CPU
issue 18 also measures), the same program makes its models and uses `llama-bench` as the peer:

    --random-smollm2 DIR --tokenizer T.json [--types q4_1,q8_0,q4_k,q6_k,f16]
        random-init models at SmolLM2-135M's shape and vocabulary (bench/torch_gpu.py --save-hf,
        then smelt's `export-gguf` at each type; the published Q4_1 file is over the device
        tool's carry limit, so Q4_1 is smelt's export there); prefill speed does not depend on
        the weights' values
    --llama-bench PATH
        llama.cpp's `llama-bench` (CPU build: scripts/gpu_llama_cpp.sh build-cpu) instead of
        llama-cpp-python: `-p N -n 0 -b N -ub N -t T -ngl 0` (pp N), decode `-p 0 -n D` (tg D,
        from an empty cache); no per-CPU-second figure for that side

Nothing here is a test: it prints numbers (docs/PERF.md records them).
"""
import argparse, json, os, subprocess, sys, time

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("models", nargs="*", help="GGUF files")
ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (RAYON_NUM_THREADS for smelt, n_threads and n_threads_batch for llama.cpp)")
ap.add_argument("--repeats", type=int, default=3, help="rounds of alternating runs per file and thread count")
ap.add_argument("--iters", type=int, default=3, help="timed iterations within one run (smelt's median; llama.cpp's median)")
ap.add_argument("--seq-len", type=int, default=512, help="prompt tokens")
ap.add_argument("--decode-tokens", type=int, default=64, help="single-token evals after a 16-token prompt")
ap.add_argument("--smelt", default="target/release/smelt", help="the smelt binary")
ap.add_argument("--no-decode", action="store_true", help="time prefill only")
ap.add_argument("--llama-bench", help="llama.cpp's llama-bench binary (CPU build) as the peer instead of llama-cpp-python")
ap.add_argument("--random-smollm2", metavar="DIR", help="make random-init SmolLM2-135M-shape GGUFs in DIR (needs torch and --tokenizer) and time them")
ap.add_argument("--tokenizer", help="SmolLM2's tokenizer.json, for --random-smollm2")
ap.add_argument("--types", default="q4_1,q8_0,q4_k,q6_k,f16", help="export types for --random-smollm2")
a = ap.parse_args()
if not a.models and not a.random_smollm2:
    ap.error("give GGUF files or --random-smollm2 DIR")

PROMPT16 = list(range(1000, 1016))
DECODE = [(7 * i + 300) % 40000 + 100 for i in range(a.decode_tokens)]
IDS = [(13 * i + 977) % 40000 + 100 for i in range(a.seq_len)]


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def llama_run(llm):
    pre, cpu = [], []
    for _ in range(a.iters + 1):  # the first is a warm-up, as smelt's bench does
        llm.reset()
        t, c = time.perf_counter(), time.process_time()
        llm.eval(IDS)
        pre.append(len(IDS) / (time.perf_counter() - t))
        cpu.append(len(IDS) / (time.process_time() - c))
    dec = float("nan")
    if not a.no_decode:
        ds = []
        for _ in range(max(1, min(a.iters, 3))):
            llm.reset()
            llm.eval(PROMPT16)
            t = time.perf_counter()
            for tok in DECODE:
                llm.eval([tok])
            ds.append(len(DECODE) / (time.perf_counter() - t))
        dec = median(ds)
    return median(pre[1:]), dec, median(cpu[1:])


def llama_bench_run(path, threads):
    """llama-bench's pp N (and tg D): mean tokens/s of --iters repetitions after its warm-up."""
    def ts(p, n):
        cmd = [a.llama_bench, "-m", path, "-p", str(p), "-n", str(n), "-b", str(a.seq_len), "-ub", str(a.seq_len),
               "-t", str(threads), "-ngl", "0", "-r", str(a.iters), "-o", "json"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        return json.loads(out.stdout)[0]["avg_ts"]
    dec = float("nan") if a.no_decode else ts(0, len(DECODE))
    return ts(a.seq_len, 0), dec, float("nan")


def make_random_smollm2(d):
    """Random-init HF folder at SmolLM2-135M's shape (bench/torch_gpu.py --save-hf), exported by
    smelt at each of --types; returns the GGUF paths."""
    if not a.tokenizer:
        ap.error("--random-smollm2 needs --tokenizer (SmolLM2's tokenizer.json)")
    here = os.path.dirname(os.path.abspath(__file__))
    hf = os.path.join(d, "hf")
    if not os.path.exists(os.path.join(hf, "model.safetensors")):
        subprocess.run([sys.executable, os.path.join(here, "torch_gpu.py"), "--dim", "576", "--layers", "30", "--heads", "9",
                        "--kv-heads", "3", "--ffn", "1536", "--vocab-size", "49152", "--save-hf", hf], check=True)
    if not os.path.exists(os.path.join(hf, "tokenizer.json")):
        import shutil
        shutil.copy(a.tokenizer, os.path.join(hf, "tokenizer.json"))
    paths = []
    for ty in a.types.split(","):
        f = os.path.join(d, f"smollm2-random-{ty}.gguf")
        if not os.path.exists(f):
            r = subprocess.run([a.smelt, "export-gguf", "--model", hf, "--type", ty, "--pre", "smollm", "--output", f],
                               capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"smelt export-gguf --type {ty} failed:\n{r.stderr[-3000:]}")
        paths.append(f)
    return paths


def smelt_run(path, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = [a.smelt, "bench", "--model", path, "--device", "cpu", "--batch-size", "1", "--seq-len", str(a.seq_len),
           "--iters", str(a.iters), "--decode-tokens", str(0 if a.no_decode else len(DECODE)), "--no-forward", "--format", "json"]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r["prefill_tok_s"], (float("nan") if a.no_decode else r["decode_tok_s"]), a.seq_len / r["prefill_cpu_s"]


def fmt_range(rs):
    return f"{min(rs):.2f}-{max(rs):.2f}" if len(rs) > 1 else f"{rs[0]:.2f}"


threads = [int(t) for t in a.threads.split(",")]
if a.random_smollm2:
    a.models += make_random_smollm2(a.random_smollm2)
if not a.llama_bench:
    from llama_cpp import Llama
print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")
print(f"prefill {a.seq_len} tokens (n_batch {a.seq_len}); " + ("no decode; " if a.no_decode else f"decode {len(DECODE)} tokens after 16; ")
      + f"best of {a.repeats} alternating rounds, {a.iters} timed iterations each", flush=True)
rows = []
for m in a.models:
    for t in threads:
        if a.llama_bench:
            peer = lambda: llama_bench_run(m, t)
        else:
            llm = Llama(model_path=m, n_ctx=max(a.seq_len, 16 + len(DECODE)) + 16, n_batch=a.seq_len, n_ubatch=a.seq_len,
                        n_threads=t, n_threads_batch=t, verbose=False)
            peer = lambda: llama_run(llm)
        sp, sd, lp, ld, rp, rd, sc, lc, rc = [], [], [], [], [], [], [], [], []
        for _ in range(a.repeats):
            p, d, pc = smelt_run(m, t)
            q, e, qc = peer()
            sp.append(p); sd.append(d); lp.append(q); ld.append(e); sc.append(pc); lc.append(qc)
            rp.append(p / q); rd.append(d / e); rc.append(pc / qc)
        llm = peer = None
        rows.append((os.path.basename(m), t, max(sp), max(lp), rp, max(sd), max(ld), rd, max(sc), max(lc), rc))
        r = rows[-1]
        print(f"  {r[0]} t={t}: prefill {r[2]:.1f} vs {r[3]:.1f} tok/s (rounds {fmt_range(rp)}), per CPU-s {r[8]:.1f} vs {r[9]:.1f} "
              f"(rounds {fmt_range(rc)}), decode {r[5]:.1f} vs {r[6]:.1f} (rounds {fmt_range(rd)}); load {os.getloadavg()[0]:.2f}",
              file=sys.stderr, flush=True)

print()
print("| file | threads | prefill smelt | prefill llama.cpp | ratio (best) | ratio per round | per CPU-s smelt | per CPU-s llama.cpp | ratio | per round | decode smelt | decode llama.cpp | ratio (best) | ratio per round |")
print("|---|---:|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---|")
for (f, t, sp, lp, rp, sd, ld, rd, sc, lc, rc) in rows:
    print(f"| {f} | {t} | {sp:.1f} | {lp:.1f} | **{sp / lp:.2f}** | {fmt_range(rp)} | {sc:.1f} | {lc:.1f} | {sc / lc:.2f} | {fmt_range(rc)} "
          f"| {sd:.1f} | {ld:.1f} | **{sd / ld:.2f}** | {fmt_range(rd)} |")
# Thread scaling: best prefill at t threads over best at the smallest count, each side.
if len(threads) > 1:
    print()
    print("| file | threads | smelt prefill scaling | llama.cpp prefill scaling |")
    print("|---|---:|---:|---:|")
    base = {}
    for (f, t, sp, lp, *_r) in rows:
        if f not in base:
            base[f] = (sp, lp, t)
        b = base[f]
        print(f"| {f} | {t} vs {b[2]} | {sp / b[0]:.2f}× | {lp / b[1]:.2f}× |")
print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
