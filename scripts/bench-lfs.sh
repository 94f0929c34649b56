#!/usr/bin/env bash
# Benchmarks exp's LFS filter against git-lfs and the hashing floor (issue 3), one run:
#   1. storing a 1 GB file: `exp lfs clean` vs `git lfs clean` vs `openssl dgst -sha256`;
#   2. `git --no-optional-locks status` on five 1 GB weights files whose index entries are stale
#      (touched once), with exp's filter and with git-lfs: the first call and the later ones.
# Usage: scripts/bench-lfs.sh [WORKDIR] (default: a temp dir; needs ~13 GB free). Prints a
# markdown table. Build first: cargo build --release.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
exp="$root/target/release/exp"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
cd "$work"
GB=1000000000
[ -f big.bin ] || head -c $GB /dev/urandom > big.bin
cat big.bin > /dev/null # in the page cache, as a file just written by training would be

t() { local s e; s=$(date +%s.%N); "$@" > /dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }

rm -rf exp-repo lfs-repo && git init -q exp-repo && git init -q lfs-repo
sync # the previous run's ~20 GB freed and written back before anything is timed
(cd exp-repo && "$exp" lfs install > /dev/null)
(cd lfs-repo && git lfs install --local > /dev/null)

openssl_s=$(t openssl dgst -sha256 big.bin)
pipe_s=$(t sh -c "cat big.bin | cat > /dev/null")
rm -f copy.bin
fsync_s=$(t dd if=big.bin of=copy.bin bs=1M conv=fsync status=none)
rm -f copy.bin
rm -rf exp-repo/.git/lfs
exp_new_s=$(cd exp-repo && t sh -c "'$exp' lfs clean < ../big.bin")
exp_known_s=$(cd exp-repo && t sh -c "'$exp' lfs clean < ../big.bin")
exp_pipe_s=$(cd exp-repo && t sh -c "cat ../big.bin | '$exp' lfs clean")
rm -rf lfs-repo/.git/lfs
lfs_new_s=$(cd lfs-repo && t sh -c "git lfs clean < ../big.bin")
lfs_known_s=$(cd lfs-repo && t sh -c "git lfs clean < ../big.bin")

# git status with five stale 1 GB files.
for repo in exp-repo lfs-repo; do
  (
    cd "$repo"
    echo '*.safetensors filter=lfs diff=lfs merge=lfs -text' > .gitattributes
    for i in 1 2 3 4 5; do head -c $GB /dev/urandom > "w$i.safetensors"; done
    git add -A > /dev/null && git -c user.name=b -c user.email=b@b commit -qm weights
  )
done
status_times() {
  (
    cd "$1"
    # Both tools start alike: nothing left to write back, the five files in the page cache
    # (21 GB were just written; the other repository's files may have pushed these out).
    sync
    cat w?.safetensors > /dev/null
    touch w?.safetensors
    sleep 0.3
    for call in 1 2 3; do t git --no-optional-locks status --porcelain; done
  ) | paste -sd' '
}
read -r exp_s1 exp_s2 exp_s3 <<< "$(status_times exp-repo)"
read -r lfs_s1 lfs_s2 lfs_s3 <<< "$(status_times lfs-repo)"

r() { echo "scale=2; $1 / $2" | bc; }
cat <<MD
| 1 GB file | seconds | vs openssl | git lfs clean / exp |
|---|---:|---:|---:|
| \`openssl dgst -sha256\` (hashing floor) | $openssl_s | 1.00 | |
| \`cat file \| cat\` (this machine's pipe floor) | $pipe_s | $(r $pipe_s $openssl_s) | |
| \`dd conv=fsync\` (copy-to-disk floor) | $fsync_s | $(r $fsync_s $openssl_s) | |
| \`exp lfs clean < file\`, new object (hash, kernel copy, fsync) | $exp_new_s | $(r $exp_new_s $openssl_s) | $(r $lfs_new_s $exp_new_s) |
| \`exp lfs clean < file\`, object known | $exp_known_s | $(r $exp_known_s $openssl_s) | $(r $lfs_known_s $exp_known_s) |
| \`cat file \| exp lfs clean\` (a pipe, as Git streams), object known | $exp_pipe_s | $(r $exp_pipe_s $openssl_s) | |
| \`git lfs clean < file\`, new object | $lfs_new_s | $(r $lfs_new_s $openssl_s) | |
| \`git lfs clean < file\`, object known | $lfs_known_s | $(r $lfs_known_s $openssl_s) | |

| \`git --no-optional-locks status\`, 5 × 1 GB touched | call 1 | call 2 | call 3 |
|---|---:|---:|---:|
| exp's filter | $exp_s1 | $exp_s2 | $exp_s3 |
| git-lfs | $lfs_s1 | $lfs_s2 | $lfs_s3 |
| git-lfs / exp | $(r $lfs_s1 $exp_s1) | $(r $lfs_s2 $exp_s2) | $(r $lfs_s3 $exp_s3) |
MD
