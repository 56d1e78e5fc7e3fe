#!/usr/bin/env bash
# Rebuilds data/linux-doc-slice.{txt,jsonl}.gz from Debian's linux-doc-6.1 package.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
cd "$work"
apt-get download linux-doc-6.1
dpkg-deb -x linux-doc-6.1_*.deb x
cd x/usr/share/doc/linux-doc-6.1/Documentation
(for f in $(find process core-api -name '*.rst.gz' | LC_ALL=C sort); do zcat "$f"; echo; done) \
  | gzip -9 -n > "$root/data/linux-doc-slice.txt.gz"
python3 - "$root/data/linux-doc-slice.jsonl.gz" <<'PY'
import gzip, json, subprocess, sys
files = sorted(subprocess.check_output("find process core-api -name '*.rst.gz'", shell=True, text=True).split(), key=lambda s: s.encode())
with gzip.GzipFile(sys.argv[1], 'wb', mtime=0, compresslevel=9) as out:
    for f in files:
        out.write((json.dumps({"text": gzip.open(f).read().decode('utf-8'), "source": f}, ensure_ascii=False) + "\n").encode())
PY
rm -rf "$work"
