#!/usr/bin/env bash
# pack.sh — gather what scripts/gpu/check.sh needs on a GPU machine into .gpu/ (git-ignored):
# the CUDA build of exp (xz-compressed, from scripts/build-cuda.sh's dist/exp.gz), the MNIST and Fashion-MNIST
# files from the data root, and a git binary for machines that lack one. About 54 MB: with the
# repository it fits the 64 MiB a device call may carry.
#
# usage: scripts/gpu/pack.sh [DATA_ROOT]   (default: $EXP_DATA, else ~/.cache/exp/data)
set -euo pipefail
cd "$(dirname "$0")/../.."
root="${1:-${EXP_DATA:-$HOME/.cache/exp/data}}"
[[ -f dist/exp.gz ]] || { echo "pack.sh: dist/exp.gz missing; run scripts/build-cuda.sh" >&2; exit 2; }
rm -rf .gpu
mkdir -p .gpu/data/mnist .gpu/data/fashion-mnist
# xz halves what gzip leaves (19.5 → 10.3 MB), which keeps the carry under its 64 MiB.
gzip -dc dist/exp.gz | xz -9 -T0 > .gpu/exp.xz
for set in mnist fashion-mnist; do
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    if [[ -f "$root/$set/$f.gz" ]]; then cp "$root/$set/$f.gz" ".gpu/data/$set/"
    elif [[ -f "$root/$set/$f" ]]; then gzip -9c "$root/$set/$f" > ".gpu/data/$set/$f.gz"
    else echo "pack.sh: $root/$set/$f[.gz] missing (scripts/fetch-data.sh --fashion $root)" >&2; exit 2
    fi
  done
done
# git, in case the GPU machine has none (exp calls it for status, read-tree and switch); it
# needs only libc, zlib and pcre2.
gzip -9c "$(command -v git)" > .gpu/git.gz
du -sh .gpu
