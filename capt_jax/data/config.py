"""The data section of a training config, with the paper's CAPT and SFT runs."""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

PAPER_RUNS = {"capt": "random", "sft": "null"}


def default_data_config() -> ml_collections.ConfigDict:
    """Every data field training reads, at the paper's defaults (CAPT on CLadder).

    dataset / variant / source / data_dir / data_file: what `load_examples`
    loads (None directories mean `default_data_dir()`, then download or generator);
    n_train, split_seed, test_fraction: the split (the file shuffled by split_seed,
    test the last 10%, training the first n of the rest);
    keep_overlap: keep test examples whose question or template is a training
    example's (the paper's protocol; the default removes them);
    mode, copies, intervention_seed, with_reasoning: what `training_pairs`
    builds (copies None means 10000 // n_train);
    prontoqa_*: the own generator's settings when source is `generate`;
    ood_seed: the seed of the PrOntoQA anti/non refills.
    """
    return ml_collections.ConfigDict(
        {
            "dataset": "cladder",
            "variant": config_dict.placeholder(str),
            "source": "auto",
            "data_dir": config_dict.placeholder(str),
            "data_file": config_dict.placeholder(str),
            "n_train": 100,
            "split_seed": 19,
            "test_fraction": 0.1,
            "keep_overlap": False,
            "mode": "random",
            "copies": config_dict.placeholder(int),
            "intervention_seed": 0,
            "with_reasoning": True,
            "prontoqa_num_examples": 4000,
            "prontoqa_hops": (3, 5),
            "prontoqa_ontology": "true",
            "prontoqa_distractors": True,
            "prontoqa_seed": 0,
            "ood_seed": 0,
        }
    )


def paper_data_config(dataset: str, method: str) -> ml_collections.ConfigDict:
    """The data section of the paper's run: method `capt` (random symbols) or `sft` (raw prompts)."""
    if method not in PAPER_RUNS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(PAPER_RUNS)}")
    config = default_data_config()
    config.dataset = dataset
    config.mode = PAPER_RUNS[method]
    return config


def load_options(config: ml_collections.ConfigDict) -> dict:
    """Keyword arguments of `load_examples` / `test_sets` from a data config."""
    return {
        "source": config.source,
        "num_examples": config.prontoqa_num_examples,
        "hops": tuple(config.prontoqa_hops),
        "ontology": config.prontoqa_ontology,
        "distractors": config.prontoqa_distractors,
        "seed": config.prontoqa_seed,
    }
