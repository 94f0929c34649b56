#!/usr/bin/env bash
# Fault injection (issue 15): kill -9 exp (or a git it runs) at chosen syscalls of a real run
# — every rename, link, unlink, write and fsync, sampled over their occurrences — and fill the
# disk under it (a small tmpfs), then check the repository's invariants after each fault:
#   - git fsck passes;
#   - every file in the LFS store is whole (its sha256 is its name);
#   - no exp lock is left that blocks: the next exp run succeeds;
#   - after that run the work tree is clean and every run commit on the branch has its tag.
# Prints one line per fault and "N faults, N survived". Not part of the test suite (minutes).
# Usage: [EXP_FAULT_BIN=exp] scripts/fault-inject.sh [SAMPLES_PER_SYSCALL]   (default 8)
set -uo pipefail
cd "$(dirname "$0")/.."
samples=${1:-8}
if ! command -v strace >/dev/null; then
  sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get install -y -qq strace >/dev/null || { echo "fault-inject: strace is missing and cannot be installed" >&2; exit 2; }
fi
# EXP_FAULT_BIN: an exp binary to test (a copy, so that builds can go on meanwhile).
if [ -n "${EXP_FAULT_BIN:-}" ]; then
  exe=$(realpath "$EXP_FAULT_BIN")
else
  cargo build --release >&2 || exit 2
  exe="$PWD/target/release/exp"
fi
export EXP_DATA="${EXP_DATA:-$HOME/.cache/exp/data}"
work=$(mktemp -d)
trap 'umount "$work/full" 2>/dev/null; rm -rf "$work"' EXIT
export HOME="$work/home" GIT_CONFIG_NOSYSTEM=1
mkdir -p "$HOME"
printf '[user]\n\tname = Fault\n\temail = fault@example.com\n' > "$HOME/.gitconfig"
export PATH="$(dirname "$exe"):$PATH"
run_args=(run mnist-mlp --set data.train_limit=200 --set data.test_limit=50 --quiet)
seed=100

faults=0
survived=0
problems=()

# The invariants of repository $1 after a fault; the next run must work. Echoes what is wrong.
check() {
  local repo=$1 what=$2 bad=()
  git -C "$repo" fsck --no-dangling --no-progress >/dev/null 2>&1 || bad+=("git fsck failed")
  while IFS= read -r f; do
    [ "$(sha256sum "$f" | cut -c1-64)" = "$(basename "$f")" ] || bad+=("partial LFS object $f")
  done < <(find "$repo/.git/lfs/objects" -type f 2>/dev/null)
  seed=$((seed + 1))
  local out
  local rc=0
  out=$(cd "$repo" && "$exe" "${run_args[@]}" --set train.seed=$seed 2>&1) || rc=$?
  # A git that exp ran, killed while it held one of Git's locks (index.lock, HEAD.lock, a ref's),
  # leaves that lock: exp refuses with a message and hint naming it (a foreign lock is never
  # guessed about); do what the hint says.
  local left
  left=$(echo "$out" | sed -n 's/^hint: .*if no git process is running, the lock is a leftover: remove \(.*\.lock\)\(, then .*\)\{0,1\}$/\1/p')
  if [ $rc -ne 0 ] && [ -n "$left" ] && echo "$out" | grep -qE "$left( exists|: another Git process)"; then
    echo "  (git's $(basename "$left") left by the killed git; exp said so and trained nothing; removed as its hint says)"
    rm -f "$left"
    rc=0
    out=$(cd "$repo" && "$exe" "${run_args[@]}" --set train.seed=$seed 2>&1) || rc=$?
  fi
  if [ $rc -ne 0 ]; then
    bad+=("the next run failed: $(echo "$out" | head -3 | tr '\n' ' ')")
  fi
  [ -z "$(git -C "$repo" status --porcelain)" ] || bad+=("work tree not clean: $(git -C "$repo" status --porcelain | head -3 | tr '\n' ' ')")
  [ ! -e "$repo/.git/exp/worktree.lock" ] || bad+=("lock left behind")
  # A run killed between creating its feature branch and committing on it: the next exp command
  # switches back and removes the branch, so no feature branch is left at develop's tip.
  local develop; develop=$(git -C "$repo" rev-parse develop)
  while read -r b; do
    [ "$(git -C "$repo" rev-parse "$b")" != "$develop" ] || bad+=("empty feature branch $b")
  done < <(git -C "$repo" for-each-ref --format='%(refname:short)' 'refs/heads/feature/')
  [ ! -e "$repo/.git/exp/switch.toml" ] || bad+=("switch journal left behind")
  local branch; branch=$(git -C "$repo" rev-parse --abbrev-ref HEAD)
  while read -r c; do
    [ -n "$(git -C "$repo" tag --points-at "$c" 'run/*')" ] || bad+=("run commit $c untagged")
  done < <(git -C "$repo" log --first-parent --format='%H %s' "$branch" | awk '$2=="exp" && $3=="run" {print $1}')
  faults=$((faults + 1))
  if [ ${#bad[@]} -eq 0 ]; then
    survived=$((survived + 1))
    echo "survived: $what"
  else
    problems+=("$what: ${bad[*]}")
    echo "FAILED: $what: ${bad[*]}"
  fi
}

new_repo() {
  local repo=$1
  "$exe" init "$repo" >/dev/null 2>&1 || return 1
  git -C "$repo" switch -q -c feature/fault develop
  (cd "$repo" && "$exe" "${run_args[@]}" >/dev/null 2>&1)   # one run to start from
}

# kill -9 at the Nth call of each syscall (exp and the git processes it runs) of runs in
# repository $1 started on branch $2; sampled evenly over each syscall's calls, with the last $3
# always taken (the commit phase ends the run).
inject() {
  local repo=$1 start=$2 tail=$3
  git -C "$repo" switch -q "$start"
  local counts
  counts=$(cd "$repo" && strace -f -c -o "$work/counts" -e trace="$(IFS=,; echo "${syscalls[*]}")" \
    "$exe" "${run_args[@]}" --set train.seed=1 >/dev/null 2>&1; cat "$work/counts")
  git -C "$repo" switch -q "$start"
  for sc in "${syscalls[@]}"; do
    n=$(echo "$counts" | awk -v s="$sc" '$NF==s {print $4}')
    [ -n "$n" ] && [ "$n" -gt 0 ] || continue
    points=$( (for i in $(seq 1 "$samples"); do echo $(( (i * n + samples - 1) / samples )); done; seq $((n > tail ? n - tail + 1 : 1)) "$n") | sort -n | uniq)
    for when in $points; do
      seed=$((seed + 1))
      (cd "$repo" && strace -f -o "$work/trace" -e trace="$sc" -e inject="$sc":signal=SIGKILL:when="$when" \
        "$exe" "${run_args[@]}" --set train.seed=$seed >/dev/null 2>&1)
      status=$?
      # A fault landed when strace injected one (in exp or in a git it ran); exp killed: 137.
      if grep -q "+++ killed by SIGKILL +++" "$work/trace"; then
        victim=$(grep "+++ killed by SIGKILL +++" "$work/trace" | head -1 | awk '{print $1}')
        check "$repo" "SIGKILL at $sc #$when of a run on $start (pid $victim, exp exit $status)"
      fi
      git -C "$repo" switch -q "$start" 2>/dev/null
    done
  done
}

syscalls=(rename renameat renameat2 link linkat unlink unlinkat write pwrite64 fsync fdatasync)
repo="$work/repo"
new_repo "$repo" || { echo "fault-inject: cannot set up $repo" >&2; exit 2; }
# 1. Runs on a feature branch: they commit where they are.
inject "$repo" feature/fault 3
# 1b. Runs on develop: each creates its feature branch, switches, then commits (Git Flow).
inject "$repo" develop 8

# 2. Disk full: the repository on a small tmpfs, filled up to a few different levels.
mkdir -p "$work/full"
if mount -t tmpfs -o size=40m tmpfs "$work/full" 2>/dev/null; then
  frepo="$work/full/repo"
  new_repo "$frepo" || echo "fault-inject: cannot set up a repository on the tmpfs" >&2
  for leave_kb in 8 64 256 1024 4096; do
    # Fill the disk, leaving about leave_kb free, run, then free it again and check.
    avail=$(df --output=avail -k "$work/full" | tail -1)
    fill=$((avail - leave_kb))
    [ $fill -gt 0 ] && dd if=/dev/zero of="$work/full/filler" bs=1k count=$fill status=none 2>/dev/null
    seed=$((seed + 1))
    (cd "$frepo" && "$exe" "${run_args[@]}" --set train.seed=$seed >/dev/null 2>&1)
    status=$?
    rm -f "$work/full/filler"
    if [ $status -eq 0 ]; then
      echo "disk full with ${leave_kb} kB left: the run fit"
      continue
    fi
    check "$frepo" "disk full with ${leave_kb} kB left (exit $status)"
  done
else
  echo "fault-inject: cannot mount a tmpfs here (needs root): the disk-full faults were not run" >&2
fi

echo "$faults faults, $survived survived"
for p in "${problems[@]}"; do echo "  $p"; done
[ "$faults" -eq "$survived" ]
