"""Logical axes: every variable is named, and config.mesh.rules give the expected PartitionSpecs on a
(data=2, fsdp=2, tensor=2) mesh of 8 fake CPU devices, for parameters, adapters, Adam moments and activations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from conftest import REPO

PROBE = textwrap.dedent(
    """
    import json, logging, sys
    import flax.linen as nn
    import jax
    import capt_jax
    from capt_jax.config import default_config
    from capt_jax.lora import flat, init_lora, make_optimizer
    from capt_jax.model import ModelConfig
    from capt_jax.model.decoder import PROJECTIONS, abstract_variables, axis_sizes, lora_axes, param_axes
    from capt_jax.model.layers import LOGICAL_AXES, AdapterConfig
    from capt_jax.sharding import batch_sharding, make_layout, make_mesh, mirrored_axes, placer

    warnings = []
    logging.getLogger("capt_jax.sharding").addHandler(logging.Handler())
    logging.getLogger("capt_jax.sharding").handlers[-1].emit = lambda record: warnings.append(record.getMessage())

    folder = sys.argv[1]
    config = ModelConfig.from_pretrained_dir(folder)
    variables = abstract_variables(config, AdapterConfig(PROJECTIONS, 4))
    boxed = lambda x: isinstance(x, nn.LogicallyPartitioned)
    unnamed = [
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_flatten_with_path(variables, is_leaf=boxed)[0]
        if not boxed(leaf) or len(leaf.names) != leaf.value.ndim or not set(leaf.names) <= set(LOGICAL_AXES)
    ]
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = default_config().mesh.rules
    layout = make_layout(mesh, rules, axis_sizes(config, 4))
    as_list = lambda spec: [list(a) if isinstance(a, tuple) else a for a in spec]
    spec_of = lambda tree: {".".join(p): as_list(layout.spec(tuple(n))) for p, n in flat(tree).items()}

    model = capt_jax.load_pretrained(folder, place=placer(layout, param_axes(config)), progress=False)
    placed = {".".join(p): as_list(x.sharding.spec) for p, x in flat(model.params).items()}
    q_shard = list(model.params["layers"]["q_proj"]["weight"].addressable_shards[0].data.shape)

    trainable_axes = lora_axes(config, PROJECTIONS)
    opt = jax.eval_shape(make_optimizer(1e-3, 0.0, 1.0).init, init_lora(config, PROJECTIONS, 4, jax.random.key(0)))
    opt_axes = mirrored_axes(opt, flat(trainable_axes))
    moments = [  # (leaf name, spec) of Adam's q_proj moments and of the step counts
        [str(getattr(path[-1], "key", getattr(path[-1], "name", ""))), as_list(layout.spec(tuple(names)))]
        for path, names in jax.tree_util.tree_flatten_with_path(opt_axes)[0]
        if "q_proj" in jax.tree_util.keystr(path) or "count" in jax.tree_util.keystr(path)
    ]
    activations = {
        "hidden": as_list(layout.spec(("batch", "length", "embed"))),
        "query": as_list(layout.spec(("batch", "length", "heads", "head_dim"))),
        "keys": as_list(layout.spec(("batch", "kv_heads", "length", "head_dim"))),
        "mlp": as_list(layout.spec(("batch", "length", "mlp"))),
        "batch": as_list(batch_sharding(layout, 3, 1).spec),
    }
    before = len(warnings)
    narrow = make_layout(mesh, rules, axis_sizes(config.replace(num_heads=6, num_kv_heads=3), 4))
    print(json.dumps({
        "unnamed": unnamed,
        "params": spec_of(param_axes(config)),
        "lora": spec_of(trainable_axes),
        "placed": placed,
        "q_shard": q_shard,
        "moments": moments,
        "activations": activations,
        "warnings_before": before,
        "warnings": warnings[before:],
        "narrow_kv": as_list(narrow.spec(("layers", "kv_heads", "embed"))),
        "narrow_q": as_list(narrow.spec(("layers", "heads", "embed"))),
    }))
    """
)

COLUMN, ROW = [None, "tensor", "fsdp"], [None, "fsdp", "tensor"]  # [L, out, in] of q/k/v/gate/up and of o/down
EXPECTED_PARAMS = {
    "embed": ["tensor", "fsdp"],
    "final_norm": [None],
    "layers.input_norm": [None, None],
    "layers.post_attention_norm": [None, None],
    **{f"layers.{p}.weight": COLUMN for p in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")},
    **{f"layers.{p}.bias": [None, "tensor"] for p in ("q_proj", "k_proj", "v_proj")},
    "layers.o_proj.weight": ROW,
    "layers.down_proj.weight": ROW,
}
EXPECTED_LORA = {
    **{f"layers.{p}.a": [None, None, "fsdp"] for p in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")},
    **{f"layers.{p}.b": [None, "tensor", None] for p in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")},
    **{f"layers.{p}.a": [None, None, "tensor"] for p in ("o_proj", "down_proj")},
    **{f"layers.{p}.b": [None, "fsdp", None] for p in ("o_proj", "down_proj")},
}


def test_every_variable_has_logical_axes_and_the_rules_give_the_expected_specs(tiny_qwen2_dir):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(tiny_qwen2_dir)], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["unnamed"] == []
    assert got["params"] == EXPECTED_PARAMS
    assert got["placed"] == EXPECTED_PARAMS  # weights are sharded as they load
    assert got["q_shard"] == [3, 32, 32]  # [L, Hq*hd, D] = [3, 64, 64] over tensor=2 x fsdp=2
    assert got["lora"] == EXPECTED_LORA
    assert {name for name, _ in got["moments"]} == {"a", "b", "count"}
    for name, spec in got["moments"]:  # Adam's mu/nu of q_proj follow q_proj's factors; step counts replicate
        assert spec == ([] if name == "count" else EXPECTED_LORA[f"layers.q_proj.{name}"]), name
    batch = ["data", "fsdp"]
    assert got["activations"] == {
        "hidden": [batch, None, None],  # fsdp shards the rows, so the width stays whole
        "query": [batch, None, "tensor", None],
        "keys": [batch, "tensor", None, None],
        "mlp": [batch, None, "tensor"],
        "batch": [None, batch, None],
    }
    assert got["warnings_before"] == 0
    # 3 key/value heads do not split over tensor=2: one warning, and that axis alone is replicated.
    assert len(got["warnings"]) == 1 and "'kv_heads' has size 3" in got["warnings"][0]
    assert got["narrow_kv"] == [None, None, "fsdp"] and got["narrow_q"] == COLUMN
