"""KV-cache decoding equals recomputation; generation is batched, bucketed and matches transformers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import capt_jax
from capt_jax.generate import (
    Sampling,
    decode,
    decoding_layout,
    first_argmax,
    sample_next,
    split_into_panels,
    split_layers,
)
from capt_jax.model import KVCache, forward, panels
from capt_jax.model.decoder import unstack_layers
from capt_jax.tokenization import bucket, length_bucket


@pytest.mark.parametrize("scan_layers", [True, False])
def test_cached_decoding_equals_full_recomputation(tiny_llama_dir, scan_layers):
    """Both cache layouts: stacked under the scanned layers, per-layer buffers under the unscanned ones."""
    model = capt_jax.load_pretrained(tiny_llama_dir, progress=False)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 128, (2, 24)).astype(np.int32)
    mask = np.ones_like(ids, bool)
    mask[1, :5] = False  # left padding in the second row
    run = jax.jit(forward, static_argnums=2)  # one program per shape, not one per operation
    full, _ = run(model.params, jnp.asarray(ids), model.config, token_mask=jnp.asarray(mask))
    config, params = model.config, model.params
    if not scan_layers:
        config, params = config.replace(scan_layers=False), unstack_layers(params)

    prefill = 10
    cache = KVCache.empty(config, batch=2, slots=32)
    first, cache = run(
        params, jnp.asarray(ids[:, :prefill]), config, token_mask=jnp.asarray(mask[:, :prefill]), cache=cache
    )
    steps = [first]
    for t in range(prefill, ids.shape[1]):
        logits, cache = run(params, jnp.asarray(ids[:, t : t + 1]), config, cache=cache)
        steps.append(logits)
    cached = np.concatenate([np.asarray(s) for s in steps], axis=1)
    np.testing.assert_allclose(cached[mask], np.asarray(full)[mask], rtol=0, atol=1e-5 * np.abs(full).max())
    assert int(cache.index) == ids.shape[1]
    # A prompt starts a used cache afresh: it attends to itself only and is written from slot 0.
    again, cache = run(
        params, jnp.asarray(ids[:, :prefill]), config, token_mask=jnp.asarray(mask[:, :prefill]), cache=cache
    )
    np.testing.assert_array_equal(np.asarray(again), np.asarray(first))
    assert int(cache.index) == prefill and not np.asarray(cache.valid)[:, prefill:].any()


@pytest.mark.parametrize("layout", ["split", "scanned", "panels", "panels-avx512"])
def test_greedy_batch_matches_transformers_generate(tiny_qwen2_dir, layout, request, monkeypatch):
    """Qwen2's projections have biases; "panels" runs every product through our default kernel for this CPU
    (AVX2: 24-output panels, blocks of 4 rows), and "panels-avx512" through the AVX-512 one (48, blocks of 8)."""
    from transformers import AutoModelForCausalLM

    if layout == "panels-avx512":
        monkeypatch.setenv("CAPT_JAX_PANELS", "avx512")
    if layout.startswith("panels"):
        request.getfixturevalue("panel_kernel")
    model = capt_jax.load_pretrained(tiny_qwen2_dir, progress=False)
    params = split_into_panels(model.params) if layout.startswith("panels") else model.params
    if layout == "panels-avx512":
        assert params["lm_head_panels"].shape[-1] == panels.INSTRUCTION_SETS["avx512"].width
    reference = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32).eval()
    prompts = [[5, 17, 99, 3], [7, 8, 9, 10, 11, 12, 13, 14, 15]]
    length = 16
    ids = np.zeros((2, length), np.int32)
    mask = np.zeros((2, length), bool)
    for row, p in enumerate(prompts):
        ids[row, length - len(p) :], mask[row, length - len(p) :] = p, True
    new = np.asarray(
        decode(
            params,
            ids,
            mask,
            jax.random.key(0),
            config=model.config,
            max_new_tokens=12,
            sampling=Sampling(),
            eos_ids=(),
            pad_id=0,
            scan_layers=layout == "scanned",
        )
    )
    for row, p in enumerate(prompts):
        with torch.no_grad():
            expected = reference.generate(
                torch.tensor([p]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0
            )[0, len(p) :].tolist()
        assert new[row].tolist() == expected


def test_panel_layout_decodes_an_untied_head_as_the_split_layers_do(tiny_llama_dir, panel_kernel):
    """`decoding_layout` where the panel kernel runs: the Llama's untied head kept only as panels, greedy and with a
    repetition penalty (which reads the vocabulary size from the embedding)."""
    model = capt_jax.load_pretrained(tiny_llama_dir, progress=False)
    assert not model.config.tie_word_embeddings
    packed, _ = decoding_layout(model.config, model.params)
    assert "lm_head_panels" in packed and "lm_head" not in packed
    ids = np.array([[5, 17, 99, 3, 8, 8], [0, 0, 7, 8, 9, 10]], np.int32)
    mask = ids > 0
    for sampling in (Sampling(), Sampling(repetition_penalty=1.3)):
        kwargs = dict(config=model.config, max_new_tokens=10, sampling=sampling, eos_ids=(), pad_id=0)
        want = decode(split_layers(model.params), ids, mask, jax.random.key(0), **kwargs)
        got = decode(packed, ids, mask, jax.random.key(0), **kwargs)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_decoding_stops_at_eos_and_pads_after(tiny_qwen2_dir):
    model = capt_jax.load_pretrained(tiny_qwen2_dir, progress=False)
    ids = np.array([[5, 17, 99, 3]], np.int32)
    mask = np.ones_like(ids, bool)
    kwargs = dict(config=model.config, max_new_tokens=8, sampling=Sampling(), pad_id=127)
    free = np.asarray(decode(model.params, ids, mask, jax.random.key(0), eos_ids=(), **kwargs))[0]
    stop = int(free[2])  # pretend the third generated token is EOS
    first_stop = int(np.argmax(free == stop))
    stopped = np.asarray(decode(model.params, ids, mask, jax.random.key(0), eos_ids=(stop,), **kwargs))[0]
    assert stopped[: first_stop + 1].tolist() == free[: first_stop + 1].tolist()
    assert (stopped[first_stop + 1 :] == 127).all()


def test_sampling_rules():
    logits = jnp.log(jnp.array([[0.6, 0.3, 0.1], [0.05, 0.05, 0.9]]))
    key = jax.random.key(3)
    assert sample_next(logits, key, Sampling()).tolist() == [0, 2]
    # top_p applies after temperature (as in transformers): at T=5 the top tokens hold 38% and 47%, so
    # top_p=0.3 leaves only them.
    assert sample_next(logits, key, Sampling(temperature=5.0, top_p=0.3)).tolist() == [0, 2]
    draws = np.stack(
        [np.asarray(sample_next(logits, k, Sampling(temperature=1.0, top_p=0.85))) for k in jax.random.split(key, 400)]
    )
    assert set(draws[:, 0].tolist()) == {0, 1}  # 0.6 + 0.3 reaches 0.85; token 2 is cut
    assert abs((draws[:, 0] == 0).mean() - 2 / 3) < 0.08
    same = [np.asarray(sample_next(logits, key, Sampling(temperature=1.0))).tolist() for _ in range(2)]
    assert same[0] == same[1]


def test_first_argmax_is_jnp_argmax_with_ties_nans_and_infinities():
    nan, inf = jnp.nan, jnp.inf
    logits = jnp.array(
        [[1, 3, 3, 0], [nan, 1, nan, 5], [2, nan, 9, 9], [-inf] * 4, [inf, 0, inf, 1], [0, 0, 0, 0], [-1, -2, -3, -0.5]]
    )
    random = jax.random.normal(jax.random.key(0), (16, 1000))
    for case in (logits, random, random.astype(jnp.bfloat16)):
        for got in (first_argmax(case), first_argmax(case.T, axis=0)):
            assert got.dtype == jnp.int32 and got.tolist() == jnp.argmax(case, axis=-1).tolist()


def test_buckets_are_powers_of_two_and_length_buckets_add_half_steps():
    assert [bucket(n, 16) for n in (1, 16, 17, 33, 100)] == [16, 16, 32, 64, 128]
    assert [bucket(n) for n in (1, 2, 3, 5)] == [1, 2, 4, 8]
    lengths = (1, 16, 17, 24, 25, 33, 48, 49, 100, 130, 160, 193, 700)
    assert [length_bucket(n, 16) for n in lengths] == [16, 16, 24, 24, 32, 48, 48, 64, 128, 192, 192, 256, 768]


def test_generate_compiles_once_per_bucket(tiny_chat_dir):
    from capt_jax.generate import generate

    model = capt_jax.load_pretrained(tiny_chat_dir, progress=False)
    generate(model, ["Name a color."], max_new_tokens=4, chat=True, progress=False)
    compiled = decode._cache_size()
    # Different prompts and batch sizes inside the same (batch, length) buckets reuse the compiled loop.
    generate(model, ["Name a fruit, please.", "Name a tree."], max_new_tokens=4, chat=True, progress=False)
    generate(
        model,
        ["Name a big animal.", "Name a river.", "Name a sea."],
        max_new_tokens=4,
        chat=True,
        batch_size=2,
        progress=False,
    )
    assert decode._cache_size() == compiled + 1  # one new batch bucket (2); lengths share one bucket


def test_replies_cut_off_by_the_budget_are_reported_with_the_key_to_raise(tiny_chat_dir, capsys):
    from capt_jax.config import default_config
    from capt_jax.evaluate import cached_reasoner
    from capt_jax.generate import _until_eos, generate

    assert _until_eos(np.array([5, 7, 2, 9, 2]), (2,)) == ([5, 7], True)
    assert _until_eos(np.array([5, 7, 9]), (2,)) == ([5, 7, 9], False)
    model = capt_jax.load_pretrained(tiny_chat_dir, progress=False)
    prompts = ["Write a long story about a dragon.", "List every prime below 1000."]
    replies = generate(model, prompts, max_new_tokens=2, chat=True, progress=False)
    assert replies.cut_off == [0, 1] and len(replies) == 2
    assert replies.note("eval.max_new_tokens", 2) == (
        "note: 2 of 2 replies were cut off at eval.max_new_tokens=2 new tokens before they ended; "
        "raise eval.max_new_tokens if they should have ended"
    )
    # An evaluation says so on stderr, naming its config key.
    config = default_config()
    config.eval.max_new_tokens = 2
    assert cached_reasoner(model, config)(prompts) == list(replies)
    assert "2 of 2 replies were cut off at eval.max_new_tokens=2" in capsys.readouterr().err


def test_repetition_penalty_matches_transformers(tiny_qwen2_dir):
    from transformers import AutoModelForCausalLM

    model = capt_jax.load_pretrained(tiny_qwen2_dir, progress=False)
    reference = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32).eval()
    prompts = [[5, 17, 99, 3], [7, 8, 9, 10, 11, 12, 13, 14, 15]]
    ids = np.zeros((2, 16), np.int32)
    mask = np.zeros((2, 16), bool)
    for row, p in enumerate(prompts):
        ids[row, 16 - len(p) :], mask[row, 16 - len(p) :] = p, True
    kwargs = dict(config=model.config, max_new_tokens=24, eos_ids=(), pad_id=0)
    penalised = np.asarray(
        decode(model.params, ids, mask, jax.random.key(0), sampling=Sampling(repetition_penalty=1.8), **kwargs)
    )
    plain = np.asarray(decode(model.params, ids, mask, jax.random.key(0), sampling=Sampling(), **kwargs))
    assert (penalised != plain).any()  # the penalty changes what this model repeats
    for row, p in enumerate(prompts):
        with torch.no_grad():
            expected = reference.generate(
                torch.tensor([p]),
                max_new_tokens=24,
                do_sample=False,
                repetition_penalty=1.8,
                eos_token_id=None,
                pad_token_id=0,
            )[0, len(p) :].tolist()
        assert penalised[row].tolist() == expected
