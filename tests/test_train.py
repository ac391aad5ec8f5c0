"""The training engine end to end: config errors, sharded equivalence, kill/resume, preemption, divergence (the
SmolLM2 SFT run is tests/test_bf16.py's float32 run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, write_sft_jsonl

SFT_CONFIG = str(REPO / "configs" / "smollm2_sft.py")


def losses(workdir: Path) -> dict[int, float]:
    """Step -> loss from the complete lines of metrics.jsonl (a running job may be mid-write)."""
    text = (workdir / "metrics.jsonl").read_text()
    lines = [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]
    return {m["step"]: m["loss"] for m in lines if "loss" in m}


def train_args(model_dir: Path, data: Path, workdir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "capt_jax.train",
        "--config",
        SFT_CONFIG,
        f"--config.model.path={model_dir}",
        f"--config.data.path={data}",
        f"--config.workdir={workdir}",
        "--config.data.holdout_fraction=0",
        "--config.train.batch_size=8",
        "--config.train.seq_len=64",
        "--config.train.learning_rate=3e-3",
        "--config.lora.dropout=0.1",
        *overrides,
    ]


def run(args: list[str], devices: int = 1, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def run_in_process(args: list[str]) -> None:
    """train_args' command run inside the test process, on its one CPU device: a run that needs no process of its
    own (no signal, no device count) shares the compiled step with the runs before it, where a command compiles."""
    from capt_jax.train import main

    main(args[3:])


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory) -> Path:
    return write_sft_jsonl(tmp_path_factory.mktemp("data") / "sft.jsonl", 160)


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.train.max_stepz=3", "unknown config key 'train.max_stepz' (did you mean 'train.max_steps'?)"),
        ("--config.train.batch_size=four", "config key 'train.batch_size': 'four' is not a valid int"),
        ("--config.mesh.data=3", "config key 'mesh': data=3 x fsdp=1 x tensor=1 = 3 devices, but 1 are available"),
        ("--config.model.remat=sometimes", "config key 'model.remat': 'sometimes' is not one of"),
        ("--config.data.path=/no/such.jsonl", "config key 'data.path': JSONL file '/no/such.jsonl' not found"),
    ],
)
def test_bad_config_fails_before_loading_with_key_named(override, message, capsys, sft_file):
    from capt_jax.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--config", SFT_CONFIG, f"--config.data.path={sft_file}", "--config.model.path=/not/loaded", override])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_jsonl_names_file_and_line(tmp_path, tiny_chat_dir, capsys):
    from capt_jax.train import main

    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(SystemExit):
        main(
            [
                "--config",
                SFT_CONFIG,
                f"--config.data.path={data}",
                f"--config.model.path={tiny_chat_dir}",
                f"--config.workdir={tmp_path / 'w'}",
            ]
        )
    assert f"{data}:2: field 'completion' is missing or not a string" in capsys.readouterr().err


SHARDED_STEPS = ["--config.train.max_steps=4", "--config.checkpoint.every_steps=100"]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory, tiny_chat_dir, sft_file) -> Path:
    """Workdir of the uninterrupted one-device run that every sharded mesh must reproduce."""
    workdir = tmp_path_factory.mktemp("one_device")
    run_in_process(train_args(tiny_chat_dir, sft_file, workdir, *SHARDED_STEPS))
    return workdir


def test_eight_devices_match_one_device(tmp_path, tiny_chat_dir, sft_file, one_device):
    mesh = ["--config.mesh.data=4", "--config.mesh.fsdp=2"]
    eight = run(train_args(tiny_chat_dir, sft_file, tmp_path / "eight", *SHARDED_STEPS, *mesh), devices=8)
    assert eight.returncode == 0, eight.stderr[-3000:]
    a, b = losses(one_device), losses(tmp_path / "eight")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert b == pytest.approx(a, rel=1e-5)


def test_tensor_parallel_mesh_matches_one_device(tmp_path, tiny_chat_dir, sft_file, one_device):
    """data=2 x fsdp=2 x tensor=2: heads, MLP and vocabulary split over tensor by config.mesh.rules."""
    mesh = ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]
    eight = run(train_args(tiny_chat_dir, sft_file, tmp_path / "eight", *SHARDED_STEPS, *mesh), devices=8)
    assert eight.returncode == 0, eight.stderr[-3000:]
    assert "sharding:" not in eight.stderr  # every axis of the tiny model divides
    assert losses(tmp_path / "eight") == pytest.approx(losses(one_device), rel=1e-5)


def test_relative_workdir_checkpoints_and_resumes(tmp_path, tiny_chat_dir, sft_file, monkeypatch, capsys):
    """Workdirs are usually given relative to where the command runs (the demo's is workdirs/demo)."""
    monkeypatch.chdir(tmp_path)
    args = train_args(
        tiny_chat_dir, sft_file, Path("rel/w"), "--config.train.max_steps=2", "--config.checkpoint.every_steps=1"
    )
    run_in_process(args)
    first = capsys.readouterr()
    assert (tmp_path / "rel" / "w" / "checkpoints" / "2").is_dir()
    run_in_process(args)
    again = capsys.readouterr()
    assert "already trained" in again.out
    assert "loading " in first.err and "loading " not in again.err  # a finished run loads no model
    run_in_process([*args, "--config.train.max_steps=3"])
    assert (tmp_path / "rel" / "w" / "checkpoints" / "3").is_dir()
    assert "train.max_steps is 3 now and was 2 when this workdir last ran: from step 2 on" in capsys.readouterr().out


def test_a_finished_workdir_pointed_at_other_data_is_refused(tmp_path, tiny_chat_dir, sft_file, capsys):
    """A finished run is not rebuilt (no model, no data), but data read from other files now may be other data: an
    experiment rerun on a new data_dir must not report models trained on the old one as if trained on it."""
    args = train_args(tiny_chat_dir, sft_file, tmp_path / "w", "--config.train.max_steps=1")
    run_in_process(args)
    moved = tmp_path / "moved.jsonl"
    moved.write_text(sft_file.read_text())
    run_in_process([*args, f"--config.data.path={moved}"])  # the same data elsewhere: still finished
    assert "already trained" in capsys.readouterr().out
    other = write_sft_jsonl(tmp_path / "other.jsonl", 150)
    with pytest.raises(SystemExit):
        run_in_process([*args, f"--config.data.path={other}"])
    assert "checkpoints/1: was trained on other data (160+0 pairs, " in capsys.readouterr().err


def kill_once_step_6_is_committed(args: list[str], workdir: Path) -> None:
    """Start a training command and SIGKILL it once checkpoint 6 is committed and step 7 has run."""
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        committed = (workdir / "checkpoints" / "6").is_dir()
        if committed and (workdir / "metrics.jsonl").exists() and max(losses(workdir), default=0) >= 7:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before the kill; it should be interrupted mid-run"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_sigkill_then_restart_reproduces_uninterrupted_losses(tmp_path, tiny_chat_dir, sft_file):
    """Kill hard once step 6 is committed and step 7 has run: the restart replays the rest bit for bit.

    Saves are async, so a step's metrics can land before its checkpoint is committed; the test waits
    for both, and max_steps leaves ample steps after that for the kill to interrupt training.
    """
    common = ["--config.train.max_steps=30", "--config.checkpoint.every_steps=3"]
    run_in_process(train_args(tiny_chat_dir, sft_file, tmp_path / "ref", *common))

    workdir = tmp_path / "killed"
    kill_once_step_6_is_committed(train_args(tiny_chat_dir, sft_file, workdir, *common), workdir)
    checkpoints = workdir / "checkpoints"
    assert not (checkpoints / "30").is_dir()
    # What a kill in the middle of the next async save leaves behind (made here, so it is always there).
    committed = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    (checkpoints / f"{committed + 3}.orbax-checkpoint-tmp-0" / "state").mkdir(parents=True, exist_ok=True)
    resumed = run(train_args(tiny_chat_dir, sft_file, workdir, *common))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {checkpoints}/{committed}\n" in resumed.stdout
    assert losses(workdir) == losses(tmp_path / "ref")  # every step, bit for bit
    # The half-written save is cleaned up, and checkpoint.keep holds as if the run had never stopped.
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted(
        p.name for p in (tmp_path / "ref" / "checkpoints").iterdir()
    )


def test_resumed_metrics_log_drops_replayed_steps_and_a_torn_last_line(tmp_path):
    """A hard kill can tear the last line of metrics.jsonl; the resumed run must still start and log cleanly."""
    from capt_jax.metrics import MetricsWriter

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n{"step": 3, "loss": 0.4}\n{"step": 4, "lo')
    writer = MetricsWriter(str(tmp_path), resume_step=2)
    writer.write({"step": 3, "loss": 0.25})
    writer.close()
    assert losses(tmp_path) == {1: 1.0, 2: 0.5, 3: 0.25}


def test_sigterm_saves_a_checkpoint_before_exiting(tmp_path, tiny_chat_dir, sft_file):
    workdir = tmp_path / "preempted"
    proc = subprocess.Popen(
        train_args(
            tiny_chat_dir, sft_file, workdir, "--config.train.max_steps=500", "--config.checkpoint.every_steps=1000"
        ),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not ((workdir / "metrics.jsonl").exists() and losses(workdir)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] == max(losses(workdir)), out
    assert "SIGTERM: saved checkpoint" in out


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_chat_dir, sft_file, capsys):
    workdir = tmp_path / "diverged"
    args = train_args(
        tiny_chat_dir,
        sft_file,
        workdir,
        "--config.train.max_steps=30",
        "--config.checkpoint.every_steps=1",
        "--config.checkpoint.async_save=false",
        "--config.train.learning_rate=1e9",
        "--config.train.grad_clip=0",
        "--config.train.warmup_ratio=0",
    )
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err[-3000:]
    assert "loss is nan" in err or "loss is inf" in err
    bad_step = int(err.split("error: step ")[1].split(":")[0])
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == bad_step - 1


def test_training_commands_keep_freed_memory_and_can_be_told_not_to():
    """The glibc settings of capt_jax.host_memory take on this host (glibc, no accelerator plugin), in a fresh
    process as a command applies them, and the environment switch turns them off."""
    code = "from capt_jax.host_memory import keep_freed_memory; print(keep_freed_memory())"
    for switch, expected in (("1", "True"), ("0", "False")):
        env = {**os.environ, "CAPT_JAX_KEEP_FREED_MEMORY": switch}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        assert out.stdout.strip() == expected
