#!/usr/bin/env bash
# A real single-node Slurm cluster for exp's sweep tests and benchmarks (docs/design.md §8 of
# the brief): Debian's slurm-wlm and munge, daemons on loopback with a generated slurm.conf in a
# directory of the caller's, on free ports, so several clusters (test runs) can run side by side.
#
#   scripts/slurm.sh install        install slurm-wlm and munge from Debian if missing (root/sudo)
#   scripts/slurm.sh start DIR      start munged, slurmctld and slurmd for a cluster in DIR; waits
#                                   until the node is idle; prints SLURM_CONF=DIR/slurm.conf
#   scripts/slurm.sh stop DIR       stop that cluster's daemons (by their pid files)
#
# Clients use the cluster with SLURM_CONF=DIR/slurm.conf. Accounting is off on purpose (as on many
# clusters): exp must never depend on sacct. Needs root (slurmd runs jobs as their user).
set -euo pipefail

die() { echo "slurm.sh: $*" >&2; exit 1; }
sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo

install() {
  command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1 && return 0
  echo "slurm.sh: installing slurm-wlm and munge from Debian" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq slurm-wlm munge >/dev/null
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  local dir=$1
  [ "$(id -u)" -eq 0 ] || die "starting slurmd needs root"
  install
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
  # munged runs as user munge: every directory above its socket must be reachable.
  if ! runuser -u munge -- test -x "$dir"; then
    die "user munge cannot reach $dir (a parent directory is not world-searchable, e.g. mktemp -d's 0700): chmod a+x it"
  fi
  # munged: its own socket, pid and seed file in DIR, so clusters do not share (or stop) one.
  [ -s /etc/munge/munge.key ] || $sudo mungekey -c >/dev/null 2>&1 || $sudo /usr/sbin/mungekey -c
  chown munge:munge "$dir/munge"
  # munged wants its socket's directory reachable by all and writable only by itself.
  chmod 0755 "$dir/munge"
  runuser -u munge -- munged --socket "$dir/munge/munge.socket" \
    --pid-file "$dir/munge/munged.pid" --seed-file "$dir/munge/munge.seed" \
    --log-file "$dir/munge/munged.log" || die "munged did not start (see $dir/munge/munged.log)"
  local ctld_port slurmd_port cpus
  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done
  cpus=$(nproc)
  cat > "$dir/slurm.conf" <<EOF
ClusterName=exp$(basename "$dir" | tr -cd 'a-z0-9' | cut -c1-20)
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
MinJobAge=3600
SchedulerParameters=sched_interval=1
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=30 State=UP
EOF
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -f "$SLURM_CONF" || die "slurmctld did not start (see $dir/slurmctld.log)"
  slurmd -f "$SLURM_CONF" -N localhost || die "slurmd did not start (see $dir/slurmd.log)"
  for _ in $(seq 1 100); do
    if sinfo -h -o '%t' 2>/dev/null | grep -qx 'idle'; then
      echo "SLURM_CONF=$SLURM_CONF"
      return 0
    fi
    sleep 0.2
  done
  sinfo >&2 || true
  die "the node did not become idle within 20 s (logs in $dir)"
}

stop() {
  local dir=$1 pid
  for f in slurmd.pid slurmctld.pid munge/munged.pid; do
    [ -s "$dir/$f" ] || continue
    pid=$(cat "$dir/$f")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  # Job steps slurmd started (slurmstepd) end with their jobs; any left would hold files open.
  pkill -f "slurmstepd.*$dir" 2>/dev/null || true
}

case "${1:-}" in
  install) install ;;
  start) [ $# -eq 2 ] || die "usage: slurm.sh start DIR"; start "$2" ;;
  stop) [ $# -eq 2 ] || die "usage: slurm.sh stop DIR"; stop "$2" ;;
  *) die "usage: slurm.sh install | start DIR | stop DIR" ;;
esac
