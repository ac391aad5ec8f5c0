"""Grouped-query attention: the kernels, the three ways a call can attend, and the Flax module.

A call attends in one of three modes, each a small pytree carrying exactly what it needs:

    Full        training and scoring: queries see this call's own keys (causal, blind to padding and, in a
                packed row, to the row's other examples)
    Prefill     a prompt that starts an empty KV cache: attended as Full, its keys/values written from slot 0
    DecodeStep  one new token per row: it sees the valid cached slots, plus itself

Prefill and Full go through cuDNN flash attention on GPU in half precision and through `recomputing_attention`
elsewhere (in causal blocks of queries, so most of the masked upper triangle is never computed); a decode
step goes through `grouped_attention`. The cache holds keys transposed ([B, Hk, hd, S]) and
is never copied: a scanned layer reads its slice as it is and attends to its own key beside it, an unscanned
layer (decoding's default) writes its key into its own buffer in place first.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from capt_jax.errors import ConfigError
from capt_jax.model.config import ModelConfig
from capt_jax.model.layers import AdapterConfig, Linear, adapter_for, constrain
from capt_jax.model.rope import apply_rotary

if TYPE_CHECKING:
    from capt_jax.sharding import Layout

QUERY_AXES = ("batch", "length", "heads", "head_dim")  # q and attention outputs [B, T, Hq, hd]
KEY_AXES = ("batch", "kv_heads", "length", "head_dim")  # k and v [B, Hk, T, hd]
CACHED_KEY_AXES = ("batch", "kv_heads", "head_dim", "length")  # keys as the KV cache holds them [B, Hk, hd, T]


class Full(NamedTuple):
    """Queries attend to this call's own keys; `mask` [B, 1, T, T] (see `attention_mask`).

    Query t sits at key slot t and the mask hides every later slot, which is what lets `recomputing_attention`
    take the queries in causal blocks.
    """

    mask: jax.Array


class Prefill(NamedTuple):
    """A prompt starts an empty cache: queries attend to this call's own keys as in `Full` (`mask` [B, 1, T, T]),
    and the keys/values are written into the cache from slot 0.

    Attending to the prompt's keys instead of to every cache slot (the later ones still empty, and masked) skips
    the products over the empty slots and copying the cache's keys back out of their transposed layout: a
    prefill of 128-token prompts into a 640-slot cache took 21% less time on a CPU (benchmarks/prefill.py).
    """

    mask: jax.Array


class DecodeStep(NamedTuple):
    """One query per row attends to the valid cached slots and to its own key.

    A scanned layer reads the cache as it is plus its own key (copying its slice of the stacked cache to insert
    the key first would dominate the step); an unscanned layer owns its buffers, so it writes its key at `index`
    in place and then attends to the slots `with_self` marks.
    """

    valid: jax.Array  # [B, 1, 1, S]: the cached slots before this token
    index: jax.Array  # [] int32: this token's slot
    with_self: jax.Array  # [B, 1, 1, S]: `valid` and this token's slot


Mode = Full | Prefill | DecodeStep


def attention_mask(query_slots: jax.Array, key_valid: jax.Array, segments: jax.Array | None = None) -> jax.Array:
    """Boolean [B, 1, T, S]: causal over slots and blind to padding; with `segments` (packed rows: [B, T] example
    ids of a call's own keys, T = S) also blind to the other examples of the row.

    A padded query may always see its own slot, so no softmax row is empty (no NaNs from padding).
    """
    key_slots = jnp.arange(key_valid.shape[1])
    causal = key_slots[None, None, :] <= query_slots[:, :, None]
    visible = key_valid[:, None, :]
    if segments is not None:
        visible = visible & (segments[:, :, None] == segments[:, None, :])
    visible = visible | (key_slots[None, None, :] == query_slots[:, :, None])
    return (causal & visible)[:, None]


def attention_implementation(config: ModelConfig) -> str:
    """cuDNN flash attention on GPU for half-precision compute (all it supports); XLA elsewhere.

    `jax.nn.dot_product_attention(implementation=None)` always picks XLA, so the choice is made here.
    """
    check_implementation(config.attention_impl, config.dtype)
    if config.attention_impl is not None:
        return config.attention_impl
    return "cudnn" if _cudnn_runs(config.dtype) else "xla"


def _cudnn_runs(compute_dtype: Any) -> bool:
    return jnp.dtype(compute_dtype) in (jnp.bfloat16, jnp.float16) and jax.default_backend() == "gpu"


def check_implementation(implementation: str | None, compute_dtype: Any) -> None:
    """A forced 'cudnn' fails, by its config key, where cuDNN cannot run, instead of with cuDNN's runtime error.
    It starts jax's backend, so commands call it once the multi-host runtime is joined (`config.validate_attention`)."""
    if implementation == "cudnn" and not _cudnn_runs(compute_dtype):
        raise ConfigError(
            f"config key 'model.attention_impl': 'cudnn' runs on a GPU in bfloat16 or float16 only (here: "
            f"{jax.default_backend()}, compute in {jnp.dtype(compute_dtype).name}); use 'auto' or 'xla'"
        )


def grouped_attention(q: jax.Array, parts: list[tuple[jax.Array, jax.Array, jax.Array]], scale: float) -> jax.Array:
    """Softmax attention for q [B, T, Hq, D] over one or more key/value parts: (keys transposed [B, Hk, D, S],
    values [B, Hk, S, D], mask [B, 1, T, S]); each key head serves Hq / Hk query heads, and one softmax spans all
    parts. Keys come transposed because the KV cache stores them so (see `KVCache`).

    The decode-step path. Query heads are stacked per key head (`_to_head_major`) instead of repeating keys, so
    both products are plain batched matmuls over (B, Hk): with the key head between the batch and query axes
    of the output instead, XLA:CPU ran the probabilities-by-values product as a generic dot, a sixth of a
    decode step. Scores are float32. Separate parts let a scanned layer attend to the cache as it is plus the
    new token, without copying its slice of the stacked cache to insert the token first.
    """
    batch, seq, num_heads, _ = q.shape
    kv_heads = parts[0][1].shape[1]
    qh = _to_head_major(q, kv_heads)
    scores = [
        jnp.where(
            _grouped_mask(m, num_heads // kv_heads),
            jnp.einsum("bkqd,bkds->bkqs", qh, k_t, preferred_element_type=jnp.float32) * scale,
            jnp.finfo(jnp.float32).min,
        )
        for k_t, _, m in parts
    ]
    probs = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1)
    bounds = np.cumsum([v.shape[2] for _, v, _ in parts])[:-1]
    out = sum(
        jnp.einsum("bkqs,bksd->bkqd", p.astype(v.dtype), v)
        for p, (_, v, _) in zip(jnp.split(probs, bounds, axis=-1), parts)
    )
    return _from_head_major(out, seq)


def _to_head_major(x: jax.Array, kv_heads: int) -> jax.Array:
    """[B, T, Hq, D] -> [B, Hk, G*T, D]: each key head's G query heads stacked along the query axis, so scores
    and outputs are plain batched matmuls over (B, Hk)."""
    batch, seq, num_heads, dim = x.shape
    x = x.reshape(batch, seq, kv_heads, num_heads // kv_heads, dim).transpose(0, 2, 3, 1, 4)
    return x.reshape(batch, kv_heads, -1, dim)


def _from_head_major(x: jax.Array, seq: int) -> jax.Array:
    """Inverse of `_to_head_major`."""
    batch, kv_heads, _, dim = x.shape
    x = x.reshape(batch, kv_heads, -1, seq, dim).transpose(0, 3, 1, 2, 4)
    return x.reshape(batch, seq, -1, dim)


def _grouped_mask(mask: jax.Array, groups: int) -> jax.Array:
    """[B, 1, T, S] -> [B, 1, G*T, S], matching `_to_head_major`'s query order."""
    batch, _, seq, slots = mask.shape
    return jnp.broadcast_to(mask[:, :, None], (batch, 1, groups, seq, slots)).reshape(batch, 1, groups * seq, slots)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def recomputing_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float, causal_block: int | None = None
) -> jax.Array:
    """Softmax attention, q [B, T, Hq, D] over k/v [B, Hk, S, D] with a boolean mask [B, 1, T, S], whose backward
    pass recomputes the probabilities from the saved log-sum-exp instead of storing them.

    The XLA path for training: autodiff of `grouped_attention` keeps every layer's [B, Hq, T, S] probabilities
    (and the masked scores) alive until the backward pass; here a layer keeps only its output and one float per
    query, as flash attention does, for one more QK^T matmul.

    `causal_block`: the caller promises that query t sits at key slot t (T = S) and that the mask hides every
    later slot (the `Full` and `Prefill` modes). Queries then go in blocks of at least that many positions (at most
    MAX_CAUSAL_BLOCKS blocks), each block against only the keys up to its last query, so most of the masked
    upper triangle is never computed (see `query_blocks`).
    """
    return _attention_forward(q, k, v, mask, scale, causal_block)[0]


MAX_CAUSAL_BLOCKS = 8  # each block is unrolled in the traced step: more would mostly add compile time


def query_blocks(seq: int, slots: int, causal_block: int | None) -> list[tuple[int, int, int]]:
    """(first query, end of queries, end of keys) per block: one block over all slots, or causal blocks of at
    least `causal_block` queries, and at most MAX_CAUSAL_BLOCKS of them.

    With n causal blocks the products cover (n + 1) / 2n of the [T, S] scores: 5/8 for four blocks.
    """
    if causal_block is None or causal_block >= seq:
        return [(0, seq, slots)]
    if seq != slots:
        raise ValueError(f"causal blocks need as many queries as key slots, got {seq} and {slots}")
    size = max(causal_block, -(-seq // MAX_CAUSAL_BLOCKS))
    return [(start, min(start + size, seq), min(start + size, seq)) for start in range(0, seq, size)]


def _sum_over_blocks(parts: list[jax.Array], slots: int, dtype: jnp.dtype) -> jax.Array:
    """Key or value gradients [B, Hk, S, D] in `dtype` from each block's [B, Hk, keys, D], summed in float32."""
    if len(parts) == 1:
        return parts[0].astype(dtype)
    batch, kv_heads, _, dim = parts[0].shape
    total = jnp.zeros((batch, kv_heads, slots, dim), jnp.float32)
    for part in parts:  # in place: each block adds into the slots it saw
        total = total.at[:, :, : part.shape[2]].add(part.astype(jnp.float32))
    return total.astype(dtype)


def _block_scores(qb, k, mask, groups, start, end, keys, scale):
    """Masked float32 scores of one head-major query block against its keys, and its visibility mask."""
    visible = _grouped_mask(mask[:, :, start:end, :keys], groups)
    scores = jnp.einsum("bkqd,bksd->bkqs", qb, k[:, :, :keys], preferred_element_type=jnp.float32) * scale
    return jnp.where(visible, scores, jnp.finfo(jnp.float32).min), visible


def _attention_forward(q, k, v, mask, scale, causal_block):
    """Each block of queries is moved head-major on its own (one copy, no slicing of a head-major whole), and the
    backward pass keeps the blocks as they are."""
    seq, kv_heads, slots = q.shape[1], k.shape[1], k.shape[2]
    groups = q.shape[2] // kv_heads
    blocks = query_blocks(seq, slots, causal_block)
    qbs, outs, lses = [], [], []
    for start, end, keys in blocks:
        qb = _to_head_major(q[:, start:end], kv_heads)
        scores, _ = _block_scores(qb, k, mask, groups, start, end, keys, scale)
        top = jnp.max(scores, axis=-1, keepdims=True)
        unnormalised = jnp.exp(scores - top)
        total = jnp.sum(unnormalised, axis=-1, keepdims=True)
        qbs.append(qb)
        outs.append(jnp.einsum("bkqs,bksd->bkqd", (unnormalised / total).astype(v.dtype), v[:, :, :keys]))
        lses.append((top + jnp.log(total))[..., 0])
    out = jnp.concatenate([_from_head_major(o, end - start) for o, (start, end, _) in zip(outs, blocks)], axis=1)
    return out, (qbs, k, v, mask, outs, lses)


def _attention_bwd(scale, causal_block, residuals, d_out):
    qbs, k, v, mask, outs, lses = residuals
    seq, kv_heads, slots = d_out.shape[1], k.shape[1], k.shape[2]
    groups = d_out.shape[2] // kv_heads
    blocks = query_blocks(seq, slots, causal_block)
    # Several blocks add into the same key slots: their parts stay float32 until the sum (bf16 rounds once).
    parts = jnp.float32 if len(blocks) > 1 else None
    d_qs, d_ks, d_vs = [], [], []
    for qb, ob, lse, (start, end, keys) in zip(qbs, outs, lses, blocks):
        d_ob = _to_head_major(d_out[:, start:end], kv_heads)
        scores, visible = _block_scores(qb, k, mask, groups, start, end, keys, scale)
        probs = jnp.where(visible, jnp.exp(scores - lse[..., None]), 0.0)
        d_vs.append(_contract_queries(d_ob, probs.astype(v.dtype), parts))
        d_probs = jnp.einsum("bkqd,bksd->bkqs", d_ob, v[:, :, :keys], preferred_element_type=jnp.float32)
        delta = jnp.sum(d_ob.astype(jnp.float32) * ob.astype(jnp.float32), axis=-1, keepdims=True)
        d_scores = (probs * (d_probs - delta) * scale).astype(qb.dtype)
        d_qs.append(_from_head_major(jnp.einsum("bkqs,bksd->bkqd", d_scores, k[:, :, :keys]), end - start))
        d_ks.append(_contract_queries(qb, d_scores, parts))
    d_q = jnp.concatenate(d_qs, axis=1)
    return d_q, _sum_over_blocks(d_ks, slots, k.dtype), _sum_over_blocks(d_vs, slots, v.dtype), None


def _contract_queries(small: jax.Array, probs: jax.Array, dtype: jnp.dtype | None) -> jax.Array:
    """probs^T @ small over the query axis: [B, Hk, Q, S] and [B, Hk, Q, D] -> [B, Hk, S, D].

    Computed as (small^T @ probs)^T, with the smaller [Q, D] operand on the left. With the [Q, S] probabilities
    on the left, XLA:CPU ran both such products of the backward pass as generic dots: 177 against 111 ms of op
    time per SmolLM2 step (docs/PERFORMANCE.md). The barrier keeps XLA from folding the outer transpose back
    into the product, which would restore the old order.
    """
    out = jnp.einsum("bkqd,bkqs->bkds", small, probs, preferred_element_type=dtype)
    return jnp.swapaxes(jax.lax.optimization_barrier(out), 2, 3)


recomputing_attention.defvjp(_attention_forward, _attention_bwd)


def library_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float, implementation: str
) -> jax.Array:
    """The cuDNN call site for Full and Prefill: `jax.nn.dot_product_attention` on q [B, T, Hq, D] and the call's own
    k/v [B, Hk, T, D], moved into its [B, T, Hk, D] layout, with the boolean mask [B, 1, T, T] (cuDNN turns it into
    an additive bias).

    Query t sits at key slot t and the mask hides every later slot, so the call is also marked causal: the mask
    stays exact (padding, packed rows), and cuDNN's flash kernel skips the key blocks above the diagonal, about
    half of the products, which a mask alone does not let it skip.

    `implementation` is the only thing the caller chooses: "cudnn" on a GPU, "xla" in the CPU test that checks
    these very arguments against `recomputing_attention` (tests/test_kernels.py).
    """
    if q.shape[1] != k.shape[2]:
        raise ValueError(f"the causal call site needs as many queries as keys, got {q.shape[1]} and {k.shape[2]}")
    k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, is_causal=True, implementation=implementation)


def attend(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, config: ModelConfig, causal_block: int | None = None
) -> jax.Array:
    """q [B, T, Hq, D], k/v [B, Hk, S, D], boolean mask [B, 1, T, S] -> [B, T, Hq, D], for Full and Prefill.

    On GPU in half precision through jax.nn.dot_product_attention's cuDNN flash kernel; elsewhere through
    recomputing_attention, in causal blocks of queries when the caller passes `causal_block` (Full and Prefill).
    An odd number of queries also takes recomputing_attention: jax refuses to differentiate the cuDNN kernel with
    a bias (our mask becomes one) at an odd length (NotImplementedError), which an odd `train.seq_len` would hit.
    Length buckets are even, so only such a setting, or a direct call, gets here.
    """
    scale = config.head_dim**-0.5
    if attention_implementation(config) == "cudnn" and q.shape[1] % 2 == 0:
        return library_attention(q, k, v, mask, scale, "cudnn")
    return recomputing_attention(q, k, v, mask, scale, causal_block)


class Attention(nn.Module):
    """q/k/v projections, rotary embeddings, attention in the call's mode, and the output projection.

    Returns the output [B, T, D] and, with a cache, this call's keys (transposed, [B, Hk, hd, T]) and values
    ([B, Hk, T, hd]) in the cache's dtype, which the decoder writes into the stacked cache once, after the scan
    over layers; an unscanned layer returns its whole updated cache buffers instead.
    """

    config: ModelConfig
    adapter: AdapterConfig | None = None
    layout: Layout | None = None
    param_dtype: str = "float32"

    def setup(self) -> None:
        c = self.config
        q_out, kv_out = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim

        def proj(name: str, features: int, axes: tuple[str, str], bias: bool) -> Linear:
            adapter = adapter_for(self.adapter, name)
            return Linear(features, axes, bias, adapter, self.param_dtype, c.quantization, name=name)

        self.q_proj = proj("q_proj", q_out, ("heads", "embed"), c.qkv_bias)
        self.k_proj = proj("k_proj", kv_out, ("kv_heads", "embed"), c.qkv_bias)
        self.v_proj = proj("v_proj", kv_out, ("kv_heads", "embed"), c.qkv_bias)
        self.o_proj = proj("o_proj", c.hidden_size, ("embed", "heads"), False)

    def __call__(
        self,
        x: jax.Array,
        rotary: tuple[jax.Array, jax.Array],
        mode: Mode,
        cached: tuple[jax.Array, jax.Array] | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        c = self.config
        batch, seq, _ = x.shape
        q = self.q_proj(x).reshape(batch, seq, c.num_heads, c.head_dim)
        k = self.k_proj(x).reshape(batch, seq, c.num_kv_heads, c.head_dim)
        v = self.v_proj(x).reshape(batch, seq, c.num_kv_heads, c.head_dim)
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        q = constrain(q, QUERY_AXES, self.layout)
        v = constrain(jnp.swapaxes(v, 1, 2), KEY_AXES, self.layout)
        if isinstance(mode, DecodeStep):
            out, new = self._decode_step(q, k, v, cached, mode)
        else:
            out = attend(q, constrain(jnp.swapaxes(k, 1, 2), KEY_AXES, self.layout), v, mode.mask, c, c.causal_block)
            new = self._fill_cache(k, v, cached) if isinstance(mode, Prefill) else None
        out = constrain(out, QUERY_AXES, self.layout)
        return self.o_proj(out.reshape(batch, seq, c.num_heads * c.head_dim)), new

    def _cached_layout(
        self, k: jax.Array, v: jax.Array, cached: tuple[jax.Array, jax.Array]
    ) -> tuple[jax.Array, jax.Array]:
        """This call's keys [B, T, Hk, hd] transposed to the cache's [B, Hk, hd, T], and both in the cache's dtype."""
        k_t = constrain(k.transpose(0, 2, 3, 1), CACHED_KEY_AXES, self.layout)
        return k_t.astype(cached[0].dtype), v.astype(cached[1].dtype)

    def _fill_cache(
        self, k: jax.Array, v: jax.Array, cached: tuple[jax.Array, jax.Array]
    ) -> tuple[jax.Array, jax.Array]:
        """A prefill's keys/values to return: the decoder writes a scanned layer's after the scan, and an unscanned
        layer writes them into its own (empty) buffers here, from slot 0."""
        k_t, v = self._cached_layout(k, v, cached)
        if self.config.scan_layers:
            return k_t, v
        return (
            jax.lax.dynamic_update_slice_in_dim(cached[0], k_t, 0, axis=3),
            jax.lax.dynamic_update_slice_in_dim(cached[1], v, 0, axis=2),
        )

    def _decode_step(
        self, q: jax.Array, k: jax.Array, v: jax.Array, cached: tuple[jax.Array, jax.Array], mode: DecodeStep
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """One token's attention through the cache (keys stored transposed, [B, Hk, hd, S]); the keys/values to
        return."""
        c = self.config
        scale = c.head_dim**-0.5
        k_t, v = self._cached_layout(k, v, cached)
        if c.scan_layers:
            self_mask = jnp.ones((q.shape[0], 1, 1, 1), bool)
            own = (k_t.astype(q.dtype), v.astype(q.dtype), self_mask)
            parts = [(cached[0].astype(q.dtype), cached[1].astype(q.dtype), mode.valid), own]
            return grouped_attention(q, parts, scale), (k_t, v)  # the decoder writes every layer's after the scan
        # Write this token's key/value into the layer's own buffers in place, then attend to them.
        k_all = jax.lax.dynamic_update_slice_in_dim(cached[0], k_t, mode.index, axis=3)
        v_all = jax.lax.dynamic_update_slice_in_dim(cached[1], v, mode.index, axis=2)
        out = grouped_attention(q, [(k_all.astype(q.dtype), v_all.astype(q.dtype), mode.with_self)], scale)
        return out, (k_all, v_all)
