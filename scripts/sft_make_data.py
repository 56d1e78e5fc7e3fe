"""Builds an instruction set from real text for the SFT demonstration (scripts/sft_smollm2.sh).

    python3 scripts/sft_make_data.py OUT_DIR [N_TRAIN N_VAL N_TEST]

The text is the bundled Linux kernel documentation slice (data/linux-doc-slice.jsonl.gz: 95
real .rst files, see data/README.md). Its prose sentences become one task with a checkable
answer:

    user:      What is the last word of this sentence?\\n\\n<sentence>
    assistant: <its last word>

The files are split by document (a hash of the file name): training examples come from one
set of documents, the validation (held-out loss) and test (task metric) examples from the
others, so no sentence is seen in training. Writes OUT_DIR/train.jsonl and val.jsonl
({"messages": [...]}) and test.jsonl ({"prompt", "answer"}). Standard library only.
"""

import gzip
import hashlib
import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "What is the last word of this sentence?"


def sentences(text):
    """Plain prose sentences of 6..30 words: rst markup, code, tables and lists are skipped."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines = para.strip().splitlines()
        if not lines or any(re.match(r"^\s*([-=~^*#`.|+:]|\d+\.|\.\.)", l) for l in lines):
            continue
        if any(c in para for c in "`*|<>{}[]\\_"):
            continue
        flat = " ".join(l.strip() for l in lines)
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", flat):
            words = s.split()
            if 6 <= len(words) <= 30 and s.endswith(".") and re.fullmatch(r"[A-Za-z][A-Za-z'-]*\.", words[-1]):
                out.append(s)
    return out


def main(out, n_train=2000, n_val=100, n_test=50):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, held = [], []
    with gzip.open(ROOT / "data/linux-doc-slice.jsonl.gz", "rt") as f:
        for line in f:
            doc = json.loads(line)
            part = int(hashlib.sha256(doc["source"].encode()).hexdigest(), 16) % 5
            (held if part == 0 else train).extend(sentences(doc["text"]))
    rng = random.Random(0)
    rng.shuffle(train)
    rng.shuffle(held)

    def answer(s):
        return s.split()[-1].rstrip(".")

    def chat(s):
        return {"messages": [{"role": "user", "content": f"{QUESTION}\n\n{s}"}, {"role": "assistant", "content": answer(s)}]}

    sets = {
        "train": [chat(s) for s in train[:n_train]],
        "val": [chat(s) for s in held[:n_val]],
        "test": [{"prompt": f"{QUESTION}\n\n{s}", "answer": answer(s)} for s in held[n_val : n_val + n_test]],
    }
    for name, rows in sets.items():
        with open(out / f"{name}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{len(train)} training and {len(held)} held-out sentences; wrote "
          + ", ".join(f"{k} {len(v)}" for k, v in sets.items()) + f" to {out}")


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:5]))
