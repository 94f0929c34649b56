"""Helpers of bench-serve.sh (standard library only; run with any Python 3).

  bodies IDX OUT_DIR N               the first N MNIST test images as request bodies, one JSON a
                                     line: pixels.jsonl (0-255 integers: exp serve, the Flask app)
                                     and scaled.jsonl (pixels / 255 as floats: MLflow)
  ready URL START_NS TIMEOUT PID     poll URL every 10 ms until it answers 200; print the seconds
                                     since START_NS (time.time_ns() when the server was started);
                                     exit 1 when PID exits or TIMEOUT seconds pass first
  check URL KIND BODIES LABELS N     POST the first N bodies, compare the predicted labels with
                                     LABELS (serve_reference.py); KIND: exp, mlflow or flask
  mem SESSION OUT                    sample the memory of every process in session SESSION (the
                                     server and all it forked) every 50 ms until SIGTERM, then write
                                     the peaks as JSON to OUT
  record RAW SERVER MODEL ROUND CLIENTS WRK_OUT MEM_JSON
                                     append one wrk run and its memory peaks to RAW (JSON lines)
  report RESULTS_DIR                 medians of RESULTS_DIR/raw.jsonl: summary.csv, summary.json,
                                     report.md (printed)
"""

import csv
import gzip
import json
import os
import signal
import statistics
import sys
import time
import urllib.error
import urllib.request


def bodies(idx, out_dir, n):
    with open(idx, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":  # fetch-data.sh keeps either the .gz or the raw file
        data = gzip.decompress(data)
    count, rows, cols = (int.from_bytes(data[i : i + 4], "big") for i in (4, 8, 12))
    n = min(int(n), count)
    os.makedirs(out_dir, exist_ok=True)
    with open(f"{out_dir}/pixels.jsonl", "w") as raw, open(f"{out_dir}/scaled.jsonl", "w") as scaled:
        for i in range(n):
            px = data[16 + i * rows * cols : 16 + (i + 1) * rows * cols]
            image = [[list(px[r * cols : (r + 1) * cols]) for r in range(rows)]]  # [C=1, H, W]
            raw.write(json.dumps({"inputs": [image]}, separators=(",", ":")) + "\n")
            # What a client of MLflow sends: the float array the model takes, as JSON numbers.
            image = [[[p / 255 for p in row] for row in image[0]]]
            scaled.write(json.dumps({"inputs": [image]}, separators=(",", ":")) + "\n")


def alive(pid):
    # A child that exited but was not reaped yet is a zombie: count it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def ready(url, start_ns, timeout, pid):
    deadline = time.monotonic() + float(timeout)
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    print(f"{(time.time_ns() - int(start_ns)) / 1e9:.3f}")
                    return 0
        except (urllib.error.URLError, ConnectionError, OSError):
            pass  # not listening yet, or 503 while loading
        if not alive(pid):
            print(f"the server (pid {pid}) exited before {url} answered 200", file=sys.stderr)
            return 1
        time.sleep(0.01)
    print(f"{url} did not answer 200 within {timeout} s", file=sys.stderr)
    return 1


def predicted_label(kind, answer):
    if kind == "exp":
        return answer["predictions"][0]["label"]
    if kind == "mlflow":  # the module's logits for the one image
        logits = answer["predictions"][0]
        return max(range(len(logits)), key=logits.__getitem__)
    return answer["label"]  # the Flask app


def check(url, kind, bodies_file, labels_file, n):
    with open(bodies_file) as f:
        bodies = [line.encode() for line in f][: int(n)]
    with open(labels_file) as f:
        expected = [int(line) for line in f]
    for i, body in enumerate(bodies):
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                answer = json.load(r)
        except urllib.error.HTTPError as e:
            print(f"{url}: image {i}: HTTP {e.code}: {e.read()[:500].decode(errors='replace')}", file=sys.stderr)
            return 1
        got = predicted_label(kind, answer)
        if got != expected[i]:
            print(f"{url}: image {i}: label {got}, the exported module says {expected[i]}: "
                  f"{json.dumps(answer)[:300]}", file=sys.stderr)
            return 1
    return 0


def session_pids(session):
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[3]) == session:
                        pids.append(pid)
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass  # exited meanwhile
    return pids


def mem(session, out):
    session = int(session)
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    peak_rss = peak_pss = most = 0
    tick = 0
    while not stop:
        # Scanning all of /proc is the costly part (this runs on the load generator's core):
        # look for new processes every 0.5 s, read the known ones' memory every 50 ms.
        if tick % 10 == 0:
            pids = session_pids(session)
        tick += 1
        rss = pss = procs = 0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/statm") as f:
                    rss += int(f.read().split()[1]) * page_kb
                # PSS shares each page among the processes that map it: the fair figure for
                # forked workers, whose RSS counts the shared libraries once per worker.
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    pss += next(int(l.split()[1]) for l in f if l.startswith("Pss:"))
                procs += 1
            except (FileNotFoundError, ProcessLookupError, StopIteration):
                continue  # exited meanwhile
        peak_rss, peak_pss, most = max(peak_rss, rss), max(peak_pss, pss), max(most, procs)
        time.sleep(0.05)
    with open(out, "w") as f:
        json.dump({"rss_peak_mb": peak_rss / 1024, "pss_peak_mb": peak_pss / 1024, "processes": most}, f)
    return 0


SERVER_ORDER = ["exp", "mlflow", "flask", "flask-dev"]


def report(results):
    with open(f"{results}/meta.json") as f:
        meta = json.load(f)
    with open(f"{results}/raw.jsonl") as f:
        raw = [json.loads(line) for line in f if line.strip()]
    names = meta["server_names"]
    cold = {}
    for r in raw:
        if r["kind"] == "cold":
            cold.setdefault((r["model"], r["server"]), []).append(r["cold_start_s"])
    groups = {}
    for r in raw:
        if r["kind"] == "load":
            groups.setdefault((r["model"], r["clients"], r["server"]), []).append(r)

    def order(key):
        model, clients, server = key
        return (meta["models"].index(model), clients, SERVER_ORDER.index(server))

    rows = []
    for key in sorted(groups, key=order):
        model, clients, server = key
        g = groups[key]
        med = lambda k: statistics.median(x[k] for x in g)
        rps = [x["rps"] for x in g]
        cs = cold.get((model, server), [])
        rows.append({
            "model": model, "clients": clients, "server": server, "rounds": len(g),
            "rps": med("rps"), "rps_min": min(rps), "rps_max": max(rps),
            "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
            "rss_peak_mb": med("rss_peak_mb"), "pss_peak_mb": med("pss_peak_mb"),
            "errors": sum(x["errors"] for x in g), "requests": sum(x["requests"] for x in g),
            "cold_start_s": statistics.median(cs) if cs else None,
            "cold_start_min_s": min(cs) if cs else None, "cold_start_max_s": max(cs) if cs else None,
        })
    with open(f"{results}/summary.json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(f"{results}/summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    m = meta
    out = [
        f"### HTTP inference: exp serve, MLflow, Flask ({m['date']})",
        "",
        f"Command: `{m['command']}`  ",
        f"Machine: {m['nproc']} cores ({m['cpu']}); servers pinned to CPU {m['server_cpus']}, "
        f"wrk ({m['wrk_threads']} thread(s)) to CPU {m['load_cpus']}.  ",
        f"Protocol: {m['rounds']} round(s), servers alternating within each round "
        f"({', '.join(m['servers'])}); per model and server: a fresh server, then for each "
        f"concurrency a {m['warmup_s']} s warm-up and a {m['duration_s']} s wrk run, cycling "
        f"through {m['images']} real MNIST test images. Medians over the rounds; req/s range in "
        "brackets. Latency from wrk; peak memory: sum of RSS over the server's processes (PSS "
        "sum in summary.csv) sampled every 50 ms; errors: wrk's HTTP status ≥ 400 plus socket "
        "errors; cold start: process start to the first 200 from the readiness endpoint, polled "
        "every 10 ms.  ",
        f"Versions: {m['versions']}.",
        "",
        "| model | clients | server | req/s | p50 ms | p99 ms | peak RSS MB | errors | cold start s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cs = "–" if r["cold_start_s"] is None else f"{r['cold_start_s']:.2f}"
        out.append(
            f"| {r['model']} | {r['clients']} | {names[r['server']]} | {r['rps']:,.0f} "
            f"({r['rps_min']:,.0f}–{r['rps_max']:,.0f}) | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['rss_peak_mb']:,.0f} | {r['errors']} | {cs} |")

    # The targets, judged on the medians above (only for the servers that ran).
    by = {(r["model"], r["clients"], r["server"]): r for r in rows}
    targets = []
    for (model, clients, server), r in sorted(by.items(), key=lambda kv: order(kv[0])):
        if server != "exp":
            continue
        for peer, factor in (("mlflow", 10), ("flask", 2)):
            p = by.get((model, clients, peer))
            if p and p["rps"] > 0:
                ratio = r["rps"] / p["rps"]
                ok = ratio >= factor and (peer != "mlflow" or r["p99_ms"] < p["p99_ms"])
                extra = f", p99 {r['p99_ms']:.1f} vs {p['p99_ms']:.1f} ms" if peer == "mlflow" else ""
                targets.append(f"- {model}, {clients} clients: exp {ratio:.1f}× {names[peer]}'s req/s "
                               f"(target ≥ {factor}×{', lower p99' if peer == 'mlflow' else ''}{extra}): "
                               f"{'met' if ok else 'NOT met'}")
    for model in m["models"]:
        cs = cold.get((model, "exp"))
        if cs:
            c = statistics.median(cs)
            targets.append(f"- {model}: exp cold start {c:.2f} s (target ≤ 1 s): {'met' if c <= 1 else 'NOT met'}")
    if targets:
        out += ["", "Against the issue's targets:", ""] + targets
    text = "\n".join(out) + "\n"
    with open(f"{results}/report.md", "w") as f:
        f.write(text)
    print(text, end="")
    return 0


def record(raw, server, model, round_, clients, wrk_out, mem_json):
    """Append one wrk run (its BENCH_JSON line) and its memory peaks to RAW."""
    with open(wrk_out) as f:
        w = json.loads(next(l for l in f if l.startswith("BENCH_JSON ")).split(" ", 1)[1])
    with open(mem_json) as f:
        m = json.load(f)
    errors = sum(w[k] for k in ("http_errors", "connect_errors", "read_errors", "write_errors", "timeouts"))
    row = {"kind": "load", "server": server, "model": model, "round": int(round_),
           "clients": int(clients), "rps": w["requests"] / (w["duration_us"] / 1e6),
           "p50_ms": w["p50_us"] / 1000, "p99_ms": w["p99_us"] / 1000, "errors": errors, **w, **m}
    with open(raw, "a") as f:
        f.write(json.dumps(row) + "\n")
    return 0


COMMANDS = {"bodies": bodies, "ready": ready, "check": check, "mem": mem, "record": record, "report": report}

if __name__ == "__main__":
    sys.exit(COMMANDS[sys.argv[1]](*sys.argv[2:]) or 0)
