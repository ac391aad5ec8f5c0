"""Sequence packing (data.packing): packed rows train exactly what unpacked rows train.

Several examples share a row; segment ids keep attention within each example, positions restart per example,
and every example keeps its own loss window, so per-example losses and the step's gradient are those of
one example per row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capt_jax.architectures import ARCHS
from capt_jax.batches import batch_length, loss_width, make_batch, pack, tokenize_pairs
from capt_jax.config import default_config
from capt_jax.lora import init_lora, make_optimizer, warmup_cosine
from capt_jax.model import ModelConfig, hidden_states, init_params
from capt_jax.model.decoder import KVCache, segment_positions
from capt_jax.objective import ESTIMATION_TASK, position_nll
from capt_jax.train import make_train_step

SEQ_LEN = 48


class WordTokenizer:
    """Whitespace words -> ids below the tiny vocabulary: enough for `pair_encoder` without a chat template."""

    eos_token = "</s>"

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [sum(map(ord, word)) % 500 + 2 for word in text.split()]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


def pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Prompts and completions of different lengths; every third pair is an estimation row."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(40)]
    out = []
    for i in range(n):
        prompt = " ".join(rng.choice(words, rng.integers(3, 14)))
        completion = " ".join(rng.choice(words, rng.integers(2, 12)))
        out.append({"prompt": prompt, "completion": completion, **({"task": "estimation"} if i % 3 == 2 else {})})
    return out


@pytest.fixture(scope="module")
def model():
    config = ModelConfig.from_hf_dict(ARCHS["tiny"])
    base = init_params(config, jax.random.PRNGKey(0))
    lora = init_lora(config, ("q_proj", "v_proj"), 4, jax.random.PRNGKey(1))
    # A non-zero B, so the adapters change the forward pass too.
    lora = jax.tree_util.tree_map_with_path(
        lambda p, x: 0.05 * jax.random.normal(jax.random.PRNGKey(2), x.shape) if p[-1].key == "b" else x, lora
    )
    return config, base, lora


@pytest.fixture(scope="module")
def data():
    return tokenize_pairs(WordTokenizer(), pairs(18), SEQ_LEN, chat_template=False)


def example_nll(model, batch: dict[str, np.ndarray]) -> np.ndarray:
    config, base, lora = model
    return np.asarray(position_nll(lora, base, jax.tree.map(jnp.asarray, batch), config, scale=2.0))


def test_pack_places_every_example_once_in_rows_of_one_task(data):
    packed = pack(data, seed=0)
    members = np.concatenate(packed.members)
    assert sorted(members.tolist()) == list(range(len(data)))
    assert len(packed) < len(data) and max(packed.lengths) <= SEQ_LEN
    for row in range(len(packed)):
        assert len({data.task(int(e)) for e in packed.members[row]}) == 1
    assert all(np.array_equal(a, b) for a, b in zip(packed.members, pack(data, seed=0).members))


def test_packed_rows_give_the_same_per_example_losses(model, data):
    packed = pack(data, seed=0)
    rows = range(len(packed))
    length = batch_length(packed, rows)
    batch = make_batch(packed, rows, length, pad_id=0, width=loss_width(packed, rows, length))
    nll = example_nll(model, batch)
    checked = 0
    for row, members in enumerate(packed.members):
        segment = batch["segments"][row, batch["loss_positions"][row]]
        for number, example in enumerate(members, 1):
            alone = make_batch(data, [example], batch_length(data, [example]), pad_id=0)
            alone_weights = alone["weights"][0]
            expected = example_nll(model, alone)[0][alone_weights > 0]
            here = (segment == number) & (batch["weights"][row] > 0)
            np.testing.assert_allclose(nll[row][here], expected, rtol=2e-5, atol=2e-5)
            np.testing.assert_array_equal(batch["targets"][row][here], alone["targets"][0][alone_weights > 0])
            checked += 1
    assert checked == len(data)


def test_packed_step_equals_the_unpacked_step(model, data):
    """Loss and gradient of one step over the same examples: one per row in 3 micro-batches, and packed with one
    row per micro-batch; with estimation rows, so both per-task token means span the global batch."""
    config, base, lora = model
    schedule = warmup_cosine(1e-3, 10, 0.0)
    optimizer = make_optimizer(schedule, 0.0, 1e9)
    state = {"step": jnp.array(0), "lora": lora, "opt": optimizer.init(lora), "rng": jax.random.PRNGKey(3)}

    def run_step(data, grad_accum: int) -> dict[str, jax.Array]:
        run = default_config()
        run.lora.rank, run.lora.dropout, run.data.estimation_weight = 4, 0.0, 0.5
        run.train.grad_accum = grad_accum
        rows = np.arange(len(data))
        length = batch_length(data, rows)
        batch = make_batch(data, rows, length, 0, loss_width(data, rows, length))
        batch = {k: v.reshape(grad_accum, -1, *v.shape[1:]) for k, v in batch.items()}
        return jax.jit(make_train_step(config, run, optimizer, schedule))(state, base, batch)[1]

    packed = pack(data, seed=0)
    unpacked, together = run_step(data, 3), run_step(packed, len(packed))
    assert any(data.task(r) == ESTIMATION_TASK for r in range(len(data)))
    np.testing.assert_allclose(together["loss"], unpacked["loss"], rtol=1e-5)
    np.testing.assert_allclose(together["grad_norm"], unpacked["grad_norm"], rtol=1e-4)
    assert int(together["tokens"]) == int(unpacked["tokens"])


def test_positions_restart_per_segment_and_the_cache_refuses_segments(model):
    segments = jnp.array([[1, 1, 1, 2, 2, 3, 0, 0]])
    np.testing.assert_array_equal(segment_positions(segments), [[0, 1, 2, 0, 1, 0, 0, 1]])
    config, base, _ = model
    cache = KVCache.empty(config, 1, 8)
    with pytest.raises(ValueError, match="segment_ids"):
        hidden_states(base, jnp.ones((1, 8), jnp.int32), config, segment_ids=segments, cache=cache)


def test_train_runs_packed(tmp_path, tiny_chat_dir):
    """capt_jax.train with data.packing: two steps over packed rows, finite losses logged."""
    from conftest import REPO, write_sft_jsonl

    from capt_jax.config import load_config
    from capt_jax.train import train

    data = write_sft_jsonl(tmp_path / "sft.jsonl", 40)
    overrides = [f"--config.model.path={tiny_chat_dir}", f"--config.data.path={data}"]
    overrides += [f"--config.workdir={tmp_path / 'w'}", "--config.data.packing=true", "--config.train.max_steps=2"]
    overrides += ["--config.train.batch_size=2", "--config.train.seq_len=128", "--config.data.holdout_fraction=0"]
    last = train(load_config(str(REPO / "configs" / "smollm2_sft.py"), overrides))
    assert last.step == 2 and np.isfinite(last.metrics["loss"])


def test_packing_is_off_by_default():
    assert default_config().data.packing is False and default_config().train.batch_size == 4
