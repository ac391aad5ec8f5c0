"""Launchers and multi-host training: real multi-process runs on CPU through launch/local.sh (jax.distributed with
gloo collectives, the pod code path), checkpoints across process counts, and the cloud launchers' dry runs."""

from __future__ import annotations

import functools
import importlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, write_sft_jsonl
from test_train import SFT_CONFIG, losses, train_args

LAUNCH = REPO / "launch"
# The launchers' interpreter when PYTHON is unset: the checkout's .venv (make test creates it), else python3.
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
LAUNCH_PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else "python3"
STEPS = ["--config.train.max_steps=6", "--config.checkpoint.every_steps=3"]


def local_sh(nproc: int, devices: int, args: list[str], **env: str) -> subprocess.CompletedProcess:
    """launch/local.sh NPROC CONFIG overrides..., given train_args' `python -m capt_jax.train --config CONFIG ...`."""
    config, overrides = args[4], args[5:]
    env = {**os.environ, "DEVICES_PER_PROCESS": str(devices), "PYTHON": sys.executable, **env}
    return subprocess.run(
        [str(LAUNCH / "local.sh"), str(nproc), config, *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def single(args: list[str], devices: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory) -> Path:
    return write_sft_jsonl(tmp_path_factory.mktemp("data") / "sft.jsonl", 160)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, tiny_chat_dir, sft_file) -> Path:
    """Workdir of 6 steps by 2 processes x 2 fake devices, mesh data=4, checkpoints at steps 3 and 6."""
    workdir = tmp_path_factory.mktemp("two_processes")
    result = local_sh(2, 2, train_args(tiny_chat_dir, sft_file, workdir, *STEPS, "--config.mesh.data=4"))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_chat_dir, sft_file) -> Path:
    """The same run, uninterrupted, in 1 process with 4 fake devices."""
    workdir = tmp_path_factory.mktemp("one_process")
    result = single(train_args(tiny_chat_dir, sft_file, workdir, *STEPS, "--config.mesh.data=4"), devices=4)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_two_processes_match_one_process(two_processes, one_process):
    """Each process tokenized and fed only its half of every batch; the global batch and loss are the same."""
    a, b = losses(one_process), losses(two_processes)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    assert b == pytest.approx(a, rel=1e-5)
    shards = sorted(p.name for p in (two_processes / "checkpoints" / "3" / "state").glob("ocdbt.process_*"))
    assert shards == ["ocdbt.process_0", "ocdbt.process_1"], "both processes should have written the checkpoint"


def test_checkpoint_from_two_processes_resumes_in_one(tmp_path, two_processes, one_process, tiny_chat_dir, sft_file):
    """Resume the step-3 checkpoint of the 2-process run in 1 process with 1 device (the step-6 one removed, as if
    preempted in between): the continued steps equal the uninterrupted single-process run."""
    workdir = tmp_path / "resumed"
    shutil.copytree(two_processes, workdir)
    shutil.rmtree(workdir / "checkpoints" / "6")
    resumed = single(train_args(tiny_chat_dir, sft_file, workdir, *STEPS), devices=1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {workdir / 'checkpoints'}/3" in resumed.stdout
    continued, reference = losses(workdir), losses(one_process)
    assert sorted(continued) == [1, 2, 3, 4, 5, 6]
    assert {s: continued[s] for s in (4, 5, 6)} == pytest.approx({s: reference[s] for s in (4, 5, 6)}, rel=1e-5)


def test_mesh_not_matching_global_devices_fails_without_traceback(tmp_path, sft_file):
    result = local_sh(
        2,
        2,
        train_args(Path("/not/loaded"), sft_file, tmp_path / "w", "--config.mesh.data=3"),
    )
    assert result.returncode == 2
    assert "config key 'mesh': data=3 x fsdp=1 x tensor=1 = 3 devices, but 4 are available" in result.stderr
    assert "Traceback" not in result.stderr


def test_local_sh_stops_the_others_when_one_fails(tmp_path, sft_file):
    """Process 1 dies at once; process 0 would wait for it in jax.distributed.initialize for minutes."""
    python = tmp_path / "python"
    python.write_text(
        "#!/usr/bin/env bash\n"
        'for a in "$@"; do [[ $a == --config.distributed.process_id=1 ]] && exit 3; done\n'
        f'exec {shlex.quote(sys.executable)} "$@"\n'
    )
    python.chmod(0o755)
    began = time.monotonic()
    result = local_sh(2, 1, train_args(Path("/not/loaded"), sft_file, tmp_path / "w"), PYTHON=str(python))
    assert result.returncode == 3, result.stderr[-3000:]
    assert "exited with status 3; stopping the others" in result.stderr
    assert time.monotonic() - began < 60


def test_sigterm_on_two_processes_saves_at_one_agreed_step(tmp_path, tiny_chat_dir, sft_file):
    """SIGTERM reaches both processes (local.sh forwards it); JAX's preemption service agrees on one step, both
    save that step together, and the run stops with 143."""
    workdir = tmp_path / "preempted"
    args = train_args(
        tiny_chat_dir, sft_file, workdir, "--config.train.max_steps=500", "--config.checkpoint.every_steps=1000"
    )
    env = {**os.environ, "DEVICES_PER_PROCESS": "1", "PYTHON": sys.executable}
    proc = subprocess.Popen(
        [str(LAUNCH / "local.sh"), "2", args[4], *args[5:]],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not ((workdir / "metrics.jsonl").exists() and len(losses(workdir)) >= 2):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 143, out[-3000:]
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] == max(losses(workdir)), (saved, out[-2000:])
    assert out.count("SIGTERM: saved checkpoint at step") == 2 and out.count(f"at step {saved[-1]};") == 2


def test_explicit_distributed_settings_are_checked(sft_file):
    from capt_jax.config import ConfigError, load_config
    from capt_jax.distributed import maybe_initialize_distributed

    config = load_config(SFT_CONFIG, ["--config.distributed.coordinator_address=10.0.0.1:1234"])
    with pytest.raises(ConfigError, match="'distributed.num_processes'=0 and 'distributed.process_id'=-1"):
        maybe_initialize_distributed(config)


def test_sharded_tokenization_learns_every_length_in_row_order():
    """7 pairs over 3 processes (uneven): each tokenizes every third pair; the gathered lengths are in row order."""
    from capt_jax.batches import tokenize_pairs

    class Characters:  # one token per character
        eos_token = "$"

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [ord(c) for c in text]}

    pairs = [{"prompt": "p" * (i + 1), "completion": "c" * (10 * i)} for i in range(7)]
    expected = tokenize_pairs(Characters(), pairs, seq_len=40, chat_template=False)
    shards = []

    def record(shard: np.ndarray) -> np.ndarray:  # first pass: keep what each process contributes
        shards.append(shard)
        return np.stack([shard] * 3)

    def gather(_: np.ndarray) -> np.ndarray:  # what process_allgather returns on every process
        return np.stack(shards)

    for index in range(3):
        tokenize_pairs(Characters(), pairs, 40, False, process_index=index, process_count=3, gather=record)
    for index in range(3):
        data = tokenize_pairs(Characters(), pairs, 40, False, process_index=index, process_count=3, gather=gather)
        assert data.lengths.tolist() == expected.lengths.tolist() == [min(11 * i + 2, 41) - 1 for i in range(7)]
        assert data.truncated == expected.truncated == 3


def test_metrics_in_a_gs_workdir_are_written_through_epath(monkeypatch, capsys):
    """gs:// through etils epath (fsspec), here an in-memory bucket that, like GCS, cannot append."""
    from etils.epath import backend
    from fsspec.implementations.memory import MemoryFileSystem

    from capt_jax.metrics import MetricsWriter

    class FakeGCS(MemoryFileSystem):
        protocol = ("gs", "gcs")

        def __init__(self, *args, finalize_on_close=True, **kwargs):
            super().__init__(*args, **kwargs)

        @classmethod
        def _strip_protocol(cls, path):
            return super()._strip_protocol("memory://" + str(path).split("://", 1)[-1])

        def _open(self, path, mode="rb", **kwargs):
            assert "a" not in mode, "GCS objects cannot be appended to"
            return super()._open(path, mode, **kwargs)

    monkeypatch.setitem(importlib.import_module("fsspec.registry")._registry, "gcs", FakeGCS)
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)  # tensorboardX's GCS writer: not installed
    backend.fsspec_backend._get_filesystem.cache_clear()
    try:
        writer = MetricsWriter("gs://capt-test-bucket/run")
        for step in (1, 2, 3):
            writer.write({"step": step, "loss": 1.0 / step})
        writer.flush()
        writer.close()
        resumed = MetricsWriter("gs://capt-test-bucket/run", resume_step=2)  # a resumed run replays step 3
        resumed.write({"step": 3, "loss": 0.25})
        resumed.close()
        text = FakeGCS().cat_file("capt-test-bucket/run/metrics.jsonl").decode()
    finally:
        backend.fsspec_backend._get_filesystem.cache_clear()
    assert [json.loads(line) for line in text.splitlines()] == [
        {"step": 1, "loss": 1.0},
        {"step": 2, "loss": 0.5},
        {"step": 3, "loss": 0.25},
    ]
    assert "pip install google-cloud-storage" in capsys.readouterr().err


def dry_run(script: str, *args: str, **env: str) -> list[list[str]]:
    result = subprocess.run(
        [str(LAUNCH / script), "--dry-run", *args],
        cwd=REPO,
        env={**{k: v for k, v in os.environ.items() if k != "PYTHON"}, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines() if line.strip()]


def test_tpu_vm_dry_run_creates_installs_trains_on_all_workers_and_deletes():
    flags = [
        "--zone",
        "us-central2-b",
        "--project",
        "my-project",
        "--accelerator",
        "v4-16",
        "--bucket",
        "gs://my-bucket",
    ]
    lines = dry_run("tpu_vm.sh", *flags, "--delete", "up", "configs/smollm2_sft.py", "--config.train.max_steps=9")
    location = ["--zone=us-central2-b", "--project=my-project"]
    gcloud = [line for line in lines if line[0] == "gcloud"]
    assert gcloud[0] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "capt-jax", *location]
    assert gcloud[1] == [
        "gcloud", "compute", "tpus", "tpu-vm", "create", "capt-jax", *location,
        "--accelerator-type=v4-16", "--version=tpu-ubuntu2204-base",
    ]  # fmt: skip
    assert gcloud[2][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in gcloud[2]
    ssh = [line for line in gcloud if line[3:5] == ["tpu-vm", "ssh"]]
    assert len(ssh) == 3 and all("--worker=all" in line for line in ssh)
    install, train, logs = (next(a for a in line if a.startswith("--command="))[10:] for line in ssh)
    assert "pip install" in install and "'jax[tpu]'" in install and "gcsfs" in install
    assert (
        "python3 -m capt_jax.train --config configs/smollm2_sft.py "
        "--config.workdir=gs://my-bucket/capt-jax/smollm2_sft --config.distributed.initialize=always "
        "--config.train.max_steps=9"
    ) in train
    assert "tail" in logs
    assert gcloud[-1] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "capt-jax", *location, "--quiet"]


def test_tpu_vm_dry_run_queued_resource_from_environment():
    lines = dry_run("tpu_vm.sh", "create", ZONE="europe-west4-a", QUEUED="1", SPOT="1", TPU_NAME="pod")
    assert lines[1] == [
        "gcloud", "compute", "tpus", "queued-resources", "create", "pod", "--node-id=pod", "--zone=europe-west4-a",
        "--accelerator-type=v4-8", "--runtime-version=tpu-ubuntu2204-base", "--spot",
    ]  # fmt: skip
    assert lines[2][:5] == ["gcloud", "compute", "tpus", "queued-resources", "describe"]  # waits until ACTIVE
    delete = dry_run("tpu_vm.sh", "delete", ZONE="europe-west4-a", QUEUED="1", TPU_NAME="pod")
    assert delete == [["gcloud", "compute", "tpus", "queued-resources", "delete", "pod", "--zone=europe-west4-a",
                       "--force", "--quiet"]]  # fmt: skip


def test_gpu_dry_run_installs_jax_cuda_and_trains_on_n_gpus():
    lines = dry_run("gpu.sh", "--gpus", "4", "--install", "configs/smollm2_sft.py", "--config.train.max_steps=9")
    assert lines == [
        [LAUNCH_PYTHON, "-m", "pip", "install", "-U", "jax[cuda12]"],
        [LAUNCH_PYTHON, "-m", "pip", "install", "-e", str(REPO)],
        ["env", "CUDA_VISIBLE_DEVICES=0,1,2,3", LAUNCH_PYTHON, "-m", "capt_jax.train", "--config",
         "configs/smollm2_sft.py", "--config.distributed.initialize=never", "--config.train.max_steps=9"],
    ]  # fmt: skip
    (docker,) = dry_run("gpu.sh", "--image", "nvcr.io/nvidia/jax:25.04-py3", "configs/smollm2_sft.py")
    assert docker[:4] == ["docker", "run", "--rm", "--gpus"] and "nvcr.io/nvidia/jax:25.04-py3" in docker
    assert f"{REPO}:/workspace/capt_jax" in docker
    assert docker[-1].startswith("pip install -q -U 'jax[cuda12]' -e . && exec env python -m capt_jax.train")


def test_slurm_dry_run_passes_coordinator_from_the_node_list(tmp_path):
    scontrol = tmp_path / "scontrol"  # `scontrol show hostnames` expands the node list
    scontrol.write_text("#!/bin/sh\necho gpu-node-007\necho gpu-node-008\n")
    scontrol.chmod(0o755)
    env = dict(
        PATH=f"{tmp_path}:{os.environ['PATH']}",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="gpu-node-[007-008]",
        SLURM_NTASKS="16",
        SLURM_JOB_NUM_NODES="2",
    )
    (srun,) = dry_run("slurm.sbatch", "configs/smollm2_sft.py", "--config.train.max_steps=9", **env)
    assert srun[:4] == ["srun", "--kill-on-bad-exit=1", "bash", "-c"]
    assert "JAX_LOCAL_DEVICE_IDS=$SLURM_LOCALID" in srun[4]  # 8 tasks per node: one GPU each
    assert "--config.distributed.process_id=$SLURM_PROCID" in srun[4]
    assert srun[5:] == [
        "capt_jax_task", LAUNCH_PYTHON, "-m", "capt_jax.train", "--config", "configs/smollm2_sft.py",
        "--config.train.max_steps=9", "--config.distributed.initialize=always",
        f"--config.distributed.coordinator_address=gpu-node-007:{61440 + 4242 % 4096}",
        "--config.distributed.num_processes=16",
    ]  # fmt: skip


def test_local_dry_run_and_help():
    lines = dry_run("local.sh", "2", "configs/smollm2_sft.py", "--config.train.max_steps=9", COORDINATOR_PORT="5555")
    assert [line[-1] for line in lines] == ["&", "&"]
    for process_id, line in enumerate(lines):
        assert "JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo" in line
        assert line[line.index("--config"):-1] == [
            "--config", "configs/smollm2_sft.py", "--config.train.max_steps=9",
            "--config.distributed.initialize=always", "--config.distributed.coordinator_address=127.0.0.1:5555",
            "--config.distributed.num_processes=2", f"--config.distributed.process_id={process_id}",
        ]  # fmt: skip
    for script in ("local.sh", "tpu_vm.sh", "gpu.sh", "slurm.sbatch"):
        help_text = subprocess.run([str(LAUNCH / script), "--help"], capture_output=True, text=True, check=True).stdout
        assert help_text.startswith("Usage:")


def test_launchers_prefer_the_checkouts_venv_when_python_is_unset(tmp_path):
    checkout = tmp_path / "checkout"
    shutil.copytree(LAUNCH, checkout / "launch")
    venv_python = checkout / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text('#!/bin/sh\nexec python3 "$@"\n')
    venv_python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    run = functools.partial(subprocess.run, cwd=checkout, capture_output=True, text=True, timeout=60)
    args = [str(checkout / "launch" / "local.sh"), "--dry-run", "1", "configs/x.py"]
    lines = run(args, env={**env, "COORDINATOR_PORT": "5555"}).stdout
    assert f"{venv_python} -m capt_jax.train" in lines
    lines = run(args, env={**env, "COORDINATOR_PORT": "5555", "PYTHON": "/opt/py"}).stdout
    assert "/opt/py -m capt_jax.train" in lines
