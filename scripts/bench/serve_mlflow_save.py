"""Save a network exported by `exp export --format torch` as an MLflow PyTorch model.

Usage: python serve_mlflow_save.py EXPORT_DIR OUT_DIR
  EXPORT_DIR holds model.py + model.safetensors (exp export RUN --format torch -o EXPORT_DIR/model);
  OUT_DIR is the MLflow model directory to write (must not exist).

Run it with MLflow 3.8.1 (scripts/bench/bench-serve.sh makes that venv): MLflow >= 3.9 refuses to
save a model under Debian's torch 1.13. The saved model is served with the latest MLflow 3.x.

The module is pickled whole by mlflow.pytorch (its default). Its class lives in exp's model.py,
imported here as the top-level module `model`; code_paths ships that file with the MLflow model,
so `import model` works again when the server unpickles it. The weights are the same
safetensors the other servers load.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
import mlflow.pytorch
from mlflow.models import infer_signature

export_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
model_py = export_dir / "model.py"

spec = importlib.util.spec_from_file_location("model", model_py)
model_module = importlib.util.module_from_spec(spec)
sys.modules["model"] = model_module  # pickled as model.Model, found again through code_paths
spec.loader.exec_module(model_module)

net = model_module.load(export_dir / "model.safetensors")
example = np.zeros((1, *model_module.INPUT_SHAPE), dtype=np.float32)
with torch.no_grad():
    logits = net(torch.from_numpy(example)).numpy()
# A tensor signature (float32 [-1, C, H, W]) makes the server cast the JSON numbers to float32;
# without one they arrive as float64 and the float32 convolution refuses them.
signature = infer_signature(example, logits)
mlflow.pytorch.save_model(
    net,
    str(out_dir),
    code_paths=[str(model_py)],
    signature=signature,
    input_example=example,
    # Served with --env-manager local: no environment is built from these. Naming them skips
    # MLflow's requirement inference (a subprocess that fails on torch's local version label).
    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "cloudpickle"],
)
print(f"saved {out_dir} (mlflow {mlflow.__version__})", file=sys.stderr)
