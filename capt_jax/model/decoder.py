"""The Llama/Qwen2 decoder as a Flax Linen module, and the pure functions the rest of capt_jax calls.

Why Linen rather than NNX: speed does not decide it. On the SmolLM2-135M LoRA step (benchmarks/linen_vs_nnx.py,
docs/PERFORMANCE.md "Linen or NNX") the two compile the same program: 3.04 vs 3.03 s of XLA compile, 5.75 vs
5.78 s per CPU step, and 0.21 vs 0.18 s of tracing. What decides it is the interface: Linen's `init` and `apply`
are pure functions of plain dicts of arrays, which is what the safetensors loader, optax, orbax checkpoints
and export already exchange; NNX needs split, merge and pure-dict conversion at each of those boundaries, and
inside jit and grad its transforms require the merged state to be re-created at the current trace level.

Variables keep the Hugging Face layout (`weight` is [out, in]), so loading, merging LoRA and exporting need no
transposes. The layers are one `Block` under `nn.scan` (stacked on a leading "layers" axis, rematerialised by
`config.remat_policy`): a 36-layer model compiles as one layer. That stacked tree is the contract of every
loader, optimizer, checkpoint and size helper. Decoding alone runs the layers unscanned (`config.scan_layers`
False), on the same weights split by `unstack_layers` into "layers_0" ... "layers_{L-1}", so that no new token
copies a layer's weights out of the stacked arrays.

    {"params": {"embed": [V, D], "final_norm": [D], "lm_head": [V, D] (untied only),
                "layers": {"input_norm": [L, D], "post_attention_norm": [L, D],
                           "q_proj": {"weight": [L, Hq*hd, D], "bias": [L, Hq*hd]}, "k_proj": ..., "v_proj": ...,
                           "o_proj": {"weight": [L, D, Hq*hd]}, "gate_proj": ..., "up_proj": ..., "down_proj": ...}},
     "lora":   {"layers": {"q_proj": {"a": [L, r, D], "b": [L, Hq*hd, r]}, ...}}}       (adapted projections only)

With `config.quantize` ("int8", "nf4") each projection's "weight" is instead a dict of its quantized leaves, e.g.
{"codes": uint8 [L, out, in/2], "scales": f32 [L, out, in/64]} (capt_jax.model.quant), dequantized one layer at
a time inside the scan.

`param_shapes`, `param_axes` and `lora_axes` read these shapes and logical axis names off the modules' own
declarations, so loading, init, export and sharding share one contract.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import meta

from capt_jax.model import panels
from capt_jax.model.attention import Attention, DecodeStep, Full, Prefill, attention_mask
from capt_jax.model.config import ModelConfig
from capt_jax.model.kernels import matmul_weight_t, rms_norm
from capt_jax.model.layers import INIT_STD, MLP, AdapterConfig, constrain
from capt_jax.model.quant import dequantize
from capt_jax.model.rope import rotary_tables

if TYPE_CHECKING:
    from capt_jax.sharding import Layout

Params = dict[str, Any]

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
HIDDEN_AXES = ("batch", "length", "embed")

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

    # Keys [L, B, Hk, hd, S] and values [L, B, Hk, S, hd]: keys transposed, because a decode step's scores then
    # read them as a plain [hd, S] matrix per head (a third faster on CPU than [S, hd]). With unscanned layers
    # (config.scan_layers False) a tuple of L per-layer buffers each, so a layer reads and writes its own in place.
    k: jax.Array | tuple[jax.Array, ...]
    v: jax.Array | tuple[jax.Array, ...]
    valid: jax.Array  # [B, S] bool
    index: jax.Array  # [] int32

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, slots: int) -> KVCache:
        keys, values = (
            (batch, config.num_kv_heads, config.head_dim, slots),
            (batch, config.num_kv_heads, slots, config.head_dim),
        )
        dtype, layers = jnp.dtype(config.dtype), config.num_layers
        if config.scan_layers:
            k, v = jnp.zeros((layers, *keys), dtype), jnp.zeros((layers, *values), dtype)
        else:
            k, v = (
                tuple(jnp.zeros(keys, dtype) for _ in range(layers)),
                tuple(jnp.zeros(values, dtype) for _ in range(layers)),
            )
        return cls(k, v, jnp.zeros((batch, slots), bool), jnp.array(0, jnp.int32))


class Lora(NamedTuple):
    """Adapter weights (the "lora" collection) plus how to apply them (scale = alpha / rank)."""

    params: Params
    scale: float
    dropout: float = 0.0
    rng: jax.Array | None = None  # dropout is active only when an rng is given (training)

    def config(self) -> AdapterConfig:
        """The module-side description: which projections the tree adapts, at which rank."""
        layers = self.params["layers"] if "layers" in self.params else self.params["layers_0"]  # stacked or not
        rank = next(iter(layers.values()))["a"].shape[-2]
        return AdapterConfig(tuple(sorted(layers)), rank, self.scale, self.dropout)


class Block(nn.Module):
    """One pre-norm decoder layer: h + attention(norm(h)), then h + mlp(norm(h)).

    Attention and MLP share the block's scope, so their projections sit next to the norms as in
    `param_shapes` ("layers/q_proj/weight", not "layers/attention/q_proj/weight").
    """

    config: ModelConfig
    adapter: AdapterConfig | None = None
    layout: Layout | None = None
    param_dtype: str = "float32"

    def setup(self) -> None:
        c = self.config
        norm = nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",))
        self.input_norm = self.param("input_norm", norm, (c.hidden_size,), self.param_dtype)
        self.post_attention_norm = self.param("post_attention_norm", norm, (c.hidden_size,), self.param_dtype)
        self.attention = Attention(c, self.adapter, self.layout, self.param_dtype)
        self.mlp = MLP(c, self.adapter, self.layout, self.param_dtype)
        nn.share_scope(self, self.attention)
        nn.share_scope(self, self.mlp)

    def __call__(
        self,
        h: jax.Array,
        cached: tuple[jax.Array, jax.Array] | None,
        rotary: tuple[jax.Array, jax.Array],
        mode: Full | Prefill | DecodeStep,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        eps = self.config.rms_norm_eps
        h = constrain(h, HIDDEN_AXES, self.layout)
        attn, new_kv = self.attention(rms_norm(h, self.input_norm, eps), rotary, mode, cached)
        h = h + attn
        return h + self.mlp(rms_norm(h, self.post_attention_norm, eps)), new_kv


class Decoder(nn.Module):
    """Token embedding, the layers (scanned, or one block each with `config.scan_layers` False) and the final
    norm: hidden states [B, T, D] and the updated cache.

    The output embedding (`lm_head`, or `embed` when tied) is declared here and applied by `logits_from_hidden`
    and the fused cross-entropy, which project only the positions they need.
    """

    config: ModelConfig
    adapter: AdapterConfig | None = None
    layout: Layout | None = None
    param_dtype: str = "float32"

    def setup(self) -> None:
        c = self.config
        table = nn.with_logical_partitioning(nn.initializers.normal(INIT_STD), ("vocab", "embed"))
        self.embed = self.param("embed", table, (c.vocab_size, c.hidden_size), self.param_dtype)
        # Decoding's panel layout holds an untied head only as "lm_head_panels" (`generate.split_into_panels`).
        if not c.tie_word_embeddings and not self.has_variable("params", "lm_head_panels"):
            self.lm_head = self.param("lm_head", table, (c.vocab_size, c.hidden_size), self.param_dtype)
        norm = nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",))
        self.final_norm = self.param("final_norm", norm, (c.hidden_size,), self.param_dtype)
        block = Block
        if c.remat_policy != "none":
            block = nn.remat(Block, policy=REMAT_POLICIES[c.remat_policy], prevent_cse=False)
        if not c.scan_layers:
            self.blocks = [
                block(c, self.adapter, self.layout, self.param_dtype, name=f"layers_{i}") for i in range(c.num_layers)
            ]
            return
        self.layers = nn.scan(
            block,
            variable_axes={"params": 0, "lora": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(0, nn.broadcast, nn.broadcast),
            length=c.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(c, self.adapter, self.layout, self.param_dtype)

    def __call__(
        self,
        tokens: jax.Array,
        token_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
        segment_ids: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """token_mask [B, T] marks real (non-pad) tokens. positions default to each row's count of real tokens so
        far, which makes left-padded rows see the same RoPE phases as unpadded ones.

        segment_ids [B, T] (packed training rows, no cache) number the examples sharing a row: attention stays
        within an example and default positions restart at each example's first token.
        """
        c = self.config
        batch, seq = tokens.shape
        token_mask = jnp.ones((batch, seq), bool) if token_mask is None else token_mask.astype(bool)
        if segment_ids is not None and cache is not None:
            raise ValueError("segment_ids mark packed training rows; the KV-cache paths take one sequence per row")
        key_valid = None
        if cache is not None and seq == 1:
            key_valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, token_mask, cache.index, axis=1)
            mode = DecodeStep(cache.valid[:, None, None, :], cache.index, key_valid[:, None, None, :])
            past = jnp.sum(cache.valid, axis=1, dtype=jnp.int32)
        else:  # the call attends to its own keys
            own_keys = attention_mask(jnp.broadcast_to(jnp.arange(seq), (batch, seq)), token_mask, segment_ids)
            past = jnp.zeros((batch,), jnp.int32)
            if cache is None:
                mode = Full(own_keys)
                if segment_ids is not None and positions is None:
                    positions = segment_positions(segment_ids)
            else:  # a prompt starts the cache afresh, written from slot 0
                cache = cache._replace(valid=jnp.zeros_like(cache.valid), index=jnp.zeros((), jnp.int32))
                key_valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, token_mask, 0, axis=1)
                mode = Prefill(own_keys)
        if positions is None:
            positions = past[:, None] + jnp.maximum(jnp.cumsum(token_mask, axis=1, dtype=jnp.int32) - 1, 0)
        rotary = rotary_tables(positions, c, jnp.dtype(c.dtype))

        h = jnp.take(self.embed, tokens, axis=0).astype(c.dtype)
        if not c.scan_layers:
            return self._unscanned(h, cache, key_valid, rotary, mode)
        kv = None if cache is None else (cache.k, cache.v)
        h, new_kv = self.layers(h, kv, rotary, mode)
        h = constrain(rms_norm(h, self.final_norm, c.rms_norm_eps), HIDDEN_AXES, self.layout)
        if cache is not None:  # each layer returned only its new keys/values: one in-place write for all layers
            keys = jax.lax.dynamic_update_slice_in_dim(cache.k, new_kv[0], cache.index, axis=4)
            values = jax.lax.dynamic_update_slice_in_dim(cache.v, new_kv[1], cache.index, axis=3)
            cache = KVCache(keys, values, key_valid, cache.index + seq)
        return h, cache

    def _unscanned(
        self,
        h: jax.Array,
        cache: KVCache | None,
        key_valid: jax.Array | None,
        rotary: tuple[jax.Array, jax.Array],
        mode: Full | Prefill | DecodeStep,
    ) -> tuple[jax.Array, KVCache | None]:
        """The layers one after another, each on its own weights and, with a cache, its own key/value buffers,
        into which it writes its new keys/values in place (and returns them)."""
        c = self.config
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            h, written = block(h, None if cache is None else (cache.k[i], cache.v[i]), rotary, mode)
            if cache is not None:
                keys.append(written[0])
                values.append(written[1])
        h = constrain(rms_norm(h, self.final_norm, c.rms_norm_eps), HIDDEN_AXES, self.layout)
        if cache is not None:
            cache = KVCache(tuple(keys), tuple(values), key_valid, cache.index + h.shape[1])
        return h, cache


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """Positions [B, T] counted from the first token of each run of equal segment ids [B, T]."""
    slots = jnp.broadcast_to(jnp.arange(segment_ids.shape[1]), segment_ids.shape)
    first = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
    return slots - jax.lax.cummax(jnp.where(first, slots, 0), axis=1)


def hidden_states(
    params: Params,
    tokens: jax.Array,
    config: ModelConfig,
    *,
    token_mask: jax.Array | None = None,
    positions: jax.Array | None = None,
    cache: KVCache | None = None,
    segment_ids: jax.Array | None = None,
    lora: Lora | None = None,
    layout: Layout | None = None,
) -> tuple[jax.Array, KVCache | None]:
    """Final-normed hidden states [B, T, D] for tokens [B, T], and the updated cache (see `Decoder`)."""
    variables = {"params": params}
    adapter = rngs = None
    if lora is not None:
        variables["lora"], adapter = lora.params, lora.config()
        if lora.rng is not None and lora.dropout > 0:
            rngs = {"dropout": lora.rng}
    model = Decoder(config, adapter, layout)
    return model.apply(variables, tokens, token_mask, positions, cache, segment_ids, rngs=rngs)


def lm_head(params: Params) -> jax.Array:
    """Output embedding [V, D]: the input embedding when tied."""
    return params["lm_head"] if "lm_head" in params else params["embed"]


def logits_from_hidden(params: Params, h: jax.Array) -> jax.Array:
    if "lm_head_panels" in params:  # decoding's layout on an x86 CPU (`generate.decoding_layout`)
        return panels.matmul(h, params["lm_head_panels"], params["embed"].shape[0])
    return matmul_weight_t(h, lm_head(params).astype(h.dtype))


def forward(params: Params, tokens: jax.Array, config: ModelConfig, **kwargs: Any) -> tuple[jax.Array, KVCache | None]:
    """Logits [B, T, V] and the updated cache; keyword arguments as for `hidden_states`."""
    h, cache = hidden_states(params, tokens, config, **kwargs)
    return logits_from_hidden(params, h), cache


def layer_of(stacked: Params, index: int | jax.Array) -> Params:
    """Layer `index` of stacked "layers" [L, ...]."""
    return jax.tree.map(lambda x: x[index], stacked)


def unstack_layers(tree: Params, layer: Callable[[Params, int], Params] = layer_of) -> Params:
    """A params or lora tree with its stacked "layers" [L, ...] split into "layers_0" ... "layers_{L-1}": the
    layout of a `scan_layers=False` decoder. Under jit the split is one copy of the weights, made once per call.
    `layer(stacked, i)` makes layer i (`generate.split_into_panels` packs its projections too)."""
    stacked = tree["layers"]
    count = jax.tree.leaves(stacked)[0].shape[0]
    rest = {key: value for key, value in tree.items() if key != "layers"}
    return rest | {f"layers_{i}": layer(stacked, i) for i in range(count)}


def _architecture(config: ModelConfig) -> ModelConfig:
    """The config without the runtime choices that leave shapes and axes alone (quantization changes them): the
    stacked layout is the contract every loader, optimizer and checkpoint sees."""
    return config.replace(
        dtype="float32", attention_impl="xla", remat_policy="none", scan_layers=True, causal_block=None
    )


def _init(config: ModelConfig, adapter: AdapterConfig | None, dtype: str, rng: jax.Array) -> dict[str, Any]:
    """Every variable, boxed with its logical axes (nn.LogicallyPartitioned)."""
    return Decoder(config, adapter, param_dtype=dtype).init({"params": rng}, jnp.zeros((1, 1), jnp.int32))


@functools.lru_cache(maxsize=32)
def abstract_variables(config: ModelConfig, adapter: AdapterConfig | None = None) -> dict[str, Any]:
    """Shapes and logical axes of every variable, traced without computing anything."""
    return jax.eval_shape(functools.partial(_init, _architecture(config), adapter, "float32"), jax.random.key(0))


def param_shapes(config: ModelConfig) -> Params:
    """Expected shape of every base leaf, the contract between loaders, initialisers and the forward pass."""
    return jax.tree.map(lambda x: tuple(x.shape), meta.unbox(abstract_variables(config)["params"]))


def param_axes(config: ModelConfig) -> Params:
    """Logical axis names of every base leaf, as a PartitionSpec of names (e.g. ("layers", "heads", "embed"))."""
    return nn.get_partition_spec(abstract_variables(config)["params"])


def lora_axes(config: ModelConfig, targets: tuple[str, ...]) -> Params:
    """Logical axis names of every adapter leaf of the given projections (the rank does not change them)."""
    return nn.get_partition_spec(abstract_variables(config, AdapterConfig(tuple(sorted(targets)), 1))["lora"])


def parameter_bytes(params: Params) -> dict[str, int]:
    """Resident bytes of a params tree of arrays or of `jax.eval_shape` shapes: the whole tree, and the seven
    projections' weights alone (when quantized: their codes and every level of scales)."""

    def size(tree: Any) -> int:
        return sum(int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))

    projections = [params["layers"][name]["weight"] for name in PROJECTIONS]
    return {"total": size(params), "projections": size(projections)}


def dequantized(params: Params, config: ModelConfig, dtype: str = "float32") -> Params:
    """`params` of a quantized `config` with every projection's weight decoded to [L, out, in] in `dtype`: the
    full-precision model its adapters were trained on, for a merged export (training and generation never build
    it: they dequantize one layer at a time)."""
    quant = config.quantization
    if quant is None:
        return params
    shapes = param_shapes(config.replace(quantize="none", double_quant=False))["layers"]
    layers = dict(params["layers"])
    for name in PROJECTIONS:
        decode = functools.partial(dequantize, quant=quant, in_features=shapes[name]["weight"][-1], dtype=dtype)
        layers[name] = {**layers[name], "weight": jax.vmap(decode)(layers[name]["weight"])}
    return {**params, "layers": layers}


def axis_sizes(config: ModelConfig, rank: int | None = None) -> dict[str, int]:
    """The model's size on each logical axis that has one; heads and kv_heads count heads (not heads x hd), so
    a projection and its attention activations are split over the same whole heads or not at all."""
    sizes = {
        "vocab": config.vocab_size,
        "embed": config.hidden_size,
        "heads": config.num_heads,
        "kv_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "mlp": config.intermediate_size,
        "layers": config.num_layers,
        "norm": config.hidden_size,
    }
    return sizes if rank is None else {**sizes, "lora_rank": rank}


# The float32 draws one init program may hold: small leaves share a program (each program traces the whole init and
# compiles, about 0.6 s apiece on a CPU whatever its size), a large one has its own.
INIT_GROUP_BYTES = 256 * 2**20


def init_params(config: ModelConfig, rng: jax.Array, dtype: str = "float32") -> Params:
    """Random weights (normal 0.02, biases 0, norms 1) for benchmarks and tests that need no checkpoint.

    A few leaves at a time, each group its own jitted init of at most INIT_GROUP_BYTES of float32 draws (or one
    larger leaf). One program for the whole Qwen2.5-3B tree in bf16 plans 5.3 GB of temporaries next to its 6.2 GB
    of weights, and XLA:CPU asked for 29.8 GB at once running it; one leaf plans at most 5.0 GB (the embedding's
    float32 draws) and the others under 0.6 GB. The values are those of the whole-tree init (the same RNG streams).
    """
    arch = _architecture(config)
    shapes = traverse_util.flatten_dict(param_shapes(arch))
    groups: list[list[tuple[str, ...]]] = [[]]
    group_bytes = 0
    for path, shape in shapes.items():
        draw_bytes = 4 * int(np.prod(shape))
        if groups[-1] and group_bytes + draw_bytes > INIT_GROUP_BYTES:
            groups.append([])
            group_bytes = 0
        groups[-1].append(path)
        group_bytes += draw_bytes
    leaves = {}
    for paths in groups:
        leaves.update(zip(paths, _init_leaves(arch, tuple(paths), dtype, rng)))
    return traverse_util.unflatten_dict(leaves)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _init_leaves(config: ModelConfig, paths: tuple[tuple[str, ...], ...], dtype: str, rng: jax.Array) -> tuple:
    """The leaves at `paths` of the whole init: XLA drops every other draw, and the forward pass `init` traces."""
    tree = traverse_util.flatten_dict(meta.unbox(_init(config, None, dtype, rng)["params"]))
    return tuple(tree[path] for path in paths)


@functools.partial(jax.jit, static_argnums=(0, 1))
def init_adapters(config: ModelConfig, adapter: AdapterConfig, rng: jax.Array) -> Params:
    """Fresh adapters for `adapter.targets`: A as peft draws it, B = 0 (jitted: the base is never built)."""
    return meta.unbox(_init(config, adapter, "float32", rng)["lora"])
