"""The decoder's building blocks as Flax Linen modules: a projection with an optional LoRA adapter, and the MLP.

Parameters live in two collections: "params" holds the frozen base in the Hugging Face layout (`weight` is
[out, in], or with `ModelConfig.quantize` a dict of its quantized leaves, see capt_jax.model.quant), "lora" holds
the adapters ({"a": [r, in], "b": [out, r]}, peft's lora_A / lora_B). Every variable is declared with logical
axis names, and `constrain` pins the main activations to logical names too; the one table that maps names to
mesh axes is `config.mesh.rules` (see capt_jax.sharding). The names:

    batch, length        rows and positions of activations
    embed                the model width D (the input of q/k/v/gate/up, the output of o/down)
    heads, kv_heads      query / key-value heads x head_dim, flattened as Hugging Face stores the projections
    head_dim             the per-head width of activations
    mlp                  the MLP width F
    vocab                embedding rows
    layers               the stacking axis of the scanned layers
    norm                 RMSNorm weights (small: replicated by the default rules)
    lora_rank            the adapter rank r (small: replicated)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp

from capt_jax.model import panels
from capt_jax.model.config import ModelConfig
from capt_jax.model.kernels import dropout, lora_delta, matmul_weight_t, swiglu
from capt_jax.model.quant import Quantization, leaf_axes, quantize, quantized_matmul

if TYPE_CHECKING:
    from capt_jax.sharding import Layout

LOGICAL_AXES = tuple("batch length embed heads kv_heads head_dim mlp vocab layers norm lora_rank".split())
INIT_STD = 0.02  # random weights (benchmarks, tests without a checkpoint), as transformers' initializer_range


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """Which projections carry a LoRA adapter, of what rank, and how it is applied (scale = alpha / rank).

    Dropout acts on the adapter's input only, and only when the call is given a "dropout" RNG stream.
    """

    targets: tuple[str, ...]
    rank: int
    scale: float = 1.0
    dropout: float = 0.0


def adapter_for(adapter: AdapterConfig | None, projection: str) -> AdapterConfig | None:
    """The adapter a projection carries: `adapter` when it targets the projection, else none."""
    return adapter if adapter is not None and projection in adapter.targets else None


def constrain(x: jax.Array, names: Sequence[str | None], layout: Layout | None) -> jax.Array:
    """Pin an activation to its logical axes under `layout` (no-op without one: a single device)."""
    return x if layout is None else layout.constrain(x, tuple(names))


def _lora_a_init(key: jax.Array, shape: tuple[int, int], dtype=jnp.float32) -> jax.Array:
    """U(-1/sqrt(in), 1/sqrt(in)), as peft initialises lora_A (kaiming-uniform with a = sqrt(5))."""
    bound = 1.0 / math.sqrt(shape[1])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _quantized_init(quant: Quantization, axes: tuple[str, str]):
    """Random quantized weights: the normal draw of an unquantized projection, quantized, each leaf boxed with its
    logical axes; so benchmarks and tests get quantized random models without a full-precision copy of them."""

    def init(key: jax.Array, shape: tuple[int, int]) -> dict[str, nn.LogicallyPartitioned]:
        leaves = quantize(nn.initializers.normal(INIT_STD)(key, shape), quant)
        return {name: nn.LogicallyPartitioned(leaves[name], names) for name, names in leaf_axes(quant, axes).items()}

    return init


class Linear(nn.Module):
    """x @ W.T (+ b) (+ scale * dropout(x) @ A.T @ B.T); W [out, in] is cast to x's dtype, never copied in f32.

    With `quant`, W is stored quantized and dequantized inside the matmul (`quantized_matmul`). In decoding's layout
    on an AVX-512 or AVX2 CPU (`generate.decoding_layout`), W is "panels" instead, multiplied by our kernel (`panels`).
    """

    features: int
    axes: tuple[str, str]  # logical names of (out, in)
    use_bias: bool = False
    adapter: AdapterConfig | None = None
    param_dtype: str = "float32"
    quant: Quantization | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out_axis, in_axis = self.axes
        shape = (self.features, x.shape[-1])
        if self.has_variable("params", "panels"):
            y = panels.matmul(x, self.get_variable("params", "panels"), self.features)
        elif self.quant is None:
            normal = nn.with_logical_partitioning(nn.initializers.normal(INIT_STD), self.axes)
            weight = self.param("weight", normal, shape, self.param_dtype)
            y = matmul_weight_t(x, weight.astype(x.dtype))
        else:
            leaves = self.param("weight", _quantized_init(self.quant, self.axes), shape)
            y = quantized_matmul(x, leaves, self.quant, x.shape[-1])
        if self.use_bias:
            init = nn.with_logical_partitioning(nn.initializers.zeros_init(), (out_axis,))
            y = y + self.param("bias", init, (self.features,), self.param_dtype).astype(x.dtype)
        if self.adapter is None:
            return y
        rank = self.adapter.rank
        a_init = nn.with_logical_partitioning(_lora_a_init, ("lora_rank", in_axis))
        b_init = nn.with_logical_partitioning(nn.initializers.zeros_init(), (out_axis, "lora_rank"))
        # B = 0: a fresh adapter leaves the model unchanged.
        a = self.variable("lora", "a", lambda: a_init(self.make_rng("params"), (rank, x.shape[-1]))).value
        b = self.variable("lora", "b", lambda: b_init(self.make_rng("params"), (self.features, rank))).value
        if self.adapter.dropout > 0 and self.has_rng("dropout"):
            x = dropout(x, self.adapter.dropout, self.make_rng("dropout"))
        return y + lora_delta(x, a.astype(x.dtype), b.astype(x.dtype), self.adapter.scale)


class MLP(nn.Module):
    """down(silu(gate(x)) * up(x)), with SwiGLU's hand-written backward pass."""

    config: ModelConfig
    adapter: AdapterConfig | None = None
    layout: Layout | None = None
    param_dtype: str = "float32"

    def setup(self) -> None:
        c = self.config

        def proj(name: str, features: int, axes: tuple[str, str]) -> Linear:
            adapter = adapter_for(self.adapter, name)
            return Linear(features, axes, c.mlp_bias, adapter, self.param_dtype, c.quantization, name=name)

        self.gate_proj = proj("gate_proj", c.intermediate_size, ("mlp", "embed"))
        self.up_proj = proj("up_proj", c.intermediate_size, ("mlp", "embed"))
        self.down_proj = proj("down_proj", c.hidden_size, ("embed", "mlp"))

    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = constrain(swiglu(self.gate_proj(x), self.up_proj(x)), ("batch", "length", "mlp"), self.layout)
        return self.down_proj(hidden)
