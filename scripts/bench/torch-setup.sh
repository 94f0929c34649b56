#!/usr/bin/env bash
# Shared set-up of the CPU benchmarks against PyTorch (bench-cpu.sh, bench-deep-cpu.sh): exp's
# dependencies, Debian's python3-torch if missing, and the `--release` build the tests use.
# Run from the checkout's root.
set -euo pipefail
scripts/install-deps.sh
if ! /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-torch >/dev/null
fi
cargo build --release >&2
