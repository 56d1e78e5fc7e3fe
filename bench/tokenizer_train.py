#!/usr/bin/env python3
"""Tokenizer speed: smelt vs Hugging Face `tokenizers` (the peer), same settings, same corpus.

Training: byte-level BPE, GPT-2 split regex, vocab 8192, min_frequency 2, one special token;
smelt through its CLI (`smelt tokenizer`, wall time of the whole process, saving included),
tokenizers' BpeTrainer in-process (train() only). Also checks both learn the same merges.
Encoding: every line of the corpus with smelt's encode_batch (examples/encode_bench) and
tokenizers' encode_batch, best of 3, using the tokenizer smelt trained and Qwen3's.

Usage: scripts/venv.sh tokenizers; scripts/fetch_inputs.sh --bench; .cache/venv/bin/python bench/tokenizer_train.py
Corpora: the bundled data/linux-doc-slice.txt.gz (1 MB) and, when fetched, linux-doc-6.1's
Documentation (21 MB).
"""
import gzip, json, os, platform, subprocess, sys, tempfile, time
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 8192


def build():
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "smelt", "-p", "smelt-tokenizer", "--example", "encode_bench"],
                   check=True, cwd=ROOT)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release/smelt"), os.path.join(target, "release/examples/encode_bench")


def hf_train(corpus, out):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=VOCAB, min_frequency=2, special_tokens=["<|endoftext|>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    t = time.perf_counter()
    tok.train([corpus], tr)
    dt = time.perf_counter() - t
    tok.save(out)
    return dt


def merges(path):
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in json.load(open(path))["model"]["merges"]]


def hf_encode(tok_path, corpus):
    tok = Tokenizer.from_file(tok_path)
    lines = open(corpus, encoding="utf-8").read().split("\n")
    nbytes = os.path.getsize(corpus)
    best = 1e9
    for _ in range(3):
        t = time.perf_counter()
        tok.encode_batch(lines, add_special_tokens=False)
        best = min(best, time.perf_counter() - t)
    return nbytes / best / 1e6


def main():
    smelt, encode_bench = build()
    d = tempfile.mkdtemp()
    small = os.path.join(d, "linux-doc-slice.txt")
    open(small, "w", encoding="utf-8").write(gzip.open(os.path.join(ROOT, "data/linux-doc-slice.txt.gz"), "rt", encoding="utf-8").read())
    corpora = [("bundled slice", small)]
    big = os.path.join(ROOT, ".cache/inputs/linux-doc/linux-doc.txt")
    if os.path.exists(big):
        corpora.append(("linux-doc-6.1", big))
    else:
        print("note: run scripts/fetch_inputs.sh --bench for the 21 MB corpus", file=sys.stderr)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; tokenizers {__import__('tokenizers').__version__}")
    qwen = os.path.join(ROOT, ".cache/inputs/qwen3/tokenizer.json")
    for name, corpus in corpora:
        mb = os.path.getsize(corpus) / 1e6
        out_s, out_h = os.path.join(d, "smelt.json"), os.path.join(d, "hf.json")
        t = time.perf_counter()
        subprocess.run([smelt, "tokenizer", "--input", corpus, "--vocab-size", str(VOCAB), "--output", out_s],
                       check=True, stderr=subprocess.DEVNULL)
        ts = time.perf_counter() - t
        th = hf_train(corpus, out_h)
        same = merges(out_s) == merges(out_h)
        print(f"[{name}, {mb:.1f} MB] train vocab {VOCAB}: smelt {ts:.2f}s, tokenizers {th:.2f}s, "
              f"speedup {th / ts:.2f}x; identical merges: {same}")
        for tname, tpath in [("smelt-trained 8k", out_s), ("Qwen3", qwen)]:
            if not os.path.exists(tpath):
                continue
            r = json.loads(subprocess.run([encode_bench, tpath, corpus, "3"], check=True, capture_output=True, text=True).stdout)
            h = hf_encode(tpath, corpus)
            print(f"[{name}] encode_batch lines, {tname}: smelt {r['mb_per_s']:.1f} MB/s, tokenizers {h:.1f} MB/s, "
                  f"speedup {r['mb_per_s'] / h:.2f}x")


if __name__ == "__main__":
    main()
