"""benchmarks/device_check.sh, the one-script GPU runbook, at toy sizes on the CPU: every case runs, the one JSON
report holds them, the parity of their first losses and the targets (not judged at toy sizes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

# Packages that capt_jax installs but the accelerator image lacks (docs/PERFORMANCE.md, "GPU"; the device tool's
# KINDS.md lists the image). ml_collections is carried there as a wheel, so it stays importable here.
NOT_ON_THE_DEVICE_IMAGE = ("english_words", "tensorboardX", "openai", "gguf", "bitsandbytes")
HIDE_PACKAGES = f"""
import sys
from importlib.machinery import PathFinder

class _WithoutHidden(PathFinder):  # as if not installed: find_spec says None, import raises ModuleNotFoundError
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in {NOT_ON_THE_DEVICE_IMAGE!r}:
            return None
        return super().find_spec(name, path, target)

sys.meta_path[sys.meta_path.index(PathFinder)] = _WithoutHidden
"""


def test_device_check_writes_one_report_at_toy_sizes(tmp_path):
    """Run as on the device image: every process of the check starts with its missing packages hidden."""
    out = tmp_path / "out"
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(HIDE_PACKAGES)
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "DEVICE_CHECK_TINY": "1"}
    env.pop("DEVICE_CHECK_ATTENTION", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path / "site"), os.environ.get("PYTHONPATH")]))
    env["DEVICE_MODEL_DIR"] = str(tmp_path / "model")
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "compile_cache")
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "device_check.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [p.name for p in out.iterdir()] == ["device_check.json"]
    report = json.loads((out / "device_check.json").read_text())
    labels = [r["label"] for r in report["runs"]]
    assert labels == [
        "peft",
        "capt_jax remat=none",
        "capt_jax",
        "capt_jax remat=full",
        "peft +ckpt",
        "transformers",
        "capt_jax remat=dots",
    ]
    assert report["skipped"] == [] and report["preset"] == "device-tiny" and "jax backend=cpu" in report["environment"]
    assert report["parity"]["ok"] and len(report["parity"]["first_losses"]) == 5
    assert [t["met"] for t in report["targets"]] == [None, None, None]
    assert all(t["tokens_per_second"] > 0 for t in report["targets"])
    assert "| train tiny bf16 2x64 r64 | capt_jax remat=none |" in report["table"]
    assert not (tmp_path / "model").exists()  # the shared random model is removed


def test_device_check_says_so_without_a_gpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu"}
    env.pop("DEVICE_CHECK_TINY", None)
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "device_check.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and "jax has no GPU backend" in proc.stderr
    assert "no GPU backend" in json.loads((tmp_path / "device_check.json").read_text())["error"]


def run_device_preset(tmp_path, monkeypatch, fails) -> tuple[dict, list[list[str]]]:
    """compare.py's device-tiny preset with a stand-in for each benchmark process: `fails(argv)` gives the output of
    a run that fails, or None for one that succeeds. The report, and every command run."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import compare

    calls = []

    def fake_run_case(argv, timeout, env, tree, pin):
        calls.append(argv)
        if (output := fails(argv)) is not None:
            raise compare.CaseFailed("FAILED (1)", argv, output)
        bench, what = ("generate", "call") if "generate" in argv else ("train", "step")
        framework = "capt_jax" if "capt_jax.bench" in argv else "peft"
        times = {f"{what}_time_s": 1.0, f"{what}_time_min_s": 1.0, f"{what}_time_max_s": 1.0}
        return {"bench": bench, "framework": framework, "tokens_per_second": 1.0, "first_loss": 2.0, **times}

    monkeypatch.setattr(compare, "run_case", fake_run_case)
    report_path = tmp_path / "report.json"
    compare.main(["--preset", "device-tiny", "--report", str(report_path)])
    return json.loads(report_path.read_text()), calls


CUDNN_REFUSAL = "XlaRuntimeError: INTERNAL: No valid engine configs for Matmul_MUL_GEN_INDEX (cudnn)"
TINY_LABELS = ["peft", "capt_jax remat=none", "capt_jax", "capt_jax remat=full", "peft +ckpt", "transformers"]
TINY_LABELS.append("capt_jax remat=dots")


def test_a_case_that_cudnn_fails_is_rerun_on_xla_attention_and_so_is_every_later_one(tmp_path, monkeypatch):
    """A cuDNN failure in the first capt_jax case must not cost the loan: that case reruns with XLA's attention,
    the later capt_jax cases run on it from the start, the peers are untouched, and the failure's output is kept."""
    monkeypatch.delenv("DEVICE_CHECK_ATTENTION", raising=False)

    def fails(argv):
        return CUDNN_REFUSAL if "capt_jax.bench" in argv and "xla" not in argv else None

    report, calls = run_device_preset(tmp_path, monkeypatch, fails)
    labels = [label if label.startswith("p") or label == "transformers" else f"{label} attention=xla"
              for label in TINY_LABELS]  # fmt: skip
    assert [r["label"] for r in report["runs"]] == labels
    assert len(calls) == 8  # the one failed run, then every case once
    assert all("--attention" not in argv for argv in calls if "capt_jax.bench" not in argv)
    assert [f["case"] for f in report["failures"]] == ["train tiny bf16 2x64 r64 | capt_jax remat=none"]
    assert CUDNN_REFUSAL in report["failures"][0]["error"]
    assert "capt_jax remat=none" in report["attention_fallback"] and report["skipped"] == []


def test_other_failures_leave_cudnn_and_a_chosen_attention_is_never_switched(tmp_path, monkeypatch):
    """Only a failure whose output names cuDNN switches, and only where nobody chose the attention: with
    DEVICE_CHECK_ATTENTION=cudnn the command line itself names cuDNN, which must not count."""
    monkeypatch.delenv("DEVICE_CHECK_ATTENTION", raising=False)
    report, _ = run_device_preset(
        tmp_path, monkeypatch, lambda argv: "ValueError: shapes do not match" if "none" in argv else None
    )
    assert report["attention_fallback"] is None
    assert [r["label"] for r in report["runs"]] == [label for label in TINY_LABELS if label != "capt_jax remat=none"]
    assert report["skipped"] == ["train tiny bf16 2x64 r64 | capt_jax remat=none: failed or ran past the budget "
                                 "(its output is under failures)"]  # fmt: skip

    monkeypatch.setenv("DEVICE_CHECK_ATTENTION", "cudnn")
    report, calls = run_device_preset(
        tmp_path, monkeypatch, lambda argv: CUDNN_REFUSAL if "capt_jax.bench" in argv else None
    )
    assert report["attention_fallback"] is None and len(calls) == 7
    assert [r["label"] for r in report["runs"]] == ["peft", "peft +ckpt", "transformers"]
    assert all(argv[-2:] == ["--attention", "cudnn"] for argv in calls if "capt_jax.bench" in argv)

    monkeypatch.setenv("DEVICE_CHECK_ATTENTION", "flash")
    with pytest.raises(SystemExit, match="DEVICE_CHECK_ATTENTION='flash': expected auto, xla or cudnn"):
        run_device_preset(tmp_path, monkeypatch, lambda argv: None)


def test_running_out_of_memory_is_no_reason_to_leave_cudnn():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from compare import names_cudnn_failure

    assert names_cudnn_failure("INTERNAL: cuDNN error: CUDNN_STATUS_NOT_SUPPORTED")
    assert not names_cudnn_failure(
        "RESOURCE_EXHAUSTED: Out of memory allocating 4.0GiB ... __cudnn$fmhaScaleBiasSoftmax"
    )
    assert not names_cudnn_failure("ValueError: shapes do not match")
