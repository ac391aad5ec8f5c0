"""The optax partition: LoRA+ scales only B's updates; lora.extra_trainable trains exactly the leaves it names."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import REPO, write_sft_jsonl
from test_lora import random_batch

import capt_jax
from capt_jax import checkpoint as ckpt
from capt_jax.config import ConfigError, default_config, load_config
from capt_jax.lora import (
    extra_trainable_paths,
    flat,
    init_extras,
    init_lora,
    make_optimizer,
    overlay,
    partition_labels,
    warmup_cosine,
)
from capt_jax.model import param_shapes
from capt_jax.train import make_train_step

TARGETS = ("q_proj", "v_proj", "down_proj")


def one_step(model, trainable, b_lr_ratio: float):
    config = default_config()
    config.lora.rank, config.lora.alpha, config.lora.targets, config.lora.dropout = 4, 8.0, TARGETS, 0.0
    schedule = warmup_cosine(1e-2, 10, 0.0)
    optimizer = make_optimizer(schedule, 0.01, 1.0, b_lr_ratio=b_lr_ratio)
    state = {"step": jnp.array(0), "lora": trainable, "opt": optimizer.init(trainable), "rng": jax.random.key(1)}
    step = jax.jit(make_train_step(model.config, config, optimizer, schedule))
    return step(state, model.params, random_batch(1, 2, 16))[0]


def test_b_lr_ratio_scales_only_the_updates_of_b(tiny_llama_dir):
    model = capt_jax.load_pretrained(tiny_llama_dir, progress=False)
    adapters = init_lora(model.config, TARGETS, 4, jax.random.key(0))
    # B = 0 would leave A without a gradient; a nonzero B makes both factors move.
    adapters = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), adapters)
    plain, plus = one_step(model, adapters, 1.0), one_step(model, adapters, 16.0)
    for name in TARGETS:
        before, a, b = adapters["layers"][name], plain["lora"]["layers"][name], plus["lora"]["layers"][name]
        np.testing.assert_array_equal(np.asarray(a["a"]), np.asarray(b["a"]), err_msg=name)
        assert not np.array_equal(np.asarray(a["a"]), np.asarray(before["a"])), name
        np.testing.assert_allclose(b["b"] - before["b"], 16 * (a["b"] - before["b"]), rtol=1e-4, atol=1e-7)


def test_extra_trainable_adds_exactly_those_leaves_to_the_optimizer_state(tiny_qwen2_dir):
    model = capt_jax.load_pretrained(tiny_qwen2_dir, progress=False)
    names = ("layers.input_norm", "layers.q_proj.bias", "final_norm")
    paths = extra_trainable_paths(names, param_shapes(model.config))
    adapters = init_lora(model.config, TARGETS, 4, jax.random.key(0))
    trainable = overlay(adapters, init_extras(model.params, paths))
    labels = flat(partition_labels(trainable))
    assert {p for p, label in labels.items() if label == "extra"} == set(paths)
    assert all(label in ("lora_a", "lora_b") for p, label in labels.items() if p not in paths)

    opt = make_optimizer(1e-3, 0.01, 1.0).init(trainable)
    moments = {
        keys[keys.index("mu") + 1 :]
        for path, leaf in jax.tree_util.tree_flatten_with_path(opt)[0]
        if "mu" in (keys := tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path))
    }
    assert moments == set(flat(adapters)) | set(paths)  # one Adam moment per trainable leaf, none for the base
    assert sum(x.size for x in jax.tree.leaves(opt) if x.ndim) == 2 * sum(x.size for x in jax.tree.leaves(trainable))

    new = one_step(model, trainable, 1.0)["lora"]
    for path in paths:
        assert not np.array_equal(np.asarray(flat(new)[path]), np.asarray(flat(trainable)[path])), path


@pytest.mark.parametrize(
    "name, message",
    [
        ("layers.q_proj.weight", "is not a norm or bias"),
        ("layers.inputnorm", "is not a norm or bias"),
        ("layers.q_proj.bias", "do not exist in"),  # Llama: no q/k/v biases
    ],
)
def test_extra_trainable_errors_name_the_key(tiny_llama_dir, name, message):
    config = capt_jax.ModelConfig.from_pretrained_dir(tiny_llama_dir)
    with pytest.raises(ConfigError, match=f"config key 'lora.extra_trainable'.*{message}"):
        extra_trainable_paths((name,), param_shapes(config), str(tiny_llama_dir))


def test_training_with_extras_checkpoints_them_and_merges_them_on_export(tmp_path, tiny_chat_dir):
    from capt_jax.export import ExportError, export
    from capt_jax.train import train

    data = write_sft_jsonl(tmp_path / "train.jsonl", 8)
    overrides = [
        f"--config.model.path={tiny_chat_dir}",
        f"--config.data.path={data}",
        f"--config.workdir={tmp_path / 'w'}",
        "--config.train.max_steps=2",
        "--config.train.learning_rate=1e-2",
        "--config.train.warmup_ratio=0",
        "--config.train.seq_len=64",
        "--config.train.batch_size=2",
        "--config.lora.rank=4",
        "--config.lora.b_lr_ratio=16",
        "--config.lora.extra_trainable=layers.input_norm,final_norm",
    ]
    train(load_config(REPO / "configs" / "smollm2_sft.py", overrides))
    trainable, meta = ckpt.restore_adapters(str(tmp_path / "w"))
    assert meta["lora"]["extra_trainable"] == ["layers.input_norm", "final_norm"]
    base = capt_jax.load_pretrained(tiny_chat_dir, progress=False).params
    for path in (("layers", "input_norm"), ("final_norm",)):
        assert not np.array_equal(np.asarray(flat(trainable)[path]), np.asarray(flat(base)[path])), path
    with pytest.raises(ExportError, match="peft adapter folder holds LoRA factors only"):
        export(tmp_path / "w", tmp_path / "peft", "peft", progress=False)
    merged = capt_jax.load_pretrained(export(tmp_path / "w", tmp_path / "merged", "merged", progress=False))
    np.testing.assert_array_equal(np.asarray(merged.params["final_norm"]), np.asarray(trainable["final_norm"]))


def test_pre_port_checkpoint_fails_to_resume_naming_it_and_what_changed(tmp_path):
    """A checkpoint without state_layout (written before the Flax port) is refused with a reason."""
    mgr = ckpt.manager(str(tmp_path), async_save=False)
    state = {"step": jnp.array(3), "lora": {"layers": {"q_proj": {"a": jnp.ones((1, 2, 3)), "b": jnp.ones((1, 3, 2))}}}}
    mgr.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({})))
    mgr.wait_until_finished()
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoints/3: written by capt_jax before the Flax port"):
        ckpt.restore(mgr, state)
    assert ckpt.restore_adapters(str(tmp_path))[0]["layers"]["q_proj"]["a"].shape == (1, 2, 3)  # export still reads it
