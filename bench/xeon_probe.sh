#!/usr/bin/env bash
# Issue 18, the 16-thread decode on the GPU machine's CPU: what the host gives (topology, the
# cgroup's CPU quota), what one parallel call costs there at 2-16 threads, and decode (and
# prompt) tok/s of smelt and llama.cpp at 8, 12 and 16 threads, in one device call (~3 min).
# Carried as for bench/xeon16.sh (smelt, llama.cpp's source, SmolLM2's tokenizer) plus the
# par_overhead example (`cargo build --release -p smelt-core --example par_overhead`):
#   bash bench/xeon_probe.sh .devx        (device tool, carry [".devx"])
# Prints numbers; nothing here is a test.
set -u
D=${1:?usage: bench/xeon_probe.sh CARRIED_DIR}
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  lscpu | grep -E "Model name|^CPU\(s\)|Thread|Core|Socket|NUMA|MHz|L3"
  echo "cgroup cpu.max: $(cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null)"
  echo "cpu.stat: $(tr '\n' ' ' < /sys/fs/cgroup/cpu.stat 2>/dev/null)"
} 2>&1 | tee "$OUT/probe.txt"
# One parallel call's cost before anything else loads the host (the llama.cpp build would);
# D/par_overhead-old too when carried (an A/B of two pool builds).
for po in "$D/par_overhead" "$D/par_overhead-old"; do
  [ -x "$po" ] || continue
  echo "== $po" | tee -a "$OUT/probe.txt"
  for t in 8 16; do RAYON_NUM_THREADS=$t "$po"; WORK=8000 RAYON_NUM_THREADS=$t "$po"; done 2>&1 | tee -a "$OUT/probe.txt"
done
LB=$(bash "$D/llama/gpu_llama_cpp.sh" build-cpu /tmp/llama-cpu 2> "$OUT/llama-build.log" | tail -1)
[ -x "$LB" ] || LB=
echo "llama-bench: ${LB:-not built}" | tee -a "$OUT/probe.txt"
# VARIANTS: "name:binary:ENV=V,ENV=V" (binary under D), each timed against llama.cpp in turn.
for v in ${VARIANTS:-"new:smelt:"}; do
  IFS=: read -r name bin envs <<< "$v"
  echo "== variant $name ($bin${envs:+, $envs})" | tee -a "$OUT/probe.txt"
  env ${envs//,/ } python3 bench/prefill_vs_llama.py --smelt "$D/$bin" ${LB:+--llama-bench "$LB"} --random-smollm2 /tmp/pf \
      --tokenizer "$D/smollm2-tokenizer.json" --threads ${THREADS:-16} --repeats 1 --types ${TYPES:-q4_1,q6_k,f16} \
      2>&1 | tee -a "$OUT/probe.txt" | grep -E "t=[0-9]"
done
echo "cpu.stat after: $(tr '\n' ' ' < /sys/fs/cgroup/cpu.stat 2>/dev/null)" | tee -a "$OUT/probe.txt"
