"""The training objective: next-token cross-entropy on weighted positions, without full-vocabulary float32 logits.

With the two-stage option, rows are either event intervention (intervened prompt -> reasoning) or event
estimation (raw prompt -> abstraction), and the loss is w_est * L(estimation) + L(intervention).

The vocabulary projection runs over chunks of tokens under `jax.checkpoint`, so at most `chunk` x vocab logits
exist at once, forward or backward (151,936-entry vocabularies make the full tensor gigabytes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from capt_jax.model import Lora, ModelConfig, Params, hidden_states
from capt_jax.model.decoder import lm_head

INTERVENTION_TASK, ESTIMATION_TASK = 0, 1  # batch["task"] per row


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


def position_nll(
    adapters: Params,
    base: Params,
    batch: dict[str, jax.Array],
    config: ModelConfig,
    scale: float,
    dropout: float = 0.0,
    rng: jax.Array | None = None,
    chunk: int = 2048,
) -> jax.Array:
    """-log p(target) [B, C] over each row's loss window: C positions from batch["loss_start"] (whole rows,
    C = T, without it). The vocabulary projection runs on those positions only."""
    lora = Lora(adapters, scale, dropout, rng)
    h, _ = hidden_states(base, batch["inputs"], config, token_mask=batch["mask"], lora=lora)
    if "loss_start" in batch:
        width = batch["targets"].shape[-1]
        h = jax.vmap(lambda row, start: jax.lax.dynamic_slice_in_dim(row, start, width, axis=0))(h, batch["loss_start"])
    return token_nll(h, lm_head(base), batch["targets"], chunk)


def loss_sums(
    adapters: Params, base: Params, batch: dict[str, jax.Array], config: ModelConfig, scale: float
) -> tuple[jax.Array, jax.Array]:
    """(sum of weighted NLL, sum of weights), for held-out evaluation."""
    weights = batch["weights"].astype(jnp.float32)
    return jnp.sum(position_nll(adapters, base, batch, config, scale) * weights), jnp.sum(weights)


def row_coefficients(batch: dict[str, jax.Array], estimation_weight: float) -> jax.Array:
    """Per-row factors that turn summed NLL into w_est * L(estimation) + L(intervention) over the global batch.

    Each loss is a mean over its own tokens in the whole global batch (all micro-batches), so the step can sum
    micro-batch gradients and gradient accumulation stays exact; without estimation rows this is the plain
    token mean.
    """
    estimation = batch["task"] == ESTIMATION_TASK
    tokens = jnp.sum(batch["weights"].astype(jnp.float32), axis=-1)
    est_tokens = jnp.maximum(jnp.sum(jnp.where(estimation, tokens, 0.0)), 1.0)
    int_tokens = jnp.maximum(jnp.sum(jnp.where(estimation, 0.0, tokens)), 1.0)
    return jnp.where(estimation, estimation_weight / est_tokens, 1.0 / int_tokens)
