#!/usr/bin/env bash
# Rebuilds data/linux-doc-slice.txt.gz from Debian's linux-doc-6.1 package.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
cd "$work"
apt-get download linux-doc-6.1
dpkg-deb -x linux-doc-6.1_*.deb x
cd x/usr/share/doc/linux-doc-6.1/Documentation
(for f in $(find process core-api -name '*.rst.gz' | LC_ALL=C sort); do zcat "$f"; echo; done) \
  | gzip -9 -n > "$root/data/linux-doc-slice.txt.gz"
rm -rf "$work"
