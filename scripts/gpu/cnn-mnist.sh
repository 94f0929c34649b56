#!/usr/bin/env bash
# cnn-mnist.sh — the deeper `cnn` on MNIST on a GPU (issue: "reaches ≥ 99.2 % test accuracy"):
# Adam 1e-3, batch 64, EPOCHS epochs (default 12), seeds 1..SEEDS (default 3), with the packed
# CUDA exp (.gpu/). usage: scripts/gpu/cnn-mnist.sh [EPOCHS] [SEEDS]
set -uo pipefail
cd "$(dirname "$0")/../.."
epochs="${1:-12}"
seeds="${2:-3}"
OUT="${OUT:-/tmp/exp-gpu-out}"; mkdir -p "$OUT"
work=/tmp/exp-cnn-mnist; rm -rf "$work"; mkdir -p "$work/bin" "$work/home"
bash scripts/gpu/unpack-exp.sh "$work/bin/exp"
command -v git >/dev/null || { gzip -dc .gpu/git.gz > "$work/bin/git"; chmod +x "$work/bin/git"; }
export PATH="$work/bin:$PATH" HOME="$work/home" EXP_DATA="$PWD/.gpu/data"
printf '[user]\n\tname = exp GPU check\n\temail = gpu-check@example.com\n' > "$HOME/.gitconfig"
# shellcheck disable=SC1091
source scripts/gpu/cuda-libs.sh >/dev/null
for seed in $(seq 1 "$seeds"); do
  exp init "$work/r$seed" >/dev/null 2>&1
  (cd "$work/r$seed" && exp run mnist-cnn --device cuda --quiet --set model.name=cnn \
      --set train.epochs="$epochs" --set train.seed="$seed" 2>&1 | tail -2)
  cp "$work/r$seed/experiments/mnist-cnn/history.csv" "$OUT/cnn-mnist-history-$seed.csv"
  grep -m1 '^accuracy' "$work/r$seed/experiments/mnist-cnn/metrics.toml"
done
