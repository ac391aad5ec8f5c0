"""Every command against bad inputs: exit code 2, one `error:` line naming the file, key or record, no traceback,
and no existing file of the workdir changed."""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO, write_sft_jsonl

SFT = str(REPO / "configs" / "smollm2_sft.py")
DEMO = str(REPO / "configs" / "demo_prontoqa.py")
TINY_DATA = ["--config.data.source=generate", "--config.data.prontoqa_num_examples=40", "--config.data.n_train=4"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_chat_dir):
    """Files the bad inputs point at: a trained workdir, broken models, broken data and configs."""
    from capt_jax.train import main as train_main

    root = tmp_path_factory.mktemp("bad")
    sft = write_sft_jsonl(root / "sft.jsonl", 16)
    workdir = root / "work"
    train_main(
        [
            "--config",
            SFT,
            f"--config.model.path={tiny_chat_dir}",
            f"--config.data.path={sft}",
            f"--config.workdir={workdir}",
            "--config.train.max_steps=1",
            "--config.train.batch_size=2",
            "--config.checkpoint.every_steps=1",
        ]
    )
    corrupt = root / "corrupt"
    shutil.copytree(workdir, corrupt)
    for file in (corrupt / "checkpoints" / "1" / "state").rglob("*"):
        if file.is_file() and file.stat().st_size > 100:
            file.write_bytes(file.read_bytes()[:50])
    (root / "no_config").mkdir()
    truncated = root / "truncated"
    shutil.copytree(tiny_chat_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    wrong_shape = root / "wrong_shape"
    shutil.copytree(tiny_chat_dir, wrong_shape)
    config = json.loads((wrong_shape / "config.json").read_text())
    (wrong_shape / "config.json").write_text(json.dumps({**config, "hidden_size": 32, "head_dim": 8}))
    (root / "raises.py").write_text("def get_config():\n    return 1 / 0\n")
    (root / "not_json.jsonl").write_text("{not json\n")
    (root / "prontoqa.json").write_text(json.dumps({"next_steps": [{"Facts": "Every cat is a feline."}] * 20}))
    (root / "broken.json").write_text("[1, 2")
    return {
        "root": root,
        "work": workdir,
        "corrupt": corrupt,
        "model": tiny_chat_dir,
        "sft": sft,
    }


CASES = [
    # (command, arguments with {placeholders} from `world`, what the error line must name)
    ("train", ["--config", SFT, "--config.train.max_stepz=3"], "unknown config key 'train.max_stepz' (did you mean"),
    ("train", ["--config", SFT, "--config.train.batch_size=four"], "config key 'train.batch_size': 'four' is not"),
    ("train", ["--config", "{root}/nope.py"], "nope.py: config file not found"),
    ("train", ["--config", "{root}/raises.py"], "raises.py: could not be executed: ZeroDivisionError"),
    ("train", ["--config", SFT, "--config.data.path={root}/not_json.jsonl"], "not_json.jsonl:1: not valid JSON"),
    ("train", ["--config", SFT, "--config.data.path={sft}", "--config.mesh.fsdp=3"], "'mesh.fsdp'=3"),
    ("train", ["--config", SFT, "--config.data.path={sft}", "--workdir=x"], "Unknown command line flag 'workdir'"),
    (
        "train",
        [
            "--config",
            SFT,
            "--config.data.kind=capt",
            "--config.data.dataset=prontoqa",
            "--config.data.data_file={root}/prontoqa.json",
        ],
        "prontoqa.json: record 0, field 'Query': missing field",
    ),
    (
        "train",
        [
            "--config",
            SFT,
            "--config.data.path={sft}",
            "--config.model.path={root}/no_config",
            "--config.workdir={work}",
        ],
        "config.json",
    ),
    (
        "train",
        ["--config", SFT, "--config.data.path={sft}", "--config.model.path={model}", "--config.workdir={corrupt}"],
        "checkpoints/1: cannot be restored",
    ),
    ("train", ["--config", SFT, "--config.model.quantize=nf5"], "config key 'model.quantize': 'nf5' is not one of"),
    ("train", ["--config", SFT, "--config.model.double_quant=true"], "config key 'model.double_quant': quantizes"),
    (
        "train",
        [
            "--config",
            SFT,
            "--config.data.path={sft}",
            "--config.model.path={model}",
            "--config.workdir={work}",
            "--config.model.quantize=nf4",
        ],
        "config keys 'model.quantize' and 'model.double_quant'",
    ),
    ("evaluate", ["--config", DEMO, "--workdir={root}/missing", *TINY_DATA], "no checkpoint found"),
    (
        "evaluate",
        ["--config", DEMO, "--config.eval.estimator=gold"],
        "config key 'eval.estimator': 'gold' is not one of",
    ),
    ("evaluate", ["--config", DEMO, "--base-only", "--config.model.path={root}/truncated", *TINY_DATA], "truncated"),
    ("evaluate", ["--config", DEMO, "--workdir={corrupt}", "--config.model.path={model}", *TINY_DATA], "checkpoints"),
    (
        "evaluate",
        [
            "--config",
            DEMO,
            "--workdir={work}",
            "--config.model.path={model}",
            "--config.eval.estimator=openai",
            "--config.eval.openai_base_url=http://127.0.0.1:9/v1",
            "--config.eval.openai_api_key_env=HOME",
            *TINY_DATA,
        ],
        "config key 'eval.openai_base_url': cannot reach http://127.0.0.1:9/v1",
    ),
    (
        "evaluate",
        ["--config", DEMO, "--config.data.data_file={root}/broken.json", "--config.data.source=files"],
        "broken.json: malformed JSON",
    ),
    ("export", ["--workdir={root}/missing", "--out={root}/out", "--format=peft"], "no checkpoint found"),
    ("export", ["--workdir={work}", "--out={root}/out"], "--format is required"),
    ("export", ["--workdir={work}", "--out={root}/out", "--format=onnx"], "flag --format=onnx"),
    ("generate", ["--prompt=hi", "--config.model.path={root}/missing"], "expected a model folder"),
    ("generate", ["--prompt=hi", "--config.model.path={root}/wrong_shape"], "shape"),
    ("generate", ["--prompt=hi", "--config.model.path={root}/no_config"], "config.json"),
    ("generate", ["--prompt=hi", "--config.model.quantize=int4"], "config key 'model.quantize': 'int4' is not one of"),
    ("demo", ["--config.train.max_step=1"], "unknown config key 'train.max_step' (did you mean 'train.max_steps'?)"),
    ("experiment", ["--config", DEMO, "--methods=sft,dpo"], "--methods"),
    ("data", ["show", "--split=dev"], "flag --split=dev"),
    ("data", ["show", "--config.data.dataset=imdb"], "config key 'data.dataset': 'imdb' is not one of"),
    ("data", ["shuffle"], "unknown subcommand 'shuffle'"),
    ("convert", ["--gguf={root}/missing.gguf", "--out={root}/converted"], "missing.gguf: GGUF file not found"),
    (
        "bench",
        ["train", "--arch=tiny", "--config.lora.rnk=4"],
        "unknown config key 'lora.rnk' (did you mean 'lora.rank'?)",
    ),
    ("bench", ["generate", "--arch=gpt5"], "--arch 'gpt5' is not one of"),
    (
        "bench",
        ["train", "--arch=tiny", "--config.model.quantize=nf3"],
        "config key 'model.quantize': 'nf3' is not one of",
    ),
]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command, args, names", CASES, ids=[f"{c}-{i}" for i, (c, *_) in enumerate(CASES)])
def test_bad_input_is_one_clean_error_line(world, command, args, names, capsys):
    module = importlib.import_module("capt_jax.data.__main__" if command == "data" else f"capt_jax.{command}")
    args = [a.format(**{k: str(v) for k, v in world.items()}) for a in args]
    before = {name: snapshot(world[name]) for name in ("work", "corrupt")}
    with pytest.raises(SystemExit) as exit_:
        module.main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "it/s" not in line and not line.startswith("\r")]
    assert exit_.value.code == 2, err
    assert "Traceback" not in err
    assert lines[-1].startswith("error: ") and names.format(**world) in lines[-1], err
    assert sum(line.startswith("error: ") for line in lines) == 1
    assert {name: snapshot(world[name]) for name in ("work", "corrupt")} == before


@pytest.mark.parametrize(
    "command, args",
    [(c, []) for c in ("train", "evaluate", "experiment", "export", "generate", "demo", "convert")]
    + [("data", ["show"]), ("data", ["export"]), ("data", ["report"]), ("bench", ["train"]), ("bench", ["generate"])],
)
def test_help_lists_the_flags_and_the_config_keys(command, args, capsys):
    module = importlib.import_module("capt_jax.data.__main__" if command == "data" else f"capt_jax.{command}")
    module.main([*args, "--help"])
    out = capsys.readouterr().out
    assert out.startswith(module.__doc__.strip().splitlines()[0])
    assert "Config (--config FILE, then --config.KEY=VALUE overrides" in out and "--config." in out
