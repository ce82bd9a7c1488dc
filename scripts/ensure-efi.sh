#!/usr/bin/env bash
# Makes the UEFI test guest (tests/fixtures/mkbase-efi.sh) once, cached by the digest of its
# recipe and of the tiny base whose kernel, initramfs and key it boots with, and prints its directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
base=$("$root/scripts/ensure-base.sh")
base=$(cd "$base" && pwd -P)
recipe=$root/tests/fixtures/mkbase-efi.sh
digest=$( (cat "$recipe"; basename "$base") | sha256sum | cut -c1-16)
cache=$root/tests/.cache
dir=$cache/efi-$digest
if [ ! -f "$dir/.complete" ]; then
  exec 9>"$cache/.lock-efi"
  flock 9
  if [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir.tmp"
    echo "ensure-efi: building the UEFI test guest (once) into $dir" >&2
    "$recipe" "$base" "$dir.tmp" >&2
    rm -rf "$dir"; mv "$dir.tmp" "$dir"; touch "$dir/.complete"
  fi
fi
echo "$dir"
