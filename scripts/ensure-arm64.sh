#!/usr/bin/env bash
# Makes the tiny arm64 test guest (tests/fixtures/mkbase-arm64.sh) once, cached by the digest of
# its recipe and the arm64 kernel package it uses, and prints its directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
recipe=$root/tests/fixtures/mkbase-arm64.sh
kpkg=$(apt-cache depends linux-image-arm64:arm64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
digest=$( (cat "$recipe"; echo "$kpkg") | sha256sum | cut -c1-16)
cache=$root/tests/.cache
dir=$cache/arm64-$digest
mkdir -p "$cache"
if [ ! -f "$dir/.complete" ]; then
  exec 9>"$cache/.lock-arm64"
  flock 9
  if [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir.tmp"
    echo "ensure-arm64: building the arm64 test guest (once) into $dir" >&2
    "$recipe" "$dir.tmp" >&2
    rm -rf "$dir"; mv "$dir.tmp" "$dir"; touch "$dir/.complete"
  fi
fi
echo "$dir"
