#!/usr/bin/env bash
# Run a real Git LFS server (giftless, from PyPI) on loopback for integration tests.
#
#   scripts/lfs-server.sh install          # create/refresh the venv (idempotent, fast when done)
#   scripts/lfs-server.sh start DIR PORT   # start on 127.0.0.1:PORT, objects under DIR; prints PID
#   scripts/lfs-server.sh stop DIR         # stop the server started with DIR
#
# LFS endpoint for repository "org/repo": http://127.0.0.1:PORT/org/repo
# (batch API: POST http://127.0.0.1:PORT/org/repo/objects/batch; the newer form
#  http://127.0.0.1:PORT/org/repo.git/info/lfs works too, but action hrefs always use
#  the short form). No trailing slash: .../objects/batch/ is a 404.
# Anonymous read+write, basic transfer adapter, local storage in DIR/lfs-storage.
# Action hrefs carry JWTs (upload/verify: "Authorization" in the action's "header";
# download: ?jwt= in the href) that the client MUST pass on: anonymous access only
# covers the batch endpoint (giftless 0.6.2 anon identities are not authorised per oid).
# Files written to DIR: giftless.yaml, exp_lfs_middleware.py, server.log, server.pid,
# lfs-storage/<org>/<repo>/<oid>. See docs/lfs-server-notes.md.
#
# Environment:
#   EXP_LFS_SERVER_VENV   venv location (default: $HOME/.cache/exp/giftless-venv)
#   EXP_LFS_SERVER_PYTHON python used to create the venv (default: python3)
set -euo pipefail

VENV="${EXP_LFS_SERVER_VENV:-$HOME/.cache/exp/giftless-venv}"
PYTHON="${EXP_LFS_SERVER_PYTHON:-python3}"

# giftless 0.6.2's wheel declares no dependencies, so pin the full runtime set
# (versions from giftless's upstream requirements/main.txt, minus the cloud
# storage SDKs, plus the waitress WSGI server).
PINS=(
  giftless==0.6.2
  waitress==3.0.2
  flask==2.3.3
  werkzeug==3.0.3
  flask-classful==0.16.0
  flask-marshmallow==0.15.0
  marshmallow==3.21.1
  webargs==8.4.0
  figcan==0.0.4
  pyyaml==6.0.1
  pyjwt==2.8.0
  python-dotenv==1.0.1
  python-dateutil==2.9.0.post0
  typing-extensions==4.10.0
  cachetools==5.3.3
  blinker==1.7.0
  click==8.1.7
  itsdangerous==2.1.2
  jinja2==3.1.3
  markupsafe==2.1.5
  packaging==24.0
  six==1.16.0
)

usage() {
  echo "usage: $0 install | start DIR PORT | stop DIR" >&2
  exit 2
}

marker() {
  # Marker name changes whenever the pin list changes.
  local h
  h="$(printf '%s\n' "${PINS[@]}" | cksum | cut -d' ' -f1)"
  echo "$VENV/.exp-giftless-installed-$h"
}

cmd_install() {
  local m
  m="$(marker)"
  if [[ -f "$m" && -x "$VENV/bin/python" ]]; then
    return 0
  fi
  # Serialise concurrent installs (parallel tests calling `start`), then re-check.
  mkdir -p "$(dirname "$VENV")"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV.lock"
    flock 9
    if [[ -f "$m" && -x "$VENV/bin/python" ]]; then
      exec 9>&-
      return 0
    fi
  fi
  if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
  fi
  rm -f "$VENV"/.exp-giftless-installed-*
  # --no-deps: install exactly the pinned set; `pip check` then proves it is complete.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "${PINS[@]}"
  "$VENV/bin/python" -m pip check --disable-pip-version-check >/dev/null
  "$VENV/bin/python" -W ignore -c 'import giftless.app, giftless.transfer.basic_streaming, waitress'
  touch "$m"
  exec 9>&- 2>/dev/null || true
}

is_alive() {
  # kill -0 succeeds on zombies (our own not-yet-reaped child), so check the state too.
  local st
  kill -0 "$1" 2>/dev/null || return 1
  st="$(ps -o stat= -p "$1" 2>/dev/null || true)"
  [[ -n "$st" && "$st" != Z* ]]
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

cmd_start() {
  local dir="$1" port="$2"
  [[ "$port" =~ ^[0-9]+$ ]] && ((port >= 1 && port <= 65535)) || { echo "bad port: $port" >&2; exit 2; }
  cmd_install
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if [[ -f "$dir/server.pid" ]] && is_alive "$(cat "$dir/server.pid")"; then
    echo "server already running for $dir (pid $(cat "$dir/server.pid"))" >&2
    exit 1
  fi
  if port_open "$port"; then
    echo "port $port on 127.0.0.1 is already in use" >&2
    exit 1
  fi
  mkdir -p "$dir/lfs-storage"
  cat >"$dir/giftless.yaml" <<EOF
AUTH_PROVIDERS:
  - giftless.auth.allow_anon:read_write
TRANSFER_ADAPTERS:
  basic:
    factory: giftless.transfer.basic_streaming:factory
    options:
      storage_class: giftless.storage.local_storage:LocalStorage
      storage_options:
        path: $dir/lfs-storage
      action_lifetime: 900
PRE_AUTHORIZED_ACTION_PROVIDER:
  factory: giftless.auth.jwt:factory
  options:
    algorithm: HS256
    private_key: exp-integration-test-key
    default_lifetime: 3600
MIDDLEWARE:
  - class: exp_lfs_middleware:AccessLog
EOF
  # WSGI middleware module (loaded via giftless's MIDDLEWARE option, PYTHONPATH=DIR):
  #  - giftless hands downloads to werkzeug as an open binary file, which gets iterated
  #    *line by line* (~256-byte chunks for random data: ~12 MB/s; one chunk = whole file
  #    for data without newlines). Patch LocalStorage.get to stream fixed 1 MiB chunks.
  #  - one access-log line per request on stderr (server.log), query string omitted.
  cat >"$dir/exp_lfs_middleware.py" <<'PYEOF'
import sys
import time

from giftless.storage import local_storage
from werkzeug.wsgi import FileWrapper

_orig_get = local_storage.LocalStorage.get


def _get_chunked(self, prefix, oid):
    return FileWrapper(_orig_get(self, prefix, oid), 1 << 20)


local_storage.LocalStorage.get = _get_chunked


class AccessLog:
    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        t0 = time.monotonic()
        status = ["-"]

        def sr(st, headers, exc_info=None):
            status[0] = st.split(" ", 1)[0]
            return start_response(st, headers, exc_info)

        return self._iter(self.app(environ, sr), environ, status, t0)

    @staticmethod
    def _iter(it, environ, status, t0):
        total = 0
        try:
            for chunk in it:
                total += len(chunk)
                yield chunk
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
            sys.stderr.write(
                "access %s %s -> %s in=%s out=%d %.3fs\n"
                % (
                    environ.get("REQUEST_METHOD"),
                    environ.get("PATH_INFO"),
                    status[0],
                    environ.get("CONTENT_LENGTH") or "-",
                    total,
                    time.monotonic() - t0,
                )
            )
            sys.stderr.flush()
PYEOF
  local pid
  # cwd = DIR: giftless calls load_dotenv() (reads ./.env); keep it away from the caller's cwd.
  # Unset inherited GIFTLESS_* vars so only our config applies.
  (
    cd "$dir"
    for v in $(compgen -e | grep '^GIFTLESS_' || true); do unset "$v"; done
    export GIFTLESS_CONFIG_FILE="$dir/giftless.yaml"
    export PYTHONPATH="$dir"
    export PYTHONWARNINGS="ignore::FutureWarning"
    exec "$VENV/bin/waitress-serve" \
      --listen="127.0.0.1:$port" \
      --threads=8 \
      --max-request-body-size=1099511627776 \
      --channel-timeout=300 \
      giftless.wsgi_entrypoint:app
  ) </dev/null >"$dir/server.log" 2>&1 &
  pid=$!
  echo "$pid" >"$dir/server.pid"

  local deadline=$((SECONDS + 20))
  while ! port_open "$port"; do
    if ! is_alive "$pid"; then
      echo "giftless exited during startup; log follows:" >&2
      cat "$dir/server.log" >&2
      rm -f "$dir/server.pid"
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "giftless did not answer on 127.0.0.1:$port within 20s; log follows:" >&2
      cat "$dir/server.log" >&2
      kill "$pid" 2>/dev/null || true
      rm -f "$dir/server.pid"
      exit 1
    fi
    sleep 0.1
  done
  if ! is_alive "$pid"; then
    echo "giftless exited (port $port answered, but not from our server?); log follows:" >&2
    cat "$dir/server.log" >&2
    rm -f "$dir/server.pid"
    exit 1
  fi
  echo "$pid"
}

cmd_stop() {
  local dir="$1" pid
  if [[ ! -f "$dir/server.pid" ]]; then
    echo "no $dir/server.pid (not running?)" >&2
    return 0
  fi
  pid="$(cat "$dir/server.pid")"
  if is_alive "$pid"; then
    pkill -TERM -P "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 100; i++)); do
      is_alive "$pid" || break
      sleep 0.1
    done
    if is_alive "$pid"; then
      pkill -KILL -P "$pid" 2>/dev/null || true
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        is_alive "$pid" || break
        sleep 0.1
      done
    fi
  fi
  rm -f "$dir/server.pid"
}

case "${1:-}" in
  install) [[ $# -eq 1 ]] || usage; cmd_install ;;
  start) [[ $# -eq 3 ]] || usage; cmd_start "$2" "$3" ;;
  stop) [[ $# -eq 2 ]] || usage; cmd_stop "$2" ;;
  *) usage ;;
esac
