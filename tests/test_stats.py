"""Intervals and paired tests against known values."""

import numpy as np
import pytest

from capt_jax.stats import bootstrap_contrast, bootstrap_interval, mcnemar_exact, paired_sign_test, wilson_interval


def test_wilson_interval_known_values():
    # Reference values: scipy.stats.binomtest(k, n).proportion_ci(method="wilson").
    assert wilson_interval(25, 32) == pytest.approx((0.6124500635075647, 0.8897616374739581), abs=1e-12)
    assert wilson_interval(19, 32) == pytest.approx((0.4226002487538287, 0.7448036515733456), abs=1e-12)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    # Exactly 0 and 1 at the ends (the plain formula gave 2.8e-17 for 0 of 6).
    assert all(wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0 for n in range(1, 50))
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_mcnemar_exact_known_values():
    # b=10, c=2: 2 * P(X <= 2), X ~ Binomial(12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert mcnemar_exact(10, 2) == pytest.approx(158 / 4096)
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)


def test_paired_sign_test_counts_questions_not_seed_repeats():
    a = np.array([[1, 1, 0, 1], [1, 0, 0, 1]])
    b = np.array([[0, 1, 1, 1], [0, 1, 0, 1]])
    # question 0 favours A (2 vs 0), question 1 B (1 vs 2), question 2 B (0 vs 1), question 3 neither.
    assert paired_sign_test(a, b) == {"a_better": 1, "b_better": 2, "p_value": 1.0}
    with pytest.raises(ValueError):
        paired_sign_test(a, b[:, :3])


def test_bootstrap_interval_covers_the_mean_and_widens_with_seed_spread():
    rng = np.random.default_rng(0)
    steady = (rng.random((3, 200)) < 0.7).astype(int)
    low, high = bootstrap_interval(steady)
    assert low < steady.mean() < high and high - low < 0.2
    spread = np.stack([(rng.random(200) < p).astype(int) for p in (0.5, 0.7, 0.9)])
    spread_low, spread_high = bootstrap_interval(spread)
    assert spread_high - spread_low > high - low  # seed variance is part of the interval
    assert bootstrap_interval(steady) == (low, high)  # deterministic


def test_bootstrap_contrast_of_ood_gaps():
    rng = np.random.default_rng(0)
    id_ = rng.integers(0, 2, size=(3, 200))
    # A model against itself on one question set: every replicate's difference is exactly 0.
    assert bootstrap_contrast([(1, id_, "id"), (-1, id_, "id")]) == (0.0, 0.0)
    # The same answers called two question sets are drawn independently: an interval around 0, not a point.
    low, high = bootstrap_contrast([(1, id_, "id"), (-1, id_, "anti")])
    assert low < -0.03 and high > 0.03
    # A model that loses every second answer out of distribution: the gap's interval covers that loss, above 0.
    ood = id_.copy()
    ood[:, ::2] = 0
    gap = id_.mean() - ood.mean()
    low, high = bootstrap_contrast([(1, id_, "id"), (-1, ood, "anti")])
    assert 0 < low < gap < high
    # One part alone is the accuracy interval, the same draws as the intervals published before the contrast.
    outcomes = np.random.default_rng(1).integers(0, 2, size=(3, 200))
    assert bootstrap_contrast([(1.0, outcomes, "id")]) == pytest.approx((0.4483333333333333, 0.5583333333333333))
    with pytest.raises(ValueError, match="same number of seeds"):
        bootstrap_contrast([(1, id_, "id"), (-1, id_[:2], "anti")])
    with pytest.raises(ValueError, match="question set 'id'"):
        bootstrap_contrast([(1, id_, "id"), (-1, id_[:, :10], "id")])
