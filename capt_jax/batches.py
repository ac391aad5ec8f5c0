"""Prompt/completion pairs -> token ids with loss weights -> fixed-shape, length-bucketed training batches.

Batch order is a pure function of (seed, step), so the data position saved in a checkpoint is just the
step, and a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from capt_jax.errors import CaptError
from capt_jax.objective import ESTIMATION_TASK, INTERVENTION_TASK
from capt_jax.tokenization import chat_prompt, end_of_turn, length_bucket

MIN_SEQ_BUCKET = 32
MIN_LOSS_WINDOW = 16
SORT_WINDOW_BATCHES = 64  # batches per window sorted by length: tight buckets, still shuffled


class DataFileError(CaptError, ValueError):
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


Encode = Callable[[dict[str, str]], tuple[np.ndarray, np.ndarray]]


def pair_encoder(tokenizer: Any, chat_template: bool = True, loss_on: str = "completion") -> Encode:
    """pair -> (token ids, loss mask), untruncated: prompt tokens exactly as generation will see them, then
    completion + end-of-turn/EOS."""
    suffix = end_of_turn(tokenizer) if chat_template else (tokenizer.eos_token or "")

    def encode(pair: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
        prompt = chat_prompt(tokenizer, pair["prompt"]) if chat_template else pair["prompt"]
        p = tokenizer(prompt, add_special_tokens=not chat_template)["input_ids"]
        c = tokenizer(pair["completion"] + suffix, add_special_tokens=False)["input_ids"]
        return np.asarray(p + c, np.int32), np.concatenate([np.full(len(p), loss_on == "all"), np.ones(len(c), bool)])

    return encode


@dataclasses.dataclass(frozen=True)
class TokenizedSet:
    """Pairs whose every length is known but whose token ids are made only when a row is read.

    Batch order and padding need all lengths (and loss windows); the ids are needed only for the rows a
    process feeds its devices, so on a pod each host tokenizes its share of every batch instead of the whole set.
    """

    pairs: Sequence[dict[str, str]]
    encode: Encode
    seq_len: int
    lengths: np.ndarray  # per row: input positions (tokens - 1) after truncation to seq_len + 1 tokens
    loss_starts: np.ndarray  # per row: the first input position whose next token counts in the loss
    truncated: int
    unsupervised: int = 0  # rows whose truncation left no token in the loss

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, loss mask) of one row; inputs are ids[:-1], targets ids[1:]."""
        ids, mask = self.encode(self.pairs[row])
        return ids[: self.seq_len + 1], mask[: self.seq_len + 1]

    @property
    def window_widths(self) -> np.ndarray:
        """Per row: the input positions of its loss window, from loss start to row end."""
        return self.lengths - self.loss_starts

    def task(self, row: int) -> int:
        return ESTIMATION_TASK if self.pairs[row].get("task") == "estimation" else INTERVENTION_TASK


@dataclasses.dataclass(frozen=True)
class PackedSet:
    """The examples of a TokenizedSet packed into rows of at most seq_len input positions (data.packing).

    Indexed like a TokenizedSet, by row, so BatchStream, `batch_length`, `loss_width` and `make_batch` serve it
    unchanged; a row's examples share one task, so the per-row loss coefficients stay exact.
    """

    examples: TokenizedSet
    members: tuple[np.ndarray, ...]  # per row: the example indices it holds, in order

    def __len__(self) -> int:
        return len(self.members)

    @property
    def seq_len(self) -> int:
        return self.examples.seq_len

    @property
    def truncated(self) -> int:
        return self.examples.truncated

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        return np.array([self.examples.lengths[m].sum() for m in self.members], np.int64)

    @functools.cached_property
    def window_widths(self) -> np.ndarray:
        return np.array([self.examples.window_widths[m].sum() for m in self.members], np.int64)

    def task(self, row: int) -> int:
        return self.examples.task(int(self.members[row][0]))


def pack(data: TokenizedSet, seed: int) -> PackedSet:
    """First-fit decreasing packing of every example into rows of seq_len input positions, per task.

    A pure function of the lengths and the seed (ties in length are broken by a seeded shuffle), so every process
    of a pod packs alike; BatchStream then shuffles the packed rows like any others.
    """
    order = np.random.default_rng([seed, 1]).permutation(len(data))
    order = order[np.argsort(-data.lengths[order], kind="stable")]
    members: list[list[int]] = []
    for task in (INTERVENTION_TASK, ESTIMATION_TASK):
        loads, rows = np.zeros(0, np.int64), []
        for example in (int(e) for e in order if data.task(int(e)) == task):
            fits = np.flatnonzero(loads + data.lengths[example] <= data.seq_len)
            if len(fits):
                loads[fits[0]] += data.lengths[example]
                rows[fits[0]].append(example)
            else:
                loads = np.append(loads, data.lengths[example])
                rows.append([example])
        members += rows
    return PackedSet(data, tuple(np.asarray(m, np.int64) for m in members))


def tokenize_pairs(
    tokenizer: Any,
    pairs: Sequence[dict[str, str]],
    seq_len: int,
    chat_template: bool = True,
    loss_on: str = "completion",
    process_index: int = 0,
    process_count: int = 1,
    gather: Callable[[np.ndarray], np.ndarray] = lambda x: x[None],
) -> TokenizedSet:
    """Learn every pair's length and loss start with each process tokenizing every process_count-th pair only.

    `gather` stacks one array from every process ([process_count, ...], e.g. multihost_utils.process_allgather);
    strided shards make the stacked values, read column by column, come out in row order.
    """
    encode = pair_encoder(tokenizer, chat_template, loss_on)
    shard = np.full((-(-len(pairs) // process_count), 3), -1, np.int32)
    for i, pair in enumerate(pairs[process_index::process_count]):
        ids, mask = encode(pair)
        counted = np.flatnonzero(mask[1 : seq_len + 1])
        shard[i] = len(ids), counted[0] if len(counted) else 0, len(counted) > 0
    stats = np.asarray(gather(shard)).transpose(1, 0, 2).reshape(-1, 3)[: len(pairs)]
    tokens = stats[:, 0]
    return TokenizedSet(
        pairs,
        encode,
        seq_len,
        np.minimum(tokens, seq_len + 1) - 1,
        stats[:, 1],
        truncated=int(np.sum(tokens > seq_len + 1)),
        unsupervised=int(np.sum(stats[:, 2] == 0)),
    )


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
    """The rows of the training batch for any step, deterministic in (seed, step)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        if len(lengths) < batch_size:
            raise DataFileError(f"training data has {len(lengths)} sequences, fewer than train.batch_size={batch_size}")
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self._epoch, self._order = -1, []
        self.batches_per_epoch = len(epoch_order(lengths, batch_size, seed, 0))

    def rows(self, step: int) -> np.ndarray:
        epoch = step // self.batches_per_epoch
        if epoch != self._epoch:
            self._epoch, self._order = epoch, epoch_order(self.lengths, self.batch_size, self.seed, epoch)
        return self._order[step % self.batches_per_epoch]


def batch_length(data: TokenizedSet, rows: Iterable[int]) -> int:
    """T of a batch: the length bucket of its longest row (at most seq_len), from lengths alone, so every
    process pads its part of a batch to the same T."""
    return min(data.seq_len, length_bucket(int(max(data.lengths[r] for r in rows)), MIN_SEQ_BUCKET))


def loss_width(data: TokenizedSet, rows: Iterable[int], length: int) -> int:
    """C of a batch: the bucketed widest loss window (loss start to row end) of its rows, at most T.

    Only these positions need the vocabulary projection: with a completion-only loss that is a fraction of T.
    """
    widest = int(max(data.window_widths[r] for r in rows))
    return min(length, length_bucket(max(widest, 1), MIN_LOSS_WINDOW))


def make_batch(
    data: TokenizedSet | PackedSet, rows: Iterable[int], length: int, pad_id: int, width: int | None = None
) -> dict[str, np.ndarray]:
    """Right-padded inputs and mask [len(rows), T]; targets and loss weights [len(rows), C] for each row's loss
    window, which starts at loss_start [len(rows)]; and each row's task. Only these rows are tokenized.

    Packed rows (see `packed_batch`) list their loss positions instead of a start and carry segment ids.
    """
    rows = list(rows)
    width = length if width is None else width
    if isinstance(data, PackedSet):
        return packed_batch(data, rows, length, pad_id, width)
    inputs = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    targets = np.zeros((len(rows), width), np.int32)
    weights = np.zeros((len(rows), width), np.float32)
    starts = np.zeros(len(rows), np.int32)
    for i, r in enumerate(rows):
        seq, loss_mask = data[r]
        n = len(seq) - 1
        inputs[i, :n], mask[i, :n] = seq[:-1], True
        start = min(int(data.loss_starts[r]), length - width)  # the window stays inside the row's T positions
        end = min(n, start + width)
        starts[i] = start
        targets[i, : end - start], weights[i, : end - start] = seq[start + 1 : end + 1], loss_mask[start + 1 : end + 1]
    return {
        "inputs": inputs,
        "mask": mask,
        "targets": targets,
        "weights": weights,
        "loss_start": starts,
        "task": np.asarray([data.task(r) for r in rows], np.int32),
    }


def packed_batch(data: PackedSet, rows: Sequence[int], length: int, pad_id: int, width: int) -> dict[str, np.ndarray]:
    """The fields of `make_batch` for packed rows, with "loss_positions" [len(rows), C] in place of "loss_start"
    (each example's own window, back to back: the input position of every target) and "segments"
    [len(rows), T], the 1-based example number of every input position (0: padding)."""
    inputs = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    segments = np.zeros((len(rows), length), np.int32)
    targets = np.zeros((len(rows), width), np.int32)
    weights = np.zeros((len(rows), width), np.float32)
    positions = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        offset = column = 0
        for segment, example in enumerate(data.members[r], 1):
            seq, loss_mask = data.examples[example]
            n, start = len(seq) - 1, int(data.examples.loss_starts[example])
            inputs[i, offset : offset + n], mask[i, offset : offset + n] = seq[:-1], True
            segments[i, offset : offset + n] = segment
            window = slice(column, column + n - start)
            positions[i, window] = offset + np.arange(start, n)
            targets[i, window], weights[i, window] = seq[start + 1 :], loss_mask[start + 1 :]
            offset, column = offset + n, column + n - start
    return {
        "inputs": inputs,
        "mask": mask,
        "segments": segments,
        "targets": targets,
        "weights": weights,
        "loss_positions": positions,
        "task": np.asarray([data.task(r) for r in rows], np.int32),
    }
