#!/usr/bin/env bash
# The accelerator runbook as one script: everything issue 15's GPU targets need, in at most 6 minutes on one GPU,
# written to one JSON file, $OUT/device_check.json (see docs/PERFORMANCE.md, "GPU").
#
#   OUT=/some/folder benchmarks/device_check.sh                        # one GPU
#   OUT=/tmp/check DEVICE_CHECK_TINY=1 benchmarks/device_check.sh      # toy sizes on a CPU: the plumbing, in a minute
#
# It runs `benchmarks/compare.py --preset device`: peft at 8x1024 (saving its random Qwen2.5-3B, which every later
# run loads, so the first losses are the bf16 parity check), capt_jax `bench train` at 8x1024 with remat none and
# full, `bench generate` at batch 32, peft with gradient checkpointing, HF generate at batch 32, and remat dots if
# time is left. Cases that would start after DEVICE_CHECK_BUDGET_S seconds (default 330) are listed as skipped.
# A capt_jax case that cuDNN's attention fails is run again on XLA's, as is every later one (the report's
# attention_fallback); DEVICE_CHECK_ATTENTION=auto|xla|cudnn chooses capt_jax's attention for every case instead,
# and is never switched. Each failed run's last output is kept in the report's failures.
#
# Nothing is downloaded: the models are random, built from the config.json dicts in capt_jax/bench.py. Python
# packages the machine lacks can travel as wheels in .whl/ (installed with pip --no-index, so no network).
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that receives device_check.json}"
mkdir -p "$OUT"
REPORT="$OUT/device_check.json"
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# A rerun on the same machine reuses the compiled programs.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/capt_jax_compile_cache}
began=$(date +%s)

fail() {  # the one JSON file, saying why nothing was measured
    "$PYTHON" -c 'import json, sys; json.dump({"error": sys.argv[1], "environment": sys.argv[2]}, open(sys.argv[3], "w"), indent=1)' \
        "$1" "${environment:-}" "$REPORT"
    echo "device_check: $1" >&2
    exit 2
}

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/capt_site \
        .whl/*.whl || fail "installing the carried wheels in .whl/ failed"
    export PYTHONPATH=/tmp/capt_site${PYTHONPATH:+:$PYTHONPATH}
fi

if command -v nvidia-smi >/dev/null; then
    environment=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -4)
else
    environment="no nvidia-smi"
fi
versions=$("$PYTHON" - <<'EOF'  # stdout: versions and backend, or what is missing
import importlib, importlib.metadata as md
missing = []
for module in ("jax", "flax", "optax", "ml_collections", "torch", "transformers", "peft", "capt_jax.train"):
    try:
        importlib.import_module(module)
    except ImportError as e:
        missing.append(f"{module} ({e})")
if missing:
    print("MISSING: " + "; ".join(missing))
else:
    import jax, torch
    print(" ".join(f"{p}={md.version(p)}" for p in ("jax", "jaxlib", "flax", "torch", "transformers", "peft")))
    print(f"jax backend={jax.default_backend()} devices={jax.devices()} torch.cuda={torch.cuda.is_available()}")
EOF
)
environment="$environment
$versions"
echo "$environment"
case "$versions" in
    MISSING:*) fail "python packages are missing (carry them as wheels in .whl/, see docs/PERFORMANCE.md): ${versions#MISSING: }" ;;
esac

if [ -n "${DEVICE_CHECK_TINY:-}" ]; then
    preset=device-tiny
    export DEVICE_MODEL_DIR=${DEVICE_MODEL_DIR:-/tmp/capt_device_check_tiny}
elif ! grep -q "jax backend=gpu" <<<"$versions"; then
    fail "jax has no GPU backend here (jaxlib needs its CUDA plugin, e.g. jax[cuda12] or jax[cuda13] from PyPI); nothing was measured. DEVICE_CHECK_TINY=1 runs the plumbing at toy sizes on a CPU"
else
    preset=device
fi

"$PYTHON" benchmarks/compare.py --preset "$preset" --budget-s "${DEVICE_CHECK_BUDGET_S:-330}" --timeout 240 \
    --report "$REPORT"
status=$?
rm -rf "${DEVICE_MODEL_DIR:-/tmp/capt_device_check_model}"
[ -s "$REPORT" ] || fail "compare.py exited with status $status and wrote no report"
"$PYTHON" - "$REPORT" "$environment" "$(( $(date +%s) - began ))" "$preset" <<'EOF'
import json, sys
path, environment, seconds, preset = sys.argv[1:]
report = json.load(open(path))
report.update(environment=environment, wall_s=int(seconds), preset=preset)
json.dump(report, open(path, "w"), indent=1)
print(f"device_check: {path} written after {seconds} s")
EOF
exit $status
