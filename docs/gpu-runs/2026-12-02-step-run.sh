#!/bin/bash
# One device call: benches (after = this branch, before = main 57ff680) at 124M, the GPU suite,
# profiles, then 1B while time is left. Every piece under its own timeout; $OUT keeps what ran.
cd "$(dirname "$0")" || exit 1
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export SMELT_KERNEL_CACHE=/tmp/smelt-kernels
t0=$(date +%s); END=${END:-395}
left() { echo $(( END - ($(date +%s) - t0) )); }
stamp() { echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a $OUT/timeline.txt; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > $OUT/gpu.txt 2>&1
B="python3 bench/cuda_vs_torch.py --no-peers"
stamp "124m after"
timeout 120 $B --smelt ./smelt --shapes 124m --out $OUT/after > $OUT/after-124m.txt 2>&1
stamp "124m before"
timeout 45 $B --smelt ./smelt-main --shapes 124m --out $OUT/before > $OUT/before-124m.txt 2>&1
stamp "suite"
( export OUT=$OUT/suite; timeout 190 ./gpu_suite.sh run > $OUT/suite-stdout.txt 2>&1 ); echo "suite rc $?" >> $OUT/timeline.txt
stamp "profiles 124m"
P="bench --device cuda --model /tmp/smelt-bench-models/124m --vocab-size 32000 --batch-size 16 --seq-len 1024 --iters 1 --decode-tokens 4 --format json"
SMELT_CUDA_PROFILE=1 timeout 30 ./smelt $P > /dev/null 2> $OUT/profile-124m-after.txt
[ $(left) -gt 60 ] && SMELT_CUDA_PROFILE=1 timeout 25 ./smelt-main $P > /dev/null 2> $OUT/profile-124m-before.txt
stamp "1b after (left $(left)s)"
[ $(left) -gt 40 ] && timeout $(( $(left) > 125 ? 120 : $(left) - 5 )) $B --smelt ./smelt --shapes 1b --out $OUT/after1b > $OUT/after-1b.txt 2>&1
[ $(left) -gt 30 ] && SMELT_CUDA_PROFILE=1 timeout 40 ./smelt bench --device cuda --model /tmp/smelt-bench-models/1b --vocab-size 32000 --batch-size 8 --seq-len 2048 --iters 1 --decode-tokens 4 --format json > /dev/null 2> $OUT/profile-1b-after.txt
stamp "1b before (left $(left)s)"
[ $(left) -gt 25 ] && timeout $(( $(left) - 3 )) $B --smelt ./smelt-main --shapes 1b --out $OUT/before1b > $OUT/before-1b.txt 2>&1
stamp "end"
