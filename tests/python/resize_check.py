"""Compares exp's image decoding and resizing with Pillow's, as torchvision's Resize does it.

usage: resize_check.py OUT_DIR C H W IMAGE...

For each IMAGE, OUT_DIR/<file name>.raw holds exp's C×H×W bytes (CHW). Pillow decodes the file,
converts it to "L" (C = 1) or "RGB" (C = 3) and resizes it to W×H with BILINEAR (antialiased when
reducing, torchvision's default). Prints `mad=<mean absolute difference> max=<largest> NAME` per
image.
"""

import os
import sys

import numpy as np
from PIL import Image


def main():
    out_dir = sys.argv[1]
    c, h, w = map(int, sys.argv[2:5])
    for path in sys.argv[5:]:
        name = os.path.basename(path)
        image = Image.open(path).convert("L" if c == 1 else "RGB")
        if image.size != (w, h):
            image = image.resize((w, h), Image.BILINEAR)
        pillow = np.asarray(image, dtype=np.float64).reshape(h, w, c).transpose(2, 0, 1)
        ours = np.fromfile(os.path.join(out_dir, name + ".raw"), dtype=np.uint8)
        ours = ours.astype(np.float64).reshape(c, h, w)
        diff = np.abs(pillow - ours)
        print(f"mad={diff.mean():.4f} max={diff.max():.0f} {name}")


if __name__ == "__main__":
    main()
