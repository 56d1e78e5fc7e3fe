#!/usr/bin/env bash
# Every CUDA kernel's registers, spills and shared memory as ptxas reports them for a target,
# without a GPU: NVRTC compiles each module (the kernels_compile test with SMELT_DUMP_PTX), then
# ptxas -v reads the PTX. NVRTC and ptxas come from PyPI's wheels (scripts/fetch_inputs.sh).
#
#   scripts/ptx_report.sh [sm_90a] [FILTER]     # e.g. scripts/ptx_report.sh sm_90a attn_
#
# The modules are compiled for compute capability 9.0 (the H200); a module named *_sm90a is
# compiled for compute_90a. A kernel that spills, or whose registers leave fewer blocks resident than
# planned, shows here before any device time is spent.
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${1:-sm_90a}
FILTER=${2:-}
C=.cache/inputs/cuda
[ -f "$C/lib/libnvrtc.so.13" ] && [ -x "$C/bin/ptxas" ] || scripts/fetch_inputs.sh >/dev/null 2>&1 || true
[ -f "$C/lib/libnvrtc.so.13" ] && [ -x "$C/bin/ptxas" ] || { echo "error: no NVRTC/ptxas under $C (scripts/fetch_inputs.sh)" >&2; exit 1; }
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
exe=$(cargo test --release --features cuda -p smelt-core --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "smelt_core" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])' | tail -1)
LD_LIBRARY_PATH="$PWD/$C/lib" SMELT_DUMP_PTX="$OUT" "$exe" kernels_compile >/dev/null
for ptx in "$OUT"/*.ptx; do
  a=$ARCH
  case "$ptx" in *_sm90a.ptx) a=sm_90a ;; *) a=${ARCH%a} ;; esac
  "$C/bin/ptxas" -arch="$a" -v "$ptx" -o /dev/null 2>&1 | awk -v m="$(basename "$ptx" .ptx)" -v f="$FILTER" '
    /Compiling entry function/ { k = $0; sub(/.*function ./, "", k); sub(/. for .*/, "", k) }
    /spill stores/ { sp = $5 " B spilled" }
    /Used [0-9]+ registers/ { r = $0; sub(/.*Used /, "", r); sub(/ registers.*/, "", r);
      if (f == "" || index(k, f)) printf "%-22s %-34s %4s registers  %s\n", m, k, r, sp }'
done
