#!/usr/bin/env bash
# Training-input benchmark: one epoch of seed-cnn (conv 3×3 1→32, ReLU, 2×2 max-pool, linear
# 5408→10; Adam lr 1e-3, batch 64, inputs (pixels/255 − 0.1307)/0.3081) on MNIST stored as
# 70,000 PNGs in class folders (train 60k, test 10k: the tree scripts/bench/bench-data.sh makes),
#   exp first    `exp run` of an image-folder spec in a fresh `exp init` repository: scans and
#                hashes the folder, decodes every PNG into .git/exp/cache/decoded, trains, evaluates
#   exp cached   the same spec and seed run again in that repository (memory-maps the cache)
#   PyTorch      torchvision.datasets.ImageFolder (transforms Grayscale, ToTensor, Normalize) +
#                DataLoader(num_workers=2, batch_size=64, shuffle=True), the same model and recipe,
#                Debian's torch 1.13 with torch.set_num_threads(2); test set through a DataLoader
#                (2 workers, batch 1000)
#   exp on IDX   the same recipe on the MNIST IDX files (reference accuracy)
# per seed (--seeds, default 3; a fresh repository per seed, so each seed's "first" decodes),
# tools alternating. Reported: total wall seconds of the process (medians over seeds), the data
# pipeline's seconds (exp: the record's [training.timing] load_seconds + data_seconds, i.e.
# scanning, hashing, decoding or mapping, and batch gathering; PyTorch: ImageFolder construction
# plus the time the training and test loops wait on their DataLoader iterators, worker start
# included), and test accuracy (means over seeds). Targets (the issue): exp's first run ≥ 2×
# faster end to end than PyTorch; PNG-trained accuracy within 0.3 points of the IDX-trained
# runs (3-seed means).
#
# Usage: scripts/bench/bench-input.sh [--seeds N] [--train-limit N] [--batch-size N] [--no-build] [--exp PATH]
#   --seeds N        seeds 1..N (default 3)
#   --train-limit N  train on N of the 60k images (exp: data.train_limit; PyTorch: a Subset of N
#                    drawn with the seed) — for smoke tests; the test set stays 10k
#   --batch-size N   default 64
#   --no-build       use target/release/exp as it is (default: cargo build --release first)
#   --exp PATH       the exp binary to measure (implies --no-build)
# Environment: EXP_DATA (data root with mnist/*-idx*; default as bench-data.sh), BENCH_PNG (the PNG
#   tree; default ~/.cache/exp/bench/mnist-png, made by bench-data.sh --prepare when missing),
#   BENCH_OUT (file the report is appended to; default /tmp/exp-bench-input.md).
# Full size (60k, 3 seeds): ~3 minutes on 2 idle cores (each seed: three exp runs of ~5 s, one
# PyTorch run of ~20-40 s). Smoke test (~15 s):
#   scripts/bench/bench-input.sh --train-limit 2000 --seeds 1 --no-build
# Needs an otherwise idle machine: torch's OpenMP threads spin-wait against other processes.
# Python: scripts/py-tools.sh's venv (~/.cache/exp/py-venv: Debian's python3-torch,
# python3-torchvision, python3-pil), made by that script when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
die() { echo "bench-input: error: $*" >&2; exit 1; }
say() { echo "bench-input: $*" >&2; }

seeds=3 limit=0 batch=64 build=1 exp=$root/target/release/exp
while [ $# -gt 0 ]; do
  case $1 in
    --seeds) seeds=${2:?--seeds needs a number}; shift 2 ;;
    --train-limit) limit=${2:?--train-limit needs a number}; shift 2 ;;
    --batch-size) batch=${2:?--batch-size needs a number}; shift 2 ;;
    --no-build) build=0; shift ;;
    --exp) exp=$(realpath "${2:?--exp needs a path}"); build=0; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ $seeds =~ ^[1-9][0-9]*$ ]] || die "--seeds wants a positive integer, got '$seeds'"
[[ $limit =~ ^[0-9]+$ ]] && [ "$limit" -le 60000 ] || die "--train-limit wants 0..60000, got '$limit'"
[[ $batch =~ ^[1-9][0-9]*$ ]] || die "--batch-size wants a positive integer, got '$batch'"

# --- tools and data ------------------------------------------------------------------------------
py=$HOME/.cache/exp/py-venv/bin/python
if ! "$py" -c 'import torch, torchvision, PIL' 2>/dev/null; then
  say "making the Python venv (scripts/py-tools.sh: Debian's torch, torchvision, Pillow)"
  py=$(scripts/py-tools.sh) || die "scripts/py-tools.sh failed"
  "$py" -c 'import torch, torchvision, PIL' || die "$py cannot import torch, torchvision and PIL"
fi
png=$(scripts/bench/bench-data.sh --prepare) || die "making the PNG tree failed (scripts/bench/bench-data.sh --prepare)"
if [ -z "${EXP_DATA:-}" ]; then
  if ls ../shared/data/mnist/train-images* >/dev/null 2>&1; then EXP_DATA=$(realpath ../shared/data)
  else EXP_DATA=$HOME/.cache/exp/data; fi
fi
ls "$EXP_DATA"/mnist/train-images* >/dev/null 2>&1 || die "no MNIST IDX files under $EXP_DATA/mnist (scripts/fetch-data.sh)"
mnist=$(realpath "$EXP_DATA/mnist")
command -v git >/dev/null || die "git missing"
if [ "$build" = 1 ]; then cargo build --release >&2 || die "cargo build --release failed"; fi
[ -x "$exp" ] || die "$exp missing: run cargo build --release"
exp_version=$("$exp" --version | awk '{print $2}')

work=$(mktemp -d /tmp/exp-bench-input.XXXXXX)
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
export GIT_CONFIG_NOSYSTEM=1
# exp's data root for the benchmark: the PNG tree and the IDX files, by links.
mkdir "$work/data"
ln -s "$png" "$work/data/mnist-png"
ln -s "$mnist" "$work/data/mnist"

# --- the specs: the same recipe on the PNG folder and on the IDX files ---------------------------
recipe="[model]
name = \"seed-cnn\"

[train]
optimizer = \"adam\"
lr = 1e-3
batch_size = $batch
epochs = 1
seed = 1"
png_spec="$recipe

[data]
format = \"image-folder\"
path = \"mnist-png\"
channels = 1
image_size = [28, 28]
normalize = { mean = [0.1307], std = [0.3081] }"
idx_spec="$recipe

[data]
format = \"idx\"
train_images = \"mnist/train-images-idx3-ubyte.gz\"
train_labels = \"mnist/train-labels-idx1-ubyte.gz\"
test_images = \"mnist/t10k-images-idx3-ubyte.gz\"
test_labels = \"mnist/t10k-labels-idx1-ubyte.gz\"
normalize = { mean = [0.1307], std = [0.3081] }"

# --- the PyTorch side --------------------------------------------------------------------------
cat > "$work/torch_input.py" <<'PY'
"""One epoch of seed-cnn from an ImageFolder through a DataLoader; prints one JSON line."""
import json, resource, sys, time
t_start = time.perf_counter()
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

folder, seed, limit, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(2)
torch.manual_seed(seed)


class SeedCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 32, 3)
        self.fc = nn.Linear(32 * 13 * 13, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.max_pool2d(F.relu(self.conv(x)), 2), 1))


def timed_batches(loader, waits):
    """Yields the loader's batches, adding the time spent waiting for each to waits[0]."""
    t = time.perf_counter()
    it = iter(loader)  # starts the workers
    while True:
        try:
            b = next(it)
        except StopIteration:
            waits[0] += time.perf_counter() - t
            return
        waits[0] += time.perf_counter() - t
        yield b
        t = time.perf_counter()


tf = transforms.Compose([transforms.Grayscale(), transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
t = time.perf_counter()
train = datasets.ImageFolder(f"{folder}/train", transform=tf)
test = datasets.ImageFolder(f"{folder}/test", transform=tf)
construct = time.perf_counter() - t
assert len(train.classes) == 10 and len(train) == 60000 and len(test) == 10000, (train.classes, len(train), len(test))
if limit:
    train = Subset(train, torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:limit].tolist())
model = SeedCnn()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
loader = DataLoader(train, batch_size=batch, shuffle=True, num_workers=2,
                    generator=torch.Generator().manual_seed(seed))
waits = [0.0]
t = time.perf_counter()
model.train()
steps = 0
for x, y in timed_batches(loader, waits):
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    steps += 1
train_s = time.perf_counter() - t
train_wait = waits[0]
model.eval()
correct = 0
t = time.perf_counter()
with torch.no_grad():
    for x, y in timed_batches(DataLoader(test, batch_size=1000, num_workers=2), waits):
        correct += (model(x).argmax(1) == y).sum().item()
eval_s = time.perf_counter() - t
print(json.dumps({
    "construct_s": construct, "train_wait_s": train_wait, "eval_wait_s": waits[0] - train_wait,
    "data_s": construct + waits[0], "train_loop_s": train_s, "eval_loop_s": eval_s, "steps": steps,
    "accuracy": correct / len(test), "inside_s": time.perf_counter() - t_start,
    # CPU seconds of the DataLoader workers (reaped when each loader's iterator ends)
    "workers_cpu_s": (lambda u: u.ru_utime + u.ru_stime)(resource.getrusage(resource.RUSAGE_CHILDREN)),
    "torch": torch.__version__, "torchvision": __import__("torchvision").__version__,
}))
PY

raw=$work/raw.jsonl
: > "$raw"
# Wall seconds of CMD... (output to LOG), or death with the log's tail.
timed() {  # LOG CMD...
  local log=$1 t0 t1; shift
  t0=$EPOCHREALTIME
  "$@" > "$log" 2>&1 || { tail -n 30 "$log" >&2; die "'$*' failed in $PWD (log: $log)"; }
  t1=$EPOCHREALTIME
  awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b - a}'
}
exp_run() {  # SEED KIND EXPERIMENT: one run in the current repository, recorded in raw.jsonl
  local seed=$1 kind=$2 name=$3 t args=(--set "train.seed=$1")
  [ "$limit" = 0 ] || args+=(--set "data.train_limit=$limit")
  t=$(timed "$work/log-$kind-$seed" env EXP_DATA="$work/data" "$exp" run "$name" --quiet "${args[@]}")
  git show "HEAD:experiments/$name/metrics.toml" > "$work/record-$kind-$seed.toml" \
    || die "no record of $name at HEAD after the run (log: $work/log-$kind-$seed)"
  python3 - "$work/record-$kind-$seed.toml" "$kind" "$seed" "$t" >> "$raw" <<'PY'
import json, sys, tomllib
rec = tomllib.load(open(sys.argv[1], "rb"))
tm = rec["training"]["timing"]
print(json.dumps({"kind": sys.argv[2], "seed": int(sys.argv[3]), "total_s": float(sys.argv[4]),
                  "data_s": tm["load_seconds"] + tm["data_seconds"], "load_s": tm["load_seconds"],
                  "gather_s": tm["data_seconds"], "record_wall_s": rec["run"]["wall_seconds"],
                  "accuracy": rec["metrics"]["accuracy"], "examples": rec["data"]["train"]["examples"],
                  "steps": rec["training"]["steps"]}))
PY
}
bench_exp() {  # SEED: a fresh repository: first run, cached run, then the IDX reference
  local seed=$1 repo=$work/repo-$1
  mkdir "$repo"
  git -C "$repo" init -q -b main
  git -C "$repo" config user.name bench
  git -C "$repo" config user.email bench@example.invalid
  cd "$repo"
  "$exp" init . > /dev/null
  echo "$png_spec" > experiments/mnist-png.toml
  echo "$idx_spec" > experiments/mnist-idx.toml
  git add experiments && git commit -q -m 'bench specs'
  exp_run "$seed" exp-first mnist-png
  ls .git/exp/cache/decoded/*.bin > /dev/null 2>&1 || die "no decode cache under $repo/.git/exp/cache/decoded after the first run"
  exp_run "$seed" exp-cached mnist-png
  exp_run "$seed" exp-idx mnist-idx
  cd "$root"
  rm -rf "$repo"
}
bench_torch() {  # SEED
  local seed=$1 t log=$work/log-torch-$1
  t=$(timed "$log" "$py" "$work/torch_input.py" "$png" "$seed" "$limit" "$batch")
  python3 - "$log" "$seed" "$t" >> "$raw" <<'PY'
import json, sys
line = [l for l in open(sys.argv[1]) if l.startswith("{")][-1]
r = json.loads(line)
r.update(kind="torch", seed=int(sys.argv[2]), total_s=float(sys.argv[3]))
print(json.dumps(r))
PY
}

load=$(cut -d' ' -f1 /proc/loadavg)
awk -v l="$load" -v n="$(nproc)" 'BEGIN {exit !(l > n / 4)}' \
  && say "warning: load average $load on $(nproc) cores: timings need an idle machine"
started=$(date -u '+%Y-%m-%d %H:%M UTC')
t_start=$EPOCHREALTIME
for seed in $(seq 1 "$seeds"); do
  # Alternate which tool goes first, seed by seed.
  if [ $((seed % 2)) = 1 ]; then order="exp torch"; else order="torch exp"; fi
  for tool in $order; do
    say "seed $seed/$seeds: $tool"
    "bench_$tool" "$seed"
  done
done
elapsed=$(awk -v a="$t_start" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.0f", b - a}')

out=${BENCH_OUT:-/tmp/exp-bench-input.md}
cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')
args="--seeds $seeds"; [ "$limit" = 0 ] || args+=" --train-limit $limit"; [ "$batch" = 64 ] || args+=" --batch-size $batch"
python3 - "$raw" "$seeds" "$limit" <<PY | tee -a "$out"
import json, statistics, sys
raw, seeds, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
runs = [json.loads(l) for l in open(raw)]
by = {}
for r in runs:
    by.setdefault(r["kind"], []).append(r)
med = lambda k, f: statistics.median(r[f] for r in by[k])
mean = lambda k: statistics.mean(r["accuracy"] for r in by[k])
torch_v = by["torch"][0]["torch"]
tv_v = by["torch"][0]["torchvision"]
n = by["exp-first"][0]["examples"]
print(f"### Training input: seed-cnn, 1 epoch on {n:,} of MNIST's PNGs (test 10,000), $started")
print()
print("Machine: $(nproc) cores (nproc), $cpu; load average $load at the start. "
      f"exp $exp_version (commit $commit), PyTorch {torch_v} + torchvision {tv_v} (Debian). "
      f"Command: \`scripts/bench/bench-input.sh $args\`; seeds 1–{seeds}, tools alternating, "
      "a fresh repository per seed; medians of the times, means of the accuracies; wall time $elapsed s in all.")
print()
print("| pipeline | total (s) | data pipeline (s) | rest (s) | accuracy | PyTorch / this, total | PyTorch / this, data |")
print("|---|---:|---:|---:|---:|---:|---:|")
rows = (("exp-first", "exp, first run (scan, hash, decode 70k PNGs)"),
        ("exp-cached", "exp, second run (decode cache memory-mapped)"),
        ("torch", "PyTorch ImageFolder + DataLoader (2 workers)"),
        ("exp-idx", "exp on the IDX files (reference)"))
tt, td = med("torch", "total_s"), med("torch", "data_s")
for k, name in rows:
    tot, data = med(k, "total_s"), med(k, "data_s")
    print(f"| {name} | {tot:.2f} | {data:.2f} | {tot - data:.2f} | {100 * mean(k):.2f} % | "
          f"{tt / tot:.2f}× | {td / data:.1f}× |")
print()
ratio = tt / med("exp-first", "total_s")
gap = 100 * (mean("exp-first") - mean("exp-idx"))
print(f"Targets: exp's first run vs PyTorch end to end {ratio:.2f}× (≥ 2×: {'met' if ratio >= 2 else 'MISSED'}); "
      f"PNG-trained vs IDX-trained accuracy {gap:+.2f} points over {seeds} seed(s) "
      f"(within 0.3: {'met' if abs(gap) <= 0.3 else 'MISSED'}).")
print()
print("Per seed (total s / data s / accuracy %):")
print()
for k, name in rows:
    cells = "; ".join(f"seed {r['seed']}: {r['total_s']:.2f} / {r['data_s']:.2f} / {100 * r['accuracy']:.2f}"
                      for r in sorted(by[k], key=lambda r: r["seed"]))
    print(f"- {name}: {cells}")
pt = by["torch"]
print(f"- PyTorch's data time, medians: ImageFolder construction {statistics.median(r['construct_s'] for r in pt):.2f} s, "
      f"waiting on the training loader {statistics.median(r['train_wait_s'] for r in pt):.2f} s, "
      f"on the test loader {statistics.median(r['eval_wait_s'] for r in pt):.2f} s; "
      f"CPU time of the DataLoader workers (decoding and transforms, beside the training threads) "
      f"{statistics.median(r['workers_cpu_s'] for r in pt):.2f} s")
ef = by["exp-first"]
print(f"- exp's data time, medians (first / cached / IDX): load_seconds "
      f"{med('exp-first', 'load_s'):.2f} / {med('exp-cached', 'load_s'):.2f} / {med('exp-idx', 'load_s'):.2f} s, "
      f"data_seconds {med('exp-first', 'gather_s'):.2f} / {med('exp-cached', 'gather_s'):.2f} / {med('exp-idx', 'gather_s'):.2f} s")
print()
print("Total: wall time of the process (exp: \`exp run NAME --quiet\`, including the commit; PyTorch: the "
      "interpreter, including importing torch). Data pipeline: exp's [training.timing] load_seconds + "
      "data_seconds; PyTorch's ImageFolder construction plus the time spent waiting on the DataLoader "
      "iterators (training and test; worker start-up included).")
print()
PY
say "report appended to $out"
