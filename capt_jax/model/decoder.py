"""The Llama/Qwen2 decoder as pure functions over a params pytree.

Params keep the Hugging Face layout (`weight` is [out, in]) so loading, merging LoRA and exporting need no
transposes. Layers are stacked on a leading axis and run under `jax.lax.scan`: a 36-layer model compiles
as one layer.

    params = {"embed": [V, D], "final_norm": [D], "lm_head": [V, D] (untied only),
              "layers": {"input_norm": [L, D], "post_attention_norm": [L, D],
                         "q_proj": {"weight": [L, Hq*hd, D], "bias": [L, Hq*hd]}, "k_proj": ..., "v_proj": ...,
                         "o_proj": {"weight": [L, D, Hq*hd]}, "gate_proj": ..., "up_proj": ..., "down_proj": ...}}

Optional LoRA adapters mirror the projections: {"q_proj": {"a": [L, r, in], "b": [L, out, r]}, ...}.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from capt_jax.model.config import ModelConfig
from capt_jax.model.rope import apply_rotary, rotary_tables

Params = dict[str, Any]

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

REMAT_POLICIES = {
    "none": None,  # keep every activation: fastest, most memory
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole layer in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs, recompute the cheap elementwise ops
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep projections, not attention
}


class KVCache(NamedTuple):
    """Keys/values of every layer for `slots` positions; `index` is the next slot to write.

    Left-padded batches share slot indices (their prompts end together), so one scalar index serves the batch
    while `valid` marks which slots hold real tokens.
    """

    k: jax.Array  # [L, B, Hk, S, hd]: slots next to each other per head, as grouped attention reads them
    v: jax.Array  # [L, B, Hk, S, hd]
    valid: jax.Array  # [B, S] bool
    index: jax.Array  # [] int32

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, slots: int) -> KVCache:
        shape = (config.num_layers, batch, config.num_kv_heads, slots, config.head_dim)
        dtype = jnp.dtype(config.dtype)
        return cls(
            jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, slots), bool), jnp.array(0, jnp.int32)
        )


class Lora(NamedTuple):
    """Adapter weights plus what the forward pass needs to apply them (scale = alpha / rank)."""

    params: Params
    scale: float
    dropout: float = 0.0
    rng: jax.Array | None = None  # dropout is active only when an rng is given (training)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in float32, cast back before the weight multiply, as transformers does."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * normed.astype(x.dtype)


def linear(
    x: jax.Array, p: Params, adapter: Params | None = None, lora: Lora | None = None, rng: jax.Array | None = None
) -> jax.Array:
    """x @ W.T (+ b) (+ scale * dropout(x) @ A.T @ B.T); the frozen W is cast to x's dtype, never copied in f32."""
    y = jnp.einsum("...i,oi->...o", x, p["weight"].astype(x.dtype))
    if "bias" in p:
        y = y + p["bias"].astype(x.dtype)
    if adapter is not None:
        xa = dropout(x, lora.dropout, rng) if lora.dropout > 0 and rng is not None else x
        down = jnp.einsum("...i,ri->...r", xa, adapter["a"].astype(x.dtype))
        y = y + lora.scale * jnp.einsum("...r,or->...o", down, adapter["b"].astype(x.dtype))
    return y


def dropout(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
    """Inverted dropout decided by 16-bit draws, two from each 32-bit random word.

    Threefry makes one block per requested word, so this costs half of `jax.random.bernoulli`'s generator work
    (a tenth of a CPU training step there). The drop probability is rate rounded to a multiple of 2^-16.
    """
    *lead, width = x.shape
    words = jax.random.bits(rng, (*lead, (width + 1) // 2), jnp.uint32)
    draws = jnp.concatenate([words & 0xFFFF, words >> 16], axis=-1)[..., :width]
    dropped = round(rate * 2**16)
    return jnp.where(draws >= dropped, x * (2**16 / (2**16 - dropped)), 0).astype(x.dtype)


@jax.custom_vjp
def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """silu(gate) * up, whose backward pass recomputes the activation from the two inputs.

    Autodiff would keep silu(gate), its sigmoid and the product as well: per layer, three more [tokens, MLP]
    buffers in the scan's stacked residuals.
    """
    return jax.nn.silu(gate) * up


def _swiglu_fwd(gate: jax.Array, up: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return swiglu(gate, up), (gate, up)


def _swiglu_bwd(residuals: tuple[jax.Array, jax.Array], d_out: jax.Array) -> tuple[jax.Array, jax.Array]:
    gate, up = residuals
    sigmoid = jax.nn.sigmoid(gate)
    d_gate = d_out * up * sigmoid * (1 + gate * (1 - sigmoid))
    return d_gate.astype(gate.dtype), (d_out * gate * sigmoid).astype(up.dtype)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


def attention_mask(query_slots: jax.Array, key_valid: jax.Array) -> jax.Array:
    """Boolean [B, 1, T, S]: causal over slots and blind to padding.

    A padded query may always see its own slot, so no softmax row is empty (no NaNs from padding).
    """
    key_slots = jnp.arange(key_valid.shape[1])
    causal = key_slots[None, None, :] <= query_slots[:, :, None]
    visible = key_valid[:, None, :] | (key_slots[None, None, :] == query_slots[:, :, None])
    return (causal & visible)[:, None]


def attention_implementation(config: ModelConfig) -> str:
    """cuDNN flash attention on GPU for half-precision compute (all it supports); XLA elsewhere.

    `jax.nn.dot_product_attention(implementation=None)` always picks XLA, so the choice is made here.
    """
    if config.attention_impl is not None:
        return config.attention_impl
    half = jnp.dtype(config.dtype) in (jnp.bfloat16, jnp.float16)
    return "cudnn" if half and jax.default_backend() == "gpu" else "xla"


def grouped_attention(q: jax.Array, parts: list[tuple[jax.Array, jax.Array, jax.Array]], scale: float) -> jax.Array:
    """Softmax attention for q [B, T, Hq, D] over one or more key/value parts: (k, v [B, Hk, S, D], mask
    [B, 1, T, S]); each key head serves Hq / Hk query heads, and one softmax spans all parts.

    The decode-step path. Query heads are grouped onto their key head instead of repeating keys, and scores are
    float32.
    Separate parts let a decode step attend to the cache as it is plus the new token, without copying the
    cache to insert it first (on a CPU that copy, not the arithmetic, dominates a decode step).
    """
    batch, seq, num_heads, dim = q.shape
    kv_heads = parts[0][0].shape[1]
    q = q.reshape(batch, seq, kv_heads, num_heads // kv_heads, dim)
    scores = [
        jnp.where(
            m[:, :, None],
            jnp.einsum("btkgd,bksd->bkgts", q, k, preferred_element_type=jnp.float32) * scale,
            jnp.finfo(jnp.float32).min,
        )
        for k, _, m in parts
    ]
    probs = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1)
    bounds = np.cumsum([k.shape[2] for k, _, _ in parts])[:-1]
    out = sum(
        jnp.einsum("bkgts,bksd->btkgd", p.astype(v.dtype), v)
        for p, (_, v, _) in zip(jnp.split(probs, bounds, axis=-1), parts)
    )
    return out.reshape(batch, seq, num_heads, dim)


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def recomputing_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float) -> jax.Array:
    """Softmax attention, q [B, T, Hq, D] over k/v [B, Hk, S, D] with a boolean mask [B, 1, T, S], whose backward
    pass recomputes the probabilities from the saved log-sum-exp instead of storing them.

    The XLA path for training: autodiff of `grouped_attention` keeps every layer's [B, Hq, T, S] probabilities
    (and the masked scores) alive until the backward pass; here a layer keeps only its output and one float per
    query, as flash attention does, for one more QK^T matmul.
    """
    return _attention_forward(q, k, v, mask, scale)[0]


def _attention_forward(q, k, v, mask, scale):
    seq, kv_heads = q.shape[1], k.shape[1]
    qh = _to_head_major(q, kv_heads)
    visible = _grouped_mask(mask, q.shape[2] // kv_heads)
    scores = jnp.einsum("bkqd,bksd->bkqs", qh, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
    top = jnp.max(scores, axis=-1, keepdims=True)
    unnormalised = jnp.exp(scores - top)
    total = jnp.sum(unnormalised, axis=-1, keepdims=True)
    out = jnp.einsum("bkqs,bksd->bkqd", (unnormalised / total).astype(v.dtype), v)
    return _from_head_major(out, seq), (qh, k, v, mask, out, (top + jnp.log(total))[..., 0])


def _attention_bwd(scale, residuals, d_out):
    qh, k, v, mask, out, lse = residuals
    seq, kv_heads = d_out.shape[1], k.shape[1]
    d_outh = _to_head_major(d_out, kv_heads)
    visible = _grouped_mask(mask, qh.shape[2] // seq)
    scores = jnp.einsum("bkqd,bksd->bkqs", qh, k, preferred_element_type=jnp.float32) * scale
    probs = jnp.where(visible, jnp.exp(scores - lse[..., None]), 0.0)
    d_v = jnp.einsum("bkqs,bkqd->bksd", probs.astype(v.dtype), d_outh)
    d_probs = jnp.einsum("bkqd,bksd->bkqs", d_outh, v, preferred_element_type=jnp.float32)
    delta = jnp.sum(d_outh.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    d_scores = (probs * (d_probs - delta) * scale).astype(qh.dtype)
    d_q = _from_head_major(jnp.einsum("bkqs,bksd->bkqd", d_scores, k), seq)
    d_k = jnp.einsum("bkqs,bkqd->bksd", d_scores, qh)
    return d_q, d_k, d_v, None


recomputing_attention.defvjp(_attention_forward, _attention_bwd)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, config: ModelConfig) -> jax.Array:
    """q [B, T, Hq, D], k/v [B, Hk, S, D], boolean mask [B, 1, T, S] -> [B, T, Hq, D].

    Prefill and training on GPU go through jax.nn.dot_product_attention's cuDNN flash kernel; other backends
    use recomputing_attention (decode steps call grouped_attention directly, in `_block`).
    """
    scale = config.head_dim**-0.5
    if attention_implementation(config) == "cudnn" and q.shape[1] > 1:
        k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="cudnn")
    return recomputing_attention(q, k, v, mask, scale)


def _block(
    h,
    layer: Params,
    adapters: Params | None,
    kv,
    cos,
    sin,
    mask,
    config: ModelConfig,
    lora: Lora | None,
    rng: jax.Array | None,
    write_index,
):
    """One pre-norm decoder layer. With a cache (kv != None) the new keys/values are written at write_index."""
    batch, seq, _ = h.shape
    rngs = list(jax.random.split(rng, len(PROJECTIONS))) if rng is not None else [None] * len(PROJECTIONS)

    def proj(name: str, x: jax.Array) -> jax.Array:
        adapter = adapters.get(name) if adapters else None
        return linear(x, layer[name], adapter, lora, rngs[PROJECTIONS.index(name)])

    x = rms_norm(h, layer["input_norm"], config.rms_norm_eps)
    q = proj("q_proj", x).reshape(batch, seq, config.num_heads, config.head_dim)
    k = proj("k_proj", x).reshape(batch, seq, config.num_kv_heads, config.head_dim)
    v = proj("v_proj", x).reshape(batch, seq, config.num_kv_heads, config.head_dim)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [B, Hk, T, hd]
    if kv is None:
        attn = attention(q, k, v, mask, config)
    elif seq == 1:
        # Decode step: the cached slots as they are (`mask` holds their validity), plus the new token itself.
        cached_k, cached_v = kv[0].astype(q.dtype), kv[1].astype(q.dtype)
        self_mask = jnp.ones((batch, 1, 1, 1), bool)
        attn = grouped_attention(q, [(cached_k, cached_v, mask), (k, v, self_mask)], config.head_dim**-0.5)
    else:
        k_all = jax.lax.dynamic_update_slice_in_dim(kv[0], k.astype(kv[0].dtype), write_index, axis=2)
        v_all = jax.lax.dynamic_update_slice_in_dim(kv[1], v.astype(kv[1].dtype), write_index, axis=2)
        attn = attention(q, k_all.astype(q.dtype), v_all.astype(q.dtype), mask, config)
    if kv is not None:  # only the new keys/values leave the layer; the caller writes them into the cache in place
        kv = (k.astype(kv[0].dtype), v.astype(kv[1].dtype))
    h = h + proj("o_proj", attn.reshape(batch, seq, config.num_heads * config.head_dim))

    x = rms_norm(h, layer["post_attention_norm"], config.rms_norm_eps)
    h = h + proj("down_proj", swiglu(proj("gate_proj", x), proj("up_proj", x)))
    return h, kv


def hidden_states(
    params: Params,
    tokens: jax.Array,
    config: ModelConfig,
    *,
    token_mask: jax.Array | None = None,
    positions: jax.Array | None = None,
    cache: KVCache | None = None,
    lora: Lora | None = None,
) -> tuple[jax.Array, KVCache | None]:
    """Final-normed hidden states [B, T, D] for tokens [B, T], and the updated cache.

    token_mask [B, T] marks real (non-pad) tokens. positions default to each row's count of real tokens so
    far, which makes left-padded rows see the same RoPE phases as unpadded ones.
    """
    batch, seq = tokens.shape
    dtype = jnp.dtype(config.dtype)
    if token_mask is None:
        token_mask = jnp.ones((batch, seq), bool)
    token_mask = token_mask.astype(bool)
    if cache is None:
        write_index, key_valid = None, token_mask
        query_slots = jnp.broadcast_to(jnp.arange(seq), (batch, seq))
        past = jnp.zeros((batch,), jnp.int32)
    else:
        write_index = cache.index
        key_valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, token_mask, write_index, axis=1)
        query_slots = jnp.broadcast_to(write_index + jnp.arange(seq), (batch, seq))
        past = jnp.sum(cache.valid, axis=1, dtype=jnp.int32)
    if positions is None:
        positions = past[:, None] + jnp.maximum(jnp.cumsum(token_mask, axis=1, dtype=jnp.int32) - 1, 0)
    if cache is not None and seq == 1:  # a decode step sees every valid cached slot, then itself (see _block)
        mask = cache.valid[:, None, None, :]
    else:
        mask = attention_mask(query_slots, key_valid)
    cos, sin = rotary_tables(positions, config, dtype)

    h = jnp.take(params["embed"], tokens, axis=0).astype(dtype)
    layer_rngs = None
    if lora is not None and lora.rng is not None and lora.dropout > 0:
        layer_rngs = jax.random.split(lora.rng, config.num_layers)
    adapters = lora.params.get("layers") if lora is not None else None
    kv = (cache.k, cache.v) if cache is not None else None

    def step(h, xs):
        layer, layer_adapters, layer_kv, rng = xs
        return _block(h, layer, layer_adapters, layer_kv, cos, sin, mask, config, lora, rng, write_index)

    policy = REMAT_POLICIES[config.remat_policy]
    if config.remat_policy != "none":
        step = jax.checkpoint(step, policy=policy, prevent_cse=False)
    h, new_kv = jax.lax.scan(step, h, (params["layers"], adapters, kv, layer_rngs))
    h = rms_norm(h, params["final_norm"], config.rms_norm_eps)
    if cache is not None:
        write = lambda stacked, new: jax.lax.dynamic_update_slice_in_dim(stacked, new, write_index, axis=3)  # noqa: E731
        cache = KVCache(write(cache.k, new_kv[0]), write(cache.v, new_kv[1]), key_valid, write_index + seq)
    return h, cache


def lm_head(params: Params) -> jax.Array:
    """Output embedding [V, D]: the input embedding when tied."""
    return params["lm_head"] if "lm_head" in params else params["embed"]


def logits_from_hidden(params: Params, h: jax.Array) -> jax.Array:
    return jnp.einsum("...d,vd->...v", h, lm_head(params).astype(h.dtype))


def forward(params: Params, tokens: jax.Array, config: ModelConfig, **kwargs: Any) -> tuple[jax.Array, KVCache | None]:
    """Logits [B, T, V] and the updated cache; keyword arguments as for `hidden_states`."""
    h, cache = hidden_states(params, tokens, config, **kwargs)
    return logits_from_hidden(params, h), cache


def param_shapes(config: ModelConfig) -> Params:
    """Expected shape of every leaf, the contract between loaders, initialisers and the forward pass."""
    L, D, F, hd = config.num_layers, config.hidden_size, config.intermediate_size, config.head_dim
    q_out, kv_out = config.num_heads * hd, config.num_kv_heads * hd

    def proj(out: int, inp: int, bias: bool) -> Params:
        return {"weight": (L, out, inp), **({"bias": (L, out)} if bias else {})}

    shapes: Params = {
        "embed": (config.vocab_size, D),
        "final_norm": (D,),
        "layers": {
            "input_norm": (L, D),
            "post_attention_norm": (L, D),
            "q_proj": proj(q_out, D, config.qkv_bias),
            "k_proj": proj(kv_out, D, config.qkv_bias),
            "v_proj": proj(kv_out, D, config.qkv_bias),
            "o_proj": proj(D, q_out, False),
            "gate_proj": proj(F, D, config.mlp_bias),
            "up_proj": proj(F, D, config.mlp_bias),
            "down_proj": proj(D, F, config.mlp_bias),
        },
    }
    if not config.tie_word_embeddings:
        shapes["lm_head"] = (config.vocab_size, D)
    return shapes


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple)


def init_params(config: ModelConfig, rng: jax.Array, dtype: str = "float32", scale: float = 0.02) -> Params:
    """Random weights (norms at one) for benchmarks and tests that need no checkpoint."""
    shapes = param_shapes(config)
    keys = iter(jax.random.split(rng, len(jax.tree.leaves(shapes, is_leaf=_is_shape))))

    def init(path: tuple, shape: tuple[int, ...]) -> jax.Array:
        key = next(keys)
        if "norm" in jax.tree_util.keystr(path):
            return jnp.ones(shape, dtype)
        return (scale * jax.random.normal(key, shape, jnp.float32)).astype(dtype)

    return jax.tree_util.tree_map_with_path(init, shapes, is_leaf=_is_shape)
