"""The transformers side of crates/data/tests/sft_hf.rs: the token ids of SFT examples as the
Hugging Face stack makes them, for the same model folder.

    .cache/venv/bin/python scripts/sft_tokens_peer.py MODEL_DIR EXAMPLES.jsonl

Prints one JSON list of ids per line: `messages` and message-list prompt/completion through
`apply_chat_template(..., tokenize=True)` (TRL's conversational path), `text` as
`tokenizer(text)` + EOS (TRL appends EOS too), and string prompt/completion as smelt defines it:
`tokenizer(prompt)` + `tokenizer(completion, add_special_tokens=False)` + EOS. (TRL tokenises
prompt + completion as one string and warns when the prompt's ids are not a prefix of the
result; tokenising the two apart keeps the mask boundary exact, and the cases here check that
the pieces are tokenised as the Hugging Face tokenizer does.)
"""

import json
import sys

from transformers import AutoTokenizer


def ids(x):
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True); 4.x a list.
    return list(x["input_ids"] if hasattr(x, "keys") else x)


def main(model, path):
    tok = AutoTokenizer.from_pretrained(model)
    for line in open(path):
        ex = json.loads(line)
        if "messages" in ex:
            out = ids(tok.apply_chat_template(ex["messages"], tokenize=True))
        elif "text" in ex:
            out = tok(ex["text"])["input_ids"] + [tok.eos_token_id]
        elif isinstance(ex["prompt"], list):
            out = ids(tok.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=True))
        else:
            out = tok(ex["prompt"])["input_ids"] + tok(ex["completion"], add_special_tokens=False)["input_ids"]
            out += [tok.eos_token_id]
        print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
