#!/usr/bin/env bash
# NPROC training processes on this machine, joined by jax.distributed with CPU (gloo) collectives: the same
# multi-process code path as a TPU pod or a multi-node GPU job, testable on a laptop. Needs bash >= 4.3.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local.sh [--dry-run] NPROC CONFIG [--config.key=value ...]

Starts NPROC processes of `python -m capt_jax.train --config CONFIG ...` on localhost, process i with
--config.distributed.{coordinator_address,num_processes,process_id} set, each with DEVICES_PER_PROCESS fake CPU
devices. Process 0 writes metrics.jsonl and prints progress. Waits for all; if one fails (or on Ctrl-C /
SIGTERM) the others get SIGTERM (they checkpoint at the end of their step) and SIGKILL after GRACE_SECONDS.
Exits with the first non-zero status, else 0.

Environment:
  DEVICES_PER_PROCESS  fake CPU devices per process (default 1); the mesh spans NPROC x this many
  PYTHON               interpreter with capt_jax installed (default: the checkout's .venv/bin/python if
                       any, else python3)
  COORDINATOR_PORT     coordinator port on 127.0.0.1 (default: a free port)
  GRACE_SECONDS        SIGTERM-to-SIGKILL grace period when stopping the others (default 30)

Options:
  --dry-run   print the commands instead of running them
  -h, --help  this text
EOF
}

DRY_RUN=0
while [[ $# -gt 0 && $1 == -* ]]; do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [[ $# -lt 2 ]]; then
  usage >&2
  exit 2
fi
NPROC=$1 CONFIG=$2
shift 2
if ! [[ $NPROC =~ ^[1-9][0-9]*$ ]]; then
  echo "error: NPROC must be a positive integer, got '$NPROC'" >&2
  exit 2
fi
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-1}
if ! [[ $DEVICES_PER_PROCESS =~ ^[1-9][0-9]*$ ]]; then
  echo "error: DEVICES_PER_PROCESS must be a positive integer, got '$DEVICES_PER_PROCESS'" >&2
  exit 2
fi
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PYTHON=$(default_python)
GRACE_SECONDS=${GRACE_SECONDS:-30}
if [[ -n ${COORDINATOR_PORT:-} ]]; then
  PORT=$COORDINATOR_PORT
elif ((DRY_RUN)); then
  PORT=PORT
else
  PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi

command_for() {  # CMD: the argv of process $1, with the overrides that follow it
  local id=$1
  shift
  CMD=(env JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
    "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"
    "$PYTHON" -m capt_jax.train --config "$CONFIG" "$@"
    --config.distributed.initialize=always
    "--config.distributed.coordinator_address=127.0.0.1:$PORT"
    "--config.distributed.num_processes=$NPROC"
    "--config.distributed.process_id=$id")
}

if ((DRY_RUN)); then
  for ((i = 0; i < NPROC; i++)); do
    command_for "$i" "$@"
    printf '%q ' "${CMD[@]}"
    echo '&'
  done
  exit 0
fi

PIDS=()
stop_all() {  # SIGTERM whatever still runs, SIGKILL it after GRACE_SECONDS
  kill -TERM "${PIDS[@]}" 2>/dev/null || true
  local deadline=$((SECONDS + GRACE_SECONDS)) pid alive
  while ((SECONDS < deadline)); do
    alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    sleep 0.2
  done
  kill -KILL "${PIDS[@]}" 2>/dev/null || true
}
trap 'stop_all; wait; exit 130' INT
trap 'stop_all; wait; exit 143' TERM

for ((i = 0; i < NPROC; i++)); do
  command_for "$i" "$@"
  "${CMD[@]}" &
  PIDS+=($!)
done

for ((i = 0; i < NPROC; i++)); do
  wait -n || {
    status=$?
    echo "local.sh: a training process exited with status $status; stopping the others" >&2
    stop_all
    wait || true
    exit "$status"
  }
done
