#!/usr/bin/env bash
# The main job (README): build exp, make sure the data root holds MNIST, then train and track
# seed-cnn on real MNIST in a scratch repository: `exp init`, `exp run mnist-cnn`.
#
# Usage: scripts/main-job.sh [SCRATCH_DIR]   (default: a new temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
project=$PWD

scripts/install-deps.sh
export EXP_DATA="${EXP_DATA:-$HOME/.cache/exp/data}"
scripts/fetch-data.sh "$EXP_DATA"
cargo build --release
exp="$project/target/release/exp"

demo="${1:-$(mktemp -d "${TMPDIR:-/tmp}/exp-main-job.XXXXXX")/mnist}"
case "$(cd "$(dirname "$demo")" 2>/dev/null && pwd)/" in
  "$project"/*) echo "main-job: $demo is inside the exp checkout; pick a scratch directory elsewhere" >&2; exit 2 ;;
esac
mkdir -p "$demo"
# A machine without a Git identity still gets a working demo: set one for this repository only.
if ! git config user.name >/dev/null || ! git config user.email >/dev/null; then
  git -C "$demo" init -q -b main
  git -C "$demo" config user.name "exp main job"
  git -C "$demo" config user.email "exp@localhost"
fi

"$exp" init "$demo"
cd "$demo"
"$exp" run mnist-cnn

echo
echo "== the run, as Git sees it ($demo)"
git log --oneline --decorate --all -3
git lfs ls-files --long
echo "status (empty = clean):"
git status --porcelain
echo
sed -n '/^\[metrics\]/,/^\[metrics.meta/p' experiments/mnist-cnn/metrics.toml | sed '$d'
