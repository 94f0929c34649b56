#!/usr/bin/env bash
# Benchmarks exp's LFS filter against git-lfs and the hashing floor (issue 3):
#   1. storing a 1 GB file: `exp lfs clean` vs `git lfs clean` vs `openssl dgst -sha256`;
#   2. `git --no-optional-locks status` on five 1 GB weights files whose index entries are stale
#      (touched once), with exp's filter and with git-lfs: the first call and the later ones.
# This virtual machine's speed drifts by tens of percent within minutes, so every measurement is
# taken ROUNDS times, the tools alternating within each round (a slow minute hits both), each
# command started after a `sync` (nothing of the previous command's left to write back); the
# tables give medians and ranges, the ratios are ratios of medians.
# Usage: scripts/bench/bench-lfs.sh [WORKDIR] [ROUNDS] [STATUS_ROUNDS] (defaults: a temp dir, 5, 3;
# needs ~22 GB free and ~15 minutes). Prints markdown. Build first: cargo build --release.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
exp="$root/target/release/exp"
"$root/scripts/install-deps.sh" # git-lfs, the peer
work="${1:-$(mktemp -d)}"
rounds="${2:-5}"
status_rounds="${3:-3}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
cd "$work"
GB=1000000000
[ -f big.bin ] || head -c $GB /dev/urandom > big.bin
times="$work/times.tsv" # metric <TAB> seconds, one line per timed command
: > "$times"

# Times "$@" (output discarded) after a sync, and appends the seconds under metric $1.
t() {
  sync
  t_now "$@"
}
# The same without the sync: for what must find the previous command's writes still pending.
t_now() {
  local metric=$1 s e
  shift
  s=$(date +%s.%N)
  "$@" > /dev/null
  e=$(date +%s.%N)
  printf '%s\t%s\n' "$metric" "$(echo "$e - $s" | bc)" >> "$times"
}
# Drops files from the page cache (what the measured tools must not find there, or what only
# takes room: the LFS objects during the status calls).
evict() {
  python3 - "$@" <<'PY'
import os, sys
for root in sys.argv[1:]:
    paths = [root] if os.path.isfile(root) else [
        os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
PY
}

# exp's repositories are set up as the README says (`exp lfs install`, `exp hooks install`,
# exp on PATH for the hooks): new objects are then synced at commit by the pre-commit hook.
# exp-sync-repo asks Git to fsync loose objects (`core.fsync=added`): exp then syncs each new
# object before it takes its name.
export PATH="$root/target/release:$PATH"
rm -rf exp-repo exp-sync-repo lfs-repo
for repo in exp-repo exp-sync-repo; do
  git init -q $repo
  (cd $repo && "$exp" lfs install > /dev/null && "$exp" hooks install > /dev/null)
done
git -C exp-sync-repo config core.fsync added
git init -q lfs-repo
(cd lfs-repo && git lfs install --local > /dev/null)
# The 1 GB file staged as a pointer in exp-repo, for timing the hook's sync after a new clean.
(
  cd exp-repo
  echo '*.safetensors filter=lfs diff=lfs merge=lfs -text' > .gitattributes
  blob=$("$exp" lfs clean < ../big.bin | git hash-object -w --stdin)
  git update-index --add --cacheinfo "100644,$blob,big.safetensors"
)

for round in $(seq "$rounds"); do
  cat big.bin > /dev/null # in the page cache, as a file just written by training would be
  t openssl openssl dgst -sha256 big.bin
  t pipe sh -c "cat big.bin | cat > /dev/null"
  rm -f copy.bin
  t fsync dd if=big.bin of=copy.bin bs=1M conv=fsync status=none
  rm -f copy.bin
  # A new object as training leaves it: nothing stored, no stat-cache entry for the file.
  rm -rf {exp-repo,exp-sync-repo}/.git/{lfs,exp/lfs-stat-cache.json} lfs-repo/.git/lfs
  if [ $((round % 2)) = 1 ]; then order="exp lfs"; else order="lfs exp"; fi
  for tool in $order; do
    if [ "$tool" = exp ]; then
      # The new object's deferred fsync is what `exp lfs pre-commit` (the hook) then waits
      # for, timed at once, as a `git commit` right after `git add` would find it.
      (cd exp-repo && t exp_new sh -c "'$exp' lfs clean < ../big.bin" \
        && t_now exp_commit_sync "$exp" lfs pre-commit \
        && t exp_known sh -c "'$exp' lfs clean < ../big.bin" \
        && t exp_pipe sh -c "cat ../big.bin | '$exp' lfs clean")
      (cd exp-sync-repo && t exp_new_synced sh -c "'$exp' lfs clean < ../big.bin")
    else
      (cd lfs-repo && t lfs_new sh -c "git lfs clean < ../big.bin" \
        && t lfs_known sh -c "git lfs clean < ../big.bin")
    fi
  done
done
rm -f big.bin # 1 GB of page cache back for the status scenario
git -C exp-repo update-index --force-remove big.safetensors
rm -rf exp-sync-repo

# git status with five stale 1 GB files.
for repo in exp-repo lfs-repo; do
  (
    cd "$repo"
    echo '*.safetensors filter=lfs diff=lfs merge=lfs -text' > .gitattributes
    for i in 1 2 3 4 5; do head -c $GB /dev/urandom > "w$i.safetensors"; done
    git add -A > /dev/null && git -c user.name=b -c user.email=b@b commit -qm weights
  )
done
sync
evict exp-repo/.git/lfs lfs-repo/.git/lfs
status_round() { # repo metric-prefix
  (
    cd "$1"
    # Each tool starts alike: its five files in the page cache (the other repository's may
    # have pushed them out), touched once so the index cannot vouch for them.
    cat w?.safetensors > /dev/null
    touch w?.safetensors
    sleep 0.3
    t "$2_first" git --no-optional-locks status --porcelain
    t "$2_later" git --no-optional-locks status --porcelain
    t "$2_later" git --no-optional-locks status --porcelain
  )
}
for round in $(seq "$status_rounds"); do
  if [ $((round % 2)) = 1 ]; then
    status_round exp-repo exp_status && status_round lfs-repo lfs_status
  else
    status_round lfs-repo lfs_status && status_round exp-repo exp_status
  fi
done

python3 - "$times" "$rounds" "$status_rounds" <<'PY'
import statistics, sys
from collections import defaultdict
samples = defaultdict(list)
for line in open(sys.argv[1]):
    metric, seconds = line.split("\t")
    samples[metric].append(float(seconds))
med = {m: statistics.median(v) for m, v in samples.items()}
def cell(m):
    v = samples[m]
    return f"{med[m]:.2f} ({min(v):.2f}–{max(v):.2f})"
def ratio(a, b):
    return f"{med[a] / med[b]:.2f}"
print(f"1 GB file, {sys.argv[2]} rounds: median seconds (range)\n")
print("| 1 GB file | seconds | vs openssl | git lfs clean / exp |")
print("|---|---:|---:|---:|")
rows = [
    ("openssl", "`openssl dgst -sha256` (hashing floor)", None),
    ("pipe", "`cat file \\| cat` (this machine's pipe floor)", None),
    ("fsync", "`dd conv=fsync` (copy-to-disk floor)", None),
    ("exp_new", "`exp lfs clean < file`, new object (hash, kernel copy; synced at commit)", "lfs_new"),
    ("exp_commit_sync", "then `exp lfs pre-commit` (the hook's fsync of that object, at once)", None),
    ("exp_new_synced", "`exp lfs clean < file`, new object, `core.fsync=added` (synced before naming)", "lfs_new"),
    ("exp_known", "`exp lfs clean < file`, object known", "lfs_known"),
    ("exp_pipe", "`cat file \\| exp lfs clean` (a pipe, as Git streams), object known", None),
    ("lfs_new", "`git lfs clean < file`, new object", None),
    ("lfs_known", "`git lfs clean < file`, object known", None),
]
for m, label, peer in rows:
    print(f"| {label} | {cell(m)} | {ratio(m, 'openssl')} | {ratio(peer, m) if peer else ''} |")
print(f"\n`git --no-optional-locks status`, 5 × 1 GB touched, {sys.argv[3]} rounds "
      "(a first call and two later calls each): median seconds (range)\n")
print("| | first call | later calls |")
print("|---|---:|---:|")
print(f"| exp's filter | {cell('exp_status_first')} | {cell('exp_status_later')} |")
print(f"| git-lfs | {cell('lfs_status_first')} | {cell('lfs_status_later')} |")
print(f"| git-lfs / exp | {ratio('lfs_status_first', 'exp_status_first')} "
      f"| {ratio('lfs_status_later', 'exp_status_later')} |")
PY
