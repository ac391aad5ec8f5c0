"""Intervals and paired tests for accuracies: what a result needs before it is a claim.

Pure functions over 0/1 outcomes, so every number in a table can be recomputed from predictions.jsonl.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054  # the two-sided 95% normal quantile


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion: sound at small n and near 0 or 1, unlike the
    normal approximation. (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At 0 or n correct the bound is exactly 0 or 1; the float arithmetic leaves it 1e-17 off.
    return (0.0 if correct == 0 else centre - half), (1.0 if correct == n else centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: b pairs where only A is right, c where only
    B is. Under no difference each discordant pair favours A with probability 1/2."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_sign_test(a: np.ndarray, b: np.ndarray) -> dict[str, float | int]:
    """A vs B on the same questions, each [seeds, questions] of 0/1, seed s of A paired with seed s of B.

    Each question is one unit: its correct count summed over seeds decides whether it favours A, B, or
    neither, and the exact McNemar test runs on the questions that favour one side. With one seed this is
    McNemar's test itself; with more, repeated seeds of one question are never counted as independent.
    """
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes must have one shape, got {a.shape} and {b.shape}")
    difference = a.sum(axis=0) - b.sum(axis=0)
    favour_a, favour_b = int(np.sum(difference > 0)), int(np.sum(difference < 0))
    return {"a_better": favour_a, "b_better": favour_b, "p_value": mcnemar_exact(favour_a, favour_b)}


def bootstrap_interval(
    outcomes: np.ndarray, replicates: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the mean accuracy over seeds, outcomes [seeds, questions] of 0/1.

    Two-level bootstrap: each replicate redraws the seeds with replacement and, independently, the questions
    with replacement (one draw of questions shared by all seeds, since every seed answered the same ones), so
    the interval holds both training-seed and question-sampling variance.
    """
    return bootstrap_contrast([(1.0, outcomes, "questions")], replicates, seed, level)


def bootstrap_contrast(
    parts: Sequence[tuple[float, np.ndarray, str]], replicates: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of sum(weight * mean accuracy) over `parts`, each (weight, outcomes [seeds, questions],
    name of its question set): an OOD gap is [(1, id, "id"), (-1, anti, "anti")].

    The same two-level bootstrap as `bootstrap_interval`, with one draw of seed indices for every part (all parts
    need the same number of seeds) and one draw of questions per question set, shared by the parts that name it.
    A split whose questions refill another's one for one, in the same order, names that set, so that each draw
    keeps a question with its refill; sets drawn independently ignore any covariance between their questions.
    """
    matrices = [np.asarray(outcomes, np.float64) for _, outcomes, _ in parts]
    seeds = {m.shape[0] for m in matrices}
    if len(seeds) != 1:
        raise ValueError(f"every part needs the same number of seeds, got {sorted(seeds)}")
    sizes = dict.fromkeys(name for _, _, name in parts)
    for (_, _, name), m in zip(parts, matrices):
        if sizes[name] not in (None, m.shape[1]):
            raise ValueError(f"question set {name!r} has {sizes[name]} and {m.shape[1]} questions in two parts")
        sizes[name] = m.shape[1]
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, seeds.pop(), size=(replicates, matrices[0].shape[0]))
    question_draws = {name: rng.integers(0, size, size=(replicates, size)) for name, size in sizes.items()}
    values = np.zeros(replicates)
    for (weight, _, name), m in zip(parts, matrices):
        values += weight * np.array([m[np.ix_(s, q)].mean() for s, q in zip(seed_draws, question_draws[name])])
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)
