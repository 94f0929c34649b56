#!/usr/bin/env python3
"""Side-by-side CPU benchmark: `exp run mnist-cnn` vs PyTorch (scripts/bench_pytorch.py), same
model (seed-cnn), initialisation style, batch order style, optimiser and data, same machine,
one run. Prints a Markdown section for docs/benchmarks.md.

Usage: scripts/bench-cpu.sh [--seeds 1,2,3] [--epochs 1] [--threads 2]
(bench-cpu.sh builds exp first; this file only measures.)

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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXP = os.path.join(ROOT, "target", "release", "exp")


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_exp(seeds, epochs, threads, env):
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = os.path.join(tmp, "bench")
        subprocess.run([EXP, "init", repo], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["git", "-C", repo, "switch", "-q", "-c", "feature/bench"], check=True, env=env)
        for seed in seeds:
            subprocess.run(
                [EXP, "run", "mnist-cnn", "--quiet", "--set", f"train.seed={seed}", "--set", f"train.epochs={epochs}"],
                check=True, cwd=repo, env=env, stdout=subprocess.DEVNULL)
            with open(os.path.join(repo, "experiments", "mnist-cnn", "metrics.toml"), "rb") as f:
                rec = tomllib.load(f)
            t = rec["training"]["timing"]
            train_s = t["data_seconds"] + t["forward_seconds"] + t["backward_seconds"] + t["optimizer_seconds"]
            results.append({
                "seed": seed, "images_per_second": t["images_per_second"], "train_seconds": train_s,
                "test_accuracy": rec["metrics"]["accuracy"], "forward_s": t["forward_seconds"],
                "backward_s": t["backward_seconds"], "optimizer_s": t["optimizer_seconds"],
                "data_s": t["data_seconds"], "threads": rec["run"]["threads"],
            })
            print(f"exp seed {seed}: {results[-1]}", file=sys.stderr)
    return results


def run_torch(seeds, epochs, threads, env):
    out = subprocess.run(
        ["/usr/bin/python3", os.path.join(ROOT, "scripts", "bench_pytorch.py"), "--seeds", ",".join(map(str, seeds)),
         "--epochs", str(epochs), "--threads", str(threads)],
        check=True, env=env, capture_output=True, text=True)
    rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    rows = [r for r in rows if "seed" in r]
    for r in rows:
        print(f"pytorch seed {r['seed']}: {r}", file=sys.stderr)
    return rows, rows and rows[0].get("torch", "?")


def mean(rows, key):
    return statistics.mean(r[key] for r in rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    exp_rows = run_exp(seeds, a.epochs, a.threads, env)
    torch_rows, torch_version = run_torch(seeds, a.epochs, a.threads, env)

    e_ips, t_ips = mean(exp_rows, "images_per_second"), mean(torch_rows, "images_per_second")
    e_acc, t_acc = mean(exp_rows, "test_accuracy"), mean(torch_rows, "test_accuracy")
    print(f"### seed-cnn on MNIST, CPU, {a.epochs} epoch(s), batch 64, Adam 1e-3 — {datetime.date.today()}\n")
    print(f"Command: `scripts/bench-cpu.sh --seeds {a.seeds} --epochs {a.epochs} --threads {a.threads}`  ")
    print(f"Machine: {cpu_model()}, {os.cpu_count()} cores; {a.threads} threads each; "
          f"exp {subprocess.run([EXP, '--version'], capture_output=True, text=True).stdout.strip()} (candle 0.11.1), "
          f"PyTorch {torch_version} (Debian python3-torch, CPU).\n")
    print("| | seed | test accuracy | img/s | train s | forward s | backward s | optimizer s | data s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rows in (("exp", exp_rows), ("PyTorch", torch_rows)):
        for r in rows:
            print(f"| {name} | {r['seed']} | {r['test_accuracy']:.4f} | {r['images_per_second']:.0f} | {r['train_seconds']:.1f} | "
                  f"{r['forward_s']:.1f} | {r['backward_s']:.1f} | {r['optimizer_s']:.1f} | {r.get('data_s', 0):.1f} |")
        print(f"| **{name} mean** | | **{mean(rows, 'test_accuracy'):.4f}** | **{mean(rows, 'images_per_second'):.0f}** | "
              f"{mean(rows, 'train_seconds'):.1f} | {mean(rows, 'forward_s'):.1f} | {mean(rows, 'backward_s'):.1f} | "
              f"{mean(rows, 'optimizer_s'):.1f} | {mean(rows, 'data_s'):.1f} |")
    print()
    print(f"exp / PyTorch throughput: **{e_ips / t_ips:.2f}×**; accuracy difference "
          f"(exp − PyTorch, {len(seeds)}-seed means): **{(e_acc - t_acc) * 100:+.2f} points**.")


if __name__ == "__main__":
    main()
