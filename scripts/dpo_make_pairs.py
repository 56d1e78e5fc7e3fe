"""Preference pairs for the DPO demonstration (docs/FINETUNE.md), from the SFT instruction set.

    python3 scripts/dpo_make_pairs.py IN.jsonl OUT.jsonl [SKIP [N [SEED]]]

IN.jsonl is a file scripts/sft_make_data.py writes ({"messages": [user, assistant]}: "What is
the last word of this sentence?" and the word). Each example from line SKIP on (N of them)
becomes one conversational pair, TRL's shape:

    {"prompt": [user turn], "chosen": [assistant: the last word],
     "rejected": [assistant: another word of the same sentence]}

The rejected word is drawn (seeded) from the sentence's other words, stripped of punctuation and
different from the answer, case-insensitive: the mistake the SFT model makes when it is wrong
(it answers with one word, but another word of the sentence). Standard library only.
"""

import json
import random
import re
import sys


def main(src, dst, skip=0, n=None, seed=0):
    rng = random.Random(seed)
    rows = [json.loads(l) for l in open(src) if l.strip()][skip:]
    rows = rows[:n] if n else rows
    out = []
    for r in rows:
        user, assistant = r["messages"]
        answer = assistant["content"]
        sentence = user["content"].split("\n\n", 1)[1]
        words = [w.strip(".,;:!?()\"'") for w in sentence.split()[:-1]]
        others = sorted({w for w in words if re.fullmatch(r"[A-Za-z][A-Za-z'-]*", w) and w.lower() != answer.lower()})
        if not others:
            continue
        wrong = rng.choice(others)
        out.append({"prompt": [user], "chosen": [{"role": "assistant", "content": answer}],
                    "rejected": [{"role": "assistant", "content": wrong}]})
    with open(dst, "w") as f:
        for p in out:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    print(f"{len(out)} pairs from {len(rows)} examples of {src} to {dst}")


if __name__ == "__main__":
    a = sys.argv
    main(a[1], a[2], *(int(x) for x in a[3:6]))
