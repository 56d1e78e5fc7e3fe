#!/usr/bin/env bash
# The project's Python environment: .cache/venv (git-ignored), made with the machine's python3
# (PYTHON=... picks another). Nothing is installed into that interpreter itself.
#
#   scripts/venv.sh                      # create .cache/venv if missing; print its python
#   scripts/venv.sh gguf==0.19.0 numpy   # ... and pip-install these into it (only what is missing)
#
# Other scripts call it and then run .cache/venv/bin/python (or .cache/venv/bin/pip download).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.cache/venv
PY=$VENV/bin/python
# Tests run in parallel and several may ask for the same package at once; two pips writing one
# site-packages race (pip's own assertion fails). One venv.sh at a time holds the lock.
mkdir -p .cache
exec 9>.cache/venv.lock
if command -v flock >/dev/null; then flock 9; fi
if [ ! -x "$PY" ]; then
  mkdir -p .cache
  if ! "${PYTHON:-python3}" -m venv "$VENV" >&2; then
    rm -rf "$VENV"
    echo "error: venv.sh: '${PYTHON:-python3} -m venv' failed (Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
fi
if [ $# -gt 0 ]; then
  missing=()
  for req in "$@"; do
    # A requirement is satisfied when pip already has that name at that version (if pinned).
    name=${req%%[=<>!~]*}
    want=${req#"$name"}; want=${want#==}
    have=$("$PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p' || true)
    if [ -z "$have" ] || { [ -n "$want" ] && [ "${req#"$name"}" = "==$want" ] && [ "$have" != "$want" ]; }; then missing+=("$req"); fi
  done
  if [ ${#missing[@]} -gt 0 ]; then
    "$PY" -m pip install -q --disable-pip-version-check "${missing[@]}" >&2
  fi
fi
echo "$PWD/$PY"
