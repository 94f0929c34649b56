#!/usr/bin/env bash
# Installs the Python tools the export and decoding tests check exp's files with: Debian's
# python3-torch and python3-torchvision (never pip's torch: gigabytes of CUDA wheels), python3-pil (Pillow, the
# reference for image resizing), and, from PyPI, onnxruntime, safetensors and transformers (the
# Hugging Face ViT whose state dict the init.from test loads; below 4.46, which runs on Debian's
# torch 1.13), in a venv at ~/.cache/exp/py-venv over Debian's Python (--system-site-packages, so it sees
# Debian's torch and numpy; numpy<2 keeps that numpy). Idempotent. Prints the venv's python.
set -euo pipefail
venv="$HOME/.cache/exp/py-venv"
python=/usr/bin/python3
if ! "$python" -c 'import torch, torchvision, numpy, venv, PIL' >/dev/null 2>&1; then
  sudo=
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "py-tools: installing python3-torch, python3-torchvision, python3-pil and python3-venv from Debian" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-torch python3-torchvision python3-pil python3-venv >/dev/null
fi
if ! "$venv/bin/python" -c 'import onnxruntime, safetensors.torch, torch, PIL, transformers' >/dev/null 2>&1; then
  rm -rf "$venv"
  "$python" -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'numpy<2' onnxruntime safetensors 'transformers<4.46'
  "$venv/bin/python" -c 'import onnxruntime, safetensors.torch, torch, transformers' >/dev/null
fi
echo "$venv/bin/python"
