"""Pieces of a decoder layer with hand-written arithmetic: RMSNorm, 16-bit dropout on a written-out Threefry,
SwiGLU with a hand-written gradient, the LoRA adapter's product with a hand-ordered one, and the projection's
product in the operand order that XLA:CPU runs fastest at few rows.

Plain functions of arrays, so the Flax modules stay about parameters and the kernels can be tested against
autodiff of the expressions they replace (tests/test_kernels.py).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

FEW_ROWS = 64  # up to this many rows, XLA:CPU multiplies faster with the weight on the left (`matmul_weight_t`)


def matmul_weight_t(x: jax.Array, weight: jax.Array) -> jax.Array:
    """x [..., in] @ weight.T for weight [out, in] (the Hugging Face layout of a projection) -> [..., out].

    On a CPU with at most FEW_ROWS float32 rows (a decode step), it is computed as (weight @ x^T)^T: XLA:CPU's
    dot with the weight on the left ran 1.2-1.7x faster at 8-32 rows on an AMD EPYC core
    (`benchmarks/matmul_rows.py`), and a decode call at batch 32 took 22% less time (docs/PERFORMANCE.md). On an
    Intel Xeon core the product alone is slower that way, but the decode call measured no slower, so one order
    serves both. The barrier keeps XLA's simplifier from folding the transpose back into x @ weight^T. More rows,
    other backends and other dtypes take the plain product: only float32 was measured, and bf16 training at
    2 x 32 rows on the Xeon left tests/test_bf16.py's bound (1.09 of it at one step, 0.55 with the plain order).
    """
    rows = math.prod(x.shape[:-1])
    if rows > FEW_ROWS or x.dtype != jnp.float32 or jax.default_backend() != "cpu":
        return jnp.einsum("...i,oi->...o", x, weight)
    product = jnp.einsum("oi,mi->om", weight, x.reshape(rows, x.shape[-1]))
    return jax.lax.optimization_barrier(product).T.reshape(*x.shape[:-1], weight.shape[0])


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in float32, cast back before the weight multiply, as transformers does."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * normed.astype(x.dtype)


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(key: jax.Array, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The Threefry-2x32 block cipher (20 rounds; Salmon et al. 2011) of counter words x1, x2 under key
    uint32 [2]: the hash behind jax.random, bit for bit (tests/test_kernels.py), written out round by round.

    jax lowers its own threefry on CPU as a loop of five steps, each a pass over the counters in memory; written
    out, the 20 rounds are one fused elementwise loop.
    """
    k1, k2 = key[0], key[1]
    ks = (k1, k2, k1 ^ k2 ^ jnp.uint32(0x1BD11BDA))
    x = [x1 + ks[0], x2 + ks[1]]
    for block in range(5):
        for rotation in _ROTATIONS[block % 2]:
            x[0] = x[0] + x[1]
            x[1] = ((x[1] << rotation) | (x[1] >> (32 - rotation))) ^ x[0]
        x = [x[0] + ks[(block + 1) % 3], x[1] + ks[(block + 2) % 3] + jnp.uint32(block + 1)]
    return x[0], x[1]


def dropout(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
    """Inverted dropout decided by 16-bit draws, four from each Threefry block of two 32-bit words.

    `jax.random.bits` makes one block per 32-bit word it returns (it xors the block's two words together), and
    on CPU it runs the cipher as a loop of passes over memory. Here a block serves twice as many draws and its
    rounds fuse into one loop (docs/PERFORMANCE.md). The drop probability is rate rounded to a multiple of 2^-16.
    """
    *lead, width = x.shape
    key = jax.random.key_data(rng) if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
    blocks = (width + 3) // 4
    rows = math.prod(lead)
    counter = jax.lax.broadcasted_iota(jnp.uint32, (rows, blocks), 0) * jnp.uint32(blocks)
    counter = counter + jax.lax.broadcasted_iota(jnp.uint32, (rows, blocks), 1)
    # The barrier keeps the cipher's output in memory: fused into the draws, each block would be hashed 4 times.
    first, second = threefry2x32(key.astype(jnp.uint32), counter, jnp.zeros_like(counter))
    first, second = jax.lax.optimization_barrier((first, second))
    halves = [first & 0xFFFF, first >> 16, second & 0xFFFF, second >> 16]
    draws = jnp.concatenate(halves, axis=-1).reshape(*lead, 4 * blocks)
    dropped = round(rate * 2**16)
    keep = draws[..., :width] >= dropped
    return jnp.where(keep, x * (2**16 / (2**16 - dropped)), 0).astype(x.dtype)


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def lora_delta(x: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """scale * x @ A.T @ B.T for x [..., in], A [r, in], B [out, r]: a LoRA adapter's output.

    Its backward pass contracts the tokens with the rank-r factor on the left (B's gradient as (down^T g)^T).
    Autodiff puts the incoming [tokens, out] gradient on the left, and XLA:CPU then copies it transposed for every
    adapted projection of every layer: 5% of the SmolLM2 training step (docs/PERFORMANCE.md).
    """
    return _lora_delta_fwd(x, a, b, scale)[0]


def _lora_delta_fwd(x: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> tuple[jax.Array, tuple]:
    down = jnp.einsum("...i,ri->...r", x, a)
    return scale * jnp.einsum("...r,or->...o", down, b), (x, a, b, down)


def _lora_delta_bwd(scale: float, residuals: tuple, d_out: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    x, a, b, down = residuals
    g = (scale * d_out).reshape(-1, d_out.shape[-1])  # [tokens, out]
    d_down = g @ b
    # The barrier keeps XLA from folding the transpose back into the product, which puts g on the left again.
    d_b = jax.lax.optimization_barrier(jnp.einsum("tr,to->ro", down.reshape(-1, down.shape[-1]), g)).T
    d_a = jnp.einsum("tr,ti->ri", d_down, x.reshape(-1, x.shape[-1]))
    return (d_down @ a).reshape(x.shape), d_a, d_b


lora_delta.defvjp(_lora_delta_fwd, _lora_delta_bwd)
