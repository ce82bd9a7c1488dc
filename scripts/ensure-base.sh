#!/usr/bin/env bash
# Makes the tiny test base image (kernel + busybox + dropbear on ext4, ~7 s to SSH under TCG) once,
# cached by the digest of its recipe and the host kernel version, and prints its directory.
#   scripts/ensure-base.sh            -> tests/.cache/tiny (a symlink to tests/.cache/tiny-<digest>)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
recipe=$root/tests/fixtures/mkbase-tiny.sh
kver=$(ls /boot/vmlinuz-* 2>/dev/null | sed 's#.*/vmlinuz-##' | sort -V | tail -1)
[ -n "$kver" ] || { echo "ensure-base: no kernel in /boot: apt-get install linux-image-amd64" >&2; exit 1; }
digest=$( (cat "$recipe"; echo "$kver") | sha256sum | cut -c1-16)
cache=$root/tests/.cache
dir=$cache/tiny-$digest
mkdir -p "$cache"
if [ ! -f "$dir/.complete" ]; then
  # One builder at a time (tests and the quickstart may race for it).
  exec 9>"$cache/.lock"
  flock 9
  if [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir.tmp"
    echo "ensure-base: building the tiny base image (once) into $dir" >&2
    "$recipe" "$dir.tmp" >&2
    # boot.env holds absolute paths of the temp dir; rewrite them.
    sed -i "s#$dir.tmp#$dir#g" "$dir.tmp/boot.env"
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
    touch "$dir/.complete"
  fi
fi
ln -sfn "tiny-$digest" "$cache/tiny"
echo "$cache/tiny"
