"""What training and evaluation call: model-ready data from a data config."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence

import ml_collections

from capt_jax.errors import ConfigError

from .config import load_options
from .example import Example
from .intervention import training_pairs
from .sources import SPLITS, TestSplit, load_examples, test_sets
from .splits import SplitError, split


def training_examples(config: ml_collections.ConfigDict) -> list[Example]:
    """The first n_train examples of the shuffled training 90% of the configured dataset."""
    examples = load_examples(config.dataset, config.variant, config.data_dir, config.data_file, **load_options(config))
    with _n_train_named():
        train, _ = split(examples, config.n_train, config.split_seed, config.test_fraction)
    return train


def training_questions(config: ml_collections.ConfigDict) -> str:
    """The training examples' count and digest (`questions_digest`)."""
    return questions_digest(training_examples(config))


def questions_digest(examples: Sequence[Example]) -> str:
    """Count and digest of the examples' ids and prompts: which questions a run trained on, wherever the files
    now are, so an evaluation can check that it guards its test sets against them."""
    digest = hashlib.sha256(json.dumps([[e.id, e.prompt] for e in examples], ensure_ascii=False).encode())
    return f"{len(examples)} questions, {digest.hexdigest()[:16]}"


def training_data(config: ml_collections.ConfigDict) -> list[dict[str, str]]:
    """{'prompt', 'completion'} pairs: the training examples, replicated and intervened."""
    return training_pairs(
        training_examples(config), config.mode, config.copies, config.intervention_seed, config.with_reasoning
    )


def test_examples(config: ml_collections.ConfigDict, splits: Sequence[str] = SPLITS) -> dict[str, TestSplit]:
    """The configured dataset's test splits, free of training questions unless data.keep_overlap."""
    with _n_train_named():
        return test_sets(
            config.dataset,
            config.data_dir,
            config.data_file,
            splits=splits,
            variant=config.variant,
            n_train=config.n_train,
            split_seed=config.split_seed,
            test_fraction=config.test_fraction,
            ood_seed=config.ood_seed,
            keep_overlap=config.keep_overlap,
            **load_options(config),
        )


test_examples.__test__ = False  # a library function, not a pytest test


@contextlib.contextmanager
def _n_train_named() -> Iterator[None]:
    """A file too small for the configured split is a mistake in data.n_train (or in the file)."""
    try:
        yield
    except SplitError as e:
        raise ConfigError(f"config key 'data.n_train': {e}") from None
