"""Text to token ids as training and generation both need it: chat templates, padding and length buckets.

One module, so that a training prompt is tokenized exactly as generation will later see it, and both pad to the
same few shapes.
"""

from __future__ import annotations

from typing import Any

from capt_jax.errors import ConfigError


def check_chat_template(tokenizer: Any) -> None:
    """A base (not instruct) model often has no template; transformers would fail with a traceback."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError(
            f"{tokenizer.name_or_path}: the tokenizer has no chat template; train it on plain text with "
            "--config.data.chat_template=False, or generate without --chat"
        )


def chat_prompt(tokenizer: Any, prompt: str | list[dict[str, str]]) -> str:
    """A prompt (one user turn) or a whole conversation in the tokenizer's chat template, ready for the reply."""
    check_chat_template(tokenizer)
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def end_of_turn(tokenizer: Any) -> str:
    """What the chat template writes after an assistant message (e.g. '<|im_end|>'), so training teaches stopping."""
    check_chat_template(tokenizer)
    marker = "\x00CAPT\x00"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}], tokenize=False
    )
    return text.split(marker, 1)[1].rstrip()


def eos_token_ids(model_eos_ids: tuple[int, ...], tokenizer: Any) -> tuple[int, ...]:
    """Every id that ends a reply: the model config's and the tokenizer's."""
    ids = set(model_eos_ids)
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return tuple(sorted(ids))


def pad_id(tokenizer: Any, eos_ids: tuple[int, ...] = ()) -> int:
    """The id padding is filled with (masked everywhere, so any id would do): the tokenizer's pad token, else its
    EOS, else the model's first EOS, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, *eos_ids):
        if candidate is not None:
            return int(candidate)
    return 0


def bucket(n: int, minimum: int = 1) -> int:
    """Round up to a power of two, so only a handful of shapes are ever compiled."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())


def length_bucket(n: int, minimum: int = 16) -> int:
    """Round a sequence length up to 2^k or 1.5 * 2^k: at most a third of a row is padding, and shapes stay few."""
    power = bucket(n, minimum)
    return power * 3 // 4 if power * 3 // 4 >= max(n, minimum) and power >= 2 * minimum else power
