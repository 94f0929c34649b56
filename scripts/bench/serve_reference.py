"""The labels the exported PyTorch module gives the benchmark's request images.

Usage: python serve_reference.py EXPORT_DIR BODIES.jsonl OUT
  EXPORT_DIR: model.py + model.safetensors from `exp export --format torch`;
  BODIES.jsonl: the pixel bodies of serve_tools.py bodies ({"inputs": [[[[0-255 ...]]]]});
  OUT: one label per line.
Every server's answers are checked against these (serve_tools.py check), so a server that loads
other weights, or mangles the input, stops the benchmark instead of being timed.
Needs torch and safetensors (bench-serve.sh runs it in the Flask venv).
"""

import importlib.util
import json
import sys
from pathlib import Path

import torch

export_dir, bodies, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
spec = importlib.util.spec_from_file_location("model", export_dir / "model.py")
model_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(model_module)
model = model_module.load(export_dir / "model.safetensors")

with open(bodies) as f:
    images = [json.loads(line)["inputs"][0] for line in f]
with torch.inference_mode():
    labels = model(torch.tensor(images, dtype=torch.float32) / 255.0).argmax(1).tolist()
with open(out, "w") as f:
    f.write("".join(f"{label}\n" for label in labels))
