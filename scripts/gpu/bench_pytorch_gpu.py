#!/usr/bin/env python3
"""PyTorch eager reference on the GPU for exp's GPU benchmark (scripts/gpu/check.sh).

Models, written as exp builds them (src/model/mod.rs, src/model/resnet.rs; PyTorch's default
initialisation, which is exp's: U(+-1/sqrt(fan_in)) for weights and biases, batch norm 1 and 0):
  seed-cnn  Conv2d(1,32,3) -> ReLU -> MaxPool2d(2) -> flatten -> Linear(32*13*13, classes)
  cnn       Conv2d(1,32,3) -> ReLU -> Conv2d(32,64,3) -> ReLU -> MaxPool2d(2) -> Dropout(0.25)
            -> flatten -> Linear(64*12*12, 128) -> ReLU -> Dropout(0.5) -> Linear(128, classes)
  resnet18  exp's resnet18 with the CIFAR stem (w = --width, 64 as exp's model.width):
            Conv2d(C,w,3,stride 1,pad 1,no bias) -> BN -> ReLU (no max-pool); four stages of two
            BasicBlocks, widths w, 2w, 4w, 8w, the first block of stages 2-4 with stride 2
            (BasicBlock: conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, plus the input or, where
            the stride or width changes, a 1x1 conv(stride, no bias) -> BN projection; then
            ReLU); mean over H and W; Linear(8w, classes). BatchNorm2d eps 1e-5, momentum 0.1.
            Tensor names are exp's (conv1, bn1, layerS.B.{conv1,bn1,conv2,bn2,shortcut.0,
            shortcut.1}, fc); "parameters" counts the trained ones, as exp's record does.
  resnet50  exp's resnet50 with the CIFAR stem (src/model/resnet50.rs, torchvision's v1.5
            Bottleneck: 1x1 down to the stage width -> BN -> ReLU -> 3x3 (the stage's stride) ->
            BN -> ReLU -> 1x1 up to 4x -> BN, plus the input or a 1x1 conv(stride) -> BN
            downsample; then ReLU); stages of 3, 4, 6, 3 blocks, widths w, 2w, 4w, 8w.
  vit       exp's vit (src/model/vit.rs, Hugging Face's ViT): Conv2d(C, d, p, stride p) patches,
            a [CLS] token and position embeddings, --depth pre-norm layers (LayerNorm eps 1e-12
            -> q, k, v Linear(d, d) -> softmax(q k^T / sqrt(d/heads)) v over --heads heads ->
            Linear(d, d), residual; LayerNorm -> Linear(d, mlp) -> exact GELU -> Linear(mlp, d),
            residual), LayerNorm on [CLS], Linear(d, classes). d = --width (64), p = --patch (4),
            heads 4, mlp 2d, depth 4: exp's defaults.
Data sets (--data DIR holds mnist/ and fashion-mnist/ IDX files, gzipped or not):
  mnist, fashion  28x28 grey, pixels/255 normalised with the usual mean and std;
  fashion32       Fashion-MNIST padded with 2 zero pixels on each side to 32x32 and repeated to
                  3 identical channels: the pixels scripts/gpu/fashion32.py writes for exp.
                  Normalised per channel with the mean and population std of pixel/255 over the
                  (limited) training images, computed as exp's data.normalize = "train" does,
                  so both sides feed the model the same f32 values.
--train-limit N / --test-limit N keep the first N images of each file.
Optimiser: Adam (default; lr 1e-3, L2 weight decay in the gradient as exp's "adam") or SGD
(momentum 0.9 unless --momentum), --weight-decay 0 by default. Cross-entropy, each epoch a fresh
permutation (torch.randperm on the device), the last partial batch kept. The whole data set is
on the GPU before timing starts (the same data path exp uses), and the loss is never read during
an epoch (no host sync per step): this is PyTorch at its eager best.
Precision: --precision bf16/f16 is autocast (batch norm keeps f32 statistics and parameters, as
exp's); --tf32 on|off sets torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
and the float32 matmul precision. PyTorch's default runs convolutions in TF32; exp's f32 is exact
FP32, so exp's f32 is compared with --tf32 off and exp's train.precision = "tf32" with --tf32 on.

Timing: torch.cuda.synchronize() around each epoch; img/s of epochs 2..E (epoch 1 is warm-up:
cuDNN autotuning, allocator growth). Test accuracy after the last epoch. --device cpu runs the
same code without a GPU (a dry run: no synchronisation, f16 refused).

    python3 scripts/gpu/bench_pytorch_gpu.py --data DIR --set mnist --model seed-cnn --batch-size 64
    python3 scripts/gpu/bench_pytorch_gpu.py --data DIR --set fashion32 --model resnet18 \
        --batch-size 128 --optimizer sgd --lr 0.05 --tf32 off

Prints one JSON line.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# fashion32.py (beside this file) writes fashion32 for exp: the same IDX reader and padding.
from fashion32 import InputError, pad, positive, read_idx

# Set -> (folder, mean, std); fashion32's normalisation is computed from its training images.
SETS = {
    "mnist": ("mnist", 0.1307, 0.3081),
    "fashion": ("fashion-mnist", 0.2860, 0.3530),
    "fashion32": ("fashion-mnist", None, None),
}


def find(root, sub, base):
    for name in (base + ".gz", base):
        p = os.path.join(root, sub, name)
        if os.path.isfile(p):
            return p
    sys.exit(f"{base} not found under {os.path.join(root, sub)}")


def read_split(root, which, prefix, limit):
    """The first `limit` images (uint8, N x H x W) and labels of a split."""
    sub = SETS[which][0]
    try:
        images = read_idx(find(root, sub, f"{prefix}-images-idx3-ubyte"), 0x803)
        labels = read_idx(find(root, sub, f"{prefix}-labels-idx1-ubyte"), 0x801)
    except InputError as e:
        sys.exit(str(e))
    images, labels = images[:limit], labels[:limit]
    if which == "fashion32":
        images = pad(images)
    return images, labels


def train_normalisation(images):
    """Mean and population std of pixel/255 over uint8 `images`, in exp's order of f64
    operations (Normalisation::over in src/data/mod.rs: byte counts, summed by byte value)."""
    counts = np.bincount(images.ravel(), minlength=256).tolist()
    n = float(max(sum(counts), 1))
    mean = 0.0
    for b, k in enumerate(counts):
        mean += float(k) * float(b) / 255.0
    mean /= n
    var = 0.0
    for b, k in enumerate(counts):
        d = float(b) / 255.0 - mean
        var += float(k) * (d * d)
    var /= n
    return mean, (var ** 0.5 if var > 0.0 else 1.0)


def to_device(which, images, labels, mean, std, device):
    """Images as normalised f32 (N, C, H, W) and int64 labels on `device`."""
    if which == "fashion32":
        # exp's lookup: f32 of the f64 (pixel/255 - mean) / std, one value per byte.
        table = np.array([(b / 255.0 - mean) / std for b in range(256)]).astype(np.float32)
        x = torch.from_numpy(table[images]).to(device).unsqueeze(1).expand(-1, 3, -1, -1)
    else:
        x = torch.from_numpy(images.astype(np.float32) / 255.0).sub_(mean).div_(std).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x.contiguous().to(device), y.to(device)


class SeedCnn(nn.Module):
    def __init__(self, classes=10, channels=1, side=28):
        super().__init__()
        self.conv = nn.Conv2d(channels, 32, 3)
        self.fc = nn.Linear(32 * ((side - 2) // 2) ** 2, classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.max_pool2d(F.relu(self.conv(x)), 2), 1))


class Cnn(nn.Module):
    def __init__(self, classes=10, channels=1, side=28):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.fc1 = nn.Linear(64 * ((side - 4) // 2) ** 2, 128)
        self.fc2 = nn.Linear(128, classes)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(F.dropout(x, 0.25, self.training), 1)
        x = F.dropout(F.relu(self.fc1(x)), 0.5, self.training)
        return self.fc2(x)


def batch_norm(features):
    # exp's BN_EPS and BN_MOMENTUM (src/model/resnet.rs), PyTorch's defaults.
    return nn.BatchNorm2d(features, eps=1e-5, momentum=0.1)


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = batch_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = batch_norm(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, padding=0, bias=False),
                batch_norm(c_out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet18(nn.Module):
    """exp's resnet18 with the CIFAR stem."""

    def __init__(self, classes=10, channels=3, width=64):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = batch_norm(width)
        c_in = width
        for stage, (mult, stride) in enumerate([(1, 1), (2, 2), (4, 2), (8, 2)]):
            c_out = width * mult
            self.add_module(f"layer{stage + 1}", nn.Sequential(
                BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)))
            c_in = c_out
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


class Bottleneck(nn.Module):
    def __init__(self, c_in, width, stride):
        super().__init__()
        c_out = 4 * width
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = batch_norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = batch_norm(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = batch_norm(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), batch_norm(c_out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """exp's resnet50 with the CIFAR stem."""

    def __init__(self, classes=10, channels=3, width=64):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = batch_norm(width)
        c_in = width
        for stage, count in enumerate([3, 4, 6, 3]):
            blocks = []
            for i in range(count):
                stride = 2 if i == 0 and stage > 0 else 1
                blocks.append(Bottleneck(c_in, width << stage, stride))
                c_in = 4 * (width << stage)
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


class EncoderLayer(nn.Module):
    def __init__(self, d, heads, mlp):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d, eps=1e-12)
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, eps=1e-12)
        self.fc1, self.fc2 = nn.Linear(d, mlp), nn.Linear(mlp, d)

    def forward(self, x):
        b, n, d = x.shape
        h = self.norm1(x)
        split = lambda t: t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        att = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
        x = x + self.out((att @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """exp's vit (Hugging Face's ViT layout)."""

    def __init__(self, classes=10, channels=1, side=28, width=64, patch=4, depth=4, heads=4):
        super().__init__()
        self.patches = nn.Conv2d(channels, width, patch, stride=patch)
        tokens = (side // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.position = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        self.layers = nn.Sequential(*[EncoderLayer(width, heads, 2 * width) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-12)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = self.patches(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.position
        return self.fc(self.norm(self.layers(x)[:, 0]))


def grad_scaler(enabled):
    # torch.amp.GradScaler since torch 2.3 (torch.cuda.amp's is deprecated there); older
    # torch, as the CPU dry run may have, has only torch.cuda.amp's.
    scaler = getattr(getattr(torch, "amp", None), "GradScaler", None)
    if scaler is not None:
        return scaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


def set_tf32(on):
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    torch.set_float32_matmul_precision("high" if on else "highest")


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
    ap.add_argument("--model", choices=["seed-cnn", "cnn", "resnet18", "resnet50", "vit"],
                    default="seed-cnn")
    ap.add_argument("--width", type=positive,
                    help="resnet18/resnet50: the first stage's width; vit: the hidden size (64)")
    ap.add_argument("--threads", type=positive,
                    help="torch.set_num_threads (--device cpu; PyTorch's default otherwise)")
    ap.add_argument("--batch-size", type=positive, default=64)
    ap.add_argument("--epochs", type=positive, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--precision", choices=["f32", "bf16", "f16"], default="f32")
    ap.add_argument("--tf32", choices=["on", "off"], default="off")
    ap.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--momentum", type=float, help="sgd only (0.9)")
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--train-limit", type=positive, help="the first N training images (all)")
    ap.add_argument("--test-limit", type=positive, help="the first N test images (all)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    a = ap.parse_args()
    if a.width is not None and a.model not in ("resnet18", "resnet50", "vit"):
        ap.error("--width applies to resnet18, resnet50 and vit only")
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    if a.momentum is not None and a.optimizer != "sgd":
        ap.error("--momentum applies to --optimizer sgd only")
    if a.device == "cpu" and a.precision == "f16":
        ap.error("--precision f16 needs --device cuda")
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    tf32 = a.tf32 == "on"
    width = a.width or 64
    momentum = (0.9 if a.momentum is None else a.momentum) if a.optimizer == "sgd" else None
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(a.seed)
    torch.backends.cudnn.benchmark = True
    set_tf32(tf32)
    images, labels = read_split(a.data, a.set, "train", a.train_limit)
    test_images, test_labels = read_split(a.data, a.set, "t10k", a.test_limit)
    _, mean, std = SETS[a.set]
    if mean is None:
        mean, std = train_normalisation(images)
    x, y = to_device(a.set, images, labels, mean, std, dev)
    xt, yt = to_device(a.set, test_images, test_labels, mean, std, dev)
    channels, side = x.shape[1], x.shape[2]
    if a.model == "resnet18":
        model = ResNet18(10, channels, width)
    elif a.model == "resnet50":
        model = ResNet50(10, channels, width)
    elif a.model == "vit":
        model = ViT(10, channels, side, width)
    else:
        model = (SeedCnn if a.model == "seed-cnn" else Cnn)(10, channels, side)
    model = model.to(dev)
    if a.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=momentum,
                              weight_decay=a.weight_decay)
    # Unused with f32; bf16 then, since CPU autocast refuses any other dtype even disabled.
    amp = torch.float16 if a.precision == "f16" else torch.bfloat16
    use_amp = a.precision != "f32"
    scaler = grad_scaler(a.precision == "f16")
    n = x.shape[0]
    gen = torch.Generator(device=dev).manual_seed(a.seed)
    epoch_seconds = []
    for _ in range(a.epochs):
        model.train()
        sync()
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=dev, generator=gen)
        for s in range(0, n, a.batch_size):
            idx = perm[s:s + a.batch_size]
            with torch.autocast(dev.type, dtype=amp, enabled=use_amp):
                loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        sync()
        epoch_seconds.append(time.perf_counter() - t0)
    timed = epoch_seconds[1:] or epoch_seconds
    print(json.dumps({
        "impl": "pytorch", "torch": torch.__version__, "device": a.device,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "model": a.model, "width": width if a.model in ("resnet18", "resnet50", "vit") else None,
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "set": a.set, "input": list(x.shape[1:]),
        "normalize": {"mean": [mean] * channels, "std": [std] * channels},
        "train_examples": n, "test_examples": xt.shape[0],
        "batch_size": a.batch_size, "epochs": a.epochs,
        "optimizer": a.optimizer, "lr": a.lr, "momentum": momentum,
        "weight_decay": a.weight_decay,
        "precision": a.precision, "tf32": tf32, "seed": a.seed, "epoch_seconds": epoch_seconds,
        "images_per_second": n * len(timed) / sum(timed),
        "test_accuracy": accuracy(model, xt, yt),
    }))


if __name__ == "__main__":
    main()
