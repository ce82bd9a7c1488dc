#!/usr/bin/env bash
# Installs what kiln and its tests need on Debian 12, only what is missing. Idempotent.
# Debian 12's qemu-system-x86 (7.2) conflicts with a newer preinstalled qemu-utils, so both are
# installed together at qemu-system-x86's version.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in skopeo docker-registry ansible debootstrap systemd-boot-efi fdisk qemu-efi-aarch64 apache2-utils zstd zip isolinux syslinux-common extlinux xorriso mtools dosfstools ovmf swtpm swtpm-tools busybox-static dropbear-bin e2fsprogs cpio xz-utils openssh-client openssh-sftp-server libssl-dev pkg-config openssl gzip tar python3; do
  pkg_installed "$p" || need+=("$p")
done
ls /boot/vmlinuz-* >/dev/null 2>&1 || need+=(linux-image-amd64)
qemu_missing=0
have qemu-system-x86_64 || qemu_missing=1
have qemu-system-aarch64 || qemu_missing=1
# The arm64 test guest is made from Debian's arm64 packages (apt-get download, never installed).
arm64=1
dpkg --print-foreign-architectures | grep -qx arm64 || arm64=0
if [ ${#need[@]} -gt 0 ] || [ $qemu_missing = 1 ] || [ $arm64 = 0 ] || ! have cargo; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  [ $arm64 = 1 ] || $SUDO dpkg --add-architecture arm64
  $SUDO apt-get update -qq
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}" >&2
    $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  if [ $qemu_missing = 1 ]; then
    ver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    armver=$(apt-cache policy qemu-system-arm | awk '/Candidate:/ {print $2}')
    echo "setup: installing qemu-system-x86 and qemu-utils $ver, qemu-system-arm $armver" >&2
    $SUDO apt-get install -y -qq --allow-downgrades "qemu-system-x86=$ver" "qemu-system-arm=$armver" "qemu-utils=$ver" >/dev/null
  fi
  if ! have cargo; then
    echo "setup: no Rust toolchain; installing Debian's cargo (rustup's stable is preferred: https://rustup.rs)" >&2
    $SUDO apt-get install -y -qq cargo >/dev/null
  fi
fi
