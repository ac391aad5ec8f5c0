"""How fast XLA:CPU's float32 matmul is at few rows: the shape of a decode step's projections (docs/PERFORMANCE.md,
"A decode step at batch 32").

    taskset -c 0 python benchmarks/matmul_rows.py

For each row count M, 30 products [M, 576] @ W^T with W [1536, 576] (SmolLM2-135M's gate projection, one per
layer): over 30 different weights (streamed from memory, as decoding does), with x on the left (x @ W^T) and with
the weight on the left ((W @ x^T)^T, as `capt_jax.model.kernels.matmul_weight_t` computes it up to FEW_ROWS rows),
and 30 times over one weight (which stays in cache). Prints the median of 9 calls per case, in ms and GFLOP/s,
and first the time a plain sum takes to read the 30 weights: the memory floor of a streamed product at any row count.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

LAYERS, IN, OUT = 30, 576, 1536


def median_ms(fn, *args) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(9):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def main() -> None:
    rng = np.random.default_rng(0)
    weights = [jnp.asarray(rng.standard_normal((OUT, IN), np.float32) * 0.02) for _ in range(LAYERS)]

    @jax.jit
    def streamed(x, weights):
        return [jnp.einsum("mi,oi->mo", x, w) for w in weights]

    @jax.jit
    def weight_first(x, weights):  # the barrier keeps XLA from folding the transpose back into x @ W^T
        return [jax.lax.optimization_barrier(jnp.einsum("oi,mi->om", w, x)).T for w in weights]

    @jax.jit
    def cached(x, weight):  # x + i: 30 distinct products, which XLA cannot fold into one as common subexpressions
        return [jnp.einsum("mi,oi->mo", x + i, weight) for i in range(LAYERS)]

    @jax.jit
    def read(weights):  # one pass over the weights' bytes, at the core's memory bandwidth
        return [jnp.sum(w) for w in weights]

    weight_bytes = LAYERS * OUT * IN * 4
    ms_read = median_ms(read, weights)
    print(f"reading the 30 weights (a sum): {ms_read:.1f} ms, {weight_bytes / ms_read / 1e6:.1f} GB/s")
    print("rows | 30 weights, streamed, x @ W^T | streamed, (W @ x^T)^T | one weight, in cache, x @ W^T")
    for rows in (8, 32, 64, 128, 256):
        x = jnp.asarray(rng.standard_normal((rows, IN), np.float32))
        gflop = 2 * rows * IN * OUT * LAYERS / 1e9
        ms_streamed, ms_cached = median_ms(streamed, x, weights), median_ms(cached, x, weights[0])
        ms_weight_first = median_ms(weight_first, x, weights)
        weight_gbs = weight_bytes / ms_streamed / 1e6
        print(
            f"{rows:4d} | {ms_streamed:6.1f} ms, {gflop / ms_streamed * 1e3:4.0f} GFLOP/s, {weight_gbs:4.1f} GB/s "
            f"| {ms_weight_first:6.1f} ms, {gflop / ms_weight_first * 1e3:4.0f} GFLOP/s "
            f"| {ms_cached:6.1f} ms, {gflop / ms_cached * 1e3:4.0f} GFLOP/s"
        )


if __name__ == "__main__":
    main()
