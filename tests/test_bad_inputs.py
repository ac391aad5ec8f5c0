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
# The settings the `world` workdir was trained with, so that a resume there is refused only for what a case changes.
ON_WORK = [
    "--config",
    SFT,
    "--config.data.path={sft}",
    "--config.model.path={model}",
    "--config.workdir={work}",
    "--config.train.batch_size=2",
]
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
    write_sft_jsonl(root / "other.jsonl", 20)
    no_settings = root / "no_settings"
    shutil.copytree(workdir, no_settings)
    (no_settings / "config.json").unlink()
    (root / "no_config").mkdir()
    truncated = root / "truncated"
    shutil.copytree(tiny_chat_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    wrong_shape = root / "wrong_shape"
    shutil.copytree(tiny_chat_dir, wrong_shape)
    config = json.loads((wrong_shape / "config.json").read_text())
    (wrong_shape / "config.json").write_text(json.dumps({**config, "hidden_size": 32, "head_dim": 8}))
    no_chat = root / "no_chat"
    shutil.copytree(tiny_chat_dir, no_chat)
    (no_chat / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer_config = json.loads((no_chat / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (no_chat / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    no_tokenizer = root / "no_tokenizer"
    shutil.copytree(tiny_chat_dir, no_tokenizer)
    for file in no_tokenizer.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges")):
            file.unlink()
    (root / "a_file").write_text("not a folder\n")
    (root / "not.gguf").write_text("garbage\n")
    (root / "raises.py").write_text("def get_config():\n    return 1 / 0\n")
    (root / "not_json.jsonl").write_text("{not json\n")
    (root / "prontoqa.json").write_text(json.dumps({"next_steps": [{"Facts": "Every cat is a feline."}] * 20}))
    (root / "broken.json").write_text("[1, 2")
    return {
        "root": root,
        "work": workdir,
        "corrupt": corrupt,
        "no_settings": no_settings,
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
        [*ON_WORK, "--config.workdir={corrupt}"],
        "checkpoints/1: cannot be restored",
    ),
    (
        "train",
        [*ON_WORK, "--config.lora.rank=4", "--config.train.learning_rate=0.1"],
        "config.json: this workdir was trained with other settings (lora.rank: 16 there, 4 now; "
        "train.learning_rate: 0.001 there, 0.1 now)",
    ),
    (  # data.path may move, but not to other data
        "train",
        [*ON_WORK, "--config.data.path={root}/other.jsonl"],
        "checkpoints/1: was trained on other data (15+1 pairs, ",
    ),
    (  # a workdir without its config.json (as one from before it was written) is still checked by shapes
        "train",
        [*ON_WORK, "--config.workdir={no_settings}", "--config.lora.rank=4"],
        "trainable leaves differ, ['layers']['k_proj']['a']: stored (2, 16, 64), this run (2, 4, 64)",
    ),
    ("train", ["--config", SFT, "--config.data.path={sft}", "--config.workdir={root}/a_file"], "is a file, not a"),
    ("train", ["--config", SFT, "--config.data.path={sft}", "--config.workdir=/proc/capt/w"], "cannot write in /proc"),
    (
        "train",
        ["--config", SFT, "--config.data.path={sft}", "--config.model.path={model}", "--config.train.seq_len=4"],
        "config key 'train.seq_len'=4: no training sequence keeps a token of its loss",
    ),
    (
        "train",
        ["--config", SFT, "--config.data.path={sft}", "--config.model.path={root}/no_chat"],
        "the tokenizer has no chat template; train it on plain text with --config.data.chat_template=False",
    ),
    ("train", ["--config", SFT, "--config.data.path={sft}", "--config.model.path={root}/not.gguf"], "not a GGUF"),
    ("train", ["--config", SFT, "--config.data.path={root}"], "is a folder, not a file"),
    ("train", ["--config", SFT, "--config.lora.targets=q_proj,q_proj"], "must be distinct names among"),
    ("train", ["--config", SFT, "--config.train.warmup_ratio=1.5"], "'train.warmup_ratio': 1.5 must be in [0, 1]"),
    ("train", ["--config", SFT, "--config.model.quantize=nf5"], "config key 'model.quantize': 'nf5' is not one of"),
    ("train", ["--config", SFT, "--config.model.double_quant=true"], "config key 'model.double_quant': quantizes"),
    (
        "train",
        [*ON_WORK, "--config.model.quantize=nf4"],
        "config keys 'model.quantize' and 'model.double_quant'",
    ),
    ("evaluate", ["--config", DEMO, "--workdir={root}/missing", *TINY_DATA], "no checkpoint found"),
    (
        "evaluate",
        ["--config", DEMO, "--config.eval.estimator=gold"],
        "config key 'eval.estimator': 'gold' is not one of",
    ),
    ("evaluate", ["--config", DEMO, "--base-only", "--config.model.path={root}/truncated", *TINY_DATA], "truncated"),
    ("evaluate", ["--config", DEMO, "--workdir={work}", *TINY_DATA], "was it trained on another model?"),
    ("evaluate", ["--config", DEMO, "--config.eval.splits=id,foo"], "'eval.splits': ['id', 'foo'] must be distinct"),
    ("evaluate", ["--config", DEMO, "--workdir={work}", "--out={root}/a_file"], "--out='{root}/a_file': is a file"),
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
    ("generate", ["--prompt=hi", "--config.eval.batch_size=0"], "config key 'eval.batch_size': 0 must be > 0"),
    ("generate", ["--prompt=hi", "--chat", "--config.model.path={root}/no_chat"], "or generate without --chat"),
    ("demo", ["--config.train.max_step=1"], "unknown config key 'train.max_step' (did you mean 'train.max_steps'?)"),
    ("experiment", ["--config", DEMO, "--methods=sft,dpo"], "--methods"),
    ("experiment", ["--config", DEMO, "--seeds=0,0"], "--seeds: '0,0' must be a comma-separated list of distinct"),
    ("experiment", ["--config", DEMO, "--report", "--workdir={root}/none"], "no experiment here to report on"),
    ("demo", ["--workdir={root}/a_file"], "--workdir='{root}/a_file': is a file, not a folder"),
    ("data", ["export", "--out={root}"], "--out='{root}': is a folder; give the file to write"),
    ("data", ["show", "--split=dev"], "flag --split=dev"),
    ("data", ["show", "--config.data.dataset=imdb"], "config key 'data.dataset': 'imdb' is not one of"),
    ("data", ["shuffle"], "unknown subcommand 'shuffle'"),
    ("convert", ["--gguf={root}/missing.gguf", "--out={root}/converted"], "missing.gguf: GGUF file not found"),
    ("convert", ["--gguf={root}/not.gguf", "--out={root}/converted"], "not.gguf: not a GGUF file"),
    ("convert", ["--out={work}"], "work: already exists and is not empty; pass --overwrite to replace it"),
    ("bench", [], "a subcommand is needed"),
    ("bench", ["train", "--arch=tiny", "--config.train.batch_size=0"], "'train.batch_size': 0 must be > 0"),
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
    # Found by an audit of user mistakes on 2026-12-06: each of these ended in a traceback or did the wrong thing.
    (
        "train",
        ["--config", SFT, "--config.data.path={sft}", "--config.model.path={root}/no_tokenizer"],
        "no_tokenizer: the model folder has no tokenizer; training needs one",
    ),
    ("train", ["--config", SFT, "--config.seed=-1"], "config key 'seed': -1 must be >= 0"),
    ("train", ["--config", SFT, "--config.train.learning_rate=nan"], "'train.learning_rate': nan must be a finite"),
    ("generate", ["--prompt=hi", "--config.eval.temperature=inf"], "'eval.temperature': inf must be a finite number"),
    (  # refused when the run starts, before the model loads (`generate` reads no model.attention_impl)
        "train",
        [*ON_WORK, "--config.workdir={root}/cudnn", "--config.model.attention_impl=cudnn"],
        "config key 'model.attention_impl': 'cudnn' runs on a GPU in bfloat16 or float16 only",
    ),
    (
        "train",
        ["--config", SFT, "--config.data.kind=capt", "--config.data.dataset=cladder", "--config.data.source=generate"],
        "config key 'data.source': 'generate' makes prontoqa data only",
    ),
    ("data", ["show", "--config", DEMO, "--config.data.source=download"], "'download' makes cladder data only"),
    (  # the depth is checked before the first too-deep draw, whichever comes
        "data",
        ["show", "--config", DEMO, "--config.data.prontoqa_hops=(6,8)"],
        "'data.prontoqa_hops': the generator's true ontology holds proofs of at most 7 hops, not 8",
    ),
    ("data", ["show", "--config", DEMO, "--config.data.prontoqa_hops=(0,2)"], "a count or a (low, high) range"),
    ("data", ["show", "--config", DEMO, "--config.data.data_file={root}/prontoqa.json"], "is not read when data.sou"),
    (  # a split the generated data cannot make names the generator's data
        "data",
        ["show", "--split=anti", "--config", DEMO, "--config.data.prontoqa_hops=7"],
        "<generated true ontology, seed 0>: anti: example",
    ),
    ("data", ["report", "--config.data.data_dir={root}/missing"], "'data.data_dir': '{root}/missing' not found"),
    ("export", ["--workdir={work}", "--out=/proc/capt_out", "--format=peft"], "cannot write in /proc"),
    ("export", ["--workdir={work}", "--out={root}/a_file", "--format=peft", "--overwrite"], "is a file, not a folder"),
    ("experiment", ["--config", DEMO, "--seeds=-1"], "--seeds: '-1' must be integers >= 0"),
    (  # a training setting fails before the base model is evaluated
        "experiment",
        ["--config", DEMO, "--methods=base,sft", "--config.train.learning_rate=-1", "--workdir={root}/exp"],
        "config key 'train.learning_rate': -1.0 must be > 0",
    ),
    (
        "experiment",
        ["--config", DEMO, "--methods=base,sft", "--config.model.attention_impl=cudnn", "--workdir={root}/exp"],
        "config key 'model.attention_impl': 'cudnn' runs on a GPU",
    ),
    ("bench", ["train", "--arch=tiny", "--peak-flops=-5"], "--peak-flops"),
    ("export", ["--workdir={root}/a_file", "--out={root}/out", "--format=peft"], "a_file: is a file, not a workdir"),
    (
        "train",
        ["--config", SFT, "--config.data.path={sft}", "--config.model.path="],
        "the model path (model.path, or --base-model) is empty",
    ),
    (
        "data",
        ["show", "--config", DEMO, "--config.data.source=files", "--config.data.data_file={root}"],
        "is a folder, not a data file",
    ),
]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command, args, names", CASES, ids=[f"{c}-{i}" for i, (c, *_) in enumerate(CASES)])
def test_bad_input_is_one_clean_error_line(world, command, args, names, capsys):
    assert_one_error_line(world, command, args, names, capsys)
    if command == "experiment":
        assert not (world["root"] / "exp").exists()


def test_files_source_without_any_data_folder_names_the_key(world, monkeypatch, capsys):
    from capt_jax.data import sources

    monkeypatch.setattr(sources, "default_data_dir", lambda: None)
    args = ["show", "--config", DEMO, "--config.data.source=files"]
    assert_one_error_line(world, "data", args, "config key 'data.data_dir': data.source='files' needs", capsys)


def assert_one_error_line(world, command: str, args: list[str], names: str, capsys) -> None:
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


def test_a_cudnn_failure_on_the_device_keeps_its_traceback_and_names_the_way_out():
    """Not a user mistake, so no `error:` line: the device's own error stays, with a note on model.attention_impl.
    Any other device error is left as it is."""
    import jax

    from capt_jax import cli

    def fails_with(message):
        def body(config, values):
            raise jax.errors.JaxRuntimeError(message)

        return body

    command = cli.Command("usage")
    with pytest.raises(jax.errors.JaxRuntimeError) as raised:
        cli.run(
            command, fails_with("INTERNAL: No valid engine configs for Matmul_MUL (cudnn_dot_product_attention)"), []
        )
    assert any("--config.model.attention_impl=xla" in note for note in raised.value.__notes__)
    with pytest.raises(jax.errors.JaxRuntimeError) as raised:
        cli.run(command, fails_with("RESOURCE_EXHAUSTED: Out of memory allocating 4.0GiB (__cudnn$fmha)"), [])
    assert not getattr(raised.value, "__notes__", None)
