#!/usr/bin/env bash
# One machine with N GPUs: a single process drives all of them (JAX is single-controller per host), so no
# distributed runtime is needed; mesh.data=-1 (the default) splits each batch over every GPU.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/gpu.sh [options] CONFIG [--config.key=value ...]

Options (each also read from the environment variable named after it):
  --gpus N          GPUS            use GPUs 0..N-1 (default: every visible GPU)
  --install         INSTALL=1       first pip install -U "jax[JAX_CUDA_EXTRA]" and this checkout (editable)
  --image IMAGE     IMAGE           run in this docker image instead (docker run --gpus all), with this checkout
                                    mounted at /workspace/capt_jax (the working directory: CONFIG and
                                    data paths must be inside the checkout, relative to it) and installed
                                    inside, and the Hugging Face cache (HF_HOME, default
                                    ~/.cache/huggingface) mounted so downloaded weights persist
  --dry-run         DRY_RUN=1       print every command (pip, docker, python) instead of running it
  -h, --help
Environment:
  JAX_CUDA_EXTRA    the jax extra to install (default cuda12; cuda13 for CUDA 13 drivers)
  PYTHON            interpreter outside docker (default: the checkout's .venv/bin/python if any, else python3)
EOF
}

GPUS=${GPUS:-}
INSTALL=${INSTALL:-0}
IMAGE=${IMAGE:-}
DRY_RUN=${DRY_RUN:-0}
JAX_CUDA_EXTRA=${JAX_CUDA_EXTRA:-cuda12}
HF_HOME=${HF_HOME:-$HOME/.cache/huggingface}

while [[ $# -gt 0 && $1 == -* ]]; do
  case $1 in
    --gpus) GPUS=$2; shift ;;
    --install) INSTALL=1 ;;
    --image) IMAGE=$2; shift ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [[ $# -lt 1 ]]; then
  usage >&2
  exit 2
fi
if [[ -n $GPUS ]] && ! [[ $GPUS =~ ^[1-9][0-9]*$ ]]; then
  echo "error: --gpus must be a positive integer, got '$GPUS'" >&2
  exit 2
fi
CONFIG=$1
shift
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PYTHON=$(default_python)

ENV=(env)
[[ -n $GPUS ]] && ENV+=("CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((GPUS - 1)))")
TRAIN=(-m capt_jax.train --config "$CONFIG" --config.distributed.initialize=never "$@")

if [[ -n $IMAGE ]]; then
  inside="pip install -q -U 'jax[$JAX_CUDA_EXTRA]' -e . && exec $(quoted "${ENV[@]}" python "${TRAIN[@]}")"
  run docker run --rm --gpus all --ipc=host --shm-size=16g \
    -v "$REPO:/workspace/capt_jax" -v "$HF_HOME:/root/.cache/huggingface" -w /workspace/capt_jax \
    "$IMAGE" bash -c "$inside"
else
  if ((INSTALL)); then
    run "$PYTHON" -m pip install -U "jax[$JAX_CUDA_EXTRA]"
    run "$PYTHON" -m pip install -e "$REPO"
  fi
  run "${ENV[@]}" "$PYTHON" "${TRAIN[@]}"
fi
