#!/usr/bin/env bash
# Cloud TPU VMs (single host or pod slice) with gcloud: create or reuse, install this checkout on every worker,
# train on every worker at once (jax.distributed finds the pod itself), stream the logs, delete on request.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh [options] COMMAND [CONFIG [--config.key=value ...]]

Commands:
  up CONFIG [overrides]     create (or reuse), install, train; with --delete, delete the TPU afterwards
  create                    create the TPU VM (or queued resource) unless it already exists
  install                   copy this checkout to every worker and pip install it with jax[tpu]
  train CONFIG [overrides]  start training on every worker (--worker=all), detached, then stream its logs
  logs                      stream every worker's training log until training ends (after a dropped connection)
  delete                    delete the TPU VM (or queued resource)

Options (each also read from the environment variable named after it):
  --name NAME         TPU_NAME          (default capt-jax)
  --project ID        PROJECT           (default: gcloud's configured project)
  --zone ZONE         ZONE              (required)
  --accelerator TYPE  ACCELERATOR_TYPE  (default v4-8; e.g. v4-32, v5p-16, v5litepod-8, v6e-8)
  --runtime VERSION   RUNTIME_VERSION   (default tpu-ubuntu2204-base; v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e)
  --bucket gs://B     BUCKET            workdir = gs://B/NAME/<config name>; every worker must see the
                                        same workdir, so pods need a bucket (or --workdir on shared storage)
  --workdir PATH      WORKDIR           overrides the bucket-derived workdir
  --queued            QUEUED=1          request the TPU as a queued resource (waits for capacity)
  --spot              SPOT=1            spot capacity; a preempted run resumes from its last checkpoint
  --delete            DELETE=1          `up` deletes the TPU when training ends, failed or not
  --dry-run           DRY_RUN=1         print every command (gcloud, tar) instead of running it
  -h, --help

Files the config names (e.g. data.path) must be inside this checkout, which is copied to ~/capt_jax on
every worker; hub models and CAPT data are downloaded by each worker.
EOF
}

TPU_NAME=${TPU_NAME:-capt-jax}
PROJECT=${PROJECT:-}
ZONE=${ZONE:-}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-8}
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
BUCKET=${BUCKET:-}
WORKDIR=${WORKDIR:-}
QUEUED=${QUEUED:-0}
SPOT=${SPOT:-0}
DELETE=${DELETE:-0}
DRY_RUN=${DRY_RUN:-0}
REMOTE_DIR=capt_jax  # on every worker, relative to the login user's home
LOG=capt_jax_train.log
PID_FILE=capt_jax_train.pid
EXIT_FILE=capt_jax_train.exit

COMMAND=
while [[ $# -gt 0 && -z $COMMAND ]]; do
  case $1 in
    --name) TPU_NAME=$2; shift ;;
    --project) PROJECT=$2; shift ;;
    --zone) ZONE=$2; shift ;;
    --accelerator) ACCELERATOR_TYPE=$2; shift ;;
    --runtime) RUNTIME_VERSION=$2; shift ;;
    --bucket) BUCKET=$2; shift ;;
    --workdir) WORKDIR=$2; shift ;;
    --queued) QUEUED=1 ;;
    --spot) SPOT=1 ;;
    --delete) DELETE=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) COMMAND=$1 ;;
  esac
  shift
done
case $COMMAND in
  up | create | install | train | logs | delete) ;;
  "") usage >&2; exit 2 ;;
  *) echo "error: unknown command '$COMMAND' (see --help)" >&2; exit 2 ;;
esac
if [[ -z $ZONE ]]; then
  echo "error: no zone: pass --zone or set ZONE" >&2
  exit 2
fi
if [[ $BUCKET != "" && $BUCKET != gs://* ]]; then
  echo "error: --bucket must look like gs://BUCKET, got '$BUCKET'" >&2
  exit 2
fi

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

LOCATION=(--zone="$ZONE")
[[ -n $PROJECT ]] && LOCATION+=(--project="$PROJECT")
SPOT_FLAG=()
((SPOT)) && SPOT_FLAG=(--spot)

on_all_workers() {  # run a shell command line on every worker of the TPU
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${LOCATION[@]}" --worker=all --command="$1"
}

exists() {  # whether the TPU (or its queued resource) exists; a dry run assumes it does not
  if ((DRY_RUN)); then
    run "$@"
    return 1
  fi
  "$@" >/dev/null 2>&1
}

create() {
  if ((QUEUED)); then
    if exists gcloud compute tpus queued-resources describe "$TPU_NAME" "${LOCATION[@]}"; then
      echo "reusing queued resource $TPU_NAME" >&2
    else
      run gcloud compute tpus queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" "${LOCATION[@]}" \
        --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" "${SPOT_FLAG[@]}"
    fi
    wait_until_active
  elif exists gcloud compute tpus tpu-vm describe "$TPU_NAME" "${LOCATION[@]}"; then
    echo "reusing TPU VM $TPU_NAME" >&2
  else
    run gcloud compute tpus tpu-vm create "$TPU_NAME" "${LOCATION[@]}" \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${SPOT_FLAG[@]}"
  fi
}

wait_until_active() {  # a queued resource gets its TPU when capacity frees up
  local describe=(gcloud compute tpus queued-resources describe "$TPU_NAME" "${LOCATION[@]}" --format='value(state.state)')
  if ((DRY_RUN)); then
    run "${describe[@]}"
    return
  fi
  local state
  while state=$("${describe[@]}") && [[ $state != ACTIVE ]]; do
    case $state in
      FAILED | SUSPENDED) echo "error: queued resource $TPU_NAME is $state" >&2; return 1 ;;
    esac
    echo "queued resource $TPU_NAME: $state; waiting" >&2
    sleep 30
  done
}

install() {
  local archive=${TMPDIR:-/tmp}/capt_jax_$TPU_NAME.tgz
  local repo
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  # Tracked and untracked-but-not-ignored files: what `git status` shows, without .venv, caches or workdirs.
  if ((DRY_RUN)); then
    echo "git -C $(quote "$repo") ls-files -z --cached --others --exclude-standard | tar -C $(quote "$repo") --null -T - -czf $(quote "$archive")"
  else
    git -C "$repo" ls-files -z --cached --others --exclude-standard | tar -C "$repo" --null -T - -czf "$archive"
  fi
  run gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:capt_jax.tgz" "${LOCATION[@]}" --worker=all
  on_all_workers "rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar -xzf ~/capt_jax.tgz -C ~/$REMOTE_DIR \
&& python3 -m pip install -q -U pip && python3 -m pip install -q -e ~/$REMOTE_DIR 'jax[tpu]' gcsfs google-cloud-storage"
}

train() {
  if [[ $# -lt 1 ]]; then
    echo "error: $COMMAND needs CONFIG (see --help)" >&2
    exit 2
  fi
  local config=$1
  shift
  local workdir=$WORKDIR
  if [[ -z $workdir ]]; then
    if [[ -z $BUCKET ]]; then
      echo "error: no workdir every worker can see: pass --bucket gs://BUCKET (or --workdir)" >&2
      exit 2
    fi
    workdir=$BUCKET/$TPU_NAME/$(basename "$config" .py)
  fi
  local args
  args=$(quoted python3 -m capt_jax.train --config "$config" --config.workdir="$workdir" \
    --config.distributed.initialize=always "$@")
  # Detached (nohup), so a dropped ssh connection does not stop training; its exit status is kept for `logs`.
  on_all_workers "cd ~/$REMOTE_DIR && rm -f ~/$EXIT_FILE && (nohup bash -c $(quote "$args > ~/$LOG 2>&1; echo \$? > ~/$EXIT_FILE") \
>/dev/null 2>&1 & echo \$! > ~/$PID_FILE)"
  logs
}

logs() {
  on_all_workers "tail -n +1 --pid=\$(cat ~/$PID_FILE) -F ~/$LOG 2>/dev/null; exit \$(cat ~/$EXIT_FILE 2>/dev/null || echo 1)"
}

delete() {
  if ((QUEUED)); then
    run gcloud compute tpus queued-resources delete "$TPU_NAME" "${LOCATION[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${LOCATION[@]}" --quiet
  fi
}

case $COMMAND in
  create) create ;;
  install) install ;;
  train) train "$@" ;;
  logs) logs ;;
  delete) delete ;;
  up)
    ((DELETE)) && trap delete EXIT
    create
    install
    train "$@"
    ;;
esac
