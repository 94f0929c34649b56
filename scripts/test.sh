#!/usr/bin/env bash
# The whole test suite (README's test command; .ci/run calls it).
# Installs git-lfs if missing, fetches the data into ~/.cache/exp/data when EXP_DATA is unset,
# then runs `cargo test --release` (one dependency build shared with the main job and benches).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
if [ -z "${EXP_DATA:-}" ]; then
  export EXP_DATA="$HOME/.cache/exp/data"
  scripts/fetch-data.sh "$EXP_DATA"
fi
echo "test: data root $EXP_DATA" >&2
cargo test --release "$@"
