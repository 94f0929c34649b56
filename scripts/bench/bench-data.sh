#!/usr/bin/env bash
# Data-versioning benchmark: `exp data add` vs `dvc add` (DVC 3.x) on 70,000 PNGs — real MNIST
# written out as class folders (train/<digit>/NNNNN.png 60k, test/<digit>/NNNNN.png 10k) from the
# IDX files under the data root. Measured, wall seconds, in each of --reps rounds:
#   first add        a fresh repository and store: `exp init` + `exp data add data/mnist-png`
#                    (stores every file in the LFS store and commits the manifest), vs
#                    `git init` + `dvc init` + `dvc add data/mnist-png` (DVC's cache; no commit)
#   unchanged re-add the same command again on the unchanged folder ("mnist-png is unchanged")
#   status           `exp data status mnist-png` vs `dvc status data/mnist-png.dvc`
# (re-add and status: the median of three runs in each round)
# The folder is copied into each fresh repository beforehand and flushed to disk (`sync`), not
# timed; both repositories live under the same temp dir in /tmp or --dir (one file system). Tools
# alternate (exp, dvc, exp, dvc, …); the report gives medians and the ratios DVC/exp, against
# the issue's targets (first add ≥ 5×, unchanged re-add and status ≥ 20× faster than DVC).
#
# Usage: scripts/bench/bench-data.sh [--reps N] [--files N] [--no-build] [--exp PATH]
#   --reps N     rounds (default 3)
#   --files N    only the first N files of the PNG tree, in sorted path order (smoke tests)
#   --no-build   use target/release/exp as it is (default: cargo build --release first)
#   --exp PATH   the exp binary to measure (implies --no-build)
#   --prepare    only make the PNG tree (if missing) and print its path (bench-input.sh uses it)
#   --dir DIR    make the repositories under DIR (default /tmp): another file system, e.g. a
#                journaled ext4 (this VM's root has none; see below)
# Environment: EXP_DATA (data root with mnist/*-idx*; default ../shared/data when it has MNIST,
#   else ~/.cache/exp/data, filled by scripts/fetch-data.sh), BENCH_PNG (the PNG tree, cached;
#   default ~/.cache/exp/bench/mnist-png), BENCH_DVC_VENV (default ~/.cache/exp/dvc-venv),
#   BENCH_OUT (file the report is appended to; default /tmp/exp-bench-data.md).
# Nothing is deleted until the end: on ext4 without a journal (this VM's root file system), the
# inode allocator passes over inodes freed in the last minute (five, while their table block is
# dirty), looking each one up (`recently_deleted`), so every file created soon after a large
# `rm -rf` costs a scan; a round that followed the previous round's removal of ~250,000 inodes
# spent 30 % of its time there, whichever tool it measured. Start it a minute or more after any
# large deletion, too. Full size (70k files, 3 rounds): ~6 minutes on 2 cores, mostly copying the
# folder into each fresh repository; ~0.75 GB per repository (2 per round) under /tmp until the
# end. Smoke test (~25 s):
#   scripts/bench/bench-data.sh --files 2000 --reps 1 --no-build
# Installs DVC ('dvc>=3,<4', PyPI) in its venv, and Pillow/numpy from Debian if no Python has them.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
die() { echo "bench-data: error: $*" >&2; exit 1; }
say() { echo "bench-data: $*" >&2; }

reps=3 files=0 build=1 prepare=0 exp=$root/target/release/exp base=/tmp
while [ $# -gt 0 ]; do
  case $1 in
    --reps) reps=${2:?--reps needs a number}; shift 2 ;;
    --files) files=${2:?--files needs a number}; shift 2 ;;
    --no-build) build=0; shift ;;
    --exp) exp=$(realpath "${2:?--exp needs a path}"); build=0; shift 2 ;;
    --prepare) prepare=1; shift ;;
    --dir) base=${2:?--dir needs a folder}; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ $reps =~ ^[1-9][0-9]*$ ]] || die "--reps wants a positive integer, got '$reps'"
[[ $files =~ ^[0-9]+$ ]] || die "--files wants a non-negative integer, got '$files'"

# --- tools -------------------------------------------------------------------------------------
sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
apt_updated=
apt_install() {
  command -v apt-get >/dev/null || die "apt-get missing: install $* yourself"
  [ -n "$apt_updated" ] || { $sudo apt-get update -qq; apt_updated=1; }
  say "installing $* (Debian)"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null || die "apt-get install $* failed"
}
# A Python with numpy and Pillow writes the PNGs: scripts/py-tools.sh's venv, else Debian's.
py=
for p in "$HOME/.cache/exp/py-venv/bin/python" /usr/bin/python3; do
  if [ -x "$p" ] && "$p" -c 'import numpy, PIL' 2>/dev/null; then py=$p; break; fi
done
if [ -z "$py" ]; then
  apt_install python3-numpy python3-pil
  py=/usr/bin/python3
  $py -c 'import numpy, PIL' || die "$py cannot import numpy and PIL after installing them"
fi

# --- the data root and the PNG tree ------------------------------------------------------------
if [ -z "${EXP_DATA:-}" ]; then
  if ls ../shared/data/mnist/train-images* >/dev/null 2>&1; then EXP_DATA=$(realpath ../shared/data)
  else EXP_DATA=$HOME/.cache/exp/data; fi
fi
export EXP_DATA
ls "$EXP_DATA"/mnist/train-images* >/dev/null 2>&1 || scripts/fetch-data.sh "$EXP_DATA" >&2
png=${BENCH_PNG:-$HOME/.cache/exp/bench/mnist-png}
# Written into a temp dir beside it and renamed into place: a tree at $png is complete.
if [ ! -d "$png" ]; then
  say "writing MNIST as 70,000 PNGs into $png (once; reruns reuse it)"
  mkdir -p "$(dirname "$png")"
  tmp_png=$(mktemp -d "$png.tmp.XXXXXX")
  "$py" - "$EXP_DATA/mnist" "$tmp_png" <<'PY' || { rm -rf "$tmp_png"; die "writing the PNG tree failed"; }
import gzip, os, sys
import numpy as np
from PIL import Image

src, dst = sys.argv[1], sys.argv[2]

def idx(base, magic):
    for name in (base, base + ".gz", base.replace("-idx", ".idx"), base.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(src, name)
        if os.path.isfile(path):
            data = (gzip.open if name.endswith(".gz") else open)(path, "rb").read()
            if int.from_bytes(data[:4], "big") != magic:
                sys.exit(f"{path}: bad IDX magic")
            dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(data[3])]
            return np.frombuffer(data, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)
    sys.exit(f"{base}[.gz] not found under {src}")

for split, prefix in (("train", "train"), ("test", "t10k")):
    images = idx(f"{prefix}-images-idx3-ubyte", 0x803)
    labels = idx(f"{prefix}-labels-idx1-ubyte", 0x801)
    assert len(images) == len(labels), (len(images), len(labels))
    for c in range(10):
        os.makedirs(os.path.join(dst, split, str(c)), exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image, "L").save(os.path.join(dst, split, str(label), f"{i:05d}.png"))
    print(f"{split}: {len(images)} images", file=sys.stderr)
PY
  mv -T "$tmp_png" "$png"
fi
count=$(find "$png" -type f -name '*.png' | wc -l)
[ "$count" -eq 70000 ] || die "$png holds $count PNGs, not 70000: remove it and rerun"
if [ "$prepare" = 1 ]; then echo "$png"; exit 0; fi

venv=${BENCH_DVC_VENV:-$HOME/.cache/exp/dvc-venv}
if ! "$venv/bin/dvc" --version >/dev/null 2>&1; then
  say "installing DVC 3.x into $venv (PyPI)"
  rm -rf "$venv"
  python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$venv/bin/pip" install -q 'dvc>=3,<4' >&2 || { rm -rf "$venv"; die "pip install 'dvc>=3,<4' failed"; }
fi
dvc=$venv/bin/dvc
dvc_version=$("$dvc" --version)
case $dvc_version in 3.*) ;; *) die "$dvc is DVC $dvc_version, not 3.x (remove $venv to reinstall)" ;; esac
command -v git >/dev/null || die "git missing"
if [ "$build" = 1 ]; then cargo build --release >&2 || die "cargo build --release failed"; fi
[ -x "$exp" ] || die "$exp missing: run cargo build --release"
"$exp" data add --help >/dev/null 2>&1 || die "$exp has no 'data add' command (an older build?)"
exp_version=$("$exp" --version | awk '{print $2}')

# --- work dir: the source folder and one fresh repository per measurement ----------------------
[ -d "$base" ] || die "--dir $base: no such folder"
work=$(mktemp -d "$base/exp-bench-data.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
export DVC_NO_ANALYTICS=1 GIT_CONFIG_NOSYSTEM=1
src=$png
if [ "$files" -gt 0 ]; then
  [ "$files" -le 70000 ] || die "--files $files: the tree has 70000"
  src=$work/src
  mkdir "$src"
  (cd "$png" && find . -type f -name '*.png' | LC_ALL=C sort > "$work/list")
  (cd "$png" && head -n "$files" "$work/list" | tar -cf - -T -) | tar -C "$src" -xf -
fi
nfiles=$(find "$src" -type f | wc -l)
bytes=$(find "$src" -type f -printf '%s\n' | awk '{s += $1} END {print s}')
say "$nfiles files ($bytes bytes), $reps rounds; work dir $work"
# Each round keeps two repositories (the folder copied in, plus exp's store or DVC's cache).
need_kb=$((reps * 2 * (bytes / 1024 + nfiles * 10) + 1048576))
free_kb=$(df -Pk "$work" | awk 'NR == 2 {print $4}')
[ "$free_kb" -ge "$need_kb" ] || die "$work has $((free_kb / 1024)) MiB free; $reps rounds need about $((need_kb / 1024)) MiB (fewer --reps?)"
# ...and inodes: the folder's files and folders, the objects and exp's 45k fan-out folders.
need_inodes=$((reps * 2 * nfiles * 3))
free_inodes=$(df -Pi "$work" | awk 'NR == 2 {print $4}')
[[ $free_inodes =~ ^[0-9]+$ ]] && [ "$free_inodes" -lt "$need_inodes" ] && die "$work has $free_inodes inodes free; $reps rounds need about $need_inodes (fewer --reps?)"

fresh_repo() {  # DIR: a git repository with an identity, the folder copied in and on disk
  local dir=$1
  mkdir -p "$dir/data"
  git -C "$dir" init -q -b main
  git -C "$dir" config user.name bench
  git -C "$dir" config user.email bench@example.invalid
  cp -r "$src" "$dir/data/mnist-png"
  sync  # the copy's dirty pages must not be flushed by the timed command (exp syncs the store)
}
# Runs CMD... in the current directory, output to LOG; prints the wall seconds.
timed() {  # LOG CMD...
  local log=$1 t0 t1; shift
  t0=$EPOCHREALTIME
  "$@" > "$log" 2>&1 || { tail -n 20 "$log" >&2; die "'$*' failed in $PWD (log: $log)"; }
  t1=$EPOCHREALTIME
  awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b - a}'
}
# The median wall seconds of three runs of CMD... (an unchanged re-add or a status changes
# nothing, so the runs are alike; one run of ~0.1 s swings 2x with the machine's state).
timed3() {  # LOG CMD...
  local a b c
  a=$(timed "$@") || return 1
  b=$(timed "$@") || return 1
  c=$(timed "$@") || return 1
  printf '%s\n' "$a" "$b" "$c" | sort -n | sed -n 2p
}
raw=$work/raw.tsv
: > "$raw"
bench_exp() {  # ROUND
  local r=$1 dir=$work/exp-$1 logs=$work/logs-exp-$1 t
  mkdir -p "$logs"
  fresh_repo "$dir"
  (cd "$dir" && "$exp" init . >/dev/null)
  sync
  cd "$dir"
  t=$(timed "$logs/add1" "$exp" data add data/mnist-png); echo -e "exp\t$r\tadd\t$t" >> "$raw"
  t=$(timed3 "$logs/add2" "$exp" data add data/mnist-png); echo -e "exp\t$r\treadd\t$t" >> "$raw"
  grep -q 'unchanged' "$logs/add2" || { cat "$logs/add2" >&2; die "exp's re-add did not say the folder is unchanged"; }
  t=$(timed3 "$logs/status" "$exp" data status mnist-png); echo -e "exp\t$r\tstatus\t$t" >> "$raw"
  grep -qi 'clean' "$logs/status" || { cat "$logs/status" >&2; die "exp data status did not say clean"; }
  local n; n=$(wc -l < datasets/mnist-png.files)
  [ "$n" -eq "$nfiles" ] || die "exp's manifest lists $n files, the folder has $nfiles"
  cd "$root"
}
bench_dvc() {  # ROUND
  local r=$1 dir=$work/dvc-$1 logs=$work/logs-dvc-$1 t
  mkdir -p "$logs"
  fresh_repo "$dir"
  cd "$dir"
  "$dvc" init -q
  "$dvc" config core.analytics false
  # DVC's per-repository state (hashes by inode and mtime) lives in its site cache dir; keep it in
  # the work dir so every first add starts without one and nothing is left in ~/.cache/dvc.
  "$dvc" config core.site_cache_dir "$work/dvc-site-$r"
  git add -A .dvc .dvcignore && git commit -q -m 'dvc init'
  sync
  t=$(timed "$logs/add1" "$dvc" add data/mnist-png); echo -e "dvc\t$r\tadd\t$t" >> "$raw"
  t=$(timed3 "$logs/add2" "$dvc" add data/mnist-png); echo -e "dvc\t$r\treadd\t$t" >> "$raw"
  t=$(timed3 "$logs/status" "$dvc" status data/mnist-png.dvc); echo -e "dvc\t$r\tstatus\t$t" >> "$raw"
  grep -qi 'up to date' "$logs/status" || { cat "$logs/status" >&2; die "dvc status did not say up to date"; }
  local n; n=$(find .dvc/cache -type f ! -name '*.dir' | wc -l)
  [ "$n" -ge "$nfiles" ] || say "warning: DVC's cache holds $n objects for $nfiles files (duplicate images are stored once)"
  cd "$root"
}

started=$(date -u '+%Y-%m-%d %H:%M UTC')
t_start=$EPOCHREALTIME
for r in $(seq 1 "$reps"); do
  say "round $r/$reps: exp"; bench_exp "$r"
  say "round $r/$reps: dvc"; bench_dvc "$r"
done
elapsed=$(awk -v a="$t_start" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.0f", b - a}')

out=${BENCH_OUT:-/tmp/exp-bench-data.md}
cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
fs=$(df -T "$work" | awk 'NR == 2 {print $2}')
dev=$(df -P "$work" | awk 'NR == 2 {print $1}')
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')
args="--reps $reps"; [ "$files" = 0 ] || args+=" --files $files"; [ "$base" = /tmp ] || args+=" --dir $base"
python3 - "$raw" "$nfiles" "$bytes" "$reps" <<PY | tee -a "$out"
import statistics, sys
raw, nfiles, nbytes, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t = {}
for line in open(raw):
    tool, r, op, s = line.split()
    t.setdefault((tool, op), []).append(float(s))
print(f"### exp data vs DVC: {nfiles:,} PNGs ({nbytes / 1e6:.1f} MB), $started")
print()
print("Machine: $(nproc) cores (nproc), $cpu, the repositories under $base ($fs on $dev). exp $exp_version (commit $commit), "
      "DVC $dvc_version. Command: \`scripts/bench/bench-data.sh $args\`; "
      f"medians of {reps} rounds (re-add and status: each round's figure the median of three runs), tools alternating, a fresh repository and store for each first add; "
      "wall time $elapsed s in all.")
print()
print("| operation | exp (s) | DVC (s) | DVC / exp | target | per round, exp | per round, DVC |")
print("|---|---:|---:|---:|---:|---|---|")
for op, name, target in (("add", "first add", 5), ("readd", "unchanged re-add", 20), ("status", "status, unchanged", 20)):
    e, d = t[("exp", op)], t[("dvc", op)]
    me, md = statistics.median(e), statistics.median(d)
    ratio = md / me if me > 0 else float("inf")
    ok = "met" if ratio >= target else "MISSED"
    print(f"| {name} | {me:.3f} | {md:.3f} | {ratio:.1f}× | ≥ {target}× ({ok}) | "
          f"{' '.join(f'{x:.3f}' for x in e)} | {' '.join(f'{x:.3f}' for x in d)} |")
print()
print("exp: \`exp data add data/mnist-png\` (hash, store in .git/lfs/objects, syncfs, commit the "
      "manifest), \`exp data status mnist-png\`. DVC: \`dvc add data/mnist-png\` (hash, copy into "
      ".dvc/cache; no git commit), \`dvc status data/mnist-png.dvc\`.")
print()
PY
say "report appended to $out"
