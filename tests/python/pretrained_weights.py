"""Writes a randomly initialised torchvision ResNet-50 or Hugging Face ViT state dict as
safetensors, in the libraries' own tensor names, and the logits the library computes on a few
real images from exp's data root: what `init.from = "FILE.safetensors"` must load, and what exp
must then compute (tests/integration/models.rs).

usage: pretrained_weights.py resnet50 WEIGHTS REFERENCE DATA_ROOT CLASSES
       pretrained_weights.py vit WEIGHTS REFERENCE DATA_ROOT CLASSES HIDDEN LAYERS HEADS PATCH

resnet50: torchvision's resnet50(weights=None, num_classes=CLASSES) (ImageNet stem, width 64) on
the first 4 images of the CIFAR-10 sample; two forward passes in training mode first, so the
batch norms' running statistics (and num_batches_tracked) are not their initial values.
vit: transformers' ViTForImageClassification(ViTConfig(...)) for 28×28 grey images, on the first
4 MNIST test images. REFERENCE holds `input` (the normalised images) and `logits` (evaluation
mode). Prints the number of tensors written.
"""

import gzip
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file


def cifar_sample(root, n):
    raw = (root / "cifar10-sample/test_batch_first20.bin").read_bytes()
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3073)[:n]
    x = torch.tensor(records[:, 1:].reshape(n, 3, 32, 32), dtype=torch.float32) / 255.0
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    return (x - mean) / std


def mnist_test(root, n):
    path = root / "mnist/t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes()) if path.exists() else path.with_suffix("").read_bytes()
    pixels = np.frombuffer(raw[16 : 16 + n * 784], dtype=np.uint8).reshape(n, 1, 28, 28)
    x = torch.tensor(pixels, dtype=torch.float32) / 255.0
    return (x - 0.1307) / 0.3081


def main():
    kind, weights, reference, root, classes = sys.argv[1:6]
    root, classes = Path(root), int(classes)
    torch.manual_seed(0)
    if kind == "resnet50":
        import torchvision

        model = torchvision.models.resnet50(weights=None, num_classes=classes)
        x = cifar_sample(root, 4)
        model.train()
        with torch.no_grad():
            model(x)
            model(x.flip(3))
        model.eval()
        with torch.no_grad():
            logits = model(x)
    elif kind == "vit":
        from transformers import ViTConfig, ViTForImageClassification

        hidden, layers, heads, patch = map(int, sys.argv[6:10])
        config = ViTConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=2 * hidden,
            image_size=28,
            patch_size=patch,
            num_channels=1,
            num_labels=classes,
        )
        model = ViTForImageClassification(config).eval()
        x = mnist_test(root, 4)
        with torch.no_grad():
            logits = model(pixel_values=x).logits
    else:
        sys.exit(f"unknown model {kind}")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, weights)
    save_file({"input": x.contiguous(), "logits": logits.contiguous()}, reference)
    print(len(state))


if __name__ == "__main__":
    main()
