"""The training objective: next-token cross-entropy on weighted positions, without full-vocabulary float32 logits.

With the two-stage option, rows are either event intervention (intervened prompt -> reasoning) or event
estimation (raw prompt -> abstraction), and the loss is w_est * L(estimation) + L(intervention).

The vocabulary projection runs over chunks of tokens, so at most `chunk` x vocab logits exist at once (151,936-entry
vocabularies make the full tensor gigabytes), and its gradient is computed in the same pass (see `token_nll`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from capt_jax.lora import overlay, split_trainable
from capt_jax.model import Lora, ModelConfig, Params, hidden_states
from capt_jax.model.decoder import lm_head
from capt_jax.sharding import Layout

INTERVENTION_TASK, ESTIMATION_TASK = 0, 1  # batch["task"] per row


def token_nll(h: jax.Array, head: jax.Array, targets: jax.Array, chunk: int = 512) -> jax.Array:
    """-log p(target) per position [B, T], in float32, `chunk` tokens of logits at a time.

    Fused: the forward pass of each chunk also computes d nll / d h = (softmax - onehot) @ head while its
    logits are at hand, so the backward pass is one multiply and no logits are ever recomputed or stored.
    The head is frozen (LoRA never trains it), so it is closed over: differentiating with respect to it is an
    error rather than a silent zero.
    """
    batch, seq, dim = h.shape
    n = batch * seq
    chunk = min(chunk, n)
    pad = (-n) % chunk
    flat_h = jnp.pad(h.reshape(n, dim), ((0, pad), (0, 0))).reshape(-1, chunk, dim)
    flat_t = jnp.pad(targets.reshape(n), (0, pad)).reshape(-1, chunk)

    def chunk_logits(x: jax.Array) -> jax.Array:
        return jnp.einsum("cd,vd->cv", x, head.astype(x.dtype), preferred_element_type=jnp.float32)

    def nll_and_grad(args: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        x, t = args
        logits = chunk_logits(x)
        top = jnp.max(logits, axis=-1, keepdims=True)
        unnormalised = jnp.exp(logits - top)
        total = jnp.sum(unnormalised, axis=-1, keepdims=True)
        picked = jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0]
        dlogits = (unnormalised / total).at[jnp.arange(chunk), t].add(-1.0)
        dx = jnp.einsum("cv,vd->cd", dlogits.astype(x.dtype), head.astype(x.dtype))
        return (top + jnp.log(total))[:, 0] - picked, dx

    @jax.custom_vjp
    def nll(xs: jax.Array) -> jax.Array:
        def one(args):
            logits = chunk_logits(args[0])
            return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, args[1][:, None], axis=-1)[:, 0]

        return jax.lax.map(one, (xs, flat_t))

    def nll_fwd(xs: jax.Array) -> tuple[jax.Array, jax.Array]:
        return jax.lax.map(nll_and_grad, (xs, flat_t))

    def nll_bwd(dx: jax.Array, g: jax.Array) -> tuple[jax.Array]:
        return (dx * g[..., None].astype(dx.dtype),)

    nll.defvjp(nll_fwd, nll_bwd)
    return nll(flat_h).reshape(-1)[:n].reshape(batch, seq)


def position_nll(
    trainable: Params,
    base: Params,
    batch: dict[str, jax.Array],
    config: ModelConfig,
    scale: float,
    dropout: float = 0.0,
    rng: jax.Array | None = None,
    chunk: int = 512,
    layout: Layout | None = None,
) -> jax.Array:
    """-log p(target) [B, C] over each row's loss window: C positions from batch["loss_start"], or the C positions
    listed in batch["loss_positions"] (packed rows, whose examples each keep their own window); whole rows,
    C = T, without either. The vocabulary projection runs on those positions only.

    Packed rows carry batch["segments"], the example id of every position (see `capt_jax.batches.pack`).
    `trainable` is the adapters plus any base leaves trained in full (capt_jax.lora); only it is differentiated.
    """
    adapters, extras = split_trainable(trainable)
    base = overlay(base, extras)
    lora = Lora(adapters, scale, dropout, rng)
    segments = batch.get("segments")
    h, _ = hidden_states(
        base, batch["inputs"], config, token_mask=batch["mask"], segment_ids=segments, lora=lora, layout=layout
    )
    if "loss_positions" in batch:
        h = jnp.take_along_axis(h, batch["loss_positions"][..., None], axis=1)
    elif "loss_start" in batch:
        width = batch["targets"].shape[-1]
        h = jax.vmap(lambda row, start: jax.lax.dynamic_slice_in_dim(row, start, width, axis=0))(h, batch["loss_start"])
    return token_nll(h, lm_head(base), batch["targets"], chunk)


def loss_sums(
    trainable: Params, base: Params, batch: dict[str, jax.Array], config: ModelConfig, scale: float
) -> tuple[jax.Array, jax.Array]:
    """(sum of weighted NLL, sum of weights), for held-out evaluation."""
    weights = batch["weights"].astype(jnp.float32)
    return jnp.sum(position_nll(trainable, base, batch, config, scale) * weights), jnp.sum(weights)


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
