#!/usr/bin/env python3
"""PyTorch eager reference on the GPU for exp's GPU benchmark (scripts/gpu/check.sh).

Models, written as exp builds them:
  seed-cnn  Conv2d(1,32,3) -> ReLU -> MaxPool2d(2) -> flatten -> Linear(32*13*13, classes)
  cnn       Conv2d(1,32,3) -> ReLU -> Conv2d(32,64,3) -> ReLU -> MaxPool2d(2) -> Dropout(0.25)
            -> flatten -> Linear(64*12*12, 128) -> ReLU -> Dropout(0.5) -> Linear(128, classes)
Adam lr 1e-3, cross-entropy, each epoch a fresh permutation (torch.randperm on the GPU), the last
partial batch kept. Inputs pixels/255 normalised with the data set's mean and std. The whole
data set is on the GPU before timing starts (the same data path exp uses), and the loss is never
read during an epoch (no host sync per step): this is PyTorch at its eager best.

Timing: torch.cuda.synchronize() around each epoch; img/s of epochs 2..E (epoch 1 is warm-up:
cuDNN autotuning, allocator growth). Test accuracy after the last epoch.

    python3 scripts/gpu/bench_pytorch_gpu.py --data DIR --set mnist --model seed-cnn --batch-size 64

Prints one JSON line.
"""
import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SETS = {
    "mnist": ("mnist", 0.1307, 0.3081),
    "fashion": ("fashion-mnist", 0.2860, 0.3530),
}


def read_idx(path, magic):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if int.from_bytes(data[0:4], "big") != magic:
        sys.exit(f"{path}: bad IDX magic")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(root, sub, base):
    for name in (base + ".gz", base):
        p = os.path.join(root, sub, name)
        if os.path.isfile(p):
            return p
    sys.exit(f"{base} not found under {os.path.join(root, sub)}")


def load(root, which, prefix, device):
    sub, mean, std = SETS[which]
    images = read_idx(find(root, sub, f"{prefix}-images-idx3-ubyte"), 0x803)
    labels = read_idx(find(root, sub, f"{prefix}-labels-idx1-ubyte"), 0x801)
    x = torch.from_numpy(images.astype(np.float32) / 255.0).sub_(mean).div_(std).unsqueeze(1)
    return x.contiguous().to(device), torch.from_numpy(labels.astype(np.int64)).to(device)


class SeedCnn(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv = nn.Conv2d(1, 32, 3)
        self.fc = nn.Linear(32 * 13 * 13, classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.max_pool2d(F.relu(self.conv(x)), 2), 1))


class Cnn(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.fc1 = nn.Linear(64 * 12 * 12, 128)
        self.fc2 = nn.Linear(128, classes)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(F.dropout(x, 0.25, self.training), 1)
        x = F.dropout(F.relu(self.fc1(x)), 0.5, self.training)
        return self.fc2(x)


@torch.no_grad()
def accuracy(model, x, y, batch=5000):
    model.eval()
    correct = 0
    for s in range(0, x.shape[0], batch):
        correct += (model(x[s:s + batch]).argmax(1) == y[s:s + batch]).sum()
    return correct.item() / x.shape[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--set", choices=SETS, default="mnist")
    ap.add_argument("--model", choices=["seed-cnn", "cnn"], default="seed-cnn")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--precision", choices=["f32", "bf16", "f16"], default="f32")
    a = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(a.seed)
    torch.backends.cudnn.benchmark = True
    x, y = load(a.data, a.set, "train", dev)
    xt, yt = load(a.data, a.set, "t10k", dev)
    model = (SeedCnn() if a.model == "seed-cnn" else Cnn()).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    amp = {"f32": torch.float16, "bf16": torch.bfloat16, "f16": torch.float16}[a.precision]
    use_amp = a.precision != "f32"
    scaler = torch.amp.GradScaler("cuda", enabled=a.precision == "f16")
    n = x.shape[0]
    gen = torch.Generator(device=dev).manual_seed(a.seed)
    epoch_seconds = []
    for _ in range(a.epochs):
        model.train()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=dev, generator=gen)
        for s in range(0, n, a.batch_size):
            idx = perm[s:s + a.batch_size]
            with torch.autocast("cuda", dtype=amp, enabled=use_amp):
                loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        torch.cuda.synchronize()
        epoch_seconds.append(time.perf_counter() - t0)
    timed = epoch_seconds[1:] or epoch_seconds
    print(json.dumps({
        "impl": "pytorch", "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0),
        "model": a.model, "set": a.set, "batch_size": a.batch_size, "epochs": a.epochs,
        "precision": a.precision, "seed": a.seed, "epoch_seconds": epoch_seconds,
        "images_per_second": n * len(timed) / sum(timed),
        "test_accuracy": accuracy(model, xt, yt),
    }))


if __name__ == "__main__":
    main()
