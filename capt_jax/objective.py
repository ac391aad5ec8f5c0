"""The training objective: next-token cross-entropy on weighted positions, without full-vocabulary float32 logits.

The vocabulary projection runs over chunks of tokens under `jax.checkpoint`, so at most `chunk` x vocab logits
exist at once, forward or backward (151,936-entry vocabularies make the full tensor gigabytes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from capt_jax.model import Lora, ModelConfig, Params, hidden_states
from capt_jax.model.decoder import lm_head


def token_nll(h: jax.Array, head: jax.Array, targets: jax.Array, chunk: int = 2048) -> jax.Array:
    """-log p(target) per position [B, T], in float32, computing logits `chunk` tokens at a time."""
    batch, seq, dim = h.shape
    n = batch * seq
    chunk = min(chunk, n)
    pad = (-n) % chunk
    flat_h = jnp.pad(h.reshape(n, dim), ((0, pad), (0, 0))).reshape(-1, chunk, dim)
    flat_t = jnp.pad(targets.reshape(n), (0, pad)).reshape(-1, chunk)

    @jax.checkpoint
    def one_chunk(args):
        x, t = args
        logits = jnp.einsum("cd,vd->cv", x, head.astype(x.dtype), preferred_element_type=jnp.float32)
        picked = jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0]
        return jax.nn.logsumexp(logits, axis=-1) - picked

    return jax.lax.map(one_chunk, (flat_h, flat_t)).reshape(-1)[:n].reshape(batch, seq)


def loss_sums(
    adapters: Params,
    base: Params,
    batch: dict[str, jax.Array],
    config: ModelConfig,
    scale: float,
    dropout: float = 0.0,
    rng: jax.Array | None = None,
    chunk: int = 2048,
) -> tuple[jax.Array, jax.Array]:
    """(sum of weighted NLL, sum of weights): dividing once per global batch keeps micro-batching exact."""
    lora = Lora(adapters, scale, dropout, rng)
    h, _ = hidden_states(base, batch["inputs"], config, token_mask=batch["mask"], lora=lora)
    nll = token_nll(h, lm_head(base), batch["targets"], chunk)
    weights = batch["weights"].astype(jnp.float32)
    return jnp.sum(nll * weights), jnp.sum(weights)
