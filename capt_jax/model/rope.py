"""Rotary position embeddings in the Hugging Face (half-rotation) layout, with Llama-3 frequency scaling."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from capt_jax.model.config import ModelConfig


def inverse_frequencies(config: ModelConfig) -> np.ndarray:
    """Per-pair rotation frequencies [head_dim // 2], computed on the host in float32 like transformers."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    scaling = dict(config.rope_scaling)
    if config.rope_type == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif config.rope_type == "llama3":
        inv_freq = _llama3_scaled(inv_freq, scaling)
    return inv_freq.astype(np.float32)


def _llama3_scaled(inv_freq: np.ndarray, s: dict) -> np.ndarray:
    """Llama 3.x long-context scaling: slow long wavelengths by `factor`, keep short ones, blend between."""
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return np.where(medium, blended, scaled).astype(np.float32)


def rotary_tables(positions: jax.Array, config: ModelConfig, dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables [batch, seq, head_dim] for integer positions [batch, seq]."""
    inv_freq = jnp.asarray(inverse_frequencies(config))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


@jax.custom_vjp
def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [batch, seq, heads, head_dim]; tables broadcast over heads.

    The rotation is orthogonal, so its backward pass is the inverse rotation (sin negated): one elementwise
    pass, where autodiff of the half-swap would pad, slice and negate.
    """
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def _apply_rotary_fwd(x: jax.Array, cos: jax.Array, sin: jax.Array):
    return apply_rotary(x, cos, sin), (cos, sin)


def _apply_rotary_bwd(tables: tuple[jax.Array, jax.Array], d_out: jax.Array):
    cos, sin = tables
    return apply_rotary(d_out, cos, -sin), None, None


apply_rotary.defvjp(_apply_rotary_fwd, _apply_rotary_bwd)
