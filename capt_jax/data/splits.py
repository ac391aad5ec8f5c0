"""The paper's train/test split, and the guard that keeps test questions out of training.

The authors abstract a file, shuffle it once, and split it 90/10: the test set is the last 10%, and training
uses the first n of the rest. Without the shuffle, CLadder's story-sorted files put whole causal graphs on one
side only, so "in-distribution" would mean unseen graphs.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from typing import TypeVar

from .abstraction import abstract
from .example import Example

T = TypeVar("T")


class SplitError(ValueError):
    """A split the file is too small for."""


_SPACE = re.compile(r"\s+")


def split(
    examples: Sequence[T], n_train: int = 100, seed: int = 19, test_fraction: float = 0.1
) -> tuple[list[T], list[T]]:
    """(train, test) of one file: shuffled once by `seed`, test the last `test_fraction` (rounded up), train the
    first `n_train` of the rest. Files of equal length get the same permutation, so CLadder's parallel
    commonsense and anticommonsense files keep their questions paired."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    items = list(examples)
    random.Random(seed).shuffle(items)
    n_test = math.ceil(test_fraction * len(items))
    pool, test = items[: len(items) - n_test], items[len(items) - n_test :]
    if n_train > len(pool):
        raise SplitError(f"n_train={n_train} exceeds the {len(pool)} examples outside the test set")
    return pool[:n_train], test


def normalised_question(example: Example) -> str:
    """The prompt as posed, case and spacing ignored."""
    return _SPACE.sub(" ", example.prompt).strip().lower()


def normalised_template(example: Example) -> str:
    """The exact abstraction's template, case and spacing ignored: two questions with one template differ only in
    their names, so a test question with a trained template is seen. The slots keep their numbers, which the
    abstraction gives in order of first appearance: "{1}s are {2}s. {4}s are {1}s." and "{1}s are {2}s. {2}s are
    {3}s." are different questions, whose answers can differ."""
    return _SPACE.sub(" ", abstract(example).prompt).strip().lower()


def without_overlap(test: Sequence[Example], train: Sequence[Example]) -> tuple[list[Example], list[str]]:
    """(kept, ids removed): a test example goes when its question or its normalised template is a training
    example's. This is what makes an OOD refill of a training question, or a parallel file's twin of one,
    count as seen."""
    questions = {normalised_question(e) for e in train}
    templates = {normalised_template(e) for e in train}
    kept, removed = [], []
    for example in test:
        if normalised_question(example) in questions or normalised_template(example) in templates:
            removed.append(example.id)
        else:
            kept.append(example)
    return kept, removed
