#!/usr/bin/env python3
"""Fashion-MNIST padded to 32x32 RGB, written as an image folder, for exp's ResNet-18 benchmark.

Why: the ResNet-18 comparison (scripts/gpu/check.sh, step 5) trains exp and PyTorch on the same
pixels. PyTorch (scripts/gpu/bench_pytorch_gpu.py --set fashion32) builds them in memory from
the IDX files; exp reads them from this folder through its image-folder format
(`data.format = "image-folder"`, `data.channels = 3`, `data.image_size = [32, 32]`, which exp
requires for image folders: the images are already that size, so exp leaves them as they are).
Both sides take pad() below: each 28x28 image gets 2 zero pixels on every side (value 0 before
normalisation, as torchvision's `transforms.Pad(2)` on the uint8 image), and the grey value
goes into all three channels. PNG is lossless, so exp decodes exactly these bytes.

Layout: OUT_DIR/train/<class>/<index>.png and OUT_DIR/test/<class>/<index>.png. Class folders
are "<label>-<name>" (0-t-shirt-top, 1-trouser, ..., 9-ankle-boot): exp numbers classes in the
byte order of their folder names, and that order is the IDX label order. <index> is the image's
position in its IDX file, zero-padded, so a class's files sorted by name are in file order.
--train-limit N and --test-limit N keep the first N images of each file (exp's own
data.train_limit draws a seeded subset instead, so the limit belongs here).

The folder is built beside OUT_DIR and renamed into place; an OUT_DIR holding only train/ and
test/ (an earlier run's) is replaced, any other non-empty OUT_DIR is refused.

    python3 scripts/gpu/fashion32.py DATA_ROOT OUT_DIR [--train-limit N] [--test-limit N]

Reads DATA_ROOT/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]. Prints one
line: the files written and the seconds. Exit status 2 on a missing or malformed input.
"""
import argparse
import gzip
import multiprocessing
import os
import re
import shutil
import sys
import time

import numpy as np

NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# "0-t-shirt-top": single-digit label prefixes keep byte order = label order.
CLASSES = [f"{i}-{re.sub('[^a-z0-9]+', '-', name.lower()).strip('-')}"
           for i, name in enumerate(NAMES)]
PAD = 2


class InputError(Exception):
    """A missing or malformed input file: exit status 2."""


def read_idx(path, magic):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or int.from_bytes(data[0:4], "big") != magic:
        raise InputError(f"{path}: bad IDX magic")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    if len(data) != 4 + 4 * ndim + int(np.prod(dims)):
        raise InputError(f"{path}: {len(data)} bytes do not hold {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(root, prefix, limit=None):
    """The images (N x 28 x 28 uint8) and labels of DATA_ROOT/fashion-mnist/PREFIX-*, first LIMIT."""
    def path(base):
        for name in (base + ".gz", base):
            p = os.path.join(root, "fashion-mnist", name)
            if os.path.isfile(p):
                return p
        raise InputError(f"{base}[.gz] not found under {os.path.join(root, 'fashion-mnist')}")
    images = read_idx(path(f"{prefix}-images-idx3-ubyte"), 0x803)
    labels = read_idx(path(f"{prefix}-labels-idx1-ubyte"), 0x801)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise InputError(f"{prefix}: images {images.shape} and labels {labels.shape} do not match")
    if labels.size and labels.max() >= len(CLASSES):
        raise InputError(f"{prefix}: label {labels.max()} is not a Fashion-MNIST class")
    return images[:limit], labels[:limit]


def pad(images):
    """N x 28 x 28 uint8 -> N x 32 x 32 uint8, zeros around (the one grey channel)."""
    return np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD)), mode="constant", constant_values=0)


# The split being written, set before the pool forks so workers share it without pickling.
_SPLIT = None


def _write(span):
    from PIL import Image
    images, labels, folder = _SPLIT
    for i in range(*span):
        rgb = np.repeat(images[i][:, :, None], 3, axis=2)
        # compress_level 1: PNG stays lossless; the default level 6 only costs time.
        Image.fromarray(rgb).save(os.path.join(folder, CLASSES[labels[i]], f"{i:05d}.png"),
                                  compress_level=1)
    return span[1] - span[0]


def write_split(pool_size, images, labels, folder):
    global _SPLIT
    for name in CLASSES:
        os.makedirs(os.path.join(folder, name))
    _SPLIT = (pad(images), labels, folder)
    n = len(labels)
    step = max(1, -(-n // (pool_size * 8)))
    spans = [(s, min(s + step, n)) for s in range(0, n, step)]
    with multiprocessing.get_context("fork").Pool(pool_size) as pool:
        return sum(pool.map(_write, spans))


def positive(s):
    n = int(s)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_root")
    ap.add_argument("out_dir")
    ap.add_argument("--train-limit", type=positive)
    ap.add_argument("--test-limit", type=positive)
    a = ap.parse_args()
    start = time.perf_counter()
    try:
        train = load(a.data_root, "train", a.train_limit)
        test = load(a.data_root, "t10k", a.test_limit)
    except InputError as e:
        print(f"fashion32.py: {e}", file=sys.stderr)
        sys.exit(2)
    out = os.path.abspath(a.out_dir)
    if os.path.exists(out) and not os.path.isdir(out):
        print(f"fashion32.py: {out} exists and is not a folder", file=sys.stderr)
        sys.exit(2)
    if os.path.isdir(out) and not set(os.listdir(out)) <= {"train", "test"}:
        print(f"fashion32.py: {out} exists and holds more than train/ and test/; "
              "remove it or choose another OUT_DIR", file=sys.stderr)
        sys.exit(2)
    partial = f"{out}.partial-{os.getpid()}"
    pool_size = os.cpu_count() or 1
    try:
        written = sum(write_split(pool_size, *split, os.path.join(partial, name))
                      for name, split in (("train", train), ("test", test)))
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.rename(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    print(f"fashion32.py: wrote {written} PNGs ({len(train[1])} train, {len(test[1])} test) "
          f"to {out} in {time.perf_counter() - start:.1f} s with {pool_size} processes")


if __name__ == "__main__":
    main()
