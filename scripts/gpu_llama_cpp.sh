#!/usr/bin/env bash
# llama.cpp's CUDA build, the peer of issue 14's decode benchmark (bench/decode_cuda.py), made on
# the GPU machine from the vendored source of the llama-cpp-python 0.3.36 sdist (INPUTS.md).
#
#   scripts/gpu_llama_cpp.sh pack DIR     # here: DIR/llama-src.tgz (~11 MB: the sdist's
#                                         # vendor/llama.cpp without its vocab GGUFs and docs)
#   DIR/gpu_llama_cpp.sh build [BUILD]    # there: build llama-bench and llama-server into
#                                         # BUILD (default /tmp/llama-cuda); prints their paths
#   DIR/gpu_llama_cpp.sh build-cpu [BUILD] # there: a CPU-only llama-bench (GGML_NATIVE, no CUDA,
#                                         # so no matmul is offloaded to the GPU) into BUILD
#                                         # (default /tmp/llama-cpu), the peer of the prefill
#                                         # benchmark on that machine's CPU (bench/prefill_vs_llama.py)
#
# The sdist itself (77 MB) is over the device tool's carry limit, hence `pack`. The build takes
# about 5 minutes of device time with 16 jobs (sm_90 only, Release, static, no curl); run it in
# the background beside GPU work that needs few CPUs (it slows a GPU suite that runs beside it).
# The binaries are ~73 MB each: too large to bring back, so build them in the call that uses them.
set -euo pipefail

pack() {
    local dir=${1:?usage: gpu_llama_cpp.sh pack DIR}
    cd "$(dirname "$0")/.."
    local src=.cache/llama.cpp-peer/src
    [ -f "$src/CMakeLists.txt" ] || scripts/build_llama_cpp.sh
    mkdir -p "$dir"
    # --anchored: exclude the top-level models/ (vocab GGUFs) but keep src/models (model code).
    tar czf "$dir/llama-src.tgz" -C .cache/llama.cpp-peer --anchored \
        --exclude=src/models --exclude=src/docs --exclude=src/media --exclude=src/benches \
        --exclude=src/gguf-py --exclude='src/build*' src
    # GNU tar's exclude also drops the model code under src/src/models (the build then fails for
    # a missing source folder): it travels in a second archive, extracted over the first.
    tar czf "$dir/models.tgz" -C .cache/llama.cpp-peer src/src/models
    cp scripts/gpu_llama_cpp.sh "$dir/"
    ls -la "$dir"
}

build() {
    local here; here=$(cd "$(dirname "$0")" && pwd)
    local b=${1:-/tmp/llama-cuda}
    export PATH=/usr/local/cuda/bin:$PATH
    if [ ! -x "$b/src/build/bin/llama-bench" ]; then
        mkdir -p "$b"
        [ -f "$b/src/CMakeLists.txt" ] || tar xzf "$here/llama-src.tgz" -C "$b"
        [ -f "$here/models.tgz" ] && tar xzf "$here/models.tgz" -C "$b"
        (cd "$b/src" && cmake -B build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF \
            -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=ON \
            -DCMAKE_BUILD_TYPE=Release >&2 \
            && cmake --build build -j "$(nproc)" --target llama-bench llama-server >&2)
    fi
    echo "$b/src/build/bin/llama-bench"
    echo "$b/src/build/bin/llama-server"
}

build_cpu() {
    local here; here=$(cd "$(dirname "$0")" && pwd)
    local b=${1:-/tmp/llama-cpu}
    if [ ! -x "$b/src/build/bin/llama-bench" ]; then
        mkdir -p "$b"
        [ -f "$b/src/CMakeLists.txt" ] || tar xzf "$here/llama-src.tgz" -C "$b"
        [ -f "$here/models.tgz" ] && tar xzf "$here/models.tgz" -C "$b"
        (cd "$b/src" && cmake -B build -G Ninja -DGGML_CUDA=OFF -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
            -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=ON -DCMAKE_BUILD_TYPE=Release >&2 \
            && cmake --build build -j "$(nproc)" --target llama-bench >&2)
    fi
    echo "$b/src/build/bin/llama-bench"
}

case "${1:-}" in
    pack) shift; pack "$@" ;;
    build) shift; build "$@" ;;
    build-cpu) shift; build_cpu "$@" ;;
    *) echo "usage: $0 pack DIR | build [BUILD] | build-cpu [BUILD]" >&2; exit 2 ;;
esac
