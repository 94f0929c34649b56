#!/usr/bin/env bash
# CPU benchmark, exp vs PyTorch side by side (see scripts/bench/bench_cpu.py for the options). Installs Debian's
# python3-torch if missing, builds exp (the same `--release` build the tests use), then measures.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/bench/torch-setup.sh
export EXP_DATA="${EXP_DATA:-$HOME/.cache/exp/data}"
scripts/fetch-data.sh "$EXP_DATA" >&2
exec python3 scripts/bench/bench_cpu.py "$@"
