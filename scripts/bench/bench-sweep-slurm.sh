#!/usr/bin/env bash
# Sweep on Slurm (issue 17): exp sweep --executor slurm --wait against a bare `sbatch --array
# --wait` running the same `exp sweep trial` commands, on a single-node cluster of
# scripts/slurm.sh. 12 trials (3 learning rates × 4 seeds, seed-cnn, 2,000 images, 1 epoch), 2 at
# once. The two repositories are byte-identical copies, so both record the same trials.
# Usage: scripts/bench/bench-sweep-slurm.sh [ROUNDS]   (alternates the order; prints medians)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-2}
scripts/slurm.sh install
export EXP_DATA="${EXP_DATA:-$HOME/.cache/exp/data}"
scripts/fetch-data.sh "$EXP_DATA" >&2
cargo build --release >&2
exe="$PWD/target/release/exp"
work=$(mktemp -d)
chmod 755 "$work"   # munged (user munge) must reach its socket directory inside
cluster="$work/cluster"
trap 'scripts/slurm.sh stop "$cluster"; rm -rf "$work"' EXIT
scripts/slurm.sh start "$cluster" >/dev/null
export SLURM_CONF="$cluster/slurm.conf"
grid='train.lr=[0.0005, 0.001, 0.002]'
seeds='[1, 2, 3, 4]'
now() { date +%s.%N; }
results=()
for round in $(seq 1 "$rounds"); do
  repo="$work/r$round"
  "$exe" init "$repo" >/dev/null
  cp -a "$repo" "$repo-bare"
  run_exp() {
    local t0; t0=$(now)
    (cd "$repo" && "$exe" sweep mnist-cnn --grid "$grid" --seeds "$seeds" \
      --set data.train_limit=2000 --executor slurm --jobs 2 --wait --quiet >/dev/null 2>&1)
    echo "$(now) - $t0" | bc
  }
  run_bare() {
    # The same sweep definition in the copy: its fork commit exists there too.
    local id; id=$(ls "$repo/.git/exp/sweeps" | head -1)
    mkdir -p "$repo-bare/.git/exp/sweeps/$id/logs"
    cp "$repo/.git/exp/sweeps/$id/sweep.toml" "$repo-bare/.git/exp/sweeps/$id/"
    git -C "$repo-bare" branch "feature/sweep-mnist-cnn-$id" "$(git -C "$repo" rev-parse "feature/sweep-mnist-cnn-$id~12")"
    cat > "$work/bare.sbatch" <<SB
#!/bin/sh
#SBATCH --output=$repo-bare/.git/exp/sweeps/$id/logs/%a.log
export EXP_DATA='$EXP_DATA'
cd '$repo-bare' || exit 2
exec '$exe' sweep trial $id "\$SLURM_ARRAY_TASK_ID"
SB
    local t0; t0=$(now)
    sbatch --parsable --wait --array=0-11%2 "$work/bare.sbatch" >/dev/null
    echo "$(now) - $t0" | bc
  }
  # exp first (the bare run needs its definition); the copy runs the same trials after.
  e=$(run_exp)
  b=$(run_bare)
  n=$(git -C "$repo-bare" log --oneline --first-parent "feature/sweep-mnist-cnn-$(ls "$repo/.git/exp/sweeps")" | grep -c "exp run")
  echo "{\"round\": $round, \"exp_sweep_slurm_s\": $e, \"bare_sbatch_array_s\": $b, \"bare_recorded\": $n}"
  results+=("$e $b")
done
printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
rows = [tuple(map(float, l.split())) for l in sys.stdin if l.strip()]
e = statistics.median(r[0] for r in rows); b = statistics.median(r[1] for r in rows)
print({"exp_sweep_slurm_s": round(e, 2), "bare_sbatch_array_s": round(b, 2), "ratio": round(e / b, 3)})'
