"""The hand-written pieces of the training step: fused cross-entropy, recomputing attention, SwiGLU, RoPE and
16-bit dropout; the panel product of decoding (its AVX-512 and AVX2 builds); and the cuDNN attention call site,
run on the CPU with XLA's implementation.

Each is checked against the plain JAX expression it replaces, values and gradients.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capt_jax.architectures import ARCHS
from capt_jax.generate import Sampling, decode
from capt_jax.model import ModelConfig, forward, init_params, panels
from capt_jax.model import attention as attention_module
from capt_jax.model.attention import attention_mask, grouped_attention, library_attention, recomputing_attention
from capt_jax.model.kernels import FEW_ROWS, dropout, lora_delta, matmul_weight_t, swiglu, threefry2x32
from capt_jax.model.rope import apply_rotary
from capt_jax.objective import token_nll


def normals(seed: int, *shapes: tuple[int, ...]) -> list[jax.Array]:
    """Standard-normal float32 inputs drawn by numpy: jax.random.normal compiles a program for every shape, 0.75 s
    each on a CPU."""
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(shape, np.float32)) for shape in shapes]


def reference_nll(h: jax.Array, head: jax.Array, targets: jax.Array) -> jax.Array:
    log_probs = jax.nn.log_softmax(h @ head.T, axis=-1)
    return -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("chunk", [4, 7, 21, 512])  # divides 3 x 7 tokens or not, one chunk or several
def test_fused_cross_entropy_matches_log_softmax(chunk):
    h, head = normals(0, (3, 7, 16), (50, 16))
    rng = np.random.default_rng(1)
    targets, weights = jnp.asarray(rng.integers(0, 50, (3, 7))), jnp.asarray(rng.uniform(size=(3, 7)), jnp.float32)

    np.testing.assert_allclose(token_nll(h, head, targets, chunk), reference_nll(h, head, targets), atol=1e-5)
    grad = jax.jit(jax.grad(lambda h: jnp.sum(token_nll(h, head, targets, chunk) * weights)))(h)
    expected = jax.grad(lambda h: jnp.sum(reference_nll(h, head, targets) * weights))(h)
    np.testing.assert_allclose(grad, expected, atol=1e-5)


def test_fused_cross_entropy_refuses_gradients_for_the_frozen_head():
    h, head, targets = jnp.ones((1, 2, 4)), jnp.ones((8, 4)), jnp.zeros((1, 2), jnp.int32)
    with pytest.raises(jax.errors.UnexpectedTracerError):
        jax.grad(lambda head: jnp.sum(token_nll(h, head, targets)))(head)


@pytest.mark.parametrize("causal_block", [None, 1, 2, 3, 4, 8])  # one block; every query alone; uneven blocks
@pytest.mark.parametrize("masking", ["padding", "packed"])
def test_recomputing_attention_matches_grouped_attention(causal_block, masking):
    batch, seq, q_heads, kv_heads, dim = 2, 5, 6, 2, 4
    q, k, v, cotangent = normals(
        1, (batch, seq, q_heads, dim), *[(batch, kv_heads, seq, dim)] * 2, (batch, seq, q_heads, dim)
    )
    slots = jnp.broadcast_to(jnp.arange(seq), (batch, seq))
    if masking == "packed":
        segments = jnp.array([[1, 1, 2, 2, 2], [1, 1, 1, 2, 0]])
        mask = attention_mask(slots, segments > 0, segments)
    else:
        mask = attention_mask(slots, jnp.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], bool))

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent)

    ours = loss(lambda q, k, v: recomputing_attention(q, k, v, mask, 0.5, causal_block))
    plain = loss(lambda q, k, v: grouped_attention(q, [(jnp.swapaxes(k, 2, 3), v, mask)], 0.5))
    np.testing.assert_allclose(jax.jit(ours)(q, k, v), jax.jit(plain)(q, k, v), rtol=1e-5)
    for got, want in zip(jax.jit(jax.grad(ours, (0, 1, 2)))(q, k, v), jax.jit(jax.grad(plain, (0, 1, 2)))(q, k, v)):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_causal_blocks_cover_every_query_once_and_need_a_query_per_key_slot():
    assert attention_module.query_blocks(5, 5, 2) == [(0, 2, 2), (2, 4, 4), (4, 5, 5)]
    assert len(attention_module.query_blocks(1024, 1024, 64)) == attention_module.MAX_CAUSAL_BLOCKS
    assert attention_module.query_blocks(5, 12, None) == [(0, 5, 12)]
    with pytest.raises(ValueError, match="as many queries as key slots"):
        attention_module.query_blocks(5, 12, 2)


def test_decoder_logits_are_the_same_in_causal_blocks():
    """Training logits of the whole decoder, left-padded and packed, with the queries in blocks of 4 or in one."""
    config = ModelConfig.from_hf_dict(ARCHS["tiny"])
    params = init_params(config, jax.random.PRNGKey(0))
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, config.vocab_size, (2, 14)), jnp.int32)
    mask = jnp.arange(14)[None] >= jnp.array([[0], [5]])
    segments = jnp.array([[1] * 6 + [2] * 8, [1] * 9 + [2] * 3 + [0] * 2])
    one, four = config.replace(causal_block=None), config.replace(causal_block=4)

    def products(config: ModelConfig) -> int:
        return str(jax.make_jaxpr(lambda t: forward(params, t, config, token_mask=mask))(tokens)).count("dot_general")

    assert products(four) == products(one) + 2 * 3  # 4 blocks instead of 1, two products each
    logits = jax.jit(lambda config, **kwargs: forward(params, tokens, config, **kwargs)[0], static_argnums=0)
    for kwargs in ({"token_mask": mask}, {"token_mask": segments > 0, "segment_ids": segments}):
        np.testing.assert_allclose(logits(four, **kwargs), logits(one, **kwargs), atol=1e-5)


def test_written_out_threefry_is_jax_threefry_bit_for_bit():
    from jax.extend.random import threefry_2x32

    key = jax.random.PRNGKey(7)
    x1 = jnp.arange(1000, dtype=jnp.uint32) * 7919
    x2 = jnp.full((1000,), 5, jnp.uint32)
    hi, lo = jax.jit(threefry2x32)(key, x1, x2)
    np.testing.assert_array_equal(np.concatenate([hi, lo]), threefry_2x32(key, jnp.concatenate([x1, x2])))


def test_dropout_draws_are_independent_across_the_four_per_block():
    """Each cipher block gives four 16-bit draws, to positions j, j + w, j + 2w, j + 3w of a row (w = width / 4):
    their keep decisions must not be correlated with one another or with the next row's."""
    kept = np.asarray(dropout(jnp.ones((4096, 64)), 0.5, jax.random.PRNGKey(4)) != 0, np.float32)
    quarters = [kept[:, q * 16 : (q + 1) * 16].ravel() for q in range(4)]
    pairs = [(a, b) for i, a in enumerate(quarters) for b in quarters[i + 1 :]] + [
        (kept[:-1].ravel(), kept[1:].ravel())
    ]
    for a, b in pairs:
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.02  # 65k pairs: sd of the estimate is 0.004


def test_dropout_gradient_is_the_kept_and_scaled_cotangent():
    x, cotangent = normals(5, (8, 33), (8, 33))
    out, grad = jax.value_and_grad(lambda x: jnp.sum(dropout(x, 0.25, jax.random.PRNGKey(7)) * cotangent))(x)
    kept = np.asarray(dropout(jnp.ones_like(x), 0.25, jax.random.PRNGKey(7)))  # scale where kept, else 0
    np.testing.assert_allclose(grad, kept * np.asarray(cotangent), rtol=1e-6)
    np.testing.assert_allclose(out, np.sum(kept * np.asarray(x) * np.asarray(cotangent)), rtol=1e-5)


def test_dropout_keeps_the_expectation_and_the_rate():
    x = jnp.ones((64, 257))  # a width that is not a multiple of 4: the last block's draws are mostly unused
    out = dropout(x, 0.1, jax.random.PRNGKey(2))
    dropped = float(jnp.mean(out == 0))
    assert abs(dropped - 0.1) < 0.01
    assert abs(float(jnp.mean(out)) - 1.0) < 0.02
    np.testing.assert_allclose(out[out != 0], 1 / (1 - round(0.1 * 2**16) / 2**16), rtol=1e-6)
    np.testing.assert_array_equal(out, dropout(x, 0.1, jax.random.PRNGKey(2)))
    assert not np.array_equal(out, dropout(x, 0.1, jax.random.PRNGKey(3)))


def test_swiglu_gradient_matches_autodiff():
    gate, up, cotangent = normals(4, (5, 7), (5, 7), (5, 7))
    gate = 3 * gate

    def plain(gate, up):
        return jnp.sum(jax.nn.silu(gate) * up * cotangent)

    np.testing.assert_allclose(swiglu(gate, up), jax.nn.silu(gate) * up, rtol=1e-6)
    for got, want in zip(jax.grad(lambda g, u: jnp.sum(swiglu(g, u) * cotangent), (0, 1))(gate, up),
                         jax.grad(plain, (0, 1))(gate, up)):  # fmt: skip
        np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_lora_delta_gradient_matches_autodiff(dtype, tolerance):
    """The adapter's hand-ordered backward pass gives autodiff's gradients, in the compute dtype."""
    x, a, b, cotangent = (t.astype(dtype) for t in normals(5, (2, 5, 8), (3, 8), (6, 3), (2, 5, 6)))

    def plain(x, a, b):
        return 2.0 * jnp.einsum("...r,or->...o", jnp.einsum("...i,ri->...r", x, a), b)

    out, pullback = jax.vjp(lambda x, a, b: lora_delta(x, a, b, 2.0), x, a, b)
    want_out, want_pullback = jax.vjp(plain, x, a, b)
    np.testing.assert_allclose(out.astype(jnp.float32), want_out.astype(jnp.float32), rtol=tolerance)
    for got, want in zip(pullback(cotangent), want_pullback(cotangent)):
        assert got.dtype == want.dtype and got.shape == want.shape
        scale = float(jnp.max(jnp.abs(want.astype(jnp.float32))))
        np.testing.assert_allclose(got.astype(jnp.float32), want.astype(jnp.float32), atol=tolerance * scale)


@pytest.mark.parametrize("rows", [3, FEW_ROWS, FEW_ROWS + 1, 200])
def test_matmul_weight_t_is_x_times_the_weight_transposed_in_either_operand_order(rows):
    """Both orders give x @ W.T and its gradients; up to FEW_ROWS rows the compiled dot on a CPU has the weight on
    the left (its result [out, rows]), so the test fails if XLA folds the transpose back or the order is lost."""
    x, weight, cotangent = normals(6, (1, rows, 8), (16, 8), (1, rows, 16))
    out, pullback = jax.vjp(matmul_weight_t, x, weight)
    want, want_pullback = jax.vjp(lambda x, w: jnp.einsum("...i,oi->...o", x, w), x, weight)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    for got, expected in zip(pullback(cotangent), want_pullback(cotangent)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    hlo = jax.jit(matmul_weight_t).lower(x, weight).compile().as_text()
    dots = [line.split(" = ")[1].split("{")[0] for line in hlo.splitlines() if " dot(" in line]
    assert dots == (["f32[16," + str(rows) + "]"] if rows <= FEW_ROWS else [f"f32[{rows},16]"])
    half = jax.jit(matmul_weight_t).lower(x.astype(jnp.bfloat16), weight.astype(jnp.bfloat16)).compile().as_text()
    assert f"[{rows},16]" in half and f"[16,{rows}]" not in half  # other dtypes keep the plain order


def needs_kernel(name: str) -> None:
    """Skips unless the panel kernel for instruction set `name` can be built and run here."""
    if not panels.runs_here(name):
        pytest.skip(f"the {name} panel kernel needs a CPU backend, a CPU with {name} and a C++ compiler")


def test_the_panel_kernels_give_bit_identical_products():
    """Why the default kernel may be chosen for speed alone: the products do not depend on the choice."""
    for name in panels.INSTRUCTION_SETS:
        needs_kernel(name)
    x, weight = normals(8, (37, 131), (100, 131))
    product = jax.jit(panels.matmul, static_argnums=2)
    got = [np.asarray(product(x, panels.pack(weight, s.width), 100)) for s in panels.INSTRUCTION_SETS.values()]
    np.testing.assert_array_equal(got[0], got[1])


def test_panels_of_a_width_no_kernel_has_are_refused():
    with pytest.raises(RuntimeError, match="no panel kernel of width 32"):
        panels.matmul(jnp.ones((2, 8)), jnp.ones((1, 8, 32)), 32)


# Rows: one, a partial block (of 8 rows with AVX-512, 4 with AVX2), whole blocks, past one chunk of 128 with a
# partial block; outputs: one, a partial panel, whole panels, whole and partial; the leading shape is flattened.
@pytest.mark.parametrize("instruction_set", list(panels.INSTRUCTION_SETS))
@pytest.mark.parametrize("lead, size, features", [((1,), 5, 1), ((7,), 64, 47), ((2, 16), 33, 96), ((131,), 64, 100)])
def test_panel_kernel_is_x_times_the_weight_transposed(lead, size, features, instruction_set):
    needs_kernel(instruction_set)
    width = panels.INSTRUCTION_SETS[instruction_set].width
    x, weight = normals(7, (*lead, size), (features, size))
    packed = panels.pack(weight, width)
    assert packed.shape == (-(-features // width), size, width)
    got = jax.jit(panels.matmul, static_argnums=2)(x, packed, features)
    np.testing.assert_allclose(got, jnp.einsum("...i,oi->...o", x, weight), rtol=1e-5, atol=1e-5)


def test_a_panel_kernel_that_fails_to_build_leaves_xla_products(monkeypatch, tmp_path, caplog):
    """A compiler that fails (`false`): a warning, no half-built library left, and `available()` False, so
    decoding keeps XLA's products."""
    if not any(map(panels.cpu_has, panels.INSTRUCTION_SETS)) or jax.default_backend() != "cpu":
        pytest.skip("the panel kernel is only built on a CPU backend with AVX-512 or AVX2")
    monkeypatch.delenv("CAPT_JAX_PANELS", raising=False)
    monkeypatch.setenv("CAPT_JAX_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")
    panels.runs_here.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=panels.__name__):
            assert not panels.available()
        assert "kernel could not be built or loaded" in caplog.text
        assert not list(tmp_path.rglob("panel_matmul.so*"))
    finally:
        panels.runs_here.cache_clear()  # the next caller builds (or finds) the real library again


def test_where_the_first_kernel_does_not_run_the_next_one_decodes(monkeypatch):
    """Where the default (AVX2) build fails on a CPU that has both sets, decoding takes the AVX-512 kernel."""
    monkeypatch.delenv("CAPT_JAX_PANELS", raising=False)
    monkeypatch.setattr(panels, "runs_here", lambda name: name == "avx512")
    assert panels.instruction_set() == "avx512" and panels.width() == 48


def test_capt_jax_panels_chooses_the_kernel_or_none(monkeypatch, caplog):
    """`CAPT_JAX_PANELS`: "off" keeps XLA's products; a name whose kernel runs here is taken; an unknown name is
    warned about and the default choice is made."""
    monkeypatch.delenv("CAPT_JAX_PANELS", raising=False)
    panels._candidates.cache_clear()  # each name's warning is logged once per process
    default = panels.instruction_set()
    monkeypatch.setenv("CAPT_JAX_PANELS", "off")
    assert panels.instruction_set() is None and not panels.available()
    for name in panels.INSTRUCTION_SETS:
        monkeypatch.setenv("CAPT_JAX_PANELS", name)
        assert panels.instruction_set() == (name if panels.runs_here(name) else None)
    monkeypatch.setenv("CAPT_JAX_PANELS", "avx9000")
    with caplog.at_level(logging.WARNING, logger=panels.__name__):
        assert panels.instruction_set() == default
    assert "CAPT_JAX_PANELS=avx9000: expected off, avx2, avx512" in caplog.text


def test_rotary_gradient_is_the_inverse_rotation():
    x, cotangent = normals(5, (2, 5, 3, 8), (2, 5, 3, 8))
    angles = 6 * jnp.asarray(np.random.default_rng(6).uniform(size=(2, 5, 4)), jnp.float32)
    cos, sin = jnp.cos(jnp.concatenate([angles, angles], -1)), jnp.sin(jnp.concatenate([angles, angles], -1))

    def plain(x):
        rotated = jnp.concatenate([-x[..., 4:], x[..., :4]], axis=-1)
        return jnp.sum((x * cos[:, :, None] + rotated * sin[:, :, None]) * cotangent)

    np.testing.assert_allclose(
        jax.grad(lambda x: jnp.sum(apply_rotary(x, cos, sin) * cotangent))(x), jax.grad(plain)(x), atol=1e-6
    )


def call_site_inputs(dtype, length: int, masking: str):
    """q/k/v in the layouts and dtype `attend` receives them ([B, T, Hq, D], [B, Hk, T, D]: Full and Prefill both
    attend to the call's own keys), a cotangent, and one of the masks its callers build: left padding or packed rows."""
    batch, q_heads, kv_heads, dim = 2, 6, 2, 16
    shapes = (batch, length, q_heads, dim), *[(batch, kv_heads, length, dim)] * 2, (batch, length, q_heads, dim)
    q, k, v, cotangent = (x.astype(dtype) for x in normals(6, *shapes))
    query_slots = jnp.broadcast_to(jnp.arange(length), (batch, length))
    if masking == "packed":
        segments = jnp.array([[1] * 3 + [2] * (length - 5) + [0] * 2, [1] * (length - 4) + [2] * 4])
        return q, k, v, cotangent, attention_mask(query_slots, segments > 0, segments)
    valid = jnp.arange(length)[None] >= jnp.array([[0], [3]])  # row 1 left-padded by 3
    return q, k, v, cotangent, attention_mask(query_slots, valid)


# Gradients may differ by bf16 rounding in another summation order, so their bound scales with each gradient's
# largest entry: 2^-5 of it, 8 bf16 roundings (2^-8). On these numpy inputs the outputs agree exactly and the
# gradients to 1.8 roundings with jax 0.10.2 and 3.2 with 0.11.2 (the value gradient, with is_causal or without).
@pytest.mark.parametrize("dtype, tolerance, grad_tolerance", [(jnp.float32, 1e-5, 1e-6), (jnp.bfloat16, 1e-2, 2**-5)])
@pytest.mark.parametrize("masking", ["padding", "packed"])  # Full or Prefill on left-padded rows, Full on packed rows
def test_cudnn_call_site_with_xla_matches_recomputing_attention(dtype, tolerance, grad_tolerance, masking):
    q, k, v, cotangent, mask = call_site_inputs(dtype, 12, masking)
    out = jax.jit(library_attention, static_argnums=(4, 5))(q, k, v, mask, 0.25, "xla")
    assert out.dtype == dtype and out.shape == q.shape

    def loss(fn):
        return lambda q, k, v: jnp.sum((fn(q, k, v, mask, 0.25) * cotangent).astype(jnp.float32))

    library = jax.jit(jax.grad(loss(functools.partial(library_attention, implementation="xla")), (0, 1, 2)))
    library_grads = library(q, k, v)
    # Also in causal blocks of 4 queries, as training and prefill run it on the XLA path.
    for causal_block in (None, 4):
        ours = functools.partial(recomputing_attention, causal_block=causal_block)
        want = jax.jit(ours, static_argnums=4)(q, k, v, mask, 0.25)
        assert want.dtype == dtype
        np.testing.assert_allclose(out.astype(jnp.float32), want.astype(jnp.float32), atol=tolerance)
        for got, expected in zip(library_grads, jax.jit(jax.grad(loss(ours), (0, 1, 2)))(q, k, v)):
            assert expected.dtype == dtype
            expected = np.asarray(expected, np.float32)
            bound = grad_tolerance * np.abs(expected).max()
            np.testing.assert_allclose(np.asarray(got, np.float32), expected, atol=bound)


def test_the_cudnn_call_is_marked_causal_so_the_kernel_skips_the_upper_blocks(monkeypatch):
    """A mask alone makes cuDNN compute every key block; the causal flag lets it skip those above the diagonal.
    The outputs cannot show the flag (the mask already hides those keys), so the call's arguments are checked."""
    seen = {}
    real = jax.nn.dot_product_attention

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    q, k, v, _, mask = call_site_inputs(jnp.bfloat16, 8, "padding")
    library_attention(q, k, v, mask, 0.25, "xla")
    assert seen["is_causal"] is True and seen["mask"] is mask
    with pytest.raises(ValueError, match="as many queries as keys, got 7 and 8"):
        library_attention(q[:, :7], k, v, mask[:, :, :7], 0.25, "xla")


def take_the_cudnn_branch(monkeypatch) -> list[str]:
    """Make `attend` take its cuDNN branch on the CPU, through the call site with implementation "xla"; the
    implementations the branch asked for are appended to the returned list."""
    calls = []

    def xla_call_site(q, k, v, mask, scale, implementation):
        calls.append(implementation)
        return library_attention(q, k, v, mask, scale, "xla")

    monkeypatch.setattr(attention_module, "attention_implementation", lambda config: "cudnn")
    monkeypatch.setattr(attention_module, "library_attention", xla_call_site)
    return calls


@pytest.mark.parametrize("length, expected", [(8, ["cudnn"]), (7, [])])
def test_an_odd_length_leaves_the_cudnn_branch(monkeypatch, length, expected):
    """jax refuses to differentiate the cuDNN kernel with a bias at an odd length, so such a call (an odd
    train.seq_len) attends through recomputing_attention instead, with the same result."""
    config = ModelConfig.from_hf_dict(ARCHS["tiny"])
    q, k, v, _, mask = call_site_inputs(jnp.float32, length, "padding")
    calls = take_the_cudnn_branch(monkeypatch)
    out = attention_module.attend(q, k, v, mask, config, causal_block=4)
    assert calls == expected
    np.testing.assert_allclose(out, recomputing_attention(q, k, v, mask, config.head_dim**-0.5), atol=1e-5)


def test_decoder_through_the_cudnn_branch_matches_the_xla_path(monkeypatch):
    """The whole decoder with `attend` taking its cuDNN branch (implementation "xla" on the CPU): training logits
    with left padding and packed rows, and a prefill + greedy decode, equal the recomputing path's."""
    config = ModelConfig.from_hf_dict(ARCHS["tiny"])
    params = init_params(config, jax.random.PRNGKey(0))
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, config.vocab_size, (2, 16)), jnp.int32)
    mask = jnp.arange(16)[None] >= jnp.array([[0], [5]])
    segments = jnp.array([[1] * 6 + [2] * 10, [1] * 9 + [2] * 5 + [0] * 2])

    def run():
        logits = jax.jit(lambda **kwargs: forward(params, tokens, config, **kwargs)[0])  # traced afresh per run
        padded = logits(token_mask=mask)
        packed = logits(token_mask=segments > 0, segment_ids=segments)
        new = decode(
            params, tokens, mask, jax.random.PRNGKey(2), config=config, max_new_tokens=4, sampling=Sampling(),
            eos_ids=(), pad_id=0,
        )  # fmt: skip
        return padded, packed, new

    expected = run()
    decode.clear_cache()  # decode is jitted on the config: trace it again with the patched branch
    calls = take_the_cudnn_branch(monkeypatch)
    got = run()
    decode.clear_cache()
    assert calls and set(calls) == {"cudnn"}
    np.testing.assert_allclose(got[0], expected[0], atol=1e-5)
    np.testing.assert_allclose(got[1], expected[1], atol=1e-5)
    np.testing.assert_array_equal(got[2], expected[2])
