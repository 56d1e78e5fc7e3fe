#!/usr/bin/env python3
"""Make the tokenizer parity goldens from Hugging Face `tokenizers` (the real peer).

Writes crates/tokenizer/tests/golden/{qwen3,trained}.json:
- qwen3: ids of Qwen3's tokenizer.json (fetched by scripts/fetch_inputs.sh) on the bundled corpus
  (whole text and line by line, as FNV-1a hashes of the id streams) and on tricky strings
  (explicit ids, with and without special tokens).
- trained: a tokenizer trained by smelt (`smelt tokenizer`, fixed settings) on the bundled corpus,
  loaded by `tokenizers`: its ids on the corpus and the tricky strings; plus the merges that
  `tokenizers`' own BpeTrainer learns with the same settings (as a fingerprint).

Usage: scripts/venv.sh tokenizers; scripts/fetch_inputs.sh; .cache/venv/bin/python scripts/make_tokenizer_goldens.py
Re-run it (and commit the goldens) when the trainer's settings below change.
"""
import gzip, json, os, subprocess, sys, tempfile
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates/tokenizer/tests/golden")
CORPUS = os.path.join(ROOT, "data/linux-doc-slice.txt.gz")
TRAIN = dict(vocab_size=4096, min_frequency=2, special_tokens=["<|endoftext|>"])

TRICKY = [
    "Hello world", " leading space", "trailing spaces   ", "multiple   spaces\t\ttabs\n\n\nnewlines",
    "numbers 1234567890 3.14159 1,000,000 v6.1.192-2", "unicode: café naïve Ελληνικά русский язык",
    "emoji 🦀🚀 family 👨‍👩‍👧 flags 🇫🇷", "CJK 你好，世界。日本語のテキスト 한국어 텍스트",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>inline<|endoftext|> text",
    "don't I'LL we've THEY'RE it's", "\u00a0nbsp\u3000ideographic\u2009thin space", "e\u0301 combining accent (NFC)",
    "", " ", "\n", "   \n  x", "a" * 300, "ＡＢＣ fullwidth ①②③", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters",
    "zero\u200bwidth joiner\u200d", "\r\nwindows line\r\nends\r\n", "  def f(x):\n\treturn x**2  # comment\n",
    "<p class=\"x\">HTML &amp; entities</p>", "tabs\t\t\tand\u000bvertical\u000cfeeds",
    "<s>hello</s> world <s> spaced </s>", "<unk>x<unk> <0x41>",
]


# Random strings over a pool of awkward pieces (specials, combining marks, emoji, controls).
POOL = [" ", "  ", "\n", "\t", "\r\n", "a", "Z", "é", "e\u0301", "ß", "ſ", "İ", "'s", "'LL", "0", "123", "½", "٣",
        "你", "好", "の", "한", "🦀", "👨\u200d👩\u200d👧", "\u200d", "\u00a0", "\u3000", "\u007f", "<", "|",
        "<|endoftext|>", "<|im_start|>", "<s>", "</s>", "<unk>", "▁", "Ġ", "<0x41>", "...", "!!", "\U0010ffff"]


def random_strings(n=150, seed=1234):
    import random
    r = random.Random(seed)
    return ["".join(r.choice(POOL) for _ in range(r.randrange(24))) for _ in range(n)]


def fnv(ids_iter):
    h = 0xcbf29ce484222325
    for ids in ids_iter:
        for i in ids:
            for b in int(i).to_bytes(4, "little"):
                h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
        for b in (0xFFFFFFFF).to_bytes(4, "little"):  # sequence separator
            h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def merges_fingerprint(path):
    m = json.load(open(path, encoding="utf-8"))["model"]["merges"]
    pairs = [x if isinstance(x, list) else x.split(" ", 1) for x in m]
    h = 0xcbf29ce484222325
    for a, b in pairs:
        for byte in f"{a} {b}\n".encode():
            h = ((h ^ byte) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}", len(pairs)


def golden(tok, text):
    lines = text.split("\n")
    enc = lambda s, sp: tok.encode(s, add_special_tokens=sp).ids
    return {
        "corpus_whole": {"hash": fnv([enc(text, False)]), "len": len(enc(text, False))},
        "corpus_lines": {"hash": fnv(enc(l, False) for l in lines), "n": len(lines)},
        "tricky": [{"text": s, "ids": enc(s, False), "ids_special": enc(s, True)} for s in TRICKY],
        "random": {"texts": random_strings(), "hash": fnv(enc(s, True) for s in random_strings())},
    }


# Chat templates from llama.cpp's models/templates/, rendered the way transformers does.
CHAT_TEMPLATES = {
    "HuggingFaceTB-SmolLM3-3B.jinja": ("<|im_start|>", "<|im_end|>"),
    "meta-llama-Llama-3.1-8B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.2-3B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "Qwen-Qwen2.5-7B-Instruct.jinja": ("", "<|im_end|>"),
    "Qwen-Qwen3-0.6B.jinja": ("", "<|im_end|>"),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": ("<s>", "</s>"),
    "microsoft-Phi-3.5-mini-instruct.jinja": ("<s>", "<|endoftext|>"),
    "google-gemma-2-2b-it.jinja": ("<bos>", "<eos>"),
}
CONVERSATIONS = [
    ([{"role": "system", "content": "You are a helpful assistant."},
      {"role": "user", "content": "What is the capital of France?"}], True),
    ([{"role": "user", "content": "  Hi!  "}, {"role": "assistant", "content": "Hello! How can I help?"},
      {"role": "user", "content": "Tell me a joke about 🦀 and ünïcödé."}], True),
    ([{"role": "user", "content": "One turn, no generation prompt."}], False),
]
EXTRA = {"date_string": "26 Jul 2024"}
# A tool-use conversation: tools and tool calls go through `tojson`, so key order matters.
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Get the weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                         "required": ["city"]}}}]
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "22°C, sunny"},
]


def chat_goldens():
    import datetime
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    tdir = os.path.join(ROOT, ".cache/inputs/llama.cpp/models/templates")
    out = []
    for name, (bos, eos) in CHAT_TEMPLATES.items():
        path = os.path.join(tdir, name)
        if not os.path.exists(path):
            print(f"SKIP chat template {name}: run scripts/fetch_inputs.sh", file=sys.stderr)
            continue
        t = env.from_string(open(path, encoding="utf-8").read())
        cases = []
        for msgs, gen, tools in [(m, g, None) for m, g in CONVERSATIONS] + [(TOOL_CONVERSATION, True, TOOLS)]:
            extra = dict(EXTRA, **({"tools": tools} if tools else {}))
            try:
                text = t.render(messages=msgs, add_generation_prompt=gen, bos_token=bos, eos_token=eos, **extra)
            except Exception as e:  # a template may refuse a conversation shape; record that
                text = None
                print(f"{name}: jinja2 refused: {e}", file=sys.stderr)
            cases.append({"messages": msgs, "add_generation_prompt": gen, "tools": tools, "output": text})
        out.append({"template": name, "bos_token": bos, "eos_token": eos, "extra": EXTRA, "cases": cases})
    # A template as shipped in a model's tokenizer_config.json (Qwen3's).
    cfg_path = os.path.join(ROOT, ".cache/inputs/qwen3/tokenizer_config.json")
    if os.path.exists(cfg_path):
        cfg = json.load(open(cfg_path, encoding="utf-8"))
        tok_str = lambda t: (t.get("content") if isinstance(t, dict) else t) or ""
        bos, eos = tok_str(cfg.get("bos_token")), tok_str(cfg.get("eos_token"))
        t = env.from_string(cfg["chat_template"])
        cases = [{"messages": m, "add_generation_prompt": g,
                  "output": t.render(messages=m, add_generation_prompt=g, bos_token=bos, eos_token=eos, **EXTRA)}
                 for m, g in CONVERSATIONS]
        out.append({"template": "qwen3/tokenizer_config.json", "bos_token": bos, "eos_token": eos, "extra": EXTRA, "cases": cases})
    json.dump(out, open(os.path.join(OUT, "chat.json"), "w", encoding="utf-8"), ensure_ascii=False, indent=1)
    print("wrote chat.json")


def spm_style_goldens(text):
    """Llama-2 / Mistral style BPE tokenizer.json files (Prepend+Replace normalizer or Metaspace
    pre-tokenizer, byte_fallback, fuse_unk, <s> template), trained and saved by `tokenizers`
    itself on the bundled corpus, with their ids on the corpus lines and the tricky strings."""
    from tokenizers import normalizers, processors
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tr = trainers.BpeTrainer(vocab_size=1500, special_tokens=["<unk>", "<s>", "</s>"] + bytes_, show_progress=False)
    lines = text.split("\n")
    tok.train_from_iterator(lines[:4000], tr)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "t.json")
        tok.save(p)
        j = json.load(open(p, encoding="utf-8"))
    # Byte tokens live in the model vocab, not among the added tokens (as in Llama-2's file).
    j["added_tokens"] = [a for a in j["added_tokens"] if a["content"] not in bytes_]
    variants = {"llama2_style": j}
    m = json.loads(json.dumps(j))
    m["normalizer"] = None
    m["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
    m["decoder"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
    variants["metaspace_style"] = m
    for name, v in variants.items():
        path = os.path.join(OUT, f"{name}.tokenizer.json")
        json.dump(v, open(path, "w", encoding="utf-8"), ensure_ascii=False)
        t = Tokenizer.from_file(path)
        enc = lambda s, sp: t.encode(s, add_special_tokens=sp).ids
        g = {"corpus_lines": {"hash": fnv(enc(l, False) for l in lines), "n": len(lines)},
             "tricky": [{"text": s, "ids": enc(s, False), "ids_special": enc(s, True), "decoded": t.decode(enc(s, False))} for s in TRICKY],
             "random": {"texts": random_strings(), "hash": fnv(enc(s, True) for s in random_strings())}}
        json.dump(g, open(os.path.join(OUT, f"{name}.json"), "w", encoding="utf-8"), ensure_ascii=False, indent=0)
        print(f"wrote {name}")


def main():
    os.makedirs(OUT, exist_ok=True)
    chat_goldens()
    spm_style_goldens(gzip.open(CORPUS, "rt", encoding="utf-8").read())
    text = gzip.open(CORPUS, "rt", encoding="utf-8").read()
    qwen = os.path.join(ROOT, ".cache/inputs/qwen3/tokenizer.json")
    if os.path.exists(qwen):
        g = golden(Tokenizer.from_file(qwen), text)
        json.dump(g, open(os.path.join(OUT, "qwen3.json"), "w", encoding="utf-8"), ensure_ascii=False, indent=0)
        print("wrote qwen3.json")
    else:
        print("SKIP qwen3: run scripts/fetch_inputs.sh", file=sys.stderr)

    with tempfile.TemporaryDirectory() as d:
        smelt_tok = os.path.join(d, "smelt.json")
        subprocess.run(["cargo", "run", "-q", "--release", "-p", "smelt", "--", "tokenizer", "--input", CORPUS,
                        "--vocab-size", str(TRAIN["vocab_size"]), "--min-frequency", str(TRAIN["min_frequency"]),
                        "--special-tokens", *TRAIN["special_tokens"], "--output", smelt_tok], check=True, cwd=ROOT)
        g = golden(Tokenizer.from_file(smelt_tok), text)
        g["train"] = TRAIN
        g["smelt_merges"] = merges_fingerprint(smelt_tok)
        # HF's own trainer, same settings, on the same sequences (the corpus's lines).
        hf = Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        tr = trainers.BpeTrainer(initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False, **TRAIN)
        plain = os.path.join(d, "corpus.txt")
        open(plain, "w", encoding="utf-8").write(text)
        hf.train([plain], tr)
        hf.save(os.path.join(d, "hf.json"))
        g["hf_trainer_merges"] = merges_fingerprint(os.path.join(d, "hf.json"))
        json.dump(g, open(os.path.join(OUT, "trained.json"), "w", encoding="utf-8"), ensure_ascii=False, indent=0)
        print("wrote trained.json; smelt merges", g["smelt_merges"], "HF trainer merges", g["hf_trainer_merges"])


if __name__ == "__main__":
    main()
