#!/usr/bin/env bash
# check.sh — the GPU tests and the GPU benchmark of exp, run on a machine with an NVIDIA GPU
# against the CUDA build of the exp binary itself (packed by scripts/gpu/pack.sh into .gpu/).
#
#   quick (correctness, ≤ 3 minutes):
#     1. `exp device` and `exp device --check cuda`: exp's kernels and cuDNN convolutions (f32,
#        tf32, bf16, f16; stride 2, 1×1, batch 1), the fused dropout, a ResNet-18 training step
#        (batch norm, residual path) against the CPU implementations;
#     2. mnist-cnn on CUDA, seeds 1-3, in f32, tf32, bf16 and f16: the records must name the GPU,
#        the f32 3-seed mean must reach the CPU's (EXP_CPU_ACCURACY, measured on the CPU with
#        the same spec and seeds), and tf32, bf16 and f16 must land within 0.3 points of f32;
#     3. reproducibility: fashion-cnn (cuDNN convolutions, fused dropout) twice with one seed
#        must give the same weights (tensor_hash).
#   bench (≤ 6 minutes: short windows, the two sides alternating within each configuration):
#     4. exp vs PyTorch eager (scripts/gpu/bench_pytorch_gpu.py), Adam 1e-3, 3 epochs, img/s of
#        epochs 2-3: seed-cnn (MNIST) and cnn (Fashion-MNIST) at batch 64 and 256, exp f32 vs
#        PyTorch with TF32 off, exp tf32 vs PyTorch with TF32 on (its default); cnn 256 on exp's
#        im2col path for the before/after;
#     5. resnet18 (width 64, CIFAR stem) on Fashion-MNIST padded to 32×32×3, batch 128, SGD,
#        f32 and bf16, vs PyTorch on the same pixels;
#     6. inference: `exp bench` on the cnn and resnet18 runs, f32/bf16/f16, batch 1 and 256;
#     7. augmentation's cost (cnn 256 with crop and flip) and per-operation profiles.
#   all: quick, then bench. resnet: quick, then cnn 256 of 4, 5, 6 for resnet18 and its profile
#   (after a change to the deeper models' GPU path).
# Results go to $OUT (default /tmp/exp-gpu-out): check.log, summary.md, results.tgz.
# Exit status: 0 when every check passed, 1 otherwise.
#
# usage: scripts/gpu/check.sh quick|bench|all|resnet   (EXP_CHECK_DEADLINE=S: start no run after S seconds)
# A dry run on a machine without a GPU (small data, a narrow ResNet, a Python with torch):
#   EXP_CHECK_DEVICE=cpu EXP_CHECK_TORCH_DEVICE=cpu EXP_CHECK_PRECISIONS=f32 EXP_CHECK_INFER=f32
#   EXP_CHECK_SET="data.train_limit=512 data.test_limit=500" EXP_CHECK_TORCH_ARGS="--train-limit 512 --test-limit 500"
#   EXP_CHECK_BENCH_PRECISIONS=f32 EXP_CHECK_RESNET_PRECISIONS=f32
#   EXP_CHECK_RESNET_WIDTH=8 EXP_CHECK_PYTHON=~/.cache/exp/py-venv/bin/python3 scripts/gpu/check.sh all
set -uo pipefail
cd "$(dirname "$0")/../.."
repo_root=$PWD
OUT="${OUT:-/tmp/exp-gpu-out}"
mkdir -p "$OUT"
mode="${1:-}"
case "$mode" in
  quick|bench|all|resnet) ;;
  --quick) mode=quick ;;
  *) echo "usage: scripts/gpu/check.sh quick|bench|all|resnet" >&2; exit 2 ;;
esac
exec > >(tee "$OUT/check.log") 2>&1

work=/tmp/exp-gpu-check
rm -rf "$work"; mkdir -p "$work/bin" "$work/home" "$work/results"
bash scripts/gpu/unpack-exp.sh "$work/bin/exp"
if ! command -v git >/dev/null; then
  gzip -dc .gpu/git.gz > "$work/bin/git" && chmod +x "$work/bin/git"
fi
export PATH="$work/bin:$PATH" HOME="$work/home" EXP_DATA="$repo_root/.gpu/data"
printf '[user]\n\tname = exp GPU check\n\temail = gpu-check@example.com\n[init]\n\tdefaultBranch = main\n' > "$HOME/.gitconfig"
# shellcheck disable=SC1091
source scripts/gpu/cuda-libs.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
git --version
ldd "$work/bin/exp" | grep -E 'cudnn|cublas\.|not found'

device="${EXP_CHECK_DEVICE:-cuda}"
torch_device="${EXP_CHECK_TORCH_DEVICE:-cuda}"
python="${EXP_CHECK_PYTHON:-python3}"
torch_extra=(${EXP_CHECK_TORCH_ARGS:-})
resnet_width="${EXP_CHECK_RESNET_WIDTH:-64}"
bench_precisions="${EXP_CHECK_BENCH_PRECISIONS:-f32 tf32}"
precisions="${EXP_CHECK_PRECISIONS:-f32 tf32 bf16 f16}"
extra=(); for kv in ${EXP_CHECK_SET:-}; do extra+=(--set "$kv"); done
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
# EXP_CHECK_DEADLINE=S: start no run after S seconds (each skip is a failure), so that the
# summary is still written inside a device call's time limit.
deadline="${EXP_CHECK_DEADLINE:-}"
late() {
  if [[ -n $deadline ]] && (( SECONDS > deadline )); then
    fail "$1 skipped: past the ${deadline} s deadline"
    return 0
  fi
  return 1
}

new_repo() { rm -rf "$1"; mkdir -p "$(dirname "$1")"; exp init "$1" >/dev/null 2>&1 || fail "exp init $1"; }

# run LABEL EXPERIMENT [exp run args...]: trains in a fresh repository (without git-lfs, which
# GPU machines may lack, a run leaves the weights looking modified to `git status` and the next
# run in the same repository would refuse to overwrite them); keeps the record, history and
# output under results/LABEL and the repository under repos/LABEL (for exp bench).
run() {
  local label=$1 experiment=$2; shift 2
  late "exp run $label" && return
  local repo="$work/repos/$label" start=$SECONDS
  new_repo "$repo"
  [[ -n "${SPEC_FILE:-}" ]] && cp "$SPEC_FILE" "$repo/experiments/$experiment.toml"
  if (cd "$repo" && exp run "$experiment" --quiet "$@" "${extra[@]}" > "$work/results/$label.out" 2>&1); then
    mkdir -p "$work/results/$label"
    cp "$repo/experiments/$experiment/metrics.toml" "$repo/experiments/$experiment/history.csv" "$work/results/$label/"
    echo "  $label: $(grep -m1 '^accuracy' "$work/results/$label/metrics.toml") ($((SECONDS - start)) s)"
  else
    cat "$work/results/$label.out"
    fail "exp run $label"
  fi
}

# torch_run LABEL ARGS...: the PyTorch side, one JSON line into results/LABEL.json.
torch_run() {
  local label=$1; shift
  late "pytorch $label" && return
  local start=$SECONDS
  if "$python" scripts/gpu/bench_pytorch_gpu.py --data "$EXP_DATA" --device "$torch_device" "$@" "${torch_extra[@]}" \
      > "$work/results/$label.json" 2> "$work/results/$label.err"; then
    echo "  $label: $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%.0f img/s, accuracy %.4f" % (r["images_per_second"], r["test_accuracy"]))' "$work/results/$label.json") ($((SECONDS - start)) s)"
  else
    tail -5 "$work/results/$label.err"
    fail "pytorch $label"
  fi
}

quick() {
  echo "== 1. devices and kernel checks"
  exp device || fail "exp device"
  exp device --check "$device" || fail "exp device --check $device"

  echo "== 2. tests: mnist-cnn on CUDA, 3 seeds x $precisions"
  for precision in $precisions; do
    for seed in 1 2 3; do
      run "test-$precision-$seed" mnist-cnn --device "$device" \
        --set train.seed="$seed" --set train.precision="$precision"
    done
  done
  cp "$work/results/test-f32-1/metrics.toml" "$OUT/gpu-record-example.toml" 2>/dev/null

  echo "== 3. reproducibility: fashion-cnn twice, one seed"
  for copy in a b; do
    run "repro-$copy" fashion-cnn --device "$device" --set train.epochs=1 --set data.train_limit=12800
  done
}

adam=(--set train.optimizer=adam --set train.lr=1e-3 --set train.momentum=0 --set train.epochs=3 --set train.seed=1)

# bench_small [CONFIG...]: section 4 for "model batch" pairs (default: all four).
bench_small() {
  echo "== 4. exp vs PyTorch eager, Adam 1e-3, 3 epochs"
  local round=0 configs=("$@")
  [[ ${#configs[@]} == 0 ]] && configs=("seed-cnn 64" "seed-cnn 256" "cnn 64" "cnn 256")
  for pair in "${configs[@]}"; do
    read -r model b <<< "$pair"
    local set=mnist experiment=mnist-cnn
    [[ $model == cnn ]] && set=fashion experiment=fashion-cnn
    {
      round=$((round + 1))
      # Alternate which side goes first from one configuration to the next.
      local order=("exp" "torch"); (( round % 2 == 0 )) && order=("torch" "exp")
      for side in "${order[@]}"; do
        if [[ $side == exp ]]; then
          for p in $bench_precisions; do
            run "bench-$model-$b-exp-$p" "$experiment" --device "$device" "${adam[@]}" --set train.batch_size=$b --set train.precision=$p
          done
        else
          for p in $bench_precisions; do
            local tf32=off; [[ $p == tf32 ]] && tf32=on
            torch_run "bench-$model-$b-torch-$p" --set "$set" --model "$model" --batch-size $b --tf32 $tf32
          done
        fi
      done
    }
  done
  # Before/after: exp's own im2col + GEMM convolution (the path before cuDNN), and cuDNN's
  # algorithms chosen by timing (EXP_CUDNN_BENCHMARK=1) rather than by its heuristics, same run.
  EXP_CUDA_CONV=im2col run "bench-cnn-256-im2col-f32" fashion-cnn --device "$device" "${adam[@]}" --set train.batch_size=256
  EXP_CUDNN_BENCHMARK=1 run "bench-cnn-256-timed-f32" fashion-cnn --device "$device" "${adam[@]}" --set train.batch_size=256
}

spec="$work/resnet18.toml"
bench_resnet() {
  echo "== 5. resnet18 on Fashion-MNIST padded to 32x32x3, batch 128, SGD 0.05 momentum 0.9"
  "$python" scripts/gpu/fashion32.py "$EXP_DATA" "$EXP_DATA/fashion32" --train-limit 12800 --test-limit 10000 \
    || fail "fashion32.py"
  cat > "$spec" <<'EOF'
# ResNet-18 (CIFAR stem) on Fashion-MNIST padded to 32x32 and repeated to 3 channels.
[model]
name = "resnet18"
width = RESNET_WIDTH
[data]
format = "image-folder"
path = "fashion32"
channels = 3
image_size = [32, 32]
normalize = "train"
[train]
optimizer = "sgd"
lr = 0.05
momentum = 0.9
batch_size = 128
epochs = 2
seed = 1
EOF
  sed -i "s/RESNET_WIDTH/$resnet_width/" "$spec"
  for precision in ${EXP_CHECK_RESNET_PRECISIONS:-f32 bf16}; do
    SPEC_FILE="$spec" run "bench-resnet18-128-exp-$precision" resnet18 --device "$device" --set train.precision=$precision
    local tp=f32; [[ $precision == bf16 ]] && tp=bf16
    torch_run "bench-resnet18-128-torch-$precision" --set fashion32 --model resnet18 --width "$resnet_width" --batch-size 128 --epochs 2 \
      --optimizer sgd --lr 0.05 --momentum 0.9 --train-limit 12800 --precision $tp --tf32 off
  done
  # Before/after: candle-nn's batch norm (the path before cuDNN's), same run.
  EXP_CUDA_BN=candle SPEC_FILE="$spec" run "bench-resnet18-128-candlebn-f32" resnet18 --device "$device"
}

# bench_infer LABEL...: section 6 on these runs.
bench_infer() {

  echo "== 6. inference: exp bench, f32/bf16/f16, batch 1 and 256"
  for label in "$@"; do
    if [[ -f "$work/results/$label/metrics.toml" ]]; then
      (cd "$work/repos/$label" && exp bench --device "$device" --precision "${EXP_CHECK_INFER:-f32,bf16,f16}" \
        --batch-size 1,256 --seconds 0.5 > "$work/results/infer-$label.txt" 2> "$work/results/infer-$label.err") \
        && cat "$work/results/infer-$label.txt" || { cat "$work/results/infer-$label.err"; fail "exp bench $label"; }
    fi
  done

}

bench_profiles() {
  echo "== 7. augmentation's cost and per-operation profiles"
  run "aug-cnn-256-exp-f32" fashion-cnn --device "$device" "${adam[@]}" --set train.batch_size=256 \
    --set train.augment.crop_padding=2 --set train.augment.flip=true
  export EXP_PROFILE_OPS=1
  run "ops-cnn-256" fashion-cnn --device "$device" "${adam[@]}" \
    --set train.epochs=1 --set train.batch_size=256 --set data.train_limit=19200
  run "ops-aug-cnn-256" fashion-cnn --device "$device" "${adam[@]}" \
    --set train.epochs=1 --set train.batch_size=256 --set data.train_limit=19200 \
    --set train.augment.crop_padding=2 --set train.augment.flip=true
  SPEC_FILE="$spec" run "ops-resnet18-128" resnet18 --device "$device" --set train.epochs=1
  unset EXP_PROFILE_OPS
}

bench() {
  bench_small
  bench_resnet
  bench_infer bench-cnn-256-exp-f32 bench-resnet18-128-exp-f32
  bench_profiles
}

# resnet: after a change to the deeper models' GPU path, the part of bench that covers it.
resnet() {
  bench_small "cnn 256"
  bench_resnet
  bench_infer bench-resnet18-128-exp-f32
  export EXP_PROFILE_OPS=1
  SPEC_FILE="$spec" run "ops-resnet18-128" resnet18 --device "$device" --set train.epochs=1
  unset EXP_PROFILE_OPS
}

SECONDS=0
start=$SECONDS
[[ $mode == quick || $mode == all || $mode == resnet ]] && quick
echo "(quick done at $((SECONDS - start)) s)"
[[ $mode == bench || $mode == all ]] && bench
[[ $mode == resnet ]] && resnet
echo "(done at $((SECONDS - start)) s)"

tar czf "$OUT/results.tgz" -C "$work" results
python3 scripts/gpu/summarize.py "$work/results" "${EXP_CPU_ACCURACY:-}" > "$OUT/summary.md" || fail "summary checks"
cat "$OUT/summary.md"
echo "failures: $failures"
[[ $failures == 0 ]]
