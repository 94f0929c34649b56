"""The minimal Flask inference app that bench-serve.sh compares `exp serve` with.

What a tutorial writes: load the PyTorch module once at import, answer POST /predict with JSON.
The module is the one `exp export RUN --format torch -o DIR/model` writes; BENCH_MODEL_DIR names
DIR. Request: {"inputs": [[[[p, ...]]]]}, one image [1, C, H, W] with pixel values 0-255 (the
body exp serve takes); the app scales by 1/255, the module does the rest (normalisation folded
in). Answer: {"label": 7, "class": "7", "logits": [...]}. GET /ready is 200 once a worker has
loaded the model (the import below does it before the first request is served).

Served two ways:
  gunicorn -w 2 -b 127.0.0.1:PORT --chdir scripts/bench serve_flask:app   (the comparison)
  python scripts/bench/serve_flask.py PORT                                 (Flask's threaded dev server)
"""

import importlib.util
import os
import sys
from pathlib import Path

import torch
from flask import Flask, jsonify, request

model_dir = Path(os.environ["BENCH_MODEL_DIR"])
spec = importlib.util.spec_from_file_location("model", model_dir / "model.py")
model_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(model_module)
model = model_module.load(model_dir / "model.safetensors")

app = Flask(__name__)


@app.get("/ready")
def ready():
    return "ready\n"


@app.post("/predict")
def predict():
    pixels = torch.tensor(request.get_json()["inputs"], dtype=torch.float32) / 255.0
    with torch.inference_mode():
        logits = model(pixels)[0]
    label = int(logits.argmax())
    return jsonify(label=label, **{"class": model_module.CLASS_NAMES[label]}, logits=logits.tolist())


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=True)
