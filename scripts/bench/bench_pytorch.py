#!/usr/bin/python3
"""PyTorch CPU reference for the `exp` trainer: "seed-cnn" (or "cnn", `--model cnn`) on MNIST.

Model: Conv2d(1,32,3) -> ReLU -> MaxPool2d(2) -> flatten -> Linear(32*13*13, 10), PyTorch
default initialisation (after torch.manual_seed(seed)). Adam lr 1e-3, cross-entropy, batch 64,
each epoch a fresh random permutation from a torch.Generator seeded with the seed, last partial
batch kept. Inputs: pixels / 255, then (x - 0.1307) / 0.3081.

Run with Debian's interpreter (package python3-torch, CPU only):
    /usr/bin/python3 scripts/bench/bench_pytorch.py --data /work/shared/data --seeds 1 --threads 2

Only the training epochs are timed (not loading, preprocessing or evaluation). Within them,
time.perf_counter() splits forward+loss, backward and optimizer.step()+zero_grad(); data_s is
the batch gather (indexing the preprocessed tensor). Prints one JSON line per seed on stdout,
then a summary line with the means (and sample standard deviations over seeds).

Timings need an otherwise idle machine: with other processes busy, the OpenMP threads of this
torch build spin-wait against them and an epoch can take several times longer (seen: 19 s idle
vs 133 s during a cargo build on 2 cores). A warning goes to stderr when the CPUs are busy at the start.
"""
import argparse
import gzip
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN, STD = 0.1307, 0.3081


def default_root():
    return os.environ.get("EXP_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "exp", "data")


def find_idx(root, base):
    """Locate BASE (e.g. train-images-idx3-ubyte) under ROOT/mnist or ROOT: hyphen or dot name, raw or .gz."""
    dot = base.replace("-idx", ".idx")
    dirs = [os.path.join(root, "mnist"), root]
    for d in dirs:
        for name in (base, base + ".gz", dot, dot + ".gz"):
            p = os.path.join(d, name)
            if os.path.isfile(p):
                return p
    sys.exit(f"bench_pytorch: {base}[.gz] not found under {dirs[0]} or {root} "
             f"(run scripts/fetch-data.sh {root})")


def read_idx(path, expect_magic):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic != expect_magic:
        sys.exit(f"bench_pytorch: {path}: bad IDX magic {magic:#010x}, expected {expect_magic:#010x}")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    off = 4 + 4 * ndim
    arr = np.frombuffer(data, dtype=np.uint8, offset=off)
    if arr.size != int(np.prod(dims)):
        sys.exit(f"bench_pytorch: {path}: {arr.size} bytes of data, header says {dims}")
    return arr.reshape(dims)


def load_split(root, prefix):
    images = read_idx(find_idx(root, f"{prefix}-images-idx3-ubyte"), 0x00000803)
    labels = read_idx(find_idx(root, f"{prefix}-labels-idx1-ubyte"), 0x00000801)
    assert images.shape[0] == labels.shape[0] and images.shape[1:] == (28, 28), images.shape
    x = torch.from_numpy(images.astype(np.float32) / 255.0).sub_(MEAN).div_(STD).unsqueeze(1).contiguous()
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def cpu_busy(interval=0.5):
    """Fraction of all CPUs busy over INTERVAL seconds (from /proc/stat), or None if unknown."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        return sum(v), v[3] + (v[4] if len(v) > 4 else 0)  # total, idle + iowait
    try:
        t0, i0 = sample()
        time.sleep(interval)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / (t1 - t0) if t1 > t0 else None


class Cnn(nn.Module):
    """PyTorch's MNIST example net (exp's `cnn`)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = self.dropout1(F.max_pool2d(x, 2))
        x = self.dropout2(F.relu(self.fc1(torch.flatten(x, 1))))
        return self.fc2(x)


class SeedCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 32, 3, stride=1)
        self.fc = nn.Linear(32 * 13 * 13, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(torch.flatten(x, 1))


def train(model, opt, x, y, seed, epochs, batch_size):
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    t_fwd = t_bwd = t_opt = t_data = 0.0
    pc = time.perf_counter
    model.train()
    t0 = pc()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            a = pc()
            idx = perm[start:start + batch_size]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            b = pc()
            loss = F.cross_entropy(model(xb), yb)
            c = pc()
            loss.backward()
            d = pc()
            opt.step()
            opt.zero_grad()
            e = pc()
            t_data += b - a
            t_fwd += c - b
            t_bwd += d - c
            t_opt += e - d
    total = pc() - t0
    return total, t_fwd, t_bwd, t_opt, t_data


@torch.no_grad()
def evaluate(model, x, y, batch=1000):
    model.eval()
    loss_sum, correct = 0.0, 0
    for s in range(0, x.shape[0], batch):
        out = model(x[s:s + batch])
        loss_sum += F.cross_entropy(out, y[s:s + batch], reduction="sum").item()
        correct += (out.argmax(1) == y[s:s + batch]).sum().item()
    return correct / x.shape[0], loss_sum / x.shape[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=default_root(),
                    help="data root holding mnist/ (default: $EXP_DATA or ~/.cache/exp/data)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--model", choices=("seed-cnn", "cnn"), default="seed-cnn")
    ap.add_argument("--train-limit", type=int, default=0,
                    help="train on the first N images only (0: all; for quick looks, not for the table)")
    ap.add_argument("--no-busy-check", action="store_true",
                    help="skip the half-second idle check (when runs are timed from outside)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not seeds or args.epochs < 1 or args.batch_size < 1 or args.threads < 1:
        ap.error("need at least one seed, and epochs, batch size and threads >= 1")

    torch.set_num_threads(args.threads)
    x_train, y_train = load_split(args.data, "train")
    x_test, y_test = load_split(args.data, "t10k")
    if args.train_limit:
        x_train, y_train = x_train[:args.train_limit], y_train[:args.train_limit]
    busy = None if args.no_busy_check else cpu_busy()
    if busy is not None and busy > 0.25:
        print(f"bench_pytorch: warning: CPUs are {busy:.0%} busy before training; timings will be "
              "unreliable unless the machine is idle", file=sys.stderr)

    keys = ("train_seconds", "images_per_second", "test_accuracy", "test_loss",
            "forward_s", "backward_s", "optimizer_s", "data_s")
    rows = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = SeedCnn() if args.model == "seed-cnn" else Cnn()
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        total, fwd, bwd, optim, data = train(model, opt, x_train, y_train, seed, args.epochs, args.batch_size)
        acc, loss = evaluate(model, x_test, y_test)
        row = {
            "framework": "pytorch", "torch": torch.__version__, "model": args.model, "seed": seed,
            "threads": torch.get_num_threads(), "batch_size": args.batch_size, "epochs": args.epochs,
            "train_seconds": round(total, 4),
            "images_per_second": round(args.epochs * x_train.shape[0] / total, 1),
            "test_accuracy": round(acc, 4), "test_loss": round(loss, 5),
            "forward_s": round(fwd, 4), "backward_s": round(bwd, 4),
            "optimizer_s": round(optim, 4), "data_s": round(data, 4),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    summary = {"framework": "pytorch", "summary": True, "torch": torch.__version__, "seeds": seeds,
               "threads": torch.get_num_threads(), "batch_size": args.batch_size, "epochs": args.epochs}
    for k in keys:
        vals = [r[k] for r in rows]
        summary[k + "_mean"] = round(statistics.fmean(vals), 5)
        if len(vals) > 1:
            summary[k + "_std"] = round(statistics.stdev(vals), 5)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
