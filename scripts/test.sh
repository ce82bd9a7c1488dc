#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: install what is missing, make the test guest
# images, then run every test (unit, template fixtures, end-to-end builds on real QEMU guests).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/ensure-base.sh >/dev/null
scripts/ensure-installer.sh >/dev/null
# The other test guests (each once, cached by recipe): before the tests, so no test's time limit
# includes making them.
scripts/ensure-efi.sh >/dev/null
scripts/ensure-arm64.sh >/dev/null
scripts/ensure-debian.sh >/dev/null
if command -v cargo-nextest >/dev/null 2>&1; then
  exec cargo nextest run --workspace --locked --profile ci "$@"
else
  exec cargo test --workspace --locked "$@"
fi
