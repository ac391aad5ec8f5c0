"""The paper's train/test split."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def split(
    examples: Sequence[T], n_train: int = 100, seed: int = 19, test_fraction: float = 0.1, shuffle: bool = False
) -> tuple[list[T], list[T]]:
    """(train, test): test is the last `test_fraction` (rounded up), train the first n of the rest.

    The paper splits in file order; `seed` only matters with `shuffle=True`,
    which permutes the examples first.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    items = list(examples)
    if shuffle:
        random.Random(seed).shuffle(items)
    n_test = math.ceil(test_fraction * len(items))
    pool, test = items[: len(items) - n_test], items[len(items) - n_test :]
    if n_train > len(pool):
        raise ValueError(f"n_train={n_train} exceeds the {len(pool)} examples outside the test set")
    return pool[:n_train], test
