#!/usr/bin/env bash
# Benchmark of exp's comparison commands (exp log / diff / show) on repositories of 100, 1,000
# and 10,000 run commits written by exp's own record writer, against `git log` on the same
# repository and DVC 3.x on an equivalent one (params.yaml + metrics.json in dvc.yaml).
# Installs hyperfine (Debian) and DVC (PyPI, into a venv outside the checkout).
#
# Usage: scripts/bench/bench-compare.sh [SIZES...]     (default: 100 1000 10000; DVC at ≤ 1000 only)
# Prints a Markdown section for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
project=$PWD
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(100 1000 10000)

sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
command -v hyperfine >/dev/null || { $sudo apt-get update -qq; DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq hyperfine >/dev/null; }
venv="${EXP_BENCH_VENV:-$HOME/.cache/exp/bench-venv}"
if [ ! -x "$venv/bin/dvc" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q 'dvc>=3,<4' >&2
fi
dvc="$venv/bin/dvc"
cargo build --release --bin exp --example make_history >&2
exp="$project/target/release/exp"
gen="$project/target/release/examples/make_history"

work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
results="$work/results"; mkdir -p "$results"
time_cmd() {  # NAME SIZE MODE(warm|cold) PREPARE COMMAND
  local name=${1//\//%} size=$2 mode=$3 prepare=$4 cmd=$5 runs=10   # '/' cannot be in a file name
  [ "$mode" = cold ] && runs=3
  case "$cmd" in *dvc*) runs=3 ;; esac
  hyperfine -N --style none --runs "$runs" ${prepare:+--prepare "$prepare"} $([ "$mode" = warm ] && echo --warmup 1) \
    --export-json "$results/$name@$size@$mode.json" "$cmd" >/dev/null 2>&1 || echo "{\"results\":[{\"median\":null}]}" > "$results/$name@$size@$mode.json"
}
drop_caches='sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true'
for n in "${sizes[@]}"; do
  echo "building $n commits" >&2
  "$gen" "$work/exp-$n" "$n" >&2
  # exp commits through libgit2, which never auto-packs; the user's next `git commit` or
  # `git merge` would (gc.auto). Measure the repository as it lives: packed.
  git -C "$work/exp-$n" gc -q
  cd "$work/exp-$n"
  for mode in cold warm; do
    prep=; [ "$mode" = cold ] && prep="bash -c 'rm -rf .git/exp; $drop_caches'"
    time_cmd "exp log" "$n" $mode "$prep" "$exp log"
    time_cmd "exp diff" "$n" $mode "$prep" "$exp diff run/feature-bench/mnist-cnn/1 run/feature-bench/mnist-cnn/$n"
    time_cmd "exp show" "$n" $mode "$prep" "$exp show"
    time_cmd "git log --oneline" "$n" $mode "$prep" "git log --oneline"
    time_cmd "git log -p -- experiments/" "$n" $mode "$prep" "git --no-pager log -p -- experiments/"
  done
  if [ "$n" -le 1000 ]; then
    "$gen" "$work/dvc-$n" "$n" --dvc >&2
    git -C "$work/dvc-$n" gc -q
    cd "$work/dvc-$n"
    first=$(git rev-list --max-parents=0 HEAD)
    for mode in cold warm; do
      prep=; [ "$mode" = cold ] && prep="bash -c 'rm -rf .dvc/tmp $HOME/.cache/dvc; $drop_caches'"
      time_cmd "dvc metrics diff" "$n" $mode "$prep" "timeout 600 $dvc metrics diff $first HEAD"
      time_cmd "dvc params diff" "$n" $mode "$prep" "timeout 600 $dvc params diff $first HEAD"
      time_cmd "dvc exp show -A --json" "$n" $mode "$prep" "timeout 600 $dvc exp show -A --json"
    done
  fi
  cd "$project"
done
python3 - "$results" "$($dvc --version)" "${sizes[@]}" <<'PY'
import json, os, sys, glob, datetime, platform
results, dvc_version, sizes = sys.argv[1], sys.argv[2], sys.argv[3:]
med = {}
for f in glob.glob(os.path.join(results, "*.json")):
    name, size, mode = os.path.basename(f)[:-5].replace("%", "/").split("@")
    r = json.load(open(f))["results"][0]
    med[(name, size, mode)] = r["median"]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"### exp log / diff / show vs git and DVC — {datetime.date.today()}\n")
print(f"Command: `scripts/bench/bench-compare.sh {' '.join(sizes)}`  ")
print(f"Machine: {cpu}, {os.cpu_count()} cores. DVC {dvc_version}. Repositories packed (`git gc`). Medians of hyperfine runs "
      "(10 warm after 1 warm-up; 3 cold: page cache dropped, exp's .git/exp cache and, for DVC, .dvc/tmp and its site cache removed).\n")
fmt = lambda s: "–" if s is None else (f"{s*1000:.0f} ms" if s >= 0.1 else f"{s*1000:.1f} ms")
names = ["exp log", "exp diff", "exp show", "git log --oneline", "git log -p -- experiments/",
         "dvc metrics diff", "dvc params diff", "dvc exp show -A --json"]
print("| command | " + " | ".join(f"{n} commits cold | {n} warm" for n in sizes) + " |")
print("|---|" + "---|---|" * len(sizes))
for name in names:
    print(f"| `{name}` | " + " | ".join(f"{fmt(med.get((name, n, 'cold')))} | {fmt(med.get((name, n, 'warm')))}" for n in sizes) + " |")
print()
def ratio(a, b, n, mode):
    x, y = med.get((a, n, mode)), med.get((b, n, mode))
    return "–" if not x or not y else f"{x / y:.2f}×"
print("| ratio | " + " | ".join(f"{n} cold | {n} warm" for n in sizes) + " |")
print("|---|" + "---|---|" * len(sizes))
for a, b in [("exp log", "git log -p -- experiments/"), ("exp log", "git log --oneline"),
             ("dvc metrics diff", "exp diff"), ("dvc params diff", "exp diff"), ("dvc exp show -A --json", "exp show"),
             ("dvc exp show -A --json", "exp log")]:
    print(f"| `{a}` / `{b}` | " + " | ".join(f"{ratio(a, b, n, 'cold')} | {ratio(a, b, n, 'warm')}" for n in sizes) + " |")
PY
