#!/usr/bin/env python3
"""Summarise scripts/gpu/check.sh's results as markdown and apply the GPU acceptance checks.

usage: summarize.py RESULTS_DIR "CPU_ACC_SEED1 CPU_ACC_SEED2 CPU_ACC_SEED3"
Exit 1 when a check fails (records without the GPU, f32 below the CPU, bf16/f16 off f32).
"""
import csv
import json
import os
import statistics
import sys
import tomllib

results, cpu_arg = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "")
failures = []


def record(label):
    path = os.path.join(results, label, "metrics.toml")
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return tomllib.load(f)


def history(label):
    with open(os.path.join(results, label, "history.csv")) as f:
        return list(csv.DictReader(f))


def mean_std(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


print("## GPU tests (mnist-cnn = seed-cnn, MNIST, Adam 1e-3, batch 64, 1 epoch)\n")
print("| precision | seeds | test accuracy | mean ± std | training img/s (epoch 1, incl. warm-up) | device |")
print("|---|---|---|---|---|---|")
means = {}
for precision in ("f32", "bf16", "f16"):
    accs, rates, device = [], [], ""
    for seed in (1, 2, 3):
        r = record(f"test-{precision}-{seed}")
        if r is None:
            continue
        accs.append(r["metrics"]["accuracy"])
        rates.append(r["training"]["timing"]["images_per_second"])
        gpu = r["run"].get("gpu")
        device = r["run"]["device"]
        if not r["run"]["device"].startswith("cuda:") or not gpu or not gpu.get("name"):
            failures.append(f"{precision} seed {seed}: the record does not name the GPU ({device!r})")
        elif precision == "f32" and seed == 1:
            device += f" (driver {gpu['driver']}, CUDA {gpu['cuda_driver']}, built {gpu['cuda_build']})"
        if precision == "f16":
            skipped = r["training"].get("skipped_steps", 0)
            device += f"; {skipped} skipped steps" if seed == 1 else ""
    if not accs:
        failures.append(f"no {precision} runs")
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
for p in ("bf16", "f16"):
    if p in means and "f32" in means:
        d = (means[p] - means["f32"]) * 100
        ok = abs(d) <= 0.3
        print(f"- {p} vs f32: {d:+.2f} points — {'pass' if ok else 'FAIL'} (within 0.3)")
        if not ok:
            failures.append(f"{p} is {d:+.2f} points from f32")

def rate(label, n):
    """Training img/s over epochs 2.. of a run (epoch 1 is warm-up)."""
    rows = history(label)
    timed = [float(x["train_seconds"]) for x in rows[1:]] or [float(rows[0]["train_seconds"])]
    return n * len(timed) / sum(timed)


bench_rows = []
for model, data_set in (("seed-cnn", "MNIST"), ("cnn", "Fashion-MNIST")):
    for b in (64, 256):
        r = record(f"bench-exp-{model}-{b}")
        tpath = os.path.join(results, f"bench-torch-{model}-{b}.json")
        if r is None or not os.path.isfile(tpath):
            continue
        try:
            with open(tpath) as f:
                t = json.load(f)
        except ValueError:
            failures.append(f"PyTorch {model} batch {b}: no result")
            continue
        rows = history(f"bench-exp-{model}-{b}")
        n = r["data"]["train"]["examples"]
        exp_rate = rate(f"bench-exp-{model}-{b}", n)
        candle_rate = rate(f"bench-candleconv-{model}-{b}", n) if record(f"bench-candleconv-{model}-{b}") else None
        bench_rows.append((model, data_set, b, exp_rate, t["images_per_second"], r["metrics"]["accuracy"],
                           t["test_accuracy"], [float(x["train_seconds"]) for x in rows], t["epoch_seconds"],
                           candle_rate))
if bench_rows:
    print("\n## Benchmark: exp (candle, CUDA) vs PyTorch eager on the same GPU, Adam 1e-3, 3 epochs, f32\n")
    print("| model | data | batch | exp img/s | PyTorch img/s | exp / PyTorch | exp test acc | PyTorch test acc | exp epoch s | PyTorch epoch s | exp with candle's conv2d img/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for m, d, b, e, t, ea, ta, es, ts, c in bench_rows:
        cc = f"{c:,.0f} ({c / t:.2f}×)" if c else "–"
        print(f"| {m} | {d} | {b} | {e:,.0f} | {t:,.0f} | {e / t:.2f}× | {ea:.4f} | {ta:.4f} | "
              f"{' / '.join(f'{x:.2f}' for x in es)} | {' / '.join(f'{x:.2f}' for x in ts)} | {cc} |")
    print("\nimg/s over epochs 2–3 (epoch 1 is warm-up for both).")

prof = []
for model in ("seed-cnn", "cnn"):
    for b in (64, 256):
        r = record(f"profile-{model}-{b}")
        if r is not None:
            prof.append((model, b, r["training"]["timing"], r["data"]["train"]["examples"]))
if prof:
    print("\n## Profile: one epoch on 19,200 images, synchronised after each phase (EXP_PROFILE_SYNC=1)\n")
    print("| model | batch | data s | forward s | backward s | optimizer s | img/s (synchronised) |")
    print("|---|---|---|---|---|---|---|")
    for m, b, t, n in prof:
        print(f"| {m} | {b} | {t['data_seconds']:.3f} | {t['forward_seconds']:.3f} | {t['backward_seconds']:.3f} | "
              f"{t['optimizer_seconds']:.3f} | {t['images_per_second']:,.0f} |")

for label in ("ops-seed-cnn-64", "ops-cnn-256", "ops-candleconv-cnn-256"):
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
