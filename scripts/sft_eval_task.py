"""The task metric of the SFT demonstration (scripts/sft_smollm2.sh): exact-match accuracy of a
model's greedy chat replies on test.jsonl ({"prompt", "answer"}), through `smelt generate --chat`.

    python3 scripts/sft_eval_task.py SMELT MODEL TEST.jsonl [N] > replies.jsonl

A reply counts when, stripped of surrounding whitespace, quotes, asterisks and a final period,
it equals the answer (case-insensitive): `accuracy`. A lenient second measure, `contains`,
counts replies holding the answer as a whole word anywhere (so a right answer in a sentence,
"The last word is 'tree'.", counts there). Prints one JSON line per example to stdout, the
measures to stderr, and as the last stdout line {"accuracy", "contains", "n"}. Standard
library only.
"""

import json
import re
import subprocess
import sys


def main(smelt, model, test, n=None):
    rows = [json.loads(l) for l in open(test)][: int(n) if n else None]
    hits = found = 0
    for i, r in enumerate(rows):
        out = subprocess.run(
            [smelt, "generate", "--model", model, "--chat", r["prompt"], "--temperature", "0", "--max-tokens", "12",
             "--device", "cpu"],
            capture_output=True, text=True, check=True,
        ).stdout
        reply = out.strip().strip("\"'*` ").rstrip(".").strip("\"'*` ")
        ok = reply.lower() == r["answer"].lower()
        hits += ok
        found += bool(re.search(r"\b" + re.escape(r["answer"].lower()) + r"\b", out.lower()))
        print(json.dumps({"answer": r["answer"], "reply": out.strip(), "ok": ok}, ensure_ascii=False), flush=True)
        print(f"[{i + 1}/{len(rows)}] {hits} right", file=sys.stderr, flush=True)
    acc, contains = hits / len(rows), found / len(rows)
    print(json.dumps({"accuracy": acc, "contains": contains, "n": len(rows)}))
    print(f"accuracy {acc:.3f} ({hits}/{len(rows)}), contains {contains:.3f} ({found}/{len(rows)})", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:])
