"""Compares exp's decoded image folder with torchvision's ImageFolder + Resize.

usage: image_folder_check.py FOLDER EXP_RAW C H W

EXP_RAW holds exp's decoded images of every file of FOLDER, in file order, C×H×W bytes each
(CHW). torchvision reads FOLDER with ImageFolder (its classes, its file order, its PIL loader),
converts to "L" when C = 1 and resizes with transforms.Resize((H, W)) (bilinear, antialiased).
Prints `classes=<names> images=<n>`, one `mad=<mean absolute difference> max=<largest> PATH`
per image, and `worst_mad=<largest mad>`.
"""

import sys

import numpy as np
from torchvision import datasets, transforms


def main():
    folder, raw = sys.argv[1], sys.argv[2]
    c, h, w = map(int, sys.argv[3:6])
    steps = [transforms.Grayscale()] if c == 1 else []
    steps += [transforms.Resize((h, w)), transforms.PILToTensor()]
    data = datasets.ImageFolder(folder, transform=transforms.Compose(steps))
    ours = np.fromfile(raw, dtype=np.uint8).astype(np.float64).reshape(-1, c, h, w)
    print(f"classes={','.join(data.classes)} images={len(data)}")
    if len(data) != len(ours):
        print(f"exp decoded {len(ours)} images")
        sys.exit(1)
    worst = 0.0
    for i, (path, _) in enumerate(data.samples):
        theirs = data[i][0].numpy().astype(np.float64)
        diff = np.abs(theirs - ours[i])
        worst = max(worst, diff.mean())
        print(f"mad={diff.mean():.4f} max={diff.max():.0f} {path}")
    print(f"worst_mad={worst:.4f}")


if __name__ == "__main__":
    main()
