#!/usr/bin/env python3
"""Summarise scripts/gpu/check.sh's results as markdown and apply the GPU acceptance checks.

usage: summarize.py RESULTS_DIR "CPU_ACC_SEED1 CPU_ACC_SEED2 CPU_ACC_SEED3"
Exit 1 when a check fails: a record without the GPU, f32 below the CPU, tf32/bf16/f16 more than
0.3 points off f32, two runs of one seed with different weights, a benchmark side missing.
Speed ratios are reported, never failed: targets are judged by a person reading the table.
"""
import csv
import json
import os
import statistics
import sys
import tomllib

results, cpu_arg = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "")
failures = []
ran = set(os.listdir(results))


def record(label):
    path = os.path.join(results, label, "metrics.toml")
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return tomllib.load(f)


def history(label):
    with open(os.path.join(results, label, "history.csv")) as f:
        return list(csv.DictReader(f))


def torch_result(label):
    path = os.path.join(results, f"{label}.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError:
        return None


def mean_std(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def rate(label):
    """Training img/s over epochs 2.. of a run (epoch 1 is warm-up)."""
    r = record(label)
    n = r["data"]["train"]["examples"]
    rows = history(label)
    timed = [float(x["train_seconds"]) for x in rows[1:]] or [float(rows[0]["train_seconds"])]
    return n * len(timed) / sum(timed)


# ---- quick: tests -------------------------------------------------------------------------
if any(x.startswith("test-") for x in ran):
    print("## GPU tests (mnist-cnn = seed-cnn, MNIST, Adam 1e-3, batch 64, 1 epoch)\n")
    print("| precision | seeds | test accuracy | mean ± std | training img/s (epoch 1, incl. warm-up) | device |")
    print("|---|---|---|---|---|---|")
    means = {}
    for precision in ("f32", "tf32", "bf16", "f16"):
        accs, rates, device = [], [], ""
        for seed in (1, 2, 3):
            r = record(f"test-{precision}-{seed}")
            if r is None:
                if f"test-{precision}-{seed}.out" in ran:
                    failures.append(f"{precision} seed {seed}: the run failed")
                continue
            accs.append(r["metrics"]["accuracy"])
            rates.append(r["training"]["timing"]["images_per_second"])
            gpu = r["run"].get("gpu")
            device = r["run"]["device"]
            recorded = r["params"]["train"]["precision"]
            if recorded != precision:
                failures.append(f"{precision} seed {seed}: the record says precision {recorded!r}")
            if not device.startswith("cuda:") or not gpu or not gpu.get("name"):
                failures.append(f"{precision} seed {seed}: the record does not name the GPU ({device!r})")
            elif precision == "f32" and seed == 1:
                device += f" (driver {gpu['driver']}, CUDA {gpu['cuda_driver']}, built {gpu['cuda_build']})"
            if precision == "f16" and seed == 1:
                device += f"; {r['training'].get('skipped_steps', 0)} skipped steps"
        if not accs:
            continue
        m, s = mean_std(accs)
        means[precision] = m
        print(f"| {precision} | {len(accs)} | {', '.join(f'{a:.4f}' for a in accs)} | {m:.4f} ± {s:.4f} | "
              f"{statistics.mean(rates):,.0f} | {device} |")
    cpu = [float(x) for x in cpu_arg.split()]
    print()
    if cpu and "f32" in means:
        cm = statistics.mean(cpu)
        ok = means["f32"] >= cm - 0.003
        print(f"- f32 on CUDA vs CPU (same spec and seeds, CPU mean {cm:.4f}): "
              f"{(means['f32'] - cm) * 100:+.2f} points — {'pass' if ok else 'FAIL'} (must not fall more than 0.3 below)")
        if not ok:
            failures.append("f32 on CUDA falls short of the CPU accuracy")
    for p in ("tf32", "bf16", "f16"):
        if p in means and "f32" in means:
            d = (means[p] - means["f32"]) * 100
            ok = abs(d) <= 0.3
            print(f"- {p} vs f32: {d:+.2f} points — {'pass' if ok else 'FAIL'} (within 0.3)")
            if not ok:
                failures.append(f"{p} is {d:+.2f} points from f32")
    a, b = record("repro-a"), record("repro-b")
    if a and b:
        same = a["model"]["tensor_hash"] == b["model"]["tensor_hash"]
        print(f"- reproducibility (fashion-cnn, cuDNN convolutions and fused dropout, seed 1, twice): "
              f"tensor_hash {a['model']['tensor_hash'][:16]}… vs {b['model']['tensor_hash'][:16]}… — "
              f"{'identical weights' if same else 'FAIL: the weights differ'}; accuracy "
              f"{a['metrics']['accuracy']:.4f} / {b['metrics']['accuracy']:.4f}")
        if not same:
            failures.append("two GPU runs of one seed gave different weights")
    elif "repro-a.out" in ran:
        failures.append("the reproducibility runs failed")

# ---- bench: exp vs PyTorch ----------------------------------------------------------------
rows = []
for model, data_set in (("seed-cnn", "MNIST"), ("cnn", "Fashion-MNIST")):
    for b in (64, 256):
        for p, torch_label in (("f32", "TF32 off"), ("tf32", "TF32 on (default)")):
            e_label, t_label = f"bench-{model}-{b}-exp-{p}", f"bench-{model}-{b}-torch-{p}"
            if f"{e_label}.out" not in ran and f"{t_label}.json" not in ran:
                continue
            r, t = record(e_label), torch_result(t_label)
            if r is None or t is None:
                failures.append(f"benchmark {model} {b} {p}: a side is missing")
                continue
            rows.append((model, data_set, b, p, torch_label, rate(e_label), t["images_per_second"],
                         r["metrics"]["accuracy"], t["test_accuracy"],
                         [float(x["train_seconds"]) for x in history(e_label)], t["epoch_seconds"]))
if rows:
    print("\n## Benchmark: exp vs PyTorch eager on the same GPU, Adam 1e-3, 3 epochs\n")
    print("| model | data | batch | exp precision | PyTorch | exp img/s | PyTorch img/s | exp / PyTorch | exp acc | PyTorch acc | exp epoch s | PyTorch epoch s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m, d, b, p, tl, e, t, ea, ta, es, ts in rows:
        print(f"| {m} | {d} | {b} | {p} | {tl} | {e:,.0f} | {t:,.0f} | **{e / t:.2f}×** | {ea:.4f} | {ta:.4f} | "
              f"{' / '.join(f'{x:.2f}' for x in es)} | {' / '.join(f'{x:.2f}' for x in ts)} |")
    print("\nimg/s over epochs 2–3 (epoch 1 is warm-up for both: kernel JIT, cuDNN algorithm search).")
    if record("bench-cnn-256-im2col-f32") and record("bench-cnn-256-exp-f32"):
        i, c = rate("bench-cnn-256-im2col-f32"), rate("bench-cnn-256-exp-f32")
        print(f"\ncnn, batch 256, f32 — exp's im2col + GEMM convolution (before): {i:,.0f} img/s; "
              f"cuDNN (after): {c:,.0f} img/s ({c / i:.2f}×).")
    if record("bench-cnn-256-timed-f32") and record("bench-cnn-256-exp-f32"):
        t, c = rate("bench-cnn-256-timed-f32"), rate("bench-cnn-256-exp-f32")
        print(f"cuDNN algorithms by heuristics (default, reproducible): {c:,.0f} img/s; timed "
              f"(EXP_CUDNN_BENCHMARK=1): {t:,.0f} img/s ({t / c:.2f}×).")

res = []
for p in ("f32", "bf16"):
    e_label, t_label = f"bench-resnet18-128-exp-{p}", f"bench-resnet18-128-torch-{p}"
    if f"{e_label}.out" not in ran and f"{t_label}.json" not in ran:
        continue
    r, t = record(e_label), torch_result(t_label)
    if r is None or t is None:
        failures.append(f"resnet18 {p}: a side is missing")
        continue
    res.append((p, rate(e_label), t["images_per_second"], r["metrics"]["accuracy"], t["test_accuracy"],
                r["model"]["parameters"], t.get("parameters")))
if res:
    print("\n## ResNet-18 (width 64, CIFAR stem), Fashion-MNIST padded to 32×32×3 (12,800 training images), "
          "batch 128, SGD 0.05 momentum 0.9, 2 epochs (img/s of epoch 2); PyTorch with TF32 off\n")
    print("| precision | exp img/s | PyTorch img/s | exp / PyTorch | exp acc | PyTorch acc | parameters exp / PyTorch |")
    print("|---|---|---|---|---|---|---|")
    for p, e, t, ea, ta, pe, pt in res:
        print(f"| {p} | {e:,.0f} | {t:,.0f} | **{e / t:.2f}×** | {ea:.4f} | {ta:.4f} | {pe:,} / {pt if pt is None else f'{pt:,}'} |")

if record("bench-resnet18-128-candlebn-f32") and record("bench-resnet18-128-exp-f32"):
    b, c = rate("bench-resnet18-128-candlebn-f32"), rate("bench-resnet18-128-exp-f32")
    print(f"\nresnet18, f32 — candle-nn's batch norm (before): {b:,.0f} img/s; cuDNN's (after): {c:,.0f} img/s "
          f"({c / b:.2f}×).")

for name in sorted(ran):
    if name.startswith("infer-") and name.endswith(".txt"):
        with open(os.path.join(results, name)) as f:
            print(f"\n## Inference: {name[6:-4]}\n\n```\n{f.read().rstrip()}\n```")

if record("aug-cnn-256-exp-f32") and record("bench-cnn-256-exp-f32"):
    a, c = rate("aug-cnn-256-exp-f32"), rate("bench-cnn-256-exp-f32")
    print(f"\n## Augmentation (crop padding 2 + flip), cnn, batch 256, f32: {a:,.0f} img/s vs {c:,.0f} without "
          f"({(c / a - 1) * 100:+.0f} % time)")

for label in ("ops-cnn-256", "ops-aug-cnn-256", "ops-resnet18-128"):
    path = os.path.join(results, f"{label}.out")
    if os.path.isfile(path):
        with open(path) as f:
            lines = [l.rstrip() for l in f if l.startswith("|") or l.startswith("op profile")]
        if lines:
            print(f"\n### {label}\n")
            print("\n".join(lines))

print()
for f in failures:
    print(f"- FAIL: {f}")
print(f"\n{'All GPU checks passed.' if not failures else f'{len(failures)} GPU check(s) failed.'}")
sys.exit(1 if failures else 0)
