#!/usr/bin/env bash
# kiln's main job on a fresh Debian 12 machine: install what is missing, build kiln, make the tiny
# base image, and build templates/quickstart.pkr.hcl into output-quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -q
scripts/ensure-base.sh >/dev/null
rm -rf output-quickstart output-quickstart.manifest.json
exec target/release/kiln build "$@" templates/quickstart.pkr.hcl
