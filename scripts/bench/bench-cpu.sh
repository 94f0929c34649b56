#!/usr/bin/env bash
# CPU benchmark, exp vs PyTorch side by side (see scripts/bench/bench_cpu.py for the options). Installs Debian's
# python3-torch if missing, builds exp (the same `--release` build the tests use), then measures.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/install-deps.sh
if ! /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-torch >/dev/null
fi
export EXP_DATA="${EXP_DATA:-$HOME/.cache/exp/data}"
scripts/fetch-data.sh "$EXP_DATA" >&2
cargo build --release >&2
exec python3 scripts/bench/bench_cpu.py "$@"
