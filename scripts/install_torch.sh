#!/usr/bin/env bash
# Installs PyTorch (CPU use), safetensors and numpy into .cache/venv (git-ignored).
# Torch is only used to regenerate the golden fixtures (scripts/make_golden.py) and for the
# PyTorch side of the benchmarks (bench/torch_cpu.py); CI never needs it.
#
# Idempotent: re-running with everything already importable does nothing.
#
# Note: PyPI's Linux torch wheel pulls the nvidia-*/cuda-* packages (~5 GB installed). A
# lighter install (torch --no-deps plus its pure-Python deps) does NOT work: libtorch is linked
# against libcudart/libcublasLt and `import torch` fails without them, even on a CPU-only box.
# PyTorch's own CPU-only wheel index is not a PyPI package, so we take the full install.
#
# Also installs `transformers` (best effort; INSTALL_TRANSFORMERS=0 skips it), which
# make_golden.py uses to cross-check its hand-written model against LlamaForCausalLM (the
# cross-check is skipped when transformers is not importable).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.cache/venv
PY=$(scripts/venv.sh)

if "$PY" -c 'import torch, safetensors, numpy' >/dev/null 2>&1; then
    echo "torch already installed: $("$PY" -c 'import torch; print(torch.__version__)')"
else
    "$PY" -m pip install --disable-pip-version-check torch safetensors numpy
fi

if [ "${INSTALL_TRANSFORMERS:-1}" = "1" ]; then
    if ! "$PY" -c 'import transformers' >/dev/null 2>&1; then
        "$PY" -m pip install --disable-pip-version-check transformers \
            || echo "warning: transformers did not install; make_golden.py will skip its cross-check"
    fi
fi

"$PY" -c 'import torch, safetensors, numpy; print("torch", torch.__version__, "numpy", numpy.__version__)'
