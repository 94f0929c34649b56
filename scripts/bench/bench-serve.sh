#!/usr/bin/env bash
# HTTP inference benchmark: the same network with the same weights served side by side on
# loopback by
#   exp        `exp serve RUN` (POST /invocations, pixels 0-255; ready: GET /ready)
#   mlflow     `mlflow models serve --env-manager local` (latest MLflow 3.x, default settings:
#              uvicorn, 1 worker) of the module `exp export --format torch` writes, saved with
#              mlflow.pytorch by MLflow 3.8.1 (>= 3.9 cannot save under Debian's torch 1.13);
#              POST /invocations, pixels / 255 as floats; ready: GET /ping
#   flask      a minimal Flask app (scripts/bench/serve_flask.py) under gunicorn, 2 sync workers;
#              POST /predict, pixels 0-255; ready: GET /ready
#   flask-dev  the same app on Flask's threaded development server
# for the seed-cnn and cnn models (one 1-epoch MNIST run each, trained in a scratch repository),
# at 8 and 64 concurrent wrk clients, with real MNIST test images. The server runs on the first
# half of the cores, wrk (and the pollers) on the other half (taskset). Each round starts every
# server afresh, alternating exp, mlflow, flask, …; the report gives medians over the rounds:
# req/s, p50/p99 latency, peak memory of the server's process tree, errors and cold start
# (process start to the readiness endpoint's first 200, polled every 10 ms). Every server's
# answers are first checked against the exported module's labels.
#
# Usage: scripts/bench/bench-serve.sh          (defaults: ~25 minutes on 2 cores)
# Environment (all optional):
#   BENCH_SERVERS="exp mlflow flask flask-dev"  BENCH_MODELS="seed-cnn cnn"
#   BENCH_CLIENTS="8 64"  BENCH_DURATION=20 (s)  BENCH_WARMUP=2 (s)  BENCH_ROUNDS=3
#   BENCH_RESULTS=DIR (kept; default a new temp dir)   BENCH_READY_TIMEOUT=120 (s)
#   BENCH_EXP_ARGS="--workers K --max-batch-size N" (extra `exp serve` options)
#   BENCH_GUNICORN_WORKERS=2   BENCH_PORT=18400 (first of 4 ports)   BENCH_IMAGES=200
#   BENCH_SERVER_CPUS / BENCH_LOAD_CPUS (taskset lists; default: first / second half of nproc)
#   BENCH_REPO=DIR with BENCH_RUN_SEED_CNN=TAG and BENCH_RUN_CNN=TAG: use these runs, train none
#   BENCH_BUILD=0 (use target/release/exp as it is)   EXP_DATA (data root; default ~/.cache/exp/data)
# Quick smoke run: BENCH_DURATION=3 BENCH_WARMUP=1 BENCH_ROUNDS=1 scripts/bench/bench-serve.sh
# Prints a Markdown section for docs/benchmarks.md; the results dir keeps report.md,
# summary.csv/json (medians), raw.jsonl (every run) and the server and wrk logs.
# Installs wrk and python3-torch (Debian) and three venvs under ~/.cache/exp (Flask + gunicorn,
# MLflow 3.8.1, MLflow 3.x: PyPI, over the system torch; torch itself is never pip-installed).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
bench=$root/scripts/bench
py=/usr/bin/python3
die() { echo "bench-serve: error: $*" >&2; exit 1; }
say() { echo "bench-serve: $*" >&2; }

read -ra servers <<< "${BENCH_SERVERS:-exp mlflow flask flask-dev}"
read -ra models <<< "${BENCH_MODELS:-seed-cnn cnn}"
read -ra clients <<< "${BENCH_CLIENTS:-8 64}"
read -ra exp_args <<< "${BENCH_EXP_ARGS:-}"
duration=${BENCH_DURATION:-20}
warmup=${BENCH_WARMUP:-2}
rounds=${BENCH_ROUNDS:-3}
ready_timeout=${BENCH_READY_TIMEOUT:-120}
gunicorn_workers=${BENCH_GUNICORN_WORKERS:-2}
port_base=${BENCH_PORT:-18400}
images=${BENCH_IMAGES:-200}
for s in "${servers[@]}"; do
  case $s in exp|mlflow|flask|flask-dev) ;; *) die "unknown server '$s' in BENCH_SERVERS (exp mlflow flask flask-dev)" ;; esac
done
for m in "${models[@]}"; do
  case $m in seed-cnn|cnn) ;; *) die "unknown model '$m' in BENCH_MODELS (seed-cnn cnn)" ;; esac
done
has() { local x; for x in "${servers[@]}"; do [ "$x" = "$1" ] && return 0; done; return 1; }

# Cores: the server gets the first half, the load generator the second, so neither steals the
# other's cycles. On one core there is nothing to separate.
n=$(nproc)
if [ "$n" -ge 2 ]; then
  span() { [ "$1" = "$2" ] && echo "$1" || echo "$1-$2"; }  # a taskset list: "0" or "0-3"
  server_cpus=${BENCH_SERVER_CPUS:-$(span 0 $((n / 2 - 1)))}
  load_cpus=${BENCH_LOAD_CPUS:-$(span $((n / 2)) $((n - 1)))}
else
  say "warning: one core: server and load generator share it"
  server_cpus=${BENCH_SERVER_CPUS:-0}; load_cpus=${BENCH_LOAD_CPUS:-0}
fi
load_count=$(taskset -c "$load_cpus" nproc)  # nproc counts the CPUs of its affinity mask

# --- processes we start, stopped on any exit ---------------------------------------------------
# Each server runs in its own session (setsid: its pid is the session and process group id), so
# stopping it reaches everything it forked: gunicorn's workers, MLflow's uvicorn.
groups=()
# Whether any process of session PID still runs (an exited child stays a zombie until waited for).
session_running() { ps -o stat= -s "$1" 2>/dev/null | grep -qv '^Z'; }
stop_group() {  # PID: TERM the session's group, KILL what is left after 10 s
  local pid=$1 i
  kill -TERM -- "-$pid" 2>/dev/null || return 0
  for i in $(seq 100); do session_running "$pid" || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
work=$(mktemp -d /tmp/exp-bench-serve-work.XXXXXX)
cleanup() {
  local pid
  for pid in "${groups[@]}"; do stop_group "$pid"; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools -------------------------------------------------------------------------------------
sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
apt_updated=
apt_install() {
  [ -n "$apt_updated" ] || { $sudo apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
command -v wrk >/dev/null || apt_install wrk
$py -c 'import torch' 2>/dev/null || apt_install python3-torch
# A venv over the system site-packages sees Debian's torch (1.13) and numpy; numpy<2 because that
# torch was built against numpy 1.x. A venv whose install failed is removed, so the next run retries.
make_venv() {  # DIR CHECK-IMPORT PACKAGES...
  local dir=$1 check=$2; shift 2
  "$dir/bin/python" -c "import $check" 2>/dev/null && return 0
  say "making $dir ($*)"
  rm -rf "$dir"
  $py -m venv --system-site-packages "$dir"
  "$dir/bin/pip" install -q "$@" 'numpy<2' >&2 || { rm -rf "$dir"; die "pip install $* failed"; }
}
flask_venv=${BENCH_FLASK_VENV:-$HOME/.cache/exp/flask-venv}
mlflow_save_venv=${BENCH_MLFLOW_SAVE_VENV:-$HOME/.cache/exp/mlflow-save-venv}
mlflow_venv=${BENCH_MLFLOW_VENV:-$HOME/.cache/exp/mlflow-venv}
# The Flask venv also computes the reference labels (torch + safetensors), so it is always made.
make_venv "$flask_venv" 'flask, gunicorn, safetensors' flask gunicorn safetensors
if has mlflow; then
  make_venv "$mlflow_save_venv" 'mlflow, safetensors' 'mlflow==3.8.1' safetensors
  make_venv "$mlflow_venv" 'mlflow' 'mlflow>=3,<4'
fi
export EXP_DATA="${EXP_DATA:-$HOME/.cache/exp/data}"
scripts/fetch-data.sh "$EXP_DATA" >&2
[ "${BENCH_BUILD:-1}" = 0 ] || cargo build --release >&2
exp=$root/target/release/exp
if has exp && ! "$exp" serve --help >/dev/null 2>&1; then
  die "$exp has no 'serve' command; leave exp out with BENCH_SERVERS=\"mlflow flask flask-dev\""
fi

results=${BENCH_RESULTS:-$(mktemp -d /tmp/exp-bench-serve.XXXXXX)}
mkdir -p "$results/logs"
: > "$results/raw.jsonl"

# --- the runs: one per model, unless BENCH_REPO names them -------------------------------------
declare -A tag
if [ -n "${BENCH_REPO:-}" ]; then
  repo=$(cd "$BENCH_REPO" && pwd)
  tag[seed-cnn]=${BENCH_RUN_SEED_CNN:-}; tag[cnn]=${BENCH_RUN_CNN:-}
else
  repo=$work/repo
  mkdir "$repo"
  git -C "$repo" init -q -b main
  git -C "$repo" config user.name bench; git -C "$repo" config user.email bench@example.invalid
  (cd "$repo" && "$exp" init . >/dev/null && git switch -q -c feature/bench develop)
  for m in "${models[@]}"; do
    say "training $m (1 epoch)"
    (cd "$repo" && "$exp" run mnist-cnn --set "model.name=$m" --set train.epochs=1 --quiet >&2)
    tag[$m]=$(git -C "$repo" tag --points-at HEAD -l 'run/*' | head -1)
  done
fi
for m in "${models[@]}"; do
  [ -n "${tag[$m]}" ] || die "no run for $m (BENCH_RUN_$(echo "$m" | tr a-z- A-Z_))"
done

# --- the same weights for every server; request bodies; reference labels -----------------------
idx=
for f in t10k-images-idx3-ubyte.gz t10k-images-idx3-ubyte t10k-images.idx3-ubyte; do
  [ -f "$EXP_DATA/mnist/$f" ] && { idx=$EXP_DATA/mnist/$f; break; }
done
[ -n "$idx" ] || die "no MNIST test images under $EXP_DATA/mnist"
$py "$bench/serve_tools.py" bodies "$idx" "$work" "$images"
for m in "${models[@]}"; do
  dir=$work/models/$m
  mkdir -p "$dir"
  (cd "$repo" && "$exp" export "${tag[$m]}" --format torch -o "$dir/model" >&2)
  "$flask_venv/bin/python" "$bench/serve_reference.py" "$dir" "$work/pixels.jsonl" "$dir/labels.txt"
  if has mlflow; then
    "$mlflow_save_venv/bin/python" "$bench/serve_mlflow_save.py" "$dir" "$dir/mlflow" 2>"$results/logs/mlflow-save-$m.log" \
      || { tail -n 20 "$results/logs/mlflow-save-$m.log" >&2; die "saving $m as an MLflow model failed"; }
  fi
done

# --- versions and settings for the report ------------------------------------------------------
version() { "$1/bin/python" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$2"; }
versions="exp $("$exp" --version | awk '{print $2}'), torch $($py -c 'import torch; print(torch.__version__)') (Debian)"
declare -A name=([exp]="exp serve${exp_args[*]:+ ${exp_args[*]}}" [flask]="Flask + gunicorn ×$gunicorn_workers" [flask-dev]="Flask dev server (threaded)")
if has mlflow; then
  v=$(version "$mlflow_venv" mlflow)
  name[mlflow]="MLflow $v (uvicorn ×1)"
  versions+=", MLflow $v (saved with $(version "$mlflow_save_venv" mlflow)), uvicorn $(version "$mlflow_venv" uvicorn)"
fi
if has flask || has flask-dev; then
  versions+=", Flask $(version "$flask_venv" flask), gunicorn $(version "$flask_venv" gunicorn)"
fi
versions+=", wrk $(dpkg-query -W -f '${Version}' wrk 2>/dev/null || echo '?')"
command=
for v in $(compgen -e | grep '^BENCH_' | grep -v '^BENCH_RESULTS$' || true); do command+="$v=\"${!v}\" "; done
command+="scripts/bench/bench-serve.sh"
meta=(date="$(date -u '+%Y-%m-%d %H:%M UTC')" command="$command" nproc="$n"
  cpu="$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  server_cpus="$server_cpus" load_cpus="$load_cpus" wrk_threads="$load_count" rounds="$rounds"
  duration_s="$duration" warmup_s="$warmup" images="$images" versions="$versions"
  servers="${servers[*]}" models="${models[*]}")
for k in "${!name[@]}"; do meta+=("server_names.$k=${name[$k]}"); done
for k in "${!tag[@]}"; do meta+=("runs.$k=${tag[$k]}"); done
$py - "$results/meta.json" "${meta[@]}" <<'PY'
import json, sys
meta = {"server_names": {}, "runs": {}}
for pair in sys.argv[2:]:
    key, value = pair.split("=", 1)
    if "." in key:
        group, key = key.split(".", 1)
        meta[group][key] = value
    elif key in ("servers", "models"):
        meta[key] = value.split()
    else:
        meta[key] = int(value) if value.isdigit() else value
json.dump(meta, open(sys.argv[1], "w"), indent=1)
PY

# --- one server: start, time the cold start, check, load it at each concurrency, stop -----------
forget() { local i; for i in "${!groups[@]}"; do [ "${groups[$i]}" = "$1" ] && unset 'groups[i]'; done; return 0; }
# wrk on the load cores, at most one thread per connection; 10 s timeout, so a slow answer counts
# in the latency rather than as an error.
# Started in the background and waited for, so that Ctrl-C or a TERM is acted on at once (bash
# runs a trap only after the foreground command ends).
run_wrk() {  # URL PATH BODIES CLIENTS SECONDS
  local w
  BENCH_PATH=$2 BENCH_BODIES=$3 taskset -c "$load_cpus" setsid wrk "-t$(( load_count < $4 ? load_count : $4 ))" \
    "-c$4" "-d$5s" --timeout 10s --latency -s "$bench/serve_load.lua" "$1" &
  w=$!
  groups+=("$w")
  wait "$w"
  forget "$w"
}
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
bench_server() {  # SERVER MODEL ROUND
  local server=$1 model=$2 round=$3 dir=$work/models/$2 port ready_path path kind bodies cmd i
  case $server in
    exp) port=$port_base ;; mlflow) port=$((port_base + 1)) ;;
    flask) port=$((port_base + 2)) ;; flask-dev) port=$((port_base + 3)) ;;
  esac
  case $server in
    exp)
      cmd=(env -C "$repo" "$exp" serve "${tag[$model]}" --addr "127.0.0.1:$port" "${exp_args[@]}")
      ready_path=/ready path=/invocations kind=exp bodies=$work/pixels.jsonl ;;
    mlflow)
      # MLflow execs `uvicorn` through bash: the venv's bin must be on PATH.
      cmd=(env "PATH=$mlflow_venv/bin:$PATH" "$mlflow_venv/bin/mlflow" models serve -m "$dir/mlflow"
           --env-manager local -h 127.0.0.1 -p "$port")
      ready_path=/ping path=/invocations kind=mlflow bodies=$work/scaled.jsonl ;;
    flask)
      cmd=(env "BENCH_MODEL_DIR=$dir" "$flask_venv/bin/gunicorn" -w "$gunicorn_workers"
           -b "127.0.0.1:$port" --chdir "$bench" serve_flask:app)
      ready_path=/ready path=/predict kind=flask bodies=$work/pixels.jsonl ;;
    flask-dev)
      cmd=(env "BENCH_MODEL_DIR=$dir" "$flask_venv/bin/python" "$bench/serve_flask.py" "$port")
      ready_path=/ready path=/predict kind=flask bodies=$work/pixels.jsonl ;;
  esac
  port_in_use "$port" && die "port $port is taken (another server?); choose others with BENCH_PORT"
  local tagname="$server-$model-r$round" log url=http://127.0.0.1:$port
  log=$results/logs/$tagname.log
  say "round $round: $server, $model"
  # EPOCHREALTIME: the start instant without forking a `date`. In a script without job control a
  # background job is no group leader, so setsid makes the session in place: $! is the server.
  local start_ns=${EPOCHREALTIME/./}000
  taskset -c "$server_cpus" setsid "${cmd[@]}" > "$log" 2>&1 &
  local pid=$!
  groups+=("$pid")
  local cold
  cold=$(taskset -c "$load_cpus" $py "$bench/serve_tools.py" ready "$url$ready_path" "$start_ns" "$ready_timeout" "$pid") \
    || { tail -n 30 "$log" >&2; die "$server ($model) did not become ready (log: $log)"; }
  printf '{"kind": "cold", "server": "%s", "model": "%s", "round": %d, "cold_start_s": %s}\n' \
    "$server" "$model" "$round" "$cold" >> "$results/raw.jsonl"
  taskset -c "$load_cpus" $py "$bench/serve_tools.py" check "$url$path" "$kind" "$bodies" "$dir/labels.txt" 20 \
    || die "$server ($model) answers differ from the exported module (log: $log)"
  local c out mon
  for c in "${clients[@]}"; do
    [ "$warmup" = 0 ] || run_wrk "$url" "$path" "$bodies" "$c" "$warmup" > /dev/null
    out=$results/logs/$tagname-c$c.wrk
    # The memory sampler runs in a session of its own too, so an exit mid-run stops it as well.
    taskset -c "$load_cpus" setsid $py "$bench/serve_tools.py" mem "$pid" "$out.mem" &
    mon=$!
    groups+=("$mon")
    run_wrk "$url" "$path" "$bodies" "$c" "$duration" > "$out"
    stop_group "$mon"; forget "$mon"
    $py "$bench/serve_tools.py" record "$results/raw.jsonl" "$server" "$model" "$round" "$c" "$out" "$out.mem"
    if [ "$(ps -o stat= -p "$pid" | cut -c1)" = Z ]; then die "$server ($model) died under load (log: $log)"; fi
  done
  stop_group "$pid"; forget "$pid"
}

for round in $(seq 1 "$rounds"); do
  for m in "${models[@]}"; do
    for s in "${servers[@]}"; do bench_server "$s" "$m" "$round"; done
  done
done
say "results in $results"
$py "$bench/serve_tools.py" report "$results"
