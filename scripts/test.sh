#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: install what is missing, make the tiny base
# image, then run every test (unit, template fixtures, end-to-end builds on real QEMU guests).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/ensure-base.sh >/dev/null
scripts/ensure-installer.sh >/dev/null
if command -v cargo-nextest >/dev/null 2>&1; then
  exec cargo nextest run --workspace --locked --profile ci "$@"
else
  exec cargo test --workspace --locked "$@"
fi
