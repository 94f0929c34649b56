#!/usr/bin/env bash
# Deeper models on the CPU (resnet18 at 28x28 and 32x32x3, resnet50, vit), exp vs PyTorch side by
# side; see scripts/bench/bench_deep_cpu.py for the options. Installs Debian's python3-torch if
# missing, builds exp (the `--release` build the tests use), writes Fashion-MNIST padded to
# 32x32x3 as an image folder (scripts/gpu/fashion32.py) with as many training images as
# --images asks, then measures.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/bench/torch-setup.sh
export EXP_DATA="${EXP_DATA:-$HOME/.cache/exp/data}"
scripts/fetch-data.sh --fashion "$EXP_DATA" >&2
images=512
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [[ ${args[i]} == --images ]] && images=${args[i + 1]}
done
# A scratch data root: the real one with the padded folder beside it (never written into).
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
ln -s "$(realpath "$EXP_DATA")/fashion-mnist" "$root/fashion-mnist"
/usr/bin/python3 scripts/gpu/fashion32.py "$EXP_DATA" "$root/fashion32" --train-limit "$images" --test-limit 100 >&2
EXP_DATA="$root" exec /usr/bin/python3 scripts/bench/bench_deep_cpu.py --data "$root" "$@"
