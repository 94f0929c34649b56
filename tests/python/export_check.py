"""Checks a model exp exported against exp's own logits, in onnxruntime or PyTorch.

usage: export_check.py onnx|torch MODEL PIXELS LOGITS N C H W CLASSES

PIXELS and LOGITS are raw little-endian float32 files: N images of [C, H, W] = pixels / 255, and
exp's logits for them, [N, CLASSES]. Prints `max_abs_diff=… same_labels=… classes=…` and, for
ONNX, the model's exp.* metadata as `meta KEY=VALUE` lines.
"""

import importlib.util
import sys

import numpy as np


def main():
    mode, model_path, pixels_path, logits_path = sys.argv[1:5]
    n, c, h, w, classes = map(int, sys.argv[5:10])
    pixels = np.fromfile(pixels_path, dtype="<f4").reshape(n, c, h, w)
    expected = np.fromfile(logits_path, dtype="<f4").reshape(n, classes)
    if mode == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        (inp,) = session.get_inputs()
        print(f"input {inp.name} {inp.shape}")
        # Two calls of different batch sizes: the batch dimension is dynamic.
        half = n // 2
        logits = np.concatenate(
            [session.run(None, {inp.name: pixels[:half]})[0],
             session.run(None, {inp.name: pixels[half:]})[0]]
        )
        for key, value in sorted(session.get_modelmeta().custom_metadata_map.items()):
            print(f"meta {key}={value}")
    else:
        import torch

        spec = importlib.util.spec_from_file_location("exported", model_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = module.load()  # load_state_dict(strict=True)
        with torch.no_grad():
            logits = model(torch.from_numpy(pixels.copy())).numpy()
        print(f"class_names {','.join(module.CLASS_NAMES)}")
    diff = float(np.abs(logits - expected).max())
    same = bool((logits.argmax(1) == expected.argmax(1)).all())
    print(f"max_abs_diff={diff:.3e} same_labels={same} classes={logits.shape[1]}")


if __name__ == "__main__":
    main()
