#!/usr/bin/env bash
# unpack-exp.sh DEST — the packed CUDA exp (.gpu/exp.xz, from scripts/gpu/pack.sh) to DEST,
# executable. Python's lzma, since xz-utils may be missing on a GPU machine and python3 is not.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest="${1:?usage: scripts/gpu/unpack-exp.sh DEST}"
[[ -f .gpu/exp.xz ]] || { echo "unpack-exp.sh: .gpu/exp.xz missing; run scripts/gpu/pack.sh" >&2; exit 2; }
python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
  .gpu/exp.xz "$dest"
chmod +x "$dest"
