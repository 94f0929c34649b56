#!/usr/bin/env bash
# Tests the article's training claims on real data (issue 7; results in docs/recipes.md):
#   1. augmentation (random crop + flip) raises test accuracy          — Fashion-MNIST, seed-cnn
#   2. transfer learning converges 3–5× faster                         — MNIST → Fashion-MNIST, seed-cnn
#   3. dropout 0.5 + label smoothing 0.1 beat neither                  — Fashion-MNIST, mlp
#   4. cosine annealing beats a constant learning rate                 — Fashion-MNIST, seed-cnn
# Every arm runs with seeds 1..SEEDS in one scratch repository (`exp init`), one commit per run;
# the table gives mean ± sample std of the test accuracy (and, for 2, the epochs to a target).
#
# Usage: scripts/bench/recipes.sh [WORKDIR] [SEEDS]   (EXP_DATA must name the data root; build first:
# cargo build --release). Budgets are set below so the whole set fits ~25 min on 2 CPU cores.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
exp="${EXP:-$root/target/release/exp}"
work="${1:-$(mktemp -d)}"
seeds="${2:-3}"
: "${EXP_DATA:?set EXP_DATA to the data root}"
rm -rf "$work/repo" && mkdir -p "$work"
"$exp" init "$work/repo" > /dev/null
cd "$work/repo"
results="$work/results.tsv"
: > "$results"

fashion='train_images = "fashion-mnist/train-images-idx3-ubyte.gz"
train_labels = "fashion-mnist/train-labels-idx1-ubyte.gz"
test_images = "fashion-mnist/t10k-images-idx3-ubyte.gz"
test_labels = "fashion-mnist/t10k-labels-idx1-ubyte.gz"
normalize = { mean = [0.2860], std = [0.3530] }'
cat > experiments/fashion-seed.toml <<EOF
[model]
name = "seed-cnn"

[data]
format = "idx"
$fashion

[train]
optimizer = "adam"
lr = 1e-3
batch_size = 64
epochs = 6
seed = 1
EOF
cat > experiments/fashion-mlp.toml <<EOF
[model]
name = "mlp"
hidden = [256, 128]

[data]
format = "idx"
$fashion

[train]
optimizer = "adam"
lr = 1e-3
batch_size = 64
epochs = 10
seed = 1
EOF
git add experiments && git commit -qm "recipes: experiments" > /dev/null

# run CLAIM ARM EXPERIMENT SEED [--set ...]: one run; appends claim, arm, seed, test accuracy,
# and the per-epoch test accuracies to results.tsv.
run() {
  local claim=$1 arm=$2 name=$3 seed=$4
  shift 4
  local start end
  start=$(date +%s)
  "$exp" run "$name" --quiet --set "train.seed=$seed" "$@" > /dev/null
  end=$(date +%s)
  python3 - "$claim" "$arm" "$seed" "experiments/$name" "$((end - start))" >> "$results" <<'PY'
import csv, sys, tomllib
claim, arm, seed, out, secs = sys.argv[1:]
record = tomllib.load(open(f"{out}/metrics.toml", "rb"))
curve = [row["eval_accuracy"] for row in csv.DictReader(open(f"{out}/history.csv"))]
print("\t".join([claim, arm, seed, str(record["metrics"]["accuracy"]), ",".join(curve), secs]))
PY
  echo "recipes: $claim / $arm / seed $seed: $(tail -1 "$results" | cut -f4) ($((end - start)) s)" >&2
}

for seed in $(seq 1 "$seeds"); do
  # 1. Augmentation, same epochs budget (6 epochs of 10,000 images).
  run augmentation none fashion-seed "$seed" --set data.train_limit=10000
  run augmentation crop3+flip fashion-seed "$seed" --set data.train_limit=10000 \
    --set train.augment.crop_padding=3 --set train.augment.flip=true
  # 4. Cosine annealing vs constant lr (same budget).
  run cosine constant fashion-seed "$seed" --set data.train_limit=10000
  run cosine cosine fashion-seed "$seed" --set data.train_limit=10000 --set train.schedule=cosine
  # 3. Dropout 0.5 + label smoothing 0.1 vs neither (mlp, 20,000 images, 10 epochs).
  run regularisation neither fashion-mlp "$seed" --set data.train_limit=20000 --set model.dropout=0.0
  run regularisation dropout0.5+ls0.1 fashion-mlp "$seed" --set data.train_limit=20000 \
    --set model.dropout=0.5 --set train.label_smoothing=0.1
done

# 2. Transfer: one MNIST parent (10,000 images, 3 epochs), then Fashion-MNIST on 5,000 images
# for 8 epochs from scratch, from the parent with the convolution frozen, and fine-tuning all.
"$exp" run mnist-cnn --quiet --set data.train_limit=10000 --set train.epochs=3 > /dev/null
parent=$(git rev-parse HEAD)
echo "recipes: MNIST parent $parent ($(python3 -c 'import tomllib;print(tomllib.load(open("experiments/mnist-cnn/metrics.toml","rb"))["metrics"]["accuracy"])'))" >&2
for seed in $(seq 1 "$seeds"); do
  run transfer scratch fashion-seed "$seed" --set data.train_limit=5000 --set train.epochs=8
  run transfer mnist-frozen-conv fashion-seed "$seed" --set data.train_limit=5000 \
    --set train.epochs=8 --set "init.from=$parent" --set init.freeze=conv.
  run transfer mnist-finetune fashion-seed "$seed" --set data.train_limit=5000 \
    --set train.epochs=8 --set "init.from=$parent"
done

python3 - "$results" <<'PY'
import statistics as st, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
def ms(xs):
    return f"{st.mean(xs):.4f} ± {st.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"
print("| claim | arm | seeds | test accuracy (mean ± std) | seconds per run |")
print("|---|---|---:|---:|---:|")
seen = []
for r in rows:
    if (r[0], r[1]) not in seen:
        seen.append((r[0], r[1]))
for claim, arm in seen:
    sel = [r for r in rows if r[0] == claim and r[1] == arm]
    acc = [float(r[3]) for r in sel]
    secs = [int(r[5]) for r in sel]
    print(f"| {claim} | {arm} | {len(sel)} | {ms(acc)} | {st.mean(secs):.0f} |")
transfer = [r for r in rows if r[0] == "transfer"]
if transfer:
    scratch_final = [float(r[3]) for r in transfer if r[1] == "scratch"]
    for target in (0.75, 0.80, round(st.mean(scratch_final) - 0.005, 3)):
        print(f"\nEpochs to test accuracy ≥ {target} (Fashion-MNIST, 5,000 images; never = >8):\n")
        print("| arm | epochs per seed | mean |")
        print("|---|---|---:|")
        for arm in ("scratch", "mnist-frozen-conv", "mnist-finetune"):
            eps = []
            for r in transfer:
                if r[1] != arm:
                    continue
                curve = [float(x) for x in r[4].split(",")]
                hit = next((i + 1 for i, a in enumerate(curve) if a >= target), None)
                eps.append(hit)
            shown = ", ".join(str(e) if e else ">8" for e in eps)
            known = [e for e in eps if e]
            mean = f"{st.mean(known):.1f}" if len(known) == len(eps) else "—"
            print(f"| {arm} | {shown} | {mean} |")
    print("\nPer-epoch test accuracy (mean over seeds):\n")
    for arm in ("scratch", "mnist-frozen-conv", "mnist-finetune"):
        curves = [[float(x) for x in r[4].split(",")] for r in transfer if r[1] == arm]
        means = [st.mean(c[i] for c in curves) for i in range(len(curves[0]))]
        print(f"- {arm}: " + " ".join(f"{m:.3f}" for m in means))
PY
