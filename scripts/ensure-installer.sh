#!/usr/bin/env bash
# Makes the tiny installer CD (tests/fixtures/mkinstaller.sh) once, cached by the digest of its
# recipe and of the base image it installs, and prints its directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
base=$("$root/scripts/ensure-base.sh")
base=$(cd "$base" && pwd -P)
recipe=$root/tests/fixtures/mkinstaller.sh
digest=$( (cat "$recipe"; basename "$base") | sha256sum | cut -c1-16)
cache=$root/tests/.cache
dir=$cache/installer-$digest
if [ ! -f "$dir/.complete" ]; then
  exec 9>"$cache/.lock-installer"
  flock 9
  if [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir.tmp"
    echo "ensure-installer: building the tiny installer CD (once) into $dir" >&2
    "$recipe" "$base" "$dir.tmp" >&2
    rm -rf "$dir"; mv "$dir.tmp" "$dir"; touch "$dir/.complete"
  fi
fi
echo "$dir"
