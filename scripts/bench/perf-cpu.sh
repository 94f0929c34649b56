#!/usr/bin/env bash
# Where exp's CPU training time goes, by kind of work: `perf record` of one `exp run` (MODEL,
# BATCH, the first IMAGES training images, 500 test images), its samples summed by category
# (GEMM, exp's kernels, page zeroing, copies, candle's ops, the optimizer, threads waiting…).
# Needs `perf` (Debian: linux-perf) and a built exp (cargo build --release).
#
# Usage: EXP_DATA=../shared/data scripts/bench/perf-cpu.sh MODEL BATCH [IMAGES] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:?model (seed-cnn, cnn, mlp)}
batch=${2:?batch size}
images=${3:-12800}
threads=${4:-2}
exp=$PWD/target/release/exp
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$exp" init "$work/repo" >/dev/null
git -C "$work/repo" switch -q -c feature/perf
(cd "$work/repo" && RAYON_NUM_THREADS=$threads perf record -q -g -o "$work/perf.data" \
  "$exp" run mnist-cnn --quiet --set model.name="$model" --set train.batch_size="$batch" \
  --set data.train_limit="$images" --set data.test_limit=500 >/dev/null 2>"$work/err") ||
  { cat "$work/err" >&2; exit 1; }
perf report -i "$work/perf.data" --no-children --sort symbol -g none --percent-limit 0 --stdio 2>/dev/null |
python3 -c '
import re, sys
rules = [
    ("GEMM (gemm crate: microkernels, packing)", r"gemm"),
    ("page zeroing and faults (fresh allocations)", r"clear_page|do_huge_pmd|folio_zero|handle_mm_fault|do_anonymous_page|exc_page_fault|memset"),
    ("memory copies", r"memmove|memcpy"),
    ("optimizer (fused Adam)", r"FusedAdam|adam"),
    ("exp CPU kernels: im2col, col2im, pool, ReLU, routing, sums", r"exp::model::cpu"),
    ("dropout masks (ChaCha8)", r"chacha|ChaCha|dropout_mask|rand_core"),
    ("candle ops (loss, autograd accumulators, reshapes, gathers)", r"candle_core|candle_nn"),
    ("allocator (mimalloc)", r"mi_|_mi_"),
    ("threads waiting, scheduling, rayon", r"rayon|crossbeam|futex|schedule|switch|syscall|spin|yield|idle|wake"),
]
totals = {name: 0.0 for name, _ in rules}
other = {}
for line in sys.stdin:
    m = re.match(r"\s*([0-9.]+)%\s+\[[.k]\]\s+(.*\S)", line)
    if not m:
        continue
    pct, sym = float(m.group(1)), m.group(2)
    for name, pattern in rules:
        if re.search(pattern, sym):
            totals[name] += pct
            break
    else:
        other[sym] = other.get(sym, 0.0) + pct
rest = sum(other.values())
print("| work | share of CPU samples |")
print("|---|---|")
for name, _ in rules:
    print(f"| {name} | {totals[name]:.1f} % |")
top = ", ".join(f"{s[:60]} {p:.1f} %" for s, p in sorted(other.items(), key=lambda kv: -kv[1])[:3])
print(f"| other ({top}) | {rest:.1f} % |")
'
