"""LoRA: a fresh adapter is the identity, one step moves only adapters, optimizer state is adapters-sized."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import capt_jax
from capt_jax.config import default_config
from capt_jax.lora import init_lora, lora_scale, make_optimizer, merge_lora, partition_labels, warmup_cosine
from capt_jax.model import Lora, forward
from capt_jax.train import make_train_step

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj")


def size(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def random_batch(accum: int, micro: int, length: int, seed: int = 0) -> dict[str, jnp.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 128, (accum, micro, length + 1)).astype(np.int32)
    return {
        "inputs": jnp.asarray(ids[..., :-1]),
        "targets": jnp.asarray(ids[..., 1:]),
        "weights": jnp.ones((accum, micro, length), jnp.float32),
        "task": jnp.zeros((accum, micro), jnp.int32),
        "mask": jnp.ones((accum, micro, length), bool),
    }


def test_fresh_adapter_leaves_logits_identical(tiny_llama_dir):
    model = capt_jax.load_pretrained(tiny_llama_dir, progress=False)
    adapters = init_lora(model.config, TARGETS, 8, jax.random.PRNGKey(0))
    ids = jnp.arange(20, dtype=jnp.int32)[None] % 128
    base, _ = forward(model.params, ids, model.config)
    adapted, _ = forward(model.params, ids, model.config, lora=Lora(adapters, lora_scale(8, 16.0)))
    # B = 0 adds exact zeros: with adapters on v/o/gate/up/down the logits are bit-identical, and with them on q or
    # k layer 0's q and k still are (a barrier before RoPE does not remove the rest): the difference arises after
    # them, in fusions XLA:CPU compiles differently once the adapter's add is there (about 1e-6 here). A nonzero B
    # (the bug this guards against) moves the logits by orders of magnitude more.
    np.testing.assert_allclose(np.asarray(adapted), np.asarray(base), rtol=0, atol=1e-6 * float(jnp.abs(base).max()))


def test_merged_weights_equal_applied_adapter(tiny_llama_dir):
    model = capt_jax.load_pretrained(tiny_llama_dir, progress=False)
    adapters = init_lora(model.config, TARGETS, 4, jax.random.PRNGKey(0))
    adapters = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape), adapters)
    ids = jnp.arange(20, dtype=jnp.int32)[None] % 128
    scale = lora_scale(4, 8.0)
    applied, _ = forward(model.params, ids, model.config, lora=Lora(adapters, scale))
    merged, _ = forward(merge_lora(model.params, adapters, scale), ids, model.config)
    np.testing.assert_allclose(
        np.asarray(merged), np.asarray(applied), rtol=0, atol=1e-5 * float(jnp.abs(applied).max())
    )


def test_one_step_changes_only_adapters_and_state_is_adapter_sized(tiny_llama_dir):
    model = capt_jax.load_pretrained(tiny_llama_dir, progress=False)
    config = default_config()
    config.lora.rank, config.lora.alpha, config.lora.targets = 8, 16.0, TARGETS
    schedule = warmup_cosine(1e-2, 10, 0.0)
    optimizer = make_optimizer(schedule, 0.01, 1.0)
    adapters = init_lora(model.config, TARGETS, 8, jax.random.PRNGKey(0))
    opt_state = optimizer.init(adapters)
    # Adam's two moments per adapter weight; everything else in the state is a scalar (step counts).
    assert sum(x.size for x in jax.tree.leaves(opt_state) if x.ndim) == 2 * size(adapters)
    assert all(x.size == 1 for x in jax.tree.leaves(opt_state) if not x.ndim)
    assert set(jax.tree.leaves(partition_labels(adapters))) == {"lora_a", "lora_b"}  # no extras by default

    base_before = jax.tree.map(np.array, model.params)
    state = {"step": jnp.array(0), "lora": adapters, "opt": opt_state, "rng": jax.random.PRNGKey(1)}
    step = jax.jit(make_train_step(model.config, config, optimizer, schedule))
    new_state, metrics = step(state, model.params, random_batch(1, 2, 16))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    assert all(
        np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(base_before), jax.tree.leaves(model.params))
    )
    for name in TARGETS:
        for leaf in ("a", "b"):
            assert not np.array_equal(
                np.asarray(new_state["lora"]["layers"][name][leaf]), np.asarray(adapters["layers"][name][leaf])
            ), (name, leaf)
    assert int(new_state["step"]) == 1


def test_gradient_accumulation_equals_one_big_batch(tiny_llama_dir):
    model = capt_jax.load_pretrained(tiny_llama_dir, progress=False)
    config = default_config()
    config.lora.rank, config.lora.dropout = 4, 0.0
    schedule = warmup_cosine(1e-3, 10, 0.0)
    optimizer = make_optimizer(schedule, 0.0, 0.0)
    adapters = init_lora(model.config, config.lora.targets, 4, jax.random.PRNGKey(0))
    adapters = jax.tree.map(lambda x: x + 0.01, adapters)
    big = random_batch(1, 4, 16)
    big["weights"] = big["weights"].at[0, 1, 5:].set(0.0)  # unequal weights per row: the mean must be global
    split = jax.tree.map(lambda x: x.reshape(2, 2, *x.shape[2:]), big)
    results = []
    for accum, batch in ((1, big), (2, split)):
        config.train.grad_accum = accum
        state = {"step": jnp.array(0), "lora": adapters, "opt": optimizer.init(adapters), "rng": jax.random.PRNGKey(1)}
        results.append(jax.jit(make_train_step(model.config, config, optimizer, schedule))(state, model.params, batch))
    (s1, m1), (s2, m2) = results
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(s1["lora"]), jax.tree.leaves(s2["lora"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_two_stage_loss_is_weighted_sum_of_task_means(tiny_llama_dir):
    """loss = w_est * mean NLL(estimation rows) + mean NLL(intervention rows), also under accumulation."""
    from capt_jax.objective import ESTIMATION_TASK, loss_sums

    model = capt_jax.load_pretrained(tiny_llama_dir, progress=False)
    config = default_config()
    config.lora.rank, config.lora.dropout, config.data.estimation_weight = 4, 0.0, 0.3
    schedule = warmup_cosine(1e-3, 10, 0.0)
    optimizer = make_optimizer(schedule, 0.0, 0.0)
    adapters = jax.tree.map(lambda x: x + 0.01, init_lora(model.config, config.lora.targets, 4, jax.random.PRNGKey(0)))
    batch = random_batch(1, 4, 16, seed=3)
    batch["task"] = jnp.array([[0, ESTIMATION_TASK, 0, ESTIMATION_TASK]], jnp.int32)
    batch["weights"] = batch["weights"].at[0, 0, 10:].set(0.0)

    def task_mean(rows):
        sub = {k: v[0, rows] for k, v in batch.items()}
        total, weight = loss_sums(adapters, model.params, sub, model.config, lora_scale(4, config.lora.alpha))
        return float(total / weight)

    expected = task_mean([0, 2]) + 0.3 * task_mean([1, 3])
    for accum in (1, 2):
        config.train.grad_accum = accum
        state = {"step": jnp.array(0), "lora": adapters, "opt": optimizer.init(adapters), "rng": jax.random.PRNGKey(1)}
        split = jax.tree.map(lambda x, a=accum: x.reshape(a, 4 // a, *x.shape[2:]), batch)
        _, metrics = jax.jit(make_train_step(model.config, config, optimizer, schedule))(state, model.params, split)
        np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)


def test_loss_window_equals_whole_row_loss(tiny_chat_dir):
    """Projecting only each row's loss window onto the vocabulary changes nothing but the cost."""
    from capt_jax.batches import batch_length, loss_width, make_batch, tokenize_pairs
    from capt_jax.objective import loss_sums

    model = capt_jax.load_pretrained(tiny_chat_dir, progress=False)
    pairs = [
        {"prompt": "Add 3 and 4, then explain at length." * (i + 1), "completion": f"<answer>{i}</answer>"}
        for i in range(4)
    ]
    data = tokenize_pairs(model.tokenizer, pairs, seq_len=256)
    rows = list(range(4))
    length = batch_length(data, rows)
    width = loss_width(data, rows, length)
    assert width < length  # prompts are long, completions short
    adapters = jax.tree.map(lambda x: x + 0.02, init_lora(model.config, ("q_proj", "v_proj"), 4, jax.random.PRNGKey(0)))
    windowed = make_batch(data, rows, length, pad_id=2, width=width)
    whole = make_batch(data, rows, length, pad_id=2)
    assert windowed["targets"].shape == (4, width) and whole["targets"].shape == (4, length)
    a = loss_sums(adapters, model.params, jax.tree.map(jnp.asarray, windowed), model.config, 2.0)
    b = loss_sums(adapters, model.params, jax.tree.map(jnp.asarray, whole), model.config, 2.0)
    assert float(a[1]) == float(b[1]) > 0
    np.testing.assert_allclose(float(a[0]), float(b[0]), rtol=1e-6)
