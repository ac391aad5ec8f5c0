"""Device mesh and parameter/batch shardings over the axes (data, fsdp, tensor).

Base weights are split over fsdp on their hidden dimension and over tensor on their head/MLP dimension
(column-parallel q/k/v/gate/up, row-parallel o/down); LoRA factors follow the base dimension they touch.
A dimension the mesh axis does not divide stays replicated, so any model runs on any mesh.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Base projection -> (mesh axis of its output dim, mesh axis of its input dim).
_PROJECTION_AXES = {
    "q_proj": ("tensor", "fsdp"),
    "k_proj": ("tensor", "fsdp"),
    "v_proj": ("tensor", "fsdp"),
    "gate_proj": ("tensor", "fsdp"),
    "up_proj": ("tensor", "fsdp"),
    "o_proj": ("fsdp", "tensor"),
    "down_proj": ("fsdp", "tensor"),
}


def make_mesh(shape: dict[str, int]) -> Mesh:
    """Auto axes: XLA's sharding propagation places activations from the param and batch shardings."""
    return jax.make_mesh(tuple(shape[a] for a in AXES), AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def logical_spec(path: tuple[str, ...], ndim: int) -> tuple[Any, ...]:
    """Mesh axis per dimension for a base or adapter leaf, by its path.

    The params part of the path may sit anywhere (an Adam moment's path ends in .../mu/layers/q_proj/a), so
    optimizer state is sharded exactly like the adapter it belongs to.
    """
    starts = [i for i, key in enumerate(path) if key in ("embed", "lm_head", "layers")]
    if not starts:
        return (None,) * ndim  # scalars and anything outside the params tree: replicated
    path = path[starts[-1] :]
    if path[0] in ("embed", "lm_head"):
        return ("tensor", "fsdp")
    if len(path) < 2 or path[1] not in _PROJECTION_AXES:
        return (None,) * ndim  # norms: small, replicated
    out_axis, in_axis = _PROJECTION_AXES[path[1]]
    leaf = path[-1]
    if leaf == "weight":
        return (None, out_axis, in_axis)
    if leaf == "bias":
        return (None, out_axis)
    if leaf == "a":  # [L, r, in]
        return (None, None, in_axis)
    if leaf == "b":  # [L, out, r]
        return (None, out_axis, None)
    return (None,) * ndim


def fitted_spec(axes: tuple[Any, ...], shape: tuple[int, ...], mesh: Mesh) -> P:
    """Drop any axis that does not divide its dimension."""
    return P(*[a if a is not None and dim % mesh.shape[a] == 0 else None for a, dim in zip(axes, shape)])


def path_keys(path: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(getattr(k, "key", getattr(k, "name", str(k))) for k in path)


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
    """NamedSharding for every array leaf of a params or adapter tree."""

    def one(path, leaf):
        keys = path_keys(path)
        return NamedSharding(mesh, fitted_spec(logical_spec(keys, leaf.ndim), leaf.shape, mesh))

    return jax.tree_util.tree_map_with_path(one, tree)


def placer(mesh: Mesh):
    """A `place(path, host_array)` for weights.load_params that shards each leaf as it is read."""

    def place(path: tuple[str, ...], array: np.ndarray) -> jax.Array:
        sharding = NamedSharding(mesh, fitted_spec(logical_spec(path, array.ndim), array.shape, mesh))
        return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

    return place


def batch_sharding(mesh: Mesh, ndim: int, batch_dim: int = 0) -> NamedSharding:
    """Rows over data x fsdp; everything else whole."""
    spec = [None] * ndim
    spec[batch_dim] = BATCH_AXES
    return NamedSharding(mesh, P(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
