"""LoRA adapters on the decoder's stacked projections, and the optax partition that trains only them.

Adapters mirror the base params: {"layers": {"q_proj": {"a": [L, r, in], "b": [L, out, r]}, ...}}, the same
[out, in] convention as the base and as peft's lora_A / lora_B, so merging and export are plain matmuls.
The frozen base never enters the optimizer or `jax.grad`: the differentiated tree is the adapters alone, so no
base-sized gradient or Adam moment can exist.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from capt_jax.model import ModelConfig, Params, param_shapes
from capt_jax.model.decoder import PROJECTIONS

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
TRAINABLE, FROZEN = "lora", "frozen"


def check_targets(targets: Sequence[str]) -> tuple[str, ...]:
    unknown = sorted(set(targets) - set(PROJECTIONS))
    if unknown or not targets:
        raise ValueError(f"lora.targets: {list(targets)} must be a non-empty subset of {list(PROJECTIONS)}")
    return tuple(targets)


def init_lora(config: ModelConfig, targets: Sequence[str], rank: int, rng: jax.Array) -> Params:
    """A ~ U(-1/sqrt(in), 1/sqrt(in)) as peft does; B = 0, so a fresh adapter leaves the model unchanged."""
    layers = param_shapes(config)["layers"]
    adapters = {}
    for name, key in zip(check_targets(targets), jax.random.split(rng, len(targets))):
        num_layers, out_dim, in_dim = layers[name]["weight"]
        bound = 1.0 / math.sqrt(in_dim)
        adapters[name] = {
            "a": jax.random.uniform(key, (num_layers, rank, in_dim), jnp.float32, -bound, bound),
            "b": jnp.zeros((num_layers, out_dim, rank), jnp.float32),
        }
    return {"layers": adapters}


def lora_scale(rank: int, alpha: float) -> float:
    return alpha / rank


def merge_lora(params: Params, adapters: Params, scale: float) -> Params:
    """Base params with W + scale * B @ A folded in (in float32, stored back in W's dtype)."""
    layers = dict(params["layers"])
    for name, adapter in adapters["layers"].items():
        weight = layers[name]["weight"]
        delta = scale * jnp.einsum("lor,lri->loi", adapter["b"].astype(jnp.float32), adapter["a"].astype(jnp.float32))
        layers[name] = {**layers[name], "weight": (weight.astype(jnp.float32) + delta).astype(weight.dtype)}
    return {**params, "layers": layers}


def partition_labels(trainable: Params) -> Params:
    """'lora' for adapter matrices, 'frozen' for anything else a trainable tree may carry."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: TRAINABLE if getattr(path[-1], "key", None) in ("a", "b") else FROZEN, trainable
    )


def make_optimizer(
    learning_rate: float | Callable[[int], float],
    weight_decay: float,
    grad_clip: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """AdamW (with global-norm clipping) on LoRA leaves, zero updates for everything else."""
    adamw = optax.chain(
        optax.clip_by_global_norm(grad_clip) if grad_clip > 0 else optax.identity(),
        optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay),
    )
    return optax.multi_transform({TRAINABLE: adamw, FROZEN: optax.set_to_zero()}, partition_labels)


def warmup_cosine(peak: float, max_steps: int, warmup_ratio: float) -> optax.Schedule:
    """Linear warm-up from 0 over ceil(ratio * steps), then cosine decay to 0 (the paper's schedule)."""
    warmup = math.ceil(warmup_ratio * max_steps)
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup_steps=warmup, decay_steps=max(max_steps, warmup + 1), end_value=0.0
    )
