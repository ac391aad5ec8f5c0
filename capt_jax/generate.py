"""Batched generation with a KV cache: greedy or temperature/top-p sampling, stopping at EOS.

Prompts are left-padded into (batch, length) buckets, so the decode loop compiles once per bucket rather
than once per prompt, and the whole loop (prefill + `while_loop` over new tokens) is one jitted call.

    python -m capt_jax.generate --prompt TEXT [--prompt TEXT ...] [--chat] [--json]
        [--config.model.path=PATH] [--config.eval.max_new_tokens=N] [--config.eval.temperature=T ...]
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from tqdm.auto import tqdm

from capt_jax import cli
from capt_jax.config import ConfigDict, ConfigError, validate_decoding
from capt_jax.errors import MissingFileError
from capt_jax.model import KVCache, Lora, ModelConfig, Params, hidden_states, logits_from_hidden, panels
from capt_jax.model.decoder import layer_of, unstack_layers
from capt_jax.pretrained import Pretrained, load_pretrained
from capt_jax.tokenization import bucket, chat_prompt, eos_token_ids, length_bucket, pad_id

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


def first_argmax(logits: jax.Array, axis: int = -1) -> jax.Array:
    """jnp.argmax(logits, axis) (the first maximum, or the first NaN), as a max and then a min over indices.

    XLA:CPU runs argmax's paired (value, index) reduction element by element; these two plain reductions
    vectorise (docs/PERFORMANCE.md: 4.8 ms against 0.7 ms added to a decode step's LM head at batch 32).
    """
    axis = axis % logits.ndim
    best = jnp.max(logits, axis=axis, keepdims=True)
    hit = (logits == best) | jnp.isnan(logits)
    index = jax.lax.broadcasted_iota(jnp.int32, logits.shape, axis)
    return jnp.min(jnp.where(hit, index, logits.shape[axis]), axis=axis)


def sample_next(
    logits: jax.Array,
    rng: jax.Array,
    sampling: Sampling,
    seen: jax.Array | None = None,
    vocab_major: bool = True,
) -> jax.Array:
    """Next token ids [B] from logits [B, V]; `seen` [B, V] marks the tokens a repetition penalty applies to.

    `vocab_major`: the logits are the transpose of a [V, B] product, as `matmul_weight_t` makes them at few rows on
    a CPU, so greedy decoding reduces over axis 0 of their transpose and reads them in place; over [B, V] the
    select between the two reductions would copy them transposed (4 ms per decode step at batch 32). The panel
    kernel's logits are [B, V] in row order, and reading those transposed cost 1.4 ms more per step.
    """
    if sampling.repetition_penalty != 1.0 and seen is not None:
        logits = penalise_repeats(logits.astype(jnp.float32), seen, sampling.repetition_penalty)
    if sampling.temperature <= 0:
        return first_argmax(logits.T, axis=0) if vocab_major else first_argmax(logits, axis=-1)
    logits = logits.astype(jnp.float32) / sampling.temperature
    if sampling.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep a token while the mass strictly before it is below top_p (the top token always survives).
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        cutoff = jnp.min(jnp.where(mass_before < sampling.top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(
    jax.jit, static_argnames=("config", "max_new_tokens", "sampling", "eos_ids", "pad_id", "lora_scale", "scan_layers")
)
def decode(
    params: Params,
    prompt: jax.Array,
    prompt_mask: jax.Array,
    rng: jax.Array,
    adapters: Params | None = None,
    *,
    config: ModelConfig,
    max_new_tokens: int,
    sampling: Sampling,
    eos_ids: tuple[int, ...],
    pad_id: int,
    lora_scale: float = 1.0,
    scan_layers: bool | None = None,
) -> jax.Array:
    """New tokens [B, max_new_tokens] for left-padded prompts [B, T]; rows that hit EOS are pad-filled after it.

    `adapters` (applied at `lora_scale`) are LoRA weights kept beside a quantized base (`Pretrained.adapters`).

    By default (`scans_when_decoding`) the layers run unscanned, each on its own weights and KV-cache buffers,
    so no new token copies each layer's weights out of the stacked arrays (on a CPU those copies were a third
    of a decode call; see docs/PERFORMANCE.md). Stacked `params`/`adapters` are then split here, once per call;
    `decoding_layout` them once beforehand to decode many batches (split params always run unscanned).
    `scan_layers=True` runs one scanned layer, which compiles faster.
    """
    stacked = "layers" in params
    if scan_layers is None:
        scan_layers = stacked and scans_when_decoding(config, params)
    if scan_layers and not stacked:
        raise ValueError("decode(scan_layers=True) runs on the stacked params, not on split_layers' per-layer ones")
    if not scan_layers:
        params = unstack_layers(params) if stacked else params
        adapters = unstack_layers(adapters) if adapters is not None and "layers" in adapters else adapters
    config = config.replace(scan_layers=scan_layers)
    batch, length = prompt.shape
    eos = jnp.asarray(eos_ids or (-1,), jnp.int32)
    lora = None if adapters is None else Lora(adapters, lora_scale)
    cache = KVCache.empty(config, batch, length + max_new_tokens)
    h, cache = hidden_states(params, prompt, config, token_mask=prompt_mask, cache=cache, lora=lora)
    rows = jnp.arange(batch)
    vocab_major = "lm_head_panels" not in params
    # Which tokens the repetition penalty applies to; a [B, 1] stand-in when there is no penalty.
    vocab = params["embed"].shape[0] if sampling.repetition_penalty != 1.0 else 1
    seen = jnp.zeros((batch, vocab), bool)
    if vocab > 1:
        seen = seen.at[rows[:, None], prompt].max(prompt_mask.astype(bool))
    rng, step_rng = jax.random.split(rng)
    token = sample_next(logits_from_hidden(params, h[:, -1]), step_rng, sampling, seen, vocab_major)
    out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token)
    done = jnp.isin(token, eos)

    def keep_going(state):
        step, _, done, _, _, _, _ = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def next_token(state):
        step, out, done, cache, token, seen, rng = state
        if vocab > 1:
            seen = seen.at[rows, token].set(True)
        h, cache = hidden_states(params, token[:, None], config, cache=cache, lora=lora)
        rng, step_rng = jax.random.split(rng)
        token = sample_next(logits_from_hidden(params, h[:, 0]), step_rng, sampling, seen, vocab_major)
        token = jnp.where(done, pad_id, token)
        out = jax.lax.dynamic_update_slice_in_dim(out, token[:, None], step, axis=1)
        return step + 1, out, done | jnp.isin(token, eos), cache, token, seen, rng

    state = (jnp.array(1, jnp.int32), out, done, cache, token, seen, rng)
    return jax.lax.while_loop(keep_going, next_token, state)[1]


split_layers = jax.jit(unstack_layers)  # one copy of the weights, in the per-layer layout `decode` runs on


def _packed(projection: Params, width: int) -> Params:
    """A projection ("weight", maybe "bias") with its weight packed into "panels" for `panels.matmul`."""
    weight = panels.pack(projection["weight"], width)
    return {"panels": weight} | {k: v for k, v in projection.items() if k != "weight"}


@functools.partial(jax.jit, static_argnums=2)
def _packed_layer(stacked: Params, index: jax.Array, width: int) -> Params:
    """Layer `index` of the stacked layers, its projections packed: one program for every layer."""
    layer = layer_of(stacked, index)
    return {key: _packed(leaf, width) if isinstance(leaf, dict) else leaf for key, leaf in layer.items()}


def split_into_panels(params: Params) -> Params:
    """`split_layers` with every projection's weight packed into panels ({"panels": ...} in place of "weight") and
    the LM head's beside them ("lm_head_panels", in place of an untied "lm_head"), for `panels.matmul` on an
    x86 CPU. Packed straight from the stacked layers, one layer at a time: for SmolLM2-135M a single jitted
    program over the tree planned 400 MiB of temporaries, and packing a split copy left the allocator holding
    the copy's freed pages (peak RSS 1,839 MiB, against 1,369 this way and 1,509 for the split layout)."""
    width = panels.width()
    split = unstack_layers(params, lambda stacked, i: _packed_layer(stacked, i, width))
    split["lm_head_panels"] = panels.pack(split.pop("lm_head", split["embed"]), width)
    return split


def decoding_layout(
    config: ModelConfig, params: Params, adapters: Params | None = None
) -> tuple[Params, Params | None]:
    """Stacked `params`/`adapters` as `decode` runs them, for callers that decode many times: split once per layer
    (a second copy of the base, kept as long as the caller keeps it), or as they are when `scans_when_decoding`.
    On an AVX-512 or AVX2 CPU the split base is packed into panels for our kernel (`capt_jax.model.panels`)."""
    if scans_when_decoding(config, params):
        return params, adapters
    split = split_into_panels if panels.available() else split_layers
    return split(params), None if adapters is None else split_layers(adapters)


def scans_when_decoding(config: ModelConfig, params: Params) -> bool:
    """Whether `decode` keeps the scanned layers for these stacked `params`: whenever a projection's weight must be
    converted for its matmul (a quantized base, storage in another dtype than the compute dtype, or bf16 on a
    CPU, whose dots run in float32). Unscanned, each layer's converted weight no longer depends on the token
    loop, and XLA hoists the conversions out of it or keeps them all alive: a full-precision copy of the
    projections for the whole call (SmolLM2 in nf4: 814 MiB of temporaries instead of 18, tests/test_quant.py;
    Qwen2.5-3B in bf16 on a CPU: 11.5 GiB instead of 1.45)."""
    if config.quantization is not None:
        return True
    weight = params["layers"]["q_proj"]["weight"]
    if weight.dtype != jnp.dtype(config.dtype):
        return True
    return jax.default_backend() == "cpu" and weight.dtype != jnp.float32


class Completions(list):
    """`generate`'s completions in prompt order, with `cut_off`: the indices of those that reached max_new_tokens
    before an end-of-sequence token. A reply cut off before its answer cannot be scored, so a caller that knows
    which setting sets the budget says to raise it."""

    def __init__(self, texts: Sequence[str], cut_off: Sequence[int]):
        super().__init__(texts)
        self.cut_off = list(cut_off)

    def note(self, budget: str, max_new_tokens: int, what: str = "replies") -> str | None:
        """A one-line note naming `budget` (a config key or flag) when any completion was cut off, else None."""
        if not self.cut_off:
            return None
        return (
            f"note: {len(self.cut_off)} of {len(self)} {what} were cut off at {budget}={max_new_tokens} new tokens "
            f"before they ended; raise {budget} if they should have ended"
        )


def generate(
    model: Pretrained,
    prompts: Sequence[str | list[dict[str, str]]],
    max_new_tokens: int = 256,
    sampling: Sampling = Sampling(),
    chat: bool = False,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> Completions:
    """Completions for `prompts`, in order; prompts are sorted by length so each batch pads little."""
    tok = model.tokenizer
    if tok is None:
        raise MissingFileError(f"{model.path}: the model folder has no tokenizer; generation needs one")
    texts = [chat_prompt(tok, p) if chat else p for p in prompts]
    # A chat template already holds the special tokens it wants; plain prompts get the tokenizer's defaults.
    encoded = [tok(t, add_special_tokens=not chat)["input_ids"] for t in texts]
    eos_ids = eos_token_ids(model.config.eos_token_ids, tok)
    pad = pad_id(tok, eos_ids)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[str] = [""] * len(encoded)
    cut_off: list[int] = []
    rng = jax.random.key(seed)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if not batches:
        return Completions(results, cut_off)
    # Once for all the batches of this call, instead of once per decode call, and dropped when it returns, so a
    # process holds one copy of the base between calls.
    params, adapters = decoding_layout(model.config, model.params, model.adapters)
    for rows in tqdm(batches, desc="generating", disable=not progress or len(batches) < 2):
        length = length_bucket(max(len(encoded[i]) for i in rows), MIN_LENGTH_BUCKET)
        ids = np.full((bucket(len(rows)), length), pad, np.int32)
        mask = np.zeros(ids.shape, bool)
        for r, i in enumerate(rows):
            ids[r, length - len(encoded[i]) :] = encoded[i]
            mask[r, length - len(encoded[i]) :] = True
        rng, batch_rng = jax.random.split(rng)
        new = np.asarray(
            decode(
                params,
                ids,
                mask,
                batch_rng,
                adapters,
                config=model.config,
                max_new_tokens=max_new_tokens,
                sampling=sampling,
                eos_ids=eos_ids,
                pad_id=pad,
                lora_scale=model.lora_scale,
            )
        )
        for r, i in enumerate(rows):
            tokens, ended = _until_eos(new[r], eos_ids)
            results[i] = tok.decode(tokens, skip_special_tokens=True)
            if not ended:
                cut_off.append(i)
    return Completions(results, sorted(cut_off))


def _until_eos(tokens: np.ndarray, eos_ids: tuple[int, ...]) -> tuple[list[int], bool]:
    """(the tokens before the first EOS, whether there was one)."""
    out = []
    for t in tokens.tolist():
        if t in eos_ids:
            return out, True
        out.append(t)
    return out, False


def define_flags(values: flags.FlagValues) -> None:
    flags.DEFINE_multi_string("prompt", None, "a prompt; repeat for several", flag_values=values)
    flags.DEFINE_bool("chat", False, "wrap each prompt in the tokenizer's chat template", flag_values=values)
    flags.DEFINE_bool("json", False, "print one JSON object per prompt", flag_values=values)


COMMAND = cli.Command(
    __doc__,
    define_flags,
    keys=(
        "model.path",
        "model.dtype",
        "model.quantize",
        "model.double_quant",
        "eval.max_new_tokens",
        "eval.temperature",
        "eval.top_p",
        "eval.repetition_penalty",
        "eval.batch_size",
        "eval.seed",
    ),
)


def run_command(config: ConfigDict, values: flags.FlagValues) -> None:
    e = config.eval
    if not values.prompt:
        raise ConfigError("--prompt is required: --prompt TEXT [--prompt TEXT ...]")
    validate_decoding(config)
    model = load_pretrained(
        config.model.path,
        dtype=config.model.dtype,
        quantize=config.model.quantize,
        double_quant=config.model.double_quant,
    )
    sampling = Sampling(e.temperature, e.top_p, e.repetition_penalty)
    completions = generate(
        model, values.prompt, e.max_new_tokens, sampling, chat=values.chat, batch_size=e.batch_size, seed=e.seed
    )
    for prompt, completion in zip(values.prompt, completions):
        print(json.dumps({"prompt": prompt, "completion": completion}) if values.json else completion + "\n")
    if note := completions.note("--config.eval.max_new_tokens", e.max_new_tokens):
        print(note, file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    cli.run(COMMAND, run_command, argv)


if __name__ == "__main__":
    main()
