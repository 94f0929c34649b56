#!/usr/bin/python3
"""Checks exp's seed-cnn gradients against PyTorch's on real data (run by gradcheck-pytorch.sh).

Given W0 (exp's initial weights) and W1 (exp's weights after one SGD step with lr = 1 on one
batch holding all 10,000 MNIST test images), exp's gradient is W0 - W1. PyTorch computes the
gradient of the same loss at W0 on the same images; the two must agree to float rounding.
"""
import gzip
import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F


def load_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    body = raw[8 + n:]
    return {k: np.frombuffer(body[v["data_offsets"][0]:v["data_offsets"][1]], dtype=np.float32).reshape(v["shape"])
            for k, v in header.items() if k != "__metadata__"}


def read_idx(root, name):
    for path in (os.path.join(root, name + ".gz"), os.path.join(root, name)):
        if os.path.exists(path):
            data = open(path, "rb").read()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            rank = data[3]
            dims = struct.unpack(">" + "I" * rank, data[4:4 + 4 * rank])
            return np.frombuffer(data[4 + 4 * rank:], dtype=np.uint8).reshape(dims)
    sys.exit(f"gradcheck: {name} not found under {root}")


def main():
    w0_path, w1_path, root = sys.argv[1:4]
    w0, w1 = load_safetensors(w0_path), load_safetensors(w1_path)
    images = read_idx(root, "mnist/t10k-images-idx3-ubyte")
    labels = read_idx(root, "mnist/t10k-labels-idx1-ubyte")
    x = torch.tensor((images / 255.0 - 0.1307) / 0.3081, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(labels.astype(np.int64))
    p = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in w0.items()}
    h = F.max_pool2d(F.relu(F.conv2d(x, p["conv.weight"], p["conv.bias"])), 2).flatten(1)
    loss = F.cross_entropy(F.linear(h, p["fc.weight"], p["fc.bias"]), y)
    loss.backward()
    worst = 0.0
    print(f"| tensor | max abs gradient (PyTorch) | max abs difference / max abs gradient |")
    print(f"|---|---|---|")
    for k in sorted(p):
        g_torch = p[k].grad.numpy()
        g_exp = w0[k] - w1[k]
        rel = float(np.abs(g_torch - g_exp).max() / np.abs(g_torch).max())
        worst = max(worst, rel)
        print(f"| {k} | {np.abs(g_torch).max():.4g} | {rel:.2e} |")
    print(f"\nloss at W0: {loss.item():.6f}; worst relative difference {worst:.2e}")
    sys.exit(0 if worst < 1e-3 else 1)


if __name__ == "__main__":
    main()
