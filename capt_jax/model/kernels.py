"""Elementwise pieces of a decoder layer: RMSNorm, 16-bit dropout and SwiGLU with a hand-written gradient.

Plain functions of arrays, so the Flax modules stay about parameters and the kernels can be tested against
autodiff of the expressions they replace (tests/test_kernels.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in float32, cast back before the weight multiply, as transformers does."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * normed.astype(x.dtype)


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
