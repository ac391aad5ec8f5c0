"""LoRA as data: the trainable tree, its optax partition, and merging it into the base.

Why the adapters are a pytree of their own rather than a flag on the base weights: `jax.grad` and the optimizer
see only what is trainable, so the frozen base never gets a gradient or an Adam moment, whatever its size, and
a checkpoint is the adapters alone. The modules declare the adapters (the "lora" collection of
`capt_jax.model`), in peft's convention: {"layers": {"q_proj": {"a": [L, r, in], "b": [L, out, r]}, ...}}.

The trainable tree is that collection plus, when `lora.extra_trainable` names them, a few small base leaves
(norms, biases) trained in full, at their own paths, e.g. {"layers": {"q_proj": {"a", "b", "bias"}, "input_norm"},
"final_norm"}. They are copied out of the base once, and put back over it for each forward pass (`overlay`).

The optax partition labels every trainable leaf:

    lora_a   AdamW at the learning rate
    lora_b   AdamW at lora.b_lr_ratio x the learning rate: LoRA+ (Hayou et al. 2024); 1.0 is plain LoRA, the paper's
    extra    AdamW at the learning rate, without weight decay (which would pull norm weights towards zero)

Gradient clipping spans all of them, before the partition, so the clipped global norm is the same as without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from capt_jax.errors import ConfigError
from capt_jax.model import ModelConfig, Params, param_shapes
from capt_jax.model.decoder import PROJECTIONS, init_adapters
from capt_jax.model.layers import AdapterConfig

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
ADAPTER_LEAVES = ("a", "b")
# What lora.extra_trainable may name (dotted paths into the base params): vectors, never a weight matrix.
EXTRA_CANDIDATES = (
    "final_norm",
    "layers.input_norm",
    "layers.post_attention_norm",
    *(f"layers.{name}.bias" for name in PROJECTIONS),
)

Path = tuple[str, ...]


def check_targets(targets: Sequence[str]) -> tuple[str, ...]:
    unknown = sorted(set(targets) - set(PROJECTIONS))
    if unknown or not targets or len(set(targets)) < len(targets):
        raise ConfigError(
            f"config key 'lora.targets': {list(targets)} must be distinct names among {list(PROJECTIONS)}"
        )
    return tuple(targets)


def init_lora(config: ModelConfig, targets: Sequence[str], rank: int, rng: jax.Array) -> Params:
    """Fresh adapters: A ~ U(-1/sqrt(in), 1/sqrt(in)) as peft draws it; B = 0, so the model is unchanged."""
    return init_adapters(config, AdapterConfig(tuple(sorted(check_targets(targets))), rank), rng)


def lora_scale(rank: int, alpha: float) -> float:
    return alpha / rank


def flat(tree: Params) -> dict[Path, Any]:
    """Leaves by path; a shape tuple (as `param_shapes` gives) counts as one leaf."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, tuple))[0]
    return {tuple(k.key for k in path): leaf for path, leaf in leaves}


def nest(leaves: Iterable[tuple[Path, Any]]) -> Params:
    tree: Params = {}
    for path, leaf in leaves:
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return tree


def split_trainable(trainable: Params) -> tuple[Params, Params]:
    """(adapters: the "lora" collection, extras: base leaves trained in full), by leaf name."""
    leaves = flat(trainable).items()
    return (
        nest((p, x) for p, x in leaves if p[-1] in ADAPTER_LEAVES),
        nest((p, x) for p, x in leaves if p[-1] not in ADAPTER_LEAVES),
    )


def overlay(tree: Params, leaves: Params) -> Params:
    """`tree` with the leaves of `leaves` put in at their paths (trained extras over the base, or next to the
    adapters); the other leaves are `tree`'s own arrays, not copies."""
    return nest({**flat(tree), **flat(leaves)}.items()) if leaves else tree


def extra_trainable_paths(names: Sequence[str], shapes: Params | None = None, source: str = "") -> tuple[Path, ...]:
    """lora.extra_trainable as paths, checked against EXTRA_CANDIDATES and, given the model's `param_shapes`,
    against what the model has (a Llama without q/k/v biases cannot train them)."""
    key = "config key 'lora.extra_trainable'"
    for name in names:
        if name not in EXTRA_CANDIDATES:
            raise ConfigError(
                f"{key}: {name!r} is not a norm or bias; it may name any of {list(EXTRA_CANDIDATES)} "
                "(weight matrices are trained through their adapters)"
            )
    paths = tuple(tuple(name.split(".")) for name in names)
    if shapes is not None:
        missing = [".".join(p) for p in paths if p not in flat(shapes)]
        if missing:
            raise ConfigError(f"{key}: {missing} do not exist in {source or 'this model'}")
    return paths


def init_extras(base: Params, paths: Sequence[Path]) -> Params:
    """Float32 copies of the named base leaves: the starting point of training them."""
    leaves = flat(base)
    return nest((p, leaves[p].astype(jnp.float32)) for p in paths)


def put_extras(params: Params, extras: Params) -> Params:
    """Base params with trained extras in place of their base leaves, in the base leaves' dtypes."""
    base = flat(params)
    return overlay(params, nest((p, x.astype(base[p].dtype)) for p, x in flat(extras).items()))


def merge_lora(params: Params, trainable: Params, scale: float) -> Params:
    """Base params with W + scale * B @ A folded in (in float32, stored back in W's dtype), and any trained
    extras in place of their base leaves (in the base leaf's dtype)."""
    adapters, extras = split_trainable(trainable)
    params = put_extras(params, extras)
    layers = dict(params["layers"])
    for name, adapter in adapters["layers"].items():
        weight = layers[name]["weight"]
        delta = scale * jnp.einsum("lor,lri->loi", adapter["b"].astype(jnp.float32), adapter["a"].astype(jnp.float32))
        layers[name] = {**layers[name], "weight": (weight.astype(jnp.float32) + delta).astype(weight.dtype)}
    return {**params, "layers": layers}


def partition_labels(trainable: Params) -> Params:
    """'lora_a' / 'lora_b' for the adapter factors, 'extra' for base leaves trained in full."""
    names = {"a": "lora_a", "b": "lora_b"}
    return jax.tree_util.tree_map_with_path(lambda path, _: names.get(path[-1].key, "extra"), trainable)


def make_optimizer(
    learning_rate: float | Callable[[int], float],
    weight_decay: float,
    grad_clip: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    b_lr_ratio: float = 1.0,
) -> optax.GradientTransformation:
    """Global-norm clipping over every trainable leaf, then AdamW per label (see the module docstring)."""

    def adamw(lr: float | Callable[[int], float], decay: float) -> optax.GradientTransformation:
        return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=decay)

    b_lr = (lambda step: b_lr_ratio * learning_rate(step)) if callable(learning_rate) else b_lr_ratio * learning_rate
    groups = {
        "lora_a": adamw(learning_rate, weight_decay),
        "lora_b": adamw(b_lr, weight_decay),
        "extra": adamw(learning_rate, 0.0),
    }
    return optax.chain(
        optax.clip_by_global_norm(grad_clip) if grad_clip > 0 else optax.identity(),
        optax.multi_transform(groups, partition_labels),
    )


def warmup_cosine(peak: float, max_steps: int, warmup_ratio: float) -> optax.Schedule:
    """Linear warm-up from 0 over ceil(ratio * steps), then cosine decay to 0 (the paper's schedule)."""
    warmup = math.ceil(warmup_ratio * max_steps)
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup_steps=warmup, decay_steps=max(max_steps, warmup + 1), end_value=0.0
    )


def check_adapters(trainable: Params, config: ModelConfig, rank: int, source: str, base: str) -> None:
    """Adapters (or extra trained leaves) from another model would fail deep inside a matmul; say which tensor and
    which base."""
    adapters, extras = split_trainable(trainable)
    shapes = param_shapes(config)
    for name, adapter in adapters["layers"].items():
        num_layers, out_dim, in_dim = shapes["layers"][name]["weight"]
        for key, expected in (("a", (num_layers, rank, in_dim)), ("b", (num_layers, out_dim, rank))):
            if tuple(adapter[key].shape) != expected:
                raise ConfigError(
                    f"{source}: adapter {name}.{key} has shape {tuple(adapter[key].shape)}, but base "
                    f"model {base} needs {expected}: was it trained on another model?"
                )
    base_shapes = flat(shapes)
    for path, leaf in flat(extras).items():
        if base_shapes.get(path) != tuple(leaf.shape):
            raise ConfigError(
                f"{source}: trained leaf {'.'.join(path)} has shape {tuple(leaf.shape)}, but base model {base} "
                f"has {base_shapes.get(path, 'no such leaf')}: was it trained on another model?"
            )
