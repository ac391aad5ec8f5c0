"""Exports load in transformers / peft and give capt_jax's adapted logits; safetensors round-trips; clear errors."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from conftest import REPO, write_sft_jsonl

import capt_jax
from capt_jax import checkpoint as ckpt
from capt_jax.config import load_config
from capt_jax.export import ExportError, export, main
from capt_jax.lora import lora_scale, merge_lora
from capt_jax.model import Lora, ModelConfig, forward
from capt_jax.train import train
from capt_jax.weights import SafetensorsFolder, hf_state_dict, load_params, save_safetensors

RANK, ALPHA = 4, 8.0


@pytest.fixture(scope="module")
def workdir(tiny_chat_dir, tmp_path_factory):
    """Two steps at a large learning rate on every projection, checkpointed at steps 1 and 2."""
    root = tmp_path_factory.mktemp("export")
    data = write_sft_jsonl(root / "train.jsonl", 8)
    overrides = [
        f"--config.model.path={tiny_chat_dir}",
        f"--config.data.path={data}",
        f"--config.workdir={root / 'w'}",
        "--config.train.max_steps=2",
        "--config.checkpoint.every_steps=1",
        "--config.train.learning_rate=1e-2",
        "--config.train.warmup_ratio=0",
        "--config.data.holdout_fraction=0",
        "--config.train.seq_len=64",
        "--config.train.batch_size=2",
        f"--config.lora.rank={RANK}",
        f"--config.lora.alpha={ALPHA}",
        "--config.lora.targets=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    ]
    train(load_config(REPO / "configs" / "smollm2_sft.py", overrides))
    return root / "w"


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 49152, (2, 12)).astype(np.int32)


@pytest.fixture(scope="module")
def reference(workdir, tiny_chat_dir, tokens) -> tuple[np.ndarray, np.ndarray]:
    """capt_jax logits (base, base + adapter) for `tokens`, from the latest checkpoint."""
    adapters, _ = ckpt.restore_adapters(str(workdir))
    for name, adapter in adapters["layers"].items():
        assert np.abs(np.asarray(adapter["b"])).max() > 0, f"{name}: B is still zero, the export test would be vacuous"
    model = capt_jax.load_pretrained(tiny_chat_dir, progress=False)
    ids = jnp.asarray(tokens)
    base = forward(model.params, ids, model.config)[0]
    adapted = forward(model.params, ids, model.config, lora=Lora(adapters, lora_scale(RANK, ALPHA)))[0]
    return np.asarray(base), np.asarray(adapted)


def relative_error(got: torch.Tensor, want: np.ndarray) -> float:
    return float(np.abs(got.detach().float().numpy() - want).max() / np.abs(want).max())


def test_peft_export_loads_in_peft_and_matches(workdir, tiny_chat_dir, tokens, reference, tmp_path):
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    out = export(workdir, tmp_path / "peft", "peft", progress=False)
    base_logits, want = reference
    assert relative_error(torch.tensor(base_logits), want) > 1e-2  # the adapter really changes the model
    config = PeftConfig.from_pretrained(out)
    assert (config.peft_type, config.r, config.lora_alpha) == ("LORA", RANK, ALPHA)
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert config.base_model_name_or_path == str(tiny_chat_dir.resolve())
    base = AutoModelForCausalLM.from_pretrained(tiny_chat_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(tokens, dtype=torch.long)).logits
    assert relative_error(logits, want) <= 1e-4
    assert (out / "tokenizer.json").read_bytes() == (tiny_chat_dir / "tokenizer.json").read_bytes()


def test_merged_export_loads_in_transformers_and_matches(workdir, tiny_chat_dir, tokens, reference, tmp_path):
    from transformers import AutoModelForCausalLM

    out = export(workdir, tmp_path / "merged", "merged", progress=False)
    assert "lm_head.weight" not in SafetensorsFolder(out)  # tied: transformers ties it on load
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (tiny_chat_dir / name).read_bytes(), name
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(tokens, dtype=torch.long)).logits
    assert relative_error(logits, reference[1]) <= 1e-4


def test_merged_bfloat16_export_rounds_the_float32_merge_once(workdir, tiny_chat_dir, tmp_path):
    from transformers import AutoConfig

    out = export(workdir, tmp_path / "merged_bf16", "merged", dtype="bfloat16", progress=False)
    assert AutoConfig.from_pretrained(out).dtype == torch.bfloat16
    adapters, _ = ckpt.restore_adapters(str(workdir))
    config = ModelConfig.from_pretrained_dir(tiny_chat_dir)
    merged = merge_lora(load_params(tiny_chat_dir, config, progress=False), adapters, lora_scale(RANK, ALPHA))
    want = hf_state_dict(jax.tree.map(lambda x: x.astype(jnp.bfloat16), merged), config)
    got = SafetensorsFolder(out)
    for name, array in want.items():
        assert got.read(name).dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(got.read(name), array, err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_untied_state_dict_round_trips_through_safetensors(tiny_llama_dir, tmp_path, dtype):
    from safetensors import safe_open

    config = ModelConfig.from_pretrained_dir(tiny_llama_dir)
    params = load_params(tiny_llama_dir, config, dtype=dtype, progress=False)
    tensors = hf_state_dict(params, config)
    original = json.loads((tiny_llama_dir / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(tensors) == set(original) and "lm_head.weight" in tensors
    shutil.copy(tiny_llama_dir / "config.json", tmp_path / "config.json")
    save_safetensors(tmp_path / "model.safetensors", tensors)
    back = load_params(tmp_path, config, dtype=dtype, progress=False)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), params, back)
    source = SafetensorsFolder(tiny_llama_dir)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:  # the reference reader agrees on every byte
        assert f.metadata() == {"format": "pt"}
        for name, array in tensors.items():
            np.testing.assert_array_equal(f.get_tensor(name).float().numpy(), array.astype(np.float32))
            if dtype == "float32":
                np.testing.assert_array_equal(array, source.read(name))


def cli_error(capsys, *args: str) -> str:
    """Run the CLI expecting a clean failure: exit 2 and one `error: ...` line, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint found"):
        export(tmp_path / "nothing", tmp_path / "out", "peft", progress=False)
    err = cli_error(capsys, "--workdir", tmp_path / "nothing", "--out", tmp_path / "out", "--format", "merged")
    assert f"{tmp_path / 'nothing' / 'checkpoints'}: no checkpoint found" in err
    assert not (tmp_path / "out").exists()


def test_missing_step_lists_the_available_ones(workdir, tmp_path, capsys):
    err = cli_error(capsys, "--workdir", workdir, "--out", tmp_path / "out", "--format", "peft", "--step", "7")
    assert "no checkpoint at step 7; available steps: [1, 2]" in err
    out = export(workdir, tmp_path / "step1", "peft", step=1, progress=False)
    adapters, _ = ckpt.restore_adapters(str(workdir), step=1)
    lora_b = SafetensorsFolder(out).read("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight")
    np.testing.assert_array_equal(lora_b, np.asarray(adapters["layers"]["down_proj"]["b"][1]))


def test_moved_base_model_is_a_clear_error(workdir, tiny_chat_dir, tmp_path, capsys):
    moved = tmp_path / "w"
    shutil.copytree(workdir, moved)
    for meta_file in (moved / "checkpoints").glob("*/meta/metadata"):
        meta = json.loads(meta_file.read_text())
        meta_file.write_text(json.dumps({**meta, "base_model": str(tmp_path / "gone")}))
    with pytest.raises(ExportError, match="cannot be found"):
        export(moved, tmp_path / "out", "merged", progress=False)
    err = cli_error(capsys, "--workdir", moved, "--out", tmp_path / "out", "--format", "merged")
    assert f"base model '{tmp_path / 'gone'}' (from {moved / 'checkpoints' / '2' / 'meta'}) cannot be found" in err
    assert "--base-model" in err
    main(
        [
            str(a)
            for a in ("--workdir", moved, "--out", tmp_path / "out", "--format", "peft", "--base-model", tiny_chat_dir)
        ]
    )
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_non_empty_out_needs_overwrite(workdir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous export")
    err = cli_error(capsys, "--workdir", workdir, "--out", out, "--format", "peft")
    assert f"{out}: already exists and is not empty; pass --overwrite" in err
    assert (out / "keep.txt").is_file()
    main(["--workdir", str(workdir), "--out", str(out), "--format", "peft", "--overwrite"])
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(("tokenizer", "chat_template"))) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind
