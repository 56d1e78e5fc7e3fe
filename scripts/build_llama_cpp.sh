#!/usr/bin/env bash
# Build the peer: llama.cpp from the llama-cpp-python 0.3.36 sdist (INPUTS.md §1), for the GGUF
# parity tests, goldens and benchmarks. Idempotent; nothing here is needed by CI.
#
#   scripts/build_llama_cpp.sh            # into $LLAMA_CPP_DIR (default .cache/llama.cpp-peer)
#
# Leaves:
#   $LLAMA_CPP_DIR/src        the llama.cpp source (vendor/llama.cpp of the sdist; gguf-py inside)
#   $LLAMA_CPP_DIR/build/bin  llama-quantize, llama-imatrix, llama-perplexity, llama-eval-callback,
#                             llama-bench, llama-completion, llama-simple, llama-server (the serving
#                             benchmark's peer, bench/serve_bench.py) and the shared libraries
#   $LLAMA_CPP_DIR/py         the llama_cpp Python package (ctypes bindings) with the libraries in
#                             llama_cpp/lib: PYTHONPATH=$LLAMA_CPP_DIR/py .cache/venv/bin/python -c 'import llama_cpp'
#
# Its Python dependencies (numpy, jinja2, diskcache, typing-extensions) and, where the machine has
# no cmake, cmake itself go into the project's venv (.cache/venv, scripts/venv.sh), never into the
# system interpreter.
#
# Built as pip would build llama-cpp-python on this machine: Release, GGML_NATIVE (so the SIMD
# level is this CPU's: AVX2 or AVX-512), shared libraries, no curl.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(scripts/venv.sh numpy jinja2 diskcache typing-extensions)
CMAKE=cmake
command -v cmake >/dev/null || CMAKE=$(dirname "$(scripts/venv.sh cmake)")/cmake
V=0.3.36
D=${LLAMA_CPP_DIR:-.cache/llama.cpp-peer}
mkdir -p "$D"
D=$(cd "$D" && pwd)
if [ ! -f "$D/src/CMakeLists.txt" ]; then
  mkdir -p "$D/dl"
  [ -f "$D/dl/llama_cpp_python-$V.tar.gz" ] || "$PY" -m pip download -q --no-deps --no-binary llama-cpp-python -d "$D/dl" "llama-cpp-python==$V"
  tmp=$(mktemp -d)
  tar xzf "$D/dl/llama_cpp_python-$V.tar.gz" -C "$tmp"
  rm -rf "$D/src" "$D/py"
  mv "$tmp/llama_cpp_python-$V/vendor/llama.cpp" "$D/src"
  mkdir -p "$D/py"
  mv "$tmp/llama_cpp_python-$V/llama_cpp" "$D/py/llama_cpp"
  rm -rf "$tmp"
fi
if [ ! -x "$D/build/bin/llama-quantize" ] || [ ! -x "$D/build/bin/llama-server" ]; then
  "$CMAKE" -S "$D/src" -B "$D/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=ON > "$D/cmake.log"
  "$CMAKE" --build "$D/build" -j "$(nproc)" --target llama-quantize llama-imatrix llama-perplexity \
    llama-eval-callback llama-bench llama-completion llama-simple llama-server > "$D/build.log"
fi
mkdir -p "$D/py/llama_cpp/lib"
cp -a "$D"/build/bin/*.so* "$D/py/llama_cpp/lib/" 2>/dev/null || true
find "$D/build" -name '*.so*' -path '*/src/*' -exec cp -a {} "$D/py/llama_cpp/lib/" \; 2>/dev/null || true
find "$D/build" -name 'libggml*.so*' -exec cp -a {} "$D/py/llama_cpp/lib/" \; 2>/dev/null || true
PYTHONPATH="$D/py" "$PY" -c 'import llama_cpp; print("llama_cpp", llama_cpp.__version__, "ok:", llama_cpp.llama_print_system_info().decode())'
