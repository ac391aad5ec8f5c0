"""Prompt/completion pairs -> token ids with loss weights -> fixed-shape, length-bucketed training batches.

Batch order is a pure function of (seed, step), so the data position saved in a checkpoint is just the
step, and a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from capt_jax.generate import bucket, chat_prompt

MIN_SEQ_BUCKET = 32
SORT_WINDOW_BATCHES = 64  # batches per window sorted by length: tight buckets, still shuffled


class DataFileError(ValueError):
    """A training file that cannot be read: the message names the file, line and field."""


def read_jsonl_pairs(path: str | Path) -> list[dict[str, str]]:
    """{"prompt", "completion"} objects, one per line; blank lines are skipped."""
    path, pairs = Path(path), []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFileError(f"{path}:{line_no}: not valid JSON ({e.msg})") from e
            for field in ("prompt", "completion"):
                if not isinstance(record, dict) or not isinstance(record.get(field), str):
                    raise DataFileError(f"{path}:{line_no}: field {field!r} is missing or not a string")
            pairs.append({"prompt": record["prompt"], "completion": record["completion"]})
    if not pairs:
        raise DataFileError(f"{path}: no records")
    return pairs


def end_of_turn(tokenizer: Any) -> str:
    """What the chat template writes after an assistant message (e.g. '<|im_end|>'), so training teaches stopping."""
    marker = "\x00CAPT\x00"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}], tokenize=False
    )
    return text.split(marker, 1)[1].rstrip()


@dataclasses.dataclass(frozen=True)
class TokenizedSet:
    """Variable-length sequences: ids[i] and, per position, whether predicting that token counts in the loss."""

    ids: list[np.ndarray]
    loss_mask: list[np.ndarray]
    truncated: int

    def __len__(self) -> int:
        return len(self.ids)


def tokenize_pairs(
    tokenizer: Any,
    pairs: Sequence[dict[str, str]],
    seq_len: int,
    chat_template: bool = True,
    loss_on: str = "completion",
) -> TokenizedSet:
    """Prompt tokens exactly as generation will see them, then completion + end-of-turn/EOS."""
    suffix = end_of_turn(tokenizer) if chat_template else (tokenizer.eos_token or "")
    ids, masks, truncated = [], [], 0
    for pair in pairs:
        prompt = chat_prompt(tokenizer, pair["prompt"]) if chat_template else pair["prompt"]
        p = tokenizer(prompt, add_special_tokens=not chat_template)["input_ids"]
        c = tokenizer(pair["completion"] + suffix, add_special_tokens=False)["input_ids"]
        seq = np.asarray(p + c, np.int32)
        mask = np.concatenate([np.full(len(p), loss_on == "all"), np.ones(len(c), bool)])
        if len(seq) > seq_len + 1:  # inputs are seq[:-1], targets seq[1:]
            seq, mask, truncated = seq[: seq_len + 1], mask[: seq_len + 1], truncated + 1
        ids.append(seq)
        masks.append(mask)
    return TokenizedSet(ids, masks, truncated)


def epoch_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Rows of every full batch of one epoch: shuffled, sorted by length within windows, batches shuffled."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    window = batch_size * SORT_WINDOW_BATCHES
    batches = []
    for start in range(0, len(order) - batch_size + 1, window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort([lengths[i] for i in chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


class BatchStream:
    """The training batch for any step, deterministic in (seed, step)."""

    def __init__(self, data: TokenizedSet, batch_size: int, seq_len: int, seed: int, pad_id: int):
        if len(data) < batch_size:
            raise DataFileError(f"training data has {len(data)} sequences, fewer than train.batch_size={batch_size}")
        self.data, self.batch_size, self.seq_len, self.seed, self.pad_id = data, batch_size, seq_len, seed, pad_id
        self.lengths = [len(x) - 1 for x in data.ids]
        self._epoch, self._order = -1, []
        self.batches_per_epoch = len(epoch_order(self.lengths, batch_size, seed, 0))

    def rows(self, step: int) -> np.ndarray:
        epoch = step // self.batches_per_epoch
        if epoch != self._epoch:
            self._epoch, self._order = epoch, epoch_order(self.lengths, self.batch_size, self.seed, epoch)
        return self._order[step % self.batches_per_epoch]

    def batch(self, step: int) -> dict[str, np.ndarray]:
        return make_batch(self.data, self.rows(step), self.seq_len, self.pad_id)


def make_batch(data: TokenizedSet, rows: Iterable[int], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Right-padded arrays [B, T], T the power-of-two bucket of the longest row (at most seq_len)."""
    rows = list(rows)
    length = min(seq_len, bucket(max(len(data.ids[r]) - 1 for r in rows), MIN_SEQ_BUCKET))
    inputs = np.full((len(rows), length), pad_id, np.int32)
    targets = np.zeros((len(rows), length), np.int32)
    weights = np.zeros((len(rows), length), np.float32)
    mask = np.zeros((len(rows), length), bool)
    for i, r in enumerate(rows):
        seq, loss_mask = data.ids[r], data.loss_mask[r]
        n = len(seq) - 1
        inputs[i, :n], targets[i, :n], mask[i, :n] = seq[:-1], seq[1:], True
        weights[i, :n] = loss_mask[1:]
    return {"inputs": inputs, "targets": targets, "weights": weights, "mask": mask}
