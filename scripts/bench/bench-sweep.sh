#!/usr/bin/env bash
# Sweep benchmark (issue 17): a 12-trial grid (3 learning rates × 4 seeds; seed-cnn on a
# 2,000-image MNIST subset, 1 epoch, full test set), 2 trials at once, run side by side by
#   - exp sweep (local executor),
#   - DVC 3.x's queue (`dvc exp run --queue -S …` ×12, `dvc queue start -j 2`) running the same
#     trials as a PyTorch script (scripts/bench/bench_pytorch.py),
#   - xargs -P2 running that script directly (no orchestration at all: the floor).
# Alternates the tools over --rounds rounds and reports medians (scripts/bench/bench_sweep.py).
# Installs Debian's python3-torch and DVC (a venv under ~/.cache/exp) if missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/install-deps.sh
sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
if ! /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-torch >/dev/null
fi
venv="$HOME/.cache/exp/dvc-venv"
if [ ! -x "$venv/bin/dvc" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'dvc>=3,<4'
fi
export EXP_DATA="${EXP_DATA:-$HOME/.cache/exp/data}"
scripts/fetch-data.sh "$EXP_DATA" >&2
cargo build --release >&2
exec python3 scripts/bench/bench_sweep.py --exp "$PWD/target/release/exp" --dvc "$venv/bin/dvc" "$@"
