#!/usr/bin/env python3
"""The sweep benchmark of scripts/bench/bench-sweep.sh: exp sweep vs DVC's queue vs xargs -P2.

Each round runs the same 12 trials (lr in LRS x seeds 1-4, seed-cnn, 2,000 training images,
1 epoch, the full MNIST test set) three ways, in an order that rotates between rounds:

- exp: `exp sweep mnist-cnn --grid train.lr=[...] --seeds [1,2,3,4] --jobs 2` in a fresh repo.
  Per-trial orchestration overhead = the trial process's wall time (its state file, ms) minus
  the record's own load_seconds, training phases and evaluation seconds.
- dvc: a fresh Git+DVC repo whose one stage runs bench_pytorch.py with ${lr} and ${seed} from
  params.yaml; 12 x `dvc exp run --queue -S lr=.. -S seed=..`, `dvc queue start -j 2`, polled
  (every 2 s) until nothing is queued or running. Overhead per trial = (dvc total - xargs total) * 2
  / 12, as the issue measured it.
- xargs: the same 12 script invocations through `xargs -P2`: no orchestration.

Prints one JSON line per measurement and a summary with medians and ratios.
"""
import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

LRS = [0.0005, 0.001, 0.002]
SEEDS = [1, 2, 3, 4]
TRAIN_LIMIT = 2000
HERE = os.path.dirname(os.path.abspath(__file__))
PYTORCH = os.path.join(HERE, "bench_pytorch.py")


def run(cmd, cwd, env=None, check=True):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        sys.exit(f"bench_sweep: {' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def script_cmd(data, lr, seed):
    return ["/usr/bin/python3", PYTORCH, "--data", data, "--seeds", str(seed), "--lr", str(lr),
            "--train-limit", str(TRAIN_LIMIT), "--threads", "1", "--no-busy-check"]


def parse_time(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def bench_exp(exe, data, work):
    repo = os.path.join(work, "exp-repo")
    env = dict(os.environ, EXP_DATA=data, RAYON_NUM_THREADS="2")
    run([exe, "init", repo], work, env)
    grid = "train.lr=[" + ", ".join(str(x) for x in LRS) + "]"
    seeds = "[" + ", ".join(str(s) for s in SEEDS) + "]"
    start = time.perf_counter()
    run([exe, "sweep", "mnist-cnn", "--grid", grid, "--seeds", seeds, "--set",
         f"data.train_limit={TRAIN_LIMIT}", "--jobs", "2", "--quiet"], repo, env)
    total = time.perf_counter() - start
    sweeps = os.path.join(repo, ".git", "exp", "sweeps")
    sweep_id = os.listdir(sweeps)[0]
    status = json.loads(run([exe, "sweep", "status", sweep_id, "--json"], repo, env).stdout)
    overheads = []
    for trial in status:
        state_path = os.path.join(sweeps, sweep_id, "state", f"{trial['index']}.toml")
        state = {}
        with open(state_path) as f:
            for line in f:
                if "=" in line:
                    k, v = line.split("=", 1)
                    state[k.strip()] = v.strip().strip('"')
        wall = parse_time(state["ended"]) - parse_time(state["started"])
        record = run(["git", "show", f"{trial['commit']}:experiments/mnist-cnn/metrics.toml"], repo).stdout
        timing = {}
        in_timing = False
        for line in record.splitlines():
            if line.startswith("["):
                in_timing = line.strip() == "[training.timing]"
                continue
            if in_timing and "=" in line:
                k, v = line.split("=", 1)
                timing[k.strip()] = float(v)
        work_s = sum(timing[k] for k in ("load_seconds", "data_seconds", "forward_seconds",
                                         "backward_seconds", "optimizer_seconds", "eval_seconds"))
        overheads.append(wall - work_s)
    if len(status) != len(LRS) * len(SEEDS) or any(t["state"] != "completed" for t in status):
        sys.exit(f"bench_sweep: exp sweep did not record every trial: {status}")
    return total, statistics.median(overheads)


def bench_dvc(dvc, data, work):
    repo = os.path.join(work, "dvc-repo")
    os.makedirs(repo)
    # DVC's queue workers are `dvc` processes found on PATH.
    env = dict(os.environ, PATH=os.path.dirname(dvc) + os.pathsep + os.environ.get("PATH", ""),
               DVC_NO_ANALYTICS="1")
    run(["git", "init", "-q"], repo)
    run(["git", "config", "user.name", "bench"], repo)
    run(["git", "config", "user.email", "bench@example.com"], repo)
    run([dvc, "init", "-q"], repo, env)
    with open(os.path.join(repo, "params.yaml"), "w") as f:
        f.write("lr: 0.001\nseed: 1\n")
    cmd = " ".join(script_cmd(data, "${lr}", "${seed}")) + " > metrics.json"
    with open(os.path.join(repo, "dvc.yaml"), "w") as f:
        f.write("stages:\n  train:\n    cmd: " + cmd + "\n    params:\n      - lr\n      - seed\n"
                "    metrics:\n      - metrics.json:\n          cache: false\n")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "stage"], repo)
    start = time.perf_counter()
    for lr in LRS:
        for seed in SEEDS:
            run([dvc, "exp", "run", "--queue", "-S", f"lr={lr}", "-S", f"seed={seed}"], repo, env)
    run([dvc, "queue", "start", "-j", "2"], repo, env)
    while True:
        out = run([dvc, "queue", "status"], repo, env).stdout
        if not any(w in out for w in ("Queued", "Running")):
            break
        # Each status is a `dvc` process (about a second of CPU): poll gently.
        time.sleep(2)
    total = time.perf_counter() - start
    done = out.count("Success")
    if done != len(LRS) * len(SEEDS):
        sys.exit(f"bench_sweep: DVC's queue finished {done} experiments:\n{out}")
    return total


def bench_xargs(data, work):
    lines = [" ".join(script_cmd(data, lr, seed)) for lr in LRS for seed in SEEDS]
    start = time.perf_counter()
    subprocess.run(["xargs", "-P2", "-I{}", "sh", "-c", "{} > /dev/null"], input="\n".join(lines),
                   text=True, check=True, cwd=work)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exp", required=True)
    ap.add_argument("--dvc", required=True)
    ap.add_argument("--data", default=os.environ.get("EXP_DATA"))
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    results = {"exp": [], "exp_overhead": [], "dvc": [], "xargs": []}
    tools = ["exp", "dvc", "xargs"]
    for r in range(args.rounds):
        order = tools[r % 3:] + tools[:r % 3]
        for tool in order:
            work = tempfile.mkdtemp(prefix=f"bench-sweep-{tool}-")
            try:
                if tool == "exp":
                    total, overhead = bench_exp(args.exp, args.data, work)
                    results["exp"].append(total)
                    results["exp_overhead"].append(overhead)
                    print(json.dumps({"round": r, "tool": "exp", "seconds": round(total, 2),
                                      "overhead_per_trial_s": round(overhead, 3)}), flush=True)
                elif tool == "dvc":
                    total = bench_dvc(args.dvc, args.data, work)
                    results["dvc"].append(total)
                    print(json.dumps({"round": r, "tool": "dvc", "seconds": round(total, 2)}), flush=True)
                else:
                    total = bench_xargs(args.data, work)
                    results["xargs"].append(total)
                    print(json.dumps({"round": r, "tool": "xargs", "seconds": round(total, 2)}), flush=True)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    n = len(LRS) * len(SEEDS)
    summary = {
        "trials": n,
        "exp_s": round(med["exp"], 2),
        "dvc_s": round(med["dvc"], 2),
        "xargs_pytorch_s": round(med["xargs"], 2),
        "dvc_over_exp": round(med["dvc"] / med["exp"], 2),
        "exp_overhead_per_trial_ms": round(med["exp_overhead"] * 1000),
        "dvc_overhead_per_trial_s": round((med["dvc"] - med["xargs"]) * 2 / n, 2),
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
