"""The device mesh (data, fsdp, tensor) and the rules that place logical axes on it.

Every variable and main activation carries logical axis names where it is declared (capt_jax.model.layers).
`config.mesh.rules` is the one table from names to mesh axes, in order of precedence: an array uses each mesh
axis once, so the activations' "batch" (data x fsdp) keeps their "embed" from fsdp, while weights' "embed" gets
it. Parameters, optimizer state, batches and activation constraints all go through `Layout.spec`.

A rule whose mesh axes do not divide the model's size on that logical axis (9 heads over tensor=2) is dropped
when the layout is made, with one warning naming the axis, so that axis is replicated consistently everywhere.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

log = logging.getLogger(__name__)


def make_mesh(shape: dict[str, int]) -> Mesh:
    """Auto axes: XLA propagates shardings from the parameters, the batch and the activation constraints."""
    return jax.make_mesh(tuple(shape[a] for a in AXES), AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


@dataclasses.dataclass(frozen=True)
class Layout:
    """A mesh and the logical-axis rules that hold on it."""

    mesh: Mesh
    rules: Rules

    def spec(self, names: tuple[str | None, ...]) -> P:
        return nn.logical_to_mesh_axes(names, self.rules)

    def sharding(self, names: tuple[str | None, ...]) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(names))

    def constrain(self, x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
        return jax.lax.with_sharding_constraint(x, self.sharding(names))

    def shardings(self, axes: Any) -> Any:
        """NamedSharding for a tree whose leaves are PartitionSpecs of logical names (as `param_axes` gives)."""
        return jax.tree.map(lambda names: self.sharding(tuple(names)), axes)


def make_layout(mesh: Mesh, rules: Rules, sizes: Mapping[str, int]) -> Layout:
    """Keep the rules whose mesh axes divide the model's size on their logical axis (`sizes`); warn once for each
    one dropped. Axes without a model size (batch, length) are checked where they are known (config.validate)."""
    kept = []
    for name, mesh_axes in rules:
        axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
        devices = math.prod(mesh.shape[a] for a in axes)
        if name in sizes and sizes[name] % devices:
            log.warning(
                "sharding: logical axis %r has size %d, which mesh axes %s (%d devices) do not divide; "
                "it is replicated instead",
                name,
                sizes[name],
                "x".join(axes),
                devices,
            )
            continue
        kept.append((name, mesh_axes))
    return Layout(mesh, tuple(kept))


def mirrored_axes(tree: Any, axes_by_path: Mapping[tuple[str, ...], P]) -> Any:
    """Logical axes for an optimizer state: each leaf whose path ends in a trainable leaf's path (Adam's mu/nu)
    gets that leaf's axes; everything else (step counts) is replicated."""

    def one(path: tuple[Any, ...], _leaf: Any) -> P:
        keys = path_keys(path)
        return next((axes_by_path[keys[i:]] for i in range(len(keys)) if keys[i:] in axes_by_path), P())

    return jax.tree_util.tree_map_with_path(one, tree)


def path_keys(path: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def placer(layout: Layout, axes: Any) -> Callable[[tuple[str, ...], np.ndarray], jax.Array]:
    """A `place(path, host_array)` for weights.load_params that shards each leaf by its logical axes (`axes`: a
    tree like the params, as `param_axes` gives) as it is read."""
    by_path = {path_keys(path): names for path, names in jax.tree_util.tree_flatten_with_path(axes)[0]}

    def place(path: tuple[str, ...], array: np.ndarray) -> jax.Array:
        sharding = layout.sharding(tuple(by_path[path]))
        return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

    return place


def batch_sharding(layout: Layout, ndim: int, batch_dim: int = 0) -> NamedSharding:
    """Rows by the "batch" rule; everything else whole."""
    names: list[str | None] = [None] * ndim
    names[batch_dim] = "batch"
    return layout.sharding(tuple(names))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
