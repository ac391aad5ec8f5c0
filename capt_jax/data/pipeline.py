"""What training and evaluation call: model-ready data from a data config."""

from __future__ import annotations

import ml_collections

from .config import load_options
from .example import Example
from .intervention import Intervened, render_examples, training_pairs
from .sources import load_examples, test_sets
from .splits import split


def training_examples(config: ml_collections.ConfigDict) -> list[Example]:
    """The first n_train examples of the training 90% of the configured dataset."""
    examples = load_examples(config.dataset, config.variant, config.data_dir, config.data_file, **load_options(config))
    train, _ = split(examples, config.n_train, config.split_seed, config.test_fraction)
    return train


def training_data(config: ml_collections.ConfigDict) -> list[dict[str, str]]:
    """{'prompt', 'completion'} pairs: the training examples, replicated and intervened."""
    return training_pairs(
        training_examples(config), config.mode, config.copies, config.intervention_seed, config.with_reasoning
    )


def test_examples(config: ml_collections.ConfigDict) -> dict[str, list[Example]]:
    """The configured dataset's test sets ("id", "anti", "non") as raw examples."""
    return test_sets(
        config.dataset,
        config.data_dir,
        config.data_file,
        n_train=config.n_train,
        split_seed=config.split_seed,
        test_fraction=config.test_fraction,
        ood_seed=config.ood_seed,
        **load_options(config),
    )


def evaluation_data(config: ml_collections.ConfigDict) -> dict[str, list[Intervened]]:
    """Each test set ("id", "anti", "non") rendered in the training mode, one draw per example."""
    return {
        name: render_examples(examples, config.mode, config.intervention_seed, config.with_reasoning)
        for name, examples in test_examples(config).items()
    }
