"""Batched generation with a KV cache: greedy or temperature/top-p sampling, stopping at EOS.

Prompts are left-padded into (batch, length) buckets, so the decode loop compiles once per bucket rather
than once per prompt, and the whole loop (prefill + `while_loop` over new tokens) is one jitted call.

    python -m capt_jax.generate --model PATH --prompt TEXT [--prompt TEXT ...] --max-new-tokens N [--chat]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from capt_jax.model import KVCache, ModelConfig, Params, hidden_states, logits_from_hidden
from capt_jax.model.decoder import lm_head
from capt_jax.pretrained import Pretrained, load_pretrained

MIN_LENGTH_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy decoding; top_p < 1 keeps the smallest set of tokens holding that much mass;
    repetition_penalty > 1 makes every token already in the prompt or the reply less likely, as transformers
    does (a positive logit divided by it, a negative one multiplied), before temperature and top-p."""

    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0


def penalise_repeats(logits: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
    """logits [B, V] with the tokens marked in `seen` [B, V] penalised."""
    penalised = jnp.where(logits > 0, logits / penalty, logits * penalty)
    return jnp.where(seen, penalised, logits)


def sample_next(logits: jax.Array, rng: jax.Array, sampling: Sampling, seen: jax.Array | None = None) -> jax.Array:
    """Next token ids [B] from logits [B, V]; `seen` [B, V] marks the tokens a repetition penalty applies to."""
    if sampling.repetition_penalty != 1.0 and seen is not None:
        logits = penalise_repeats(logits.astype(jnp.float32), seen, sampling.repetition_penalty)
    if sampling.temperature <= 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / sampling.temperature
    if sampling.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep a token while the mass strictly before it is below top_p (the top token always survives).
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        cutoff = jnp.min(jnp.where(mass_before < sampling.top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "sampling", "eos_ids", "pad_id"))
def decode(
    params: Params,
    prompt: jax.Array,
    prompt_mask: jax.Array,
    rng: jax.Array,
    *,
    config: ModelConfig,
    max_new_tokens: int,
    sampling: Sampling,
    eos_ids: tuple[int, ...],
    pad_id: int,
) -> jax.Array:
    """New tokens [B, max_new_tokens] for left-padded prompts [B, T]; rows that hit EOS are pad-filled after it."""
    batch, length = prompt.shape
    eos = jnp.asarray(eos_ids or (-1,), jnp.int32)
    cache = KVCache.empty(config, batch, length + max_new_tokens)
    h, cache = hidden_states(params, prompt, config, token_mask=prompt_mask, cache=cache)
    rows = jnp.arange(batch)
    # Which tokens the repetition penalty applies to; a [B, 1] stand-in when there is no penalty.
    vocab = lm_head(params).shape[0] if sampling.repetition_penalty != 1.0 else 1
    seen = jnp.zeros((batch, vocab), bool)
    if vocab > 1:
        seen = seen.at[rows[:, None], prompt].max(prompt_mask.astype(bool))
    rng, step_rng = jax.random.split(rng)
    token = sample_next(logits_from_hidden(params, h[:, -1]), step_rng, sampling, seen)
    out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token)
    done = jnp.isin(token, eos)

    def keep_going(state):
        step, _, done, _, _, _, _ = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def next_token(state):
        step, out, done, cache, token, seen, rng = state
        if vocab > 1:
            seen = seen.at[rows, token].set(True)
        h, cache = hidden_states(params, token[:, None], config, cache=cache)
        rng, step_rng = jax.random.split(rng)
        token = sample_next(logits_from_hidden(params, h[:, 0]), step_rng, sampling, seen)
        token = jnp.where(done, pad_id, token)
        out = jax.lax.dynamic_update_slice_in_dim(out, token[:, None], step, axis=1)
        return step + 1, out, done | jnp.isin(token, eos), cache, token, seen, rng

    state = (jnp.array(1, jnp.int32), out, done, cache, token, seen, rng)
    return jax.lax.while_loop(keep_going, next_token, state)[1]


def bucket(n: int, minimum: int = 1) -> int:
    """Round up to a power of two, so only a handful of shapes are ever compiled."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())


def length_bucket(n: int, minimum: int = 16) -> int:
    """Round a sequence length up to 2^k or 1.5 * 2^k: at most a third of a row is padding, and shapes stay few."""
    power = bucket(n, minimum)
    return power * 3 // 4 if power * 3 // 4 >= max(n, minimum) and power >= 2 * minimum else power


def chat_prompt(tokenizer: Any, prompt: str | list[dict[str, str]]) -> str:
    """A prompt (one user turn) or a whole conversation in the tokenizer's chat template, ready for the reply."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def eos_token_ids(model: Pretrained) -> tuple[int, ...]:
    ids = set(model.config.eos_token_ids)
    if model.tokenizer is not None and model.tokenizer.eos_token_id is not None:
        ids.add(model.tokenizer.eos_token_id)
    return tuple(sorted(ids))


def generate(
    model: Pretrained,
    prompts: Sequence[str | list[dict[str, str]]],
    max_new_tokens: int = 256,
    sampling: Sampling = Sampling(),
    chat: bool = False,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> list[str]:
    """Completions for `prompts`, in order; prompts are sorted by length so each batch pads little."""
    tok = model.tokenizer
    if tok is None:
        raise ValueError(f"{model.path}: the model folder has no tokenizer; generation needs one")
    texts = [chat_prompt(tok, p) if chat else p for p in prompts]
    # A chat template already holds the special tokens it wants; plain prompts get the tokenizer's defaults.
    encoded = [tok(t, add_special_tokens=not chat)["input_ids"] for t in texts]
    eos_ids = eos_token_ids(model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[str] = [""] * len(encoded)
    rng = jax.random.key(seed)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for rows in tqdm(batches, desc="generating", disable=not progress or len(batches) < 2):
        length = length_bucket(max(len(encoded[i]) for i in rows), MIN_LENGTH_BUCKET)
        ids = np.full((bucket(len(rows)), length), pad_id, np.int32)
        mask = np.zeros(ids.shape, bool)
        for r, i in enumerate(rows):
            ids[r, length - len(encoded[i]) :] = encoded[i]
            mask[r, length - len(encoded[i]) :] = True
        rng, batch_rng = jax.random.split(rng)
        new = np.asarray(
            decode(
                model.params,
                ids,
                mask,
                batch_rng,
                config=model.config,
                max_new_tokens=max_new_tokens,
                sampling=sampling,
                eos_ids=eos_ids,
                pad_id=pad_id,
            )
        )
        for r, i in enumerate(rows):
            results[i] = tok.decode(_until_eos(new[r], eos_ids), skip_special_tokens=True)
    return results


def _until_eos(tokens: np.ndarray, eos_ids: tuple[int, ...]) -> list[int]:
    out = []
    for t in tokens.tolist():
        if t in eos_ids:
            break
        out.append(t)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate completions with a KV cache.")
    parser.add_argument("--model", required=True, help="model folder, .gguf file, hub id, or 'smollm2'")
    parser.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = none; the paper used 1.1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be at least 1")
    if not 0 < args.top_p <= 1:
        parser.error("--top-p must be in (0, 1]")
    if args.repetition_penalty <= 0:
        parser.error("--repetition-penalty must be positive")
    model = load_pretrained(args.model, dtype=args.dtype)
    completions = generate(
        model,
        args.prompt,
        args.max_new_tokens,
        Sampling(args.temperature, args.top_p, args.repetition_penalty),
        chat=args.chat,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    for prompt, completion in zip(args.prompt, completions):
        print(json.dumps({"prompt": prompt, "completion": completion}) if args.json else completion + "\n")


if __name__ == "__main__":
    main()
