#!/bin/bash
# One device call, peers in the same run: llama.cpp's CUDA build (background) → attention parity
# tests → training vs PyTorch eager/torch.compile at 124M and 1B (+ smelt with the one-tile
# attention forward, SMELT_CUDA_ATTN_MT=1) → batch-1 decode vs llama-bench.
cd "$(dirname "$0")" || exit 1
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH
export SMELT_KERNEL_CACHE=/tmp/smelt-kernels
t0=$(date +%s); END=${END:-580}
left() { echo $(( END - ($(date +%s) - t0) )); }
stamp() { echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a $OUT/timeline.txt; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $OUT/gpu.txt
LL=/tmp/ll
rm -rf $LL; mkdir -p $LL && tar xzf llama/llama-src.tgz -C $LL && tar xzf llama/models.tgz -C $LL
( cd $LL/src && cmake -B build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=ON -DCMAKE_BUILD_TYPE=Release \
  && nice cmake --build build -j 12 --target llama-bench ) > $OUT/llama-build.log 2>&1 &
cd suite
stamp "attention parity"
SMELT_REQUIRE_GPU=1 SMELT_REPO=$PWD timeout 60 ./core_tests parity_bf16_attention parity_attention --test-threads=1 > $OUT/core-attn.txt 2>&1; echo "rc $?"
grep -E "^test |test result" $OUT/core-attn.txt
stamp "train vs torch"
timeout 330 python3 bench/cuda_vs_torch.py --smelt ./smelt --shapes 124m,1b --out $OUT/train > $OUT/train.txt 2>&1
grep -E "^\|" $OUT/train.txt
stamp "one-tile forward"
for s in 124m:16:1024 1b:8:2048; do IFS=: read n b t <<< "$s"
  SMELT_CUDA_ATTN_MT=1 timeout 50 ./smelt bench --device cuda --model /tmp/smelt-bench-models/$n --vocab-size 32000 --batch-size $b --seq-len $t --iters 3 --format json > $OUT/mt1-$n.json 2>/dev/null
  echo "$n MT=1: $(tail -1 $OUT/mt1-$n.json | cut -c1-300)"; done
stamp "llama build wait (left $(left)s)"
while [ ! -x $LL/src/build/bin/llama-bench ] && [ $(left) -gt 150 ]; do sleep 5; done
tail -2 $OUT/llama-build.log
stamp "decode"
LB=""; [ -x $LL/src/build/bin/llama-bench ] && LB="--llama-bench $LL/src/build/bin/llama-bench"
timeout $(( $(left) - 5 )) python3 bench/decode_cuda.py --smelt ./smelt $LB --tokenizer bench/smollm2-tokenizer.json \
   --types bf16,q8_0,q4_k --out $OUT/decode > $OUT/decode.txt 2>&1
grep -E "^\|" $OUT/decode.txt
stamp end
