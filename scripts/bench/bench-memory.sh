#!/usr/bin/env bash
# Data larger than memory: one epoch on the 70,000-image MNIST PNG folder decoded at a size whose
# decoded cache is larger than the memory limit the run gets. The run is put in a memory cgroup
# (v2 `memory.max`, or v1 `memory.limit_in_bytes`; systemd-run --scope where systemd runs) and
# must complete: training reads the memory-mapped decoded cache, so resident memory is the
# batch, the model and whatever cache pages the kernel has not reclaimed yet. Reported: the
# decoded cache's size, the limit, the run's peak RSS (mapped cache pages included) and the
# cgroup's peak usage, for the first run (decoding, streamed into the cache) and the second
# (cached), plus the record's accuracy.
#
# Usage: scripts/bench/bench-memory.sh [--size S] [--channels C] [--limit-mb M] [--no-build]
#   --size S       decode to S×S (default 64: 70k × 3 × 64 × 64 = 860 MB decoded)
#   --channels C   1 or 3 (default 3)
#   --limit-mb M   the memory limit (default 300)
# Needs root (or a delegated cgroup) to create the cgroup. The PNG tree comes from
# scripts/bench/bench-data.sh --prepare (cached under ~/.cache/exp/bench/mnist-png).
# Report appended to ${BENCH_OUT:-/tmp/exp-bench-memory.md}.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
die() { echo "bench-memory: error: $*" >&2; exit 1; }
say() { echo "bench-memory: $*" >&2; }

size=64 channels=3 limit_mb=300 build=1
while [ $# -gt 0 ]; do
  case $1 in
    --size) size=${2:?}; shift 2 ;;
    --channels) channels=${2:?}; shift 2 ;;
    --limit-mb) limit_mb=${2:?}; shift 2 ;;
    --no-build) build=0; shift ;;
    *) die "unknown option $1 (see the header of $0)" ;;
  esac
done
out=${BENCH_OUT:-/tmp/exp-bench-memory.md}
[ "$build" = 1 ] && cargo build --release --quiet
exp=$root/target/release/exp
[ -x "$exp" ] || die "no $exp: build it (cargo build --release)"
[ -x /usr/bin/time ] || die "/usr/bin/time is missing (Debian package time)"
png=$(scripts/bench/bench-data.sh --prepare --no-build)
[ -d "$png/train" ] || die "no PNG tree at $png"

limit=$((limit_mb * 1024 * 1024))
cg= peak=0 anon=0
run_limited() { # run_limited DIR LOG CMD...: the command, in DIR, in a memory cgroup of $limit bytes
  local dir=$1 log=$2; shift 2
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    cg=/sys/fs/cgroup/exp-bench-memory-$$
    mkdir -p "$cg" && echo "$limit" >"$cg/memory.max" && echo 0 >"$cg/memory.swap.max" 2>/dev/null || true
    peak_file=$cg/memory.peak
  elif [ -d /sys/fs/cgroup/memory ]; then
    cg=/sys/fs/cgroup/memory/exp-bench-memory-$$
    mkdir -p "$cg" && echo "$limit" >"$cg/memory.limit_in_bytes"
    peak_file=$cg/memory.max_usage_in_bytes
  else
    die "no memory cgroup found (neither cgroup v2 nor v1 under /sys/fs/cgroup)"
  fi
  [ -w "$cg/cgroup.procs" ] || die "cannot use the cgroup $cg (run as root)"
  local status=0
  sh -c 'echo $$ >"$1/cgroup.procs"; cd "$2"; shift 2; exec "$@"' sh "$cg" "$dir" /usr/bin/time -f 'peak_rss_kb=%M wall_s=%e' "$@" >"$log" 2>&1 &
  local timer=$!
  # The anonymous part of the RSS (heap: batches, model, allocator), sampled: the file-backed
  # part is the mapped cache, which the kernel reclaims under the limit.
  anon=0
  while kill -0 "$timer" 2>/dev/null; do
    for child in $(pgrep -P "$timer" 2>/dev/null); do
      a=$(awk '/^RssAnon/ {print $2}' "/proc/$child/status" 2>/dev/null || echo 0)
      [ -n "$a" ] && [ "$a" -gt "$anon" ] && anon=$a
    done
    sleep 0.2
  done
  wait "$timer" || status=$?
  peak=$(cat "$peak_file" 2>/dev/null || echo 0)
  rmdir "$cg" 2>/dev/null || true
  return $status
}

work=$(mktemp -d /tmp/exp-bench-memory.XXXXXX)
trap 'rm -rf "$work"; [ -n "$cg" ] && rmdir "$cg" 2>/dev/null || true' EXIT
mkdir -p "$work/data"
ln -s "$png" "$work/data/mnist-png"
export EXP_DATA=$work/data
"$exp" init "$work/repo" >/dev/null
cat >"$work/repo/experiments/big.toml" <<EOF
[model]
name = "mlp"
hidden = [128]

[data]
format = "image-folder"
path = "mnist-png"
channels = $channels
image_size = [$size, $size]

[train]
epochs = 1
batch_size = 32
lr = 0.001
EOF
git -C "$work/repo" add experiments/big.toml >/dev/null
git -C "$work/repo" commit -qm "big" >/dev/null

rows=()
for pass in first second; do
  say "$pass run under a ${limit_mb} MiB limit"
  # Pages cached by an earlier run stay charged to its cgroup: evict the decoded cache from the
  # page cache so this run's limit covers every page it reads.
  for f in "$work/repo/.git/exp/cache/decoded"/*.bin; do
    [ -f "$f" ] && python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$f"
  done
  status=0
  run_limited "$work/repo" "$work/$pass.log" "$exp" run big --quiet || status=$?
  rss=$(sed -n 's/.*peak_rss_kb=\([0-9]*\).*/\1/p' "$work/$pass.log" | tail -1)
  wall=$(sed -n 's/.*wall_s=\([0-9.]*\).*/\1/p' "$work/$pass.log" | tail -1)
  decoded=$(du -cb "$work/repo/.git/exp/cache/decoded"/*.bin 2>/dev/null | tail -1 | cut -f1)
  if [ "$status" = 0 ]; then
    acc=$(git -C "$work/repo" show HEAD:experiments/big/metrics.toml | sed -n 's/^accuracy = //p' | head -1)
    result="completed, accuracy $acc"
  else
    result="FAILED (exit $status): $(tail -3 "$work/$pass.log" | tr '\n' ' ')"
  fi
  rows+=("| $pass | $((decoded / 1048576)) MiB | $limit_mb MiB | $((rss / 1024)) MiB | $((anon / 1024)) MiB | $((peak / 1048576)) MiB | ${wall}s | $result |")
done

{
  echo
  echo "### Data larger than memory ($(date -u +%Y-%m-%d), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
  echo
  echo "70,000 MNIST PNGs decoded to ${channels}×${size}×${size}, mlp (hidden 128), one epoch, batch 32; \`scripts/bench/bench-memory.sh --size $size --channels $channels --limit-mb $limit_mb\`."
  echo
  echo "| run | decoded cache | memory limit | peak RSS (incl. mapped cache) | peak anonymous RSS | cgroup peak | wall | result |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} | tee -a "$out"
say "report appended to $out"
