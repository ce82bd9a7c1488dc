#!/usr/bin/env bash
# The floor for the benchmark: the same build done by hand with no tool — boot the tiny image under
# an overlay with qemu, wait for SSH (openssh, 1 s connect timeout, no sleeps), run the same
# commands and upload, power off, wait for qemu to exit, one qemu-img convert.
#   bench/floor.sh BASE_DIR UPLOAD_FILE WORK_DIR
set -euo pipefail
base=$1 upload=$2 work=$3
rm -rf "$work"; mkdir -p "$work"
qemu-img create -q -f qcow2 -b "$base/base.qcow2" -F qcow2 "$work/overlay.qcow2"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
qemu-system-x86_64 -accel tcg -m 256 -smp 1 -display none -vga none -serial "file:$work/console.log" \
  -kernel "$base/vmlinux" -initrd "$base/initrd.img" -append "root=/dev/vda rw console=ttyS0 quiet" \
  -drive "file=$work/overlay.qcow2,if=virtio,format=qcow2" \
  -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=n0 -device virtio-rng-pci &
qemu=$!
trap 'kill $qemu 2>/dev/null || true' EXIT
ssh_opts=(-q -i "$base/id_ed25519" -p "$port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=1 -o BatchMode=yes)
until ssh "${ssh_opts[@]}" root@127.0.0.1 true 2>/dev/null; do :; done
ssh "${ssh_opts[@]}" root@127.0.0.1 'echo built-by-the-benchmark > /root/built.txt; uname -r; sync' >/dev/null
ssh "${ssh_opts[@]}" root@127.0.0.1 'cat > /root/uploaded.txt' < "$upload"
ssh "${ssh_opts[@]}" root@127.0.0.1 poweroff || true
wait $qemu || true
trap - EXIT
qemu-img convert -O qcow2 "$work/overlay.qcow2" "$work/image.qcow2"
