#!/usr/bin/env python3
"""Side-by-side CPU benchmark: `exp run` vs PyTorch (scripts/bench/bench_pytorch.py) on MNIST, same
model, initialisation style, batch order style, optimiser and data, same machine, one run.
Prints a Markdown section for docs/benchmarks.md.

Usage: scripts/bench/bench-cpu.sh [--configs seed-cnn:64,seed-cnn:256,cnn:64] [--seeds 1,2,3]
                            [--epochs 1] [--threads 2] [--baseline] [--profile N]
(bench-cpu.sh builds exp first; this file only measures.)

For each config (model:batch) and seed, exp trains and then PyTorch does, so both meet the same
machine state. `--baseline` adds exp on candle's own CPU ops (EXP_CPU_OPS=candle: the trainer
before exp's CPU kernels). `--profile N` adds exp's per-operation profile of each config
(EXP_PROFILE_OPS=1, seed 1, the first N training images).

exp's numbers come from its own run records (metrics.toml: accuracy, training.timing);
PyTorch's from bench_pytorch.py's JSON lines. Both time training steps only (no loading,
no evaluation). Run on an idle machine: see bench_pytorch.py's note on busy CPUs.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/bench/ → the checkout
EXP = os.path.join(ROOT, "target", "release", "exp")


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def exp_args(model, batch, seed, epochs):
    return [EXP, "run", "mnist-cnn", "--quiet", "--set", f"model.name={model}",
            "--set", f"train.batch_size={batch}", "--set", f"train.seed={seed}",
            "--set", f"train.epochs={epochs}"]


def run_exp(repo, model, batch, seed, epochs, env):
    subprocess.run(exp_args(model, batch, seed, epochs), check=True, cwd=repo, env=env,
                   stdout=subprocess.DEVNULL)
    with open(os.path.join(repo, "experiments", "mnist-cnn", "metrics.toml"), "rb") as f:
        rec = tomllib.load(f)
    t = rec["training"]["timing"]
    return {
        "seed": seed, "images_per_second": t["images_per_second"],
        "train_seconds": t["data_seconds"] + t["forward_seconds"] + t["backward_seconds"] + t["optimizer_seconds"],
        "test_accuracy": rec["metrics"]["accuracy"], "forward_s": t["forward_seconds"],
        "backward_s": t["backward_seconds"], "optimizer_s": t["optimizer_seconds"],
        "data_s": t["data_seconds"], "threads": rec["run"]["threads"],
    }


def run_torch(model, batch, seed, epochs, threads, env):
    out = subprocess.run(
        ["/usr/bin/python3", os.path.join(ROOT, "scripts", "bench", "bench_pytorch.py"), "--seeds", str(seed),
         "--epochs", str(epochs), "--threads", str(threads), "--model", model, "--batch-size", str(batch)],
        check=True, env=env, capture_output=True, text=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    row = next(r for r in rows if "seed" in r)
    return row


def profile(repo, model, batch, limit, env):
    """exp's op table (stderr of EXP_PROFILE_OPS=1) for one short run."""
    out = subprocess.run(
        exp_args(model, batch, 1, 1) + ["--set", f"data.train_limit={limit}", "--set", "data.test_limit=500"],
        cwd=repo, env=dict(env, EXP_PROFILE_OPS="1"), capture_output=True, text=True, check=True)
    return [line for line in out.stderr.splitlines() if line.startswith("|") or line.startswith("op profile")]


def mean(rows, key):
    return statistics.mean(r[key] for r in rows)


def std(rows, key):
    return statistics.stdev(r[key] for r in rows) if len(rows) > 1 else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="seed-cnn:64,seed-cnn:256,cnn:64")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline", action="store_true",
                    help="also run exp on candle's own CPU ops (EXP_CPU_OPS=candle)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also print exp's op profile of each config on N training images")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    configs = [(c.split(":")[0], int(c.split(":")[1])) for c in a.configs.split(",")]
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    env.pop("EXP_CPU_OPS", None)
    env.pop("EXP_PROFILE_OPS", None)
    baseline_env = dict(env, EXP_CPU_OPS="candle")

    results = []
    torch_version = "?"
    with tempfile.TemporaryDirectory() as tmp:
        repo = os.path.join(tmp, "bench")
        subprocess.run([EXP, "init", repo], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["git", "-C", repo, "switch", "-q", "-c", "feature/bench"], check=True, env=env)
        for model, batch in configs:
            rows = {"exp": [], "PyTorch": [], "exp (candle ops)": []}
            for seed in seeds:
                rows["exp"].append(run_exp(repo, model, batch, seed, a.epochs, env))
                print(f"{model} b{batch} exp seed {seed}: {rows['exp'][-1]}", file=sys.stderr)
                t = run_torch(model, batch, seed, a.epochs, a.threads, env)
                torch_version = t.get("torch", "?")
                rows["PyTorch"].append(t)
                print(f"{model} b{batch} pytorch seed {seed}: {t}", file=sys.stderr)
                if a.baseline:
                    rows["exp (candle ops)"].append(run_exp(repo, model, batch, seed, a.epochs, baseline_env))
                    print(f"{model} b{batch} exp-candle seed {seed}: {rows['exp (candle ops)'][-1]}",
                          file=sys.stderr)
            table = profile(repo, model, batch, a.profile, env) if a.profile else []
            results.append((model, batch, rows, table))

    cmd = f"scripts/bench/bench-cpu.sh --configs {a.configs} --seeds {a.seeds} --epochs {a.epochs} --threads {a.threads}"
    if a.baseline:
        cmd += " --baseline"
    if a.profile:
        cmd += f" --profile {a.profile}"
    print(f"### exp vs PyTorch on the CPU, MNIST, {a.epochs} epoch(s), Adam 1e-3 — {datetime.date.today()}\n")
    print(f"Command: `{cmd}`  ")
    print(f"Machine: {cpu_model()}, {os.cpu_count()} cores; {a.threads} threads each; "
          f"{subprocess.run([EXP, '--version'], capture_output=True, text=True).stdout.strip()} (candle 0.11.1), "
          f"PyTorch {torch_version} (Debian python3-torch, CPU). Seeds {a.seeds}; exp and PyTorch "
          "alternate seed by seed.\n")
    names = ["exp", "PyTorch"] + (["exp (candle ops)"] if a.baseline else [])
    print("| model | batch | " + " | ".join(f"{n} img/s" for n in names) + " | exp / PyTorch | "
          + " | ".join(f"{n} accuracy" for n in names) + " |")
    print("|---|---|" + "---|" * (2 * len(names) + 1))
    for model, batch, rows, _ in results:
        ips = [f"{mean(rows[n], 'images_per_second'):.0f} ± {std(rows[n], 'images_per_second'):.0f}" for n in names]
        acc = [f"{mean(rows[n], 'test_accuracy'):.4f} ± {std(rows[n], 'test_accuracy'):.4f}" for n in names]
        ratio = mean(rows["exp"], "images_per_second") / mean(rows["PyTorch"], "images_per_second")
        print(f"| {model} | {batch} | " + " | ".join(ips) + f" | **{ratio:.2f}×** | " + " | ".join(acc) + " |")
    print()
    for model, batch, rows, table in results:
        print(f"#### {model}, batch {batch}: per seed\n")
        print("| | seed | test accuracy | img/s | train s | forward s | backward s | optimizer s | data s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name in names:
            for r in rows[name]:
                print(f"| {name} | {r['seed']} | {r['test_accuracy']:.4f} | {r['images_per_second']:.0f} | "
                      f"{r['train_seconds']:.1f} | {r['forward_s']:.1f} | {r['backward_s']:.1f} | "
                      f"{r['optimizer_s']:.1f} | {r.get('data_s', 0):.1f} |")
        print()
        e, t = rows["exp"], rows["PyTorch"]
        print(f"exp / PyTorch throughput: **{mean(e, 'images_per_second') / mean(t, 'images_per_second'):.2f}×**; "
              f"accuracy difference (exp − PyTorch, {len(seeds)}-seed means): "
              f"**{(mean(e, 'test_accuracy') - mean(t, 'test_accuracy')) * 100:+.2f} points**.\n")
        if table:
            print(f"exp's op profile ({a.profile} training images and 500 test images, seed 1; `[thread-s]` "
                  "rows are CPU seconds summed over the threads inside one op, the other rows wall seconds):\n")
            print("\n".join(table[1:]))
            print()


if __name__ == "__main__":
    main()
