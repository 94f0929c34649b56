#!/usr/bin/env python3
"""Deeper models on the CPU, exp vs PyTorch side by side (issue 22): resnet18 on Fashion-MNIST
28x28, resnet18 on Fashion-MNIST padded to 32x32x3, resnet50 and vit (exp's defaults: width 64,
CIFAR stem; vit patch 4, depth 4, 4 heads) on Fashion-MNIST 28x28. Batch 64, SGD 0.05 with
momentum 0.9, the first --images training images, one exp run and one PyTorch run per round,
alternating, --rounds rounds; medians. Prints a Markdown section for docs/benchmarks.md.

Usage: scripts/bench/bench-deep-cpu.sh [--configs resnet18,resnet18-32,resnet50,vit]
                                 [--images 512] [--rounds 3] [--threads 2] [--profile N]
(bench-deep-cpu.sh installs the tools, builds exp and writes the 32x32 image folder; this file
only measures.)

Both train two epochs over the same images and report the second (warm: the first step's
allocations and page faults fall in epoch 1). exp: `exp run` in a scratch repository, the
training seconds of epoch 2 from its history.csv. PyTorch: scripts/gpu/bench_pytorch_gpu.py
--device cpu --threads N (Debian's python3-torch), its epoch-2 img/s. Both build the same network (same layers, shapes and parameter count, checked
below) on the same pixels. `--profile N` adds exp's per-op table (EXP_PROFILE_OPS=1) of each
config on N images. `--accuracy N` adds the check that exp's kernels train as candle's ops do:
per config, seeds 1-3, two epochs on N images at lr 0.01 (ResNets at width 16, so that candle's
path finishes), test accuracy on 1,000 images with exp's kernels and with EXP_CPU_OPS=candle.
"""
import argparse
import csv
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXP = os.path.join(ROOT, "target", "release", "exp")
TORCH = os.path.join(ROOT, "scripts", "gpu", "bench_pytorch_gpu.py")

IDX_SPEC = """[model]
name = "MODEL"
[data]
format = "idx"
train_images = "fashion-mnist/train-images-idx3-ubyte.gz"
train_labels = "fashion-mnist/train-labels-idx1-ubyte.gz"
test_images = "fashion-mnist/t10k-images-idx3-ubyte.gz"
test_labels = "fashion-mnist/t10k-labels-idx1-ubyte.gz"
normalize = { mean = [0.2860], std = [0.3530] }
"""
FOLDER_SPEC = """[model]
name = "MODEL"
[data]
format = "image-folder"
path = "fashion32"
channels = 3
image_size = [32, 32]
normalize = "train"
"""
TRAIN = """[train]
optimizer = "sgd"
lr = 0.05
momentum = 0.9
batch_size = 64
epochs = 2
seed = 1
"""

# config -> (exp model, spec template, PyTorch --set)
CONFIGS = {
    "resnet18": ("resnet18", IDX_SPEC, "fashion"),
    "resnet18-32": ("resnet18", FOLDER_SPEC, "fashion32"),
    "resnet50": ("resnet50", IDX_SPEC, "fashion"),
    "vit": ("vit", IDX_SPEC, "fashion"),
}


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def run_exp(repo, config, images, env, profile=False):
    model, template, _ = CONFIGS[config]
    name = config.replace("-", "_")
    with open(os.path.join(repo, "experiments", f"{name}.toml"), "w") as f:
        f.write(template.replace("MODEL", model) + TRAIN)
    # The folder holds exactly --images training images (bench-deep-cpu.sh); the IDX files
    # are limited here.
    args = [EXP, "run", name, "--quiet", "--set", "data.test_limit=100"]
    if template is IDX_SPEC:
        args += ["--set", f"data.train_limit={images}"]
    out = subprocess.run(args, cwd=repo, env=dict(env, EXP_PROFILE_OPS="1") if profile else env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"exp run {name} failed:\n{out.stderr}")
    if profile:
        return [line for line in out.stderr.splitlines() if line.startswith("|")]
    with open(os.path.join(repo, "experiments", name, "metrics.toml"), "rb") as f:
        rec = tomllib.load(f)
    with open(os.path.join(repo, "experiments", name, "history.csv")) as f:
        epochs = list(csv.DictReader(f))
    examples = rec["data"]["train"]["examples"]
    return {"images_per_second": examples / float(epochs[-1]["train_seconds"]),
            "parameters": rec["model"]["parameters"], "examples": examples}


# The accuracy check's learning rate: at the speed runs' 0.05 the narrow ResNets diverge or
# scatter by 30 points between seeds within two epochs (docs/benchmarks.md), which hides any
# difference between the two paths.
ACCURACY_LR = 0.01


def accuracy(repo, config, images, seed, env):
    """Test accuracy after two epochs on `images` images (1,000 test images)."""
    model, template, _ = CONFIGS[config]
    name = config.replace("-", "_") + "_acc"
    # The width belongs to [model], the template's first table: before [data].
    width = "width = 16\n" if model.startswith("resnet") else ""
    spec = template.replace("MODEL", model).replace("[data]", width + "[data]", 1)
    with open(os.path.join(repo, "experiments", f"{name}.toml"), "w") as f:
        f.write(spec + TRAIN.replace("seed = 1", f"seed = {seed}").replace("lr = 0.05", f"lr = {ACCURACY_LR}"))
    args = [EXP, "run", name, "--quiet", "--set", "data.test_limit=1000"]
    if template is IDX_SPEC:
        args += ["--set", f"data.train_limit={images}"]
    out = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"exp run {name} failed:\n{out.stderr}")
    with open(os.path.join(repo, "experiments", name, "metrics.toml"), "rb") as f:
        return tomllib.load(f)["metrics"]["accuracy"]


def run_torch(config, images, threads, data, env):
    model, _, which = CONFIGS[config]
    out = subprocess.run(
        ["/usr/bin/python3", TORCH, "--device", "cpu", "--threads", str(threads), "--data", data,
         "--set", which, "--model", model, "--batch-size", "64", "--optimizer", "sgd",
         "--lr", "0.05", "--epochs", "2", "--train-limit", str(images), "--test-limit", "100"],
        env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"PyTorch {config} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="resnet18,resnet18-32,resnet50,vit")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", type=int, default=0, metavar="N")
    ap.add_argument("--accuracy", type=int, default=0, metavar="N")
    ap.add_argument("--data", default=os.environ.get("EXP_DATA", ""))
    a = ap.parse_args()
    configs = a.configs.split(",")
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"unknown config {c!r}: expected {', '.join(CONFIGS)}")
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), EXP_DATA=a.data)
    for var in ("EXP_CPU_OPS", "EXP_PROFILE_OPS"):
        env.pop(var, None)
    results = {}
    profiles = {}
    torch_version = "?"
    with tempfile.TemporaryDirectory() as tmp:
        repo = os.path.join(tmp, "bench")
        subprocess.run([EXP, "init", repo], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["git", "-C", repo, "switch", "-q", "-c", "feature/bench"], check=True)
        for config in configs:
            rows = {"exp": [], "PyTorch": []}
            for r in range(a.rounds):
                e = run_exp(repo, config, a.images, env)
                t = run_torch(config, a.images, a.threads, a.data, env)
                torch_version = t["torch"]
                if (e["parameters"], e["examples"]) != (t["parameters"], t["train_examples"]):
                    sys.exit(f"{config}: exp has {e['parameters']} parameters and {e['examples']} "
                             f"images, PyTorch {t['parameters']} and {t['train_examples']}")
                rows["exp"].append(e["images_per_second"])
                rows["PyTorch"].append(t["images_per_second"])
                print(f"{config} round {r + 1}: exp {e['images_per_second']:.1f} img/s, "
                      f"PyTorch {t['images_per_second']:.1f} img/s", file=sys.stderr)
            if a.rounds:
                results[config] = (rows, e["parameters"])
            if a.profile:
                profiles[config] = run_exp(repo, config, a.profile, env, profile=True)
        accuracies = {}
        for config in configs if a.accuracy else []:
            if config == "resnet18-32":
                continue  # the folder holds --images training images, not --accuracy
            rows = {"exp kernels": [], "candle ops": []}
            for seed in (1, 2, 3):
                rows["exp kernels"].append(accuracy(repo, config, a.accuracy, seed, env))
                rows["candle ops"].append(
                    accuracy(repo, config, a.accuracy, seed, dict(env, EXP_CPU_OPS="candle")))
                print(f"{config} seed {seed}: exp {rows['exp kernels'][-1]:.4f}, "
                      f"candle {rows['candle ops'][-1]:.4f}", file=sys.stderr)
            accuracies[config] = rows

    cmd = (f"scripts/bench/bench-deep-cpu.sh --configs {a.configs} --images {a.images} "
           f"--rounds {a.rounds} --threads {a.threads}" + (f" --profile {a.profile}" if a.profile else "")
           + (f" --accuracy {a.accuracy}" if a.accuracy else ""))
    version = subprocess.run([EXP, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"### Deeper models on the CPU: exp vs PyTorch — {datetime.date.today()}\n")
    print(f"Command: `{cmd}`  ")
    print(f"Machine: {cpu_model()}, {os.cpu_count()} cores, {a.threads} threads each; {version}, "
          f"PyTorch {torch_version} (Debian python3-torch). Batch 64, SGD 0.05 momentum 0.9, "
          f"{a.images} training images; {a.rounds} rounds, exp and PyTorch alternating; medians.\n")
    if results:
        print("| config | parameters | exp img/s | PyTorch img/s | exp / PyTorch |")
        print("|---|---:|---:|---:|---:|")
    for config, (rows, params) in results.items():
        e, t = statistics.median(rows["exp"]), statistics.median(rows["PyTorch"])
        print(f"| {config} | {params:,} | {e:.1f} ({', '.join(f'{v:.1f}' for v in rows['exp'])}) | "
              f"{t:.1f} ({', '.join(f'{v:.1f}' for v in rows['PyTorch'])}) | **{e / t:.2f}×** |")
    print()
    if accuracies:
        print(f"Accuracy, exp's kernels vs candle's ops (EXP_CPU_OPS=candle): seeds 1-3, two epochs "
              f"on {a.accuracy} images at lr {ACCURACY_LR}, 1,000 test images, ResNets at width 16:\n")
        print("| config | exp kernels (seeds 1, 2, 3) | mean | candle ops (seeds 1, 2, 3) | mean |")
        print("|---|---|---:|---|---:|")
        for config, rows in accuracies.items():
            e, c = rows["exp kernels"], rows["candle ops"]
            print(f"| {config} | {', '.join(f'{v:.4f}' for v in e)} | {statistics.mean(e):.4f} | "
                  f"{', '.join(f'{v:.4f}' for v in c)} | {statistics.mean(c):.4f} |")
        print()
    for config, table in profiles.items():
        print(f"exp's op profile, {config}, {a.profile} training images:\n")
        print("\n".join(table))
        print()


if __name__ == "__main__":
    main()
