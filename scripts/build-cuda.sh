#!/usr/bin/env bash
# build-cuda.sh — build the CUDA-enabled `exp` binary on a machine with or without a GPU.
#
# Installs NVIDIA's CUDA 13.0 compiler toolchain from PyPI wheels plus link stubs for the driver
# and cuBLAS/cuRAND/NVRTC (scripts/gpu/setup-cuda-build.sh, idempotent), then builds with
# `--features cuda` into its own target directory (target-cuda/), so the CPU build's cache is
# never invalidated. First build ~16 min on 2 cores (candle's kernels), then seconds.
#
# Output: target-cuda/release/exp and dist/exp.gz (stripped, gzip -9: what travels to a GPU
# machine). CUDA_COMPUTE_CAP defaults to 90 (H100/H200); set it for other GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ! -w "${CUDA_PIP_ROOT:-/opt/cuda13-pip}" && ! -w "$(dirname "${CUDA_PIP_ROOT:-/opt/cuda13-pip}")" ]]; then
  export CUDA_PIP_ROOT="$HOME/.cache/exp/cuda13-pip"
fi
bash scripts/gpu/setup-cuda-build.sh
# shellcheck disable=SC1091
source "${CUDA_PIP_ROOT:-/opt/cuda13-pip}/env.sh"

cargo build --release --features cuda --target-dir target-cuda --bin exp
mkdir -p dist
strip -o dist/exp target-cuda/release/exp
gzip -9 -f dist/exp
ls -l dist/exp.gz
