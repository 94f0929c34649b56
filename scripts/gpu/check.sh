#!/usr/bin/env bash
# check.sh — the GPU tests and the GPU benchmark of exp, run on a machine with an NVIDIA GPU
# against the CUDA build of the exp binary itself (packed by scripts/gpu/pack.sh into .gpu/).
#
#   1. `exp device` and `exp device --check cuda`: exp's kernels against the CPU implementations;
#   2. tests: `exp run mnist-cnn --device cuda`, seeds 1-3, in f32, bf16 and f16; the records must
#      name the GPU; the f32 3-seed mean must reach the CPU's (EXP_CPU_ACCURACY, measured on the
#      CPU with the same spec and seeds), and bf16 and f16 must land within 0.3 points of f32;
#   3. benchmark, side by side on this GPU: exp against PyTorch eager (scripts/gpu/bench_pytorch_gpu.py)
#      for seed-cnn on MNIST at batch 64 and 256 and cnn on Fashion-MNIST at batch 64 and 256,
#      Adam 1e-3, 3 epochs: img/s of epochs 2-3 and test accuracy;
#   4. profile: per-operation times (EXP_PROFILE_OPS=1) of seed-cnn at batch 64 and cnn at 256,
#      and of cnn at 256 with candle's own convolution (EXP_CUDA_CONV=candle).
# Results go to $OUT (default /tmp/exp-gpu-out): check.log, summary.md, one GPU run record.
# Exit status: 0 when every test passed, 1 otherwise.
#
# usage: scripts/gpu/check.sh [--quick]   (--quick: tests 1-2 only, seed 1 only)
# A dry run of the script itself on a machine without a GPU: EXP_CHECK_DEVICE=cpu
# EXP_CHECK_PRECISIONS=f32 EXP_CHECK_SET="data.train_limit=2000" scripts/gpu/check.sh --quick
set -uo pipefail
cd "$(dirname "$0")/../.."
repo_root=$PWD
OUT="${OUT:-/tmp/exp-gpu-out}"
mkdir -p "$OUT"
quick=0; [[ "${1:-}" == "--quick" ]] && quick=1
exec > >(tee "$OUT/check.log") 2>&1

work=/tmp/exp-gpu-check
rm -rf "$work"; mkdir -p "$work/bin" "$work/home" "$work/results"
gzip -dc .gpu/exp.gz > "$work/bin/exp" && chmod +x "$work/bin/exp"
if ! command -v git >/dev/null; then
  gzip -dc .gpu/git.gz > "$work/bin/git" && chmod +x "$work/bin/git"
fi
export PATH="$work/bin:$PATH" HOME="$work/home" EXP_DATA="$repo_root/.gpu/data"
printf '[user]\n\tname = exp GPU check\n\temail = gpu-check@example.com\n[init]\n\tdefaultBranch = main\n' > "$HOME/.gitconfig"
# shellcheck disable=SC1091
source scripts/gpu/cuda-libs.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
git --version

device="${EXP_CHECK_DEVICE:-cuda}"
precisions="${EXP_CHECK_PRECISIONS:-f32 bf16 f16}"
extra=(); for kv in ${EXP_CHECK_SET:-}; do extra+=(--set "$kv"); done
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

echo "== 1. devices and kernel checks"
exp device || fail "exp device"
exp device --check "$device" || fail "exp device --check $device"

new_repo() { rm -rf "$1"; mkdir -p "$(dirname "$1")"; exp init "$1" >/dev/null 2>&1 || fail "exp init $1"; }

# run LABEL REPO EXPERIMENT [exp run args...]: trains in a fresh repository REPO/LABEL (without
# git-lfs, which GPU machines may lack, a run leaves the weights looking modified to `git status`
# and the next run in the same repository would refuse to overwrite them), and keeps the record
# under results/LABEL.
run() {
  local label=$1 repo=$2/$1 experiment=$3; shift 3
  local start=$SECONDS
  new_repo "$repo"
  if (cd "$repo" && exp run "$experiment" --quiet "$@" "${extra[@]}" > "$work/results/$label.out" 2>&1); then
    mkdir -p "$work/results/$label"
    cp "$repo/experiments/$experiment/metrics.toml" "$repo/experiments/$experiment/history.csv" "$work/results/$label/"
    echo "  $label: $(grep -m1 '^accuracy' "$work/results/$label/metrics.toml") ($((SECONDS - start)) s)"
  else
    cat "$work/results/$label.out"
    fail "exp run $label"
  fi
}

echo "== 2. tests: mnist-cnn on CUDA, 3 seeds x f32/bf16/f16"
seeds="1 2 3"; [[ $quick == 1 ]] && seeds=1
for precision in $precisions; do
  for seed in $seeds; do
    run "test-$precision-$seed" "$work/tests" mnist-cnn --device "$device" \
      --set train.seed="$seed" --set train.precision="$precision"
  done
done
cp "$work/results/test-f32-1/metrics.toml" "$OUT/gpu-record-example.toml" 2>/dev/null

if [[ $quick == 0 ]]; then
  echo "== 3. benchmark: exp vs PyTorch eager, Adam 1e-3, 3 epochs"
  adam=(--set train.optimizer=adam --set train.lr=1e-3 --set train.momentum=0 --set train.epochs=3 --set train.seed=1)
  for b in 64 256; do
    run "bench-exp-seed-cnn-$b" "$work/bench" mnist-cnn --device "$device" "${adam[@]}" --set train.batch_size=$b
    python3 scripts/gpu/bench_pytorch_gpu.py --data "$EXP_DATA" --set mnist --model seed-cnn --batch-size $b \
      > "$work/results/bench-torch-seed-cnn-$b.json" || fail "pytorch seed-cnn $b"
    run "bench-exp-cnn-$b" "$work/bench" fashion-cnn --device "$device" "${adam[@]}" --set train.batch_size=$b
    # The same with candle's own convolution (what exp used before its own GPU convolution).
    EXP_CUDA_CONV=candle run "bench-candleconv-cnn-$b" "$work/bench" fashion-cnn --device "$device" "${adam[@]}" --set train.batch_size=$b
    python3 scripts/gpu/bench_pytorch_gpu.py --data "$EXP_DATA" --set fashion --model cnn --batch-size $b \
      > "$work/results/bench-torch-cnn-$b.json" || fail "pytorch cnn $b"
  done
  echo "== 4. per-operation profile (EXP_PROFILE_OPS=1)"
  export EXP_PROFILE_OPS=1
  run "ops-seed-cnn-64" "$work/bench" mnist-cnn --device "$device" --set data.train_limit=19200
  run "ops-cnn-256" "$work/bench" fashion-cnn --device "$device" "${adam[@]}" \
    --set train.epochs=1 --set train.batch_size=256 --set data.train_limit=19200
  EXP_CUDA_CONV=candle run "ops-candleconv-cnn-256" "$work/bench" fashion-cnn --device "$device" "${adam[@]}" \
    --set train.epochs=1 --set train.batch_size=256 --set data.train_limit=19200
  unset EXP_PROFILE_OPS
fi

tar czf "$OUT/results.tgz" -C "$work" results
python3 scripts/gpu/summarize.py "$work/results" "${EXP_CPU_ACCURACY:-}" > "$OUT/summary.md" || fail "summary checks"
cat "$OUT/summary.md"
echo "failures: $failures"
[[ $failures == 0 ]]
