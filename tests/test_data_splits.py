"""The paper's split: last 10% test, first n of the rest train, deterministic."""

import pytest

from capt_jax.data import split


@pytest.mark.parametrize("size, n_test", [(4000, 400), (844, 85), (1120, 112), (10, 1)])
def test_split_sizes(size, n_test):
    items = list(range(size))
    train, test = split(items, n_train=5)
    assert test == items[size - n_test :]
    assert train == items[:5]
    assert split(items, n_train=5) == (train, test)


def test_shuffled_split_depends_only_on_seed():
    items = list(range(100))
    assert split(items, 10, seed=19, shuffle=True) == split(items, 10, seed=19, shuffle=True)
    assert split(items, 10, seed=19, shuffle=True) != split(items, 10, seed=20, shuffle=True)
    train, test = split(items, 90, seed=19, shuffle=True)
    assert sorted(train + test) == items


def test_split_rejects_too_many_training_examples():
    with pytest.raises(ValueError, match="n_train"):
        split(list(range(10)), n_train=10)
