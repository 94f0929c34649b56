#!/usr/bin/env bash
# The whole test suite (README's test command; .ci/run calls it).
# Installs git-lfs, ssh-keygen and Chromium if missing, Slurm (slurm-wlm, munge), the giftless LFS server and
# check-jsonschema, onnxruntime over Debian's python3-torch (venvs under ~/.cache/exp), fetches the data into ~/.cache/exp/data when EXP_DATA is unset,
# then runs `cargo test --release` (one dependency build shared with the main job and benches).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# A real Git LFS server (giftless, from PyPI) for the push/pull tests.
scripts/lfs-server.sh install
# A real single-node Slurm (Debian's slurm-wlm and munge) for the sweep tests; each test run
# starts its own cluster on free ports (scripts/slurm.sh start) and stops it.
scripts/slurm.sh install
# check-jsonschema (PyPI) for the CI workflow `exp ci init github` writes.
scripts/ci-tools.sh
# onnxruntime and safetensors (PyPI) over Debian's python3-torch, to check exp export's files.
if ! scripts/py-tools.sh >/dev/null; then
  echo "test: onnxruntime / python3-torch could not be installed: the export tests will say they skip those checks" >&2
  export EXP_SKIP_PYTHON_CHECKS=1
fi
if [ -z "${EXP_DATA:-}" ]; then
  export EXP_DATA="$HOME/.cache/exp/data"
  scripts/fetch-data.sh "$EXP_DATA"
fi
echo "test: data root $EXP_DATA" >&2
cargo test --release "$@"
