"""Where examples come from, and the paper's test sets."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import cladder, prontoqa
from .example import DATASETS, Example
from .prontoqa_generator import generate_prontoqa
from .prontoqa_ood import anti_commonsense, non_commonsense, term_pool
from .splits import split

SOURCES = ("auto", "files", "hub", "generate")


def default_data_dir() -> Path | None:
    """$CAPT_DATA_DIR, else `<repo>/../shared/data` when it exists."""
    if os.environ.get("CAPT_DATA_DIR"):
        return Path(os.environ["CAPT_DATA_DIR"])
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return shared if shared.is_dir() else None


def load_examples(
    dataset: str,
    variant: str | None = None,
    data_dir: str | Path | None = None,
    data_file: str | Path | None = None,
    *,
    source: str = "auto",
    stories_dir: str | Path | None = None,
    num_examples: int = 4000,
    hops: int | Sequence[int] = (3, 5),
    ontology: str = "true",
    distractors: bool = True,
    seed: int = 0,
) -> list[Example]:
    """Examples of one dataset variant, in file order.

    source: `files` (data_file, or the variant's file in data_dir), `hub`
    (CLadder v1 from the Hugging Face hub), `generate` (the own PrOntoQA
    generator, with num_examples/hops/ontology/distractors/seed), or `auto`:
    files when given or found in `default_data_dir()`, else hub (CLadder) or
    generate (PrOntoQA). PrOntoQA's anti/non sets derive from a split, see
    `test_sets`.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    if dataset == "prontoqa" and (variant or "id") != "id":
        raise ValueError(f"PrOntoQA variant {variant!r} is derived from the test split; use test_sets()")
    if source == "auto":
        source, data_dir = _resolve_auto(dataset, variant, data_dir, data_file)
    if source == "generate":
        if dataset != "prontoqa":
            raise ValueError("only PrOntoQA has a generator")
        records = generate_prontoqa(num_examples, hops, ontology, distractors, seed)
        return prontoqa.examples_from_capt_records(records, f"<generated {ontology} ontology, seed {seed}>")
    if source == "hub":
        if dataset != "cladder":
            raise ValueError("only CLadder loads from the hub")
        return cladder.load_cladder_hub(variant, stories_dir)
    if dataset == "cladder":
        return cladder.load_cladder(variant, data_dir, data_file)
    if data_file is None:
        if data_dir is None:
            raise ValueError("PrOntoQA needs data_dir or data_file (or source='generate')")
        data_file = prontoqa.prontoqa_dir(data_dir) / prontoqa.CAPT_FILE
    return prontoqa.load_prontoqa_file(data_file)


def _resolve_auto(
    dataset: str, variant: str | None, data_dir: str | Path | None, data_file: str | Path | None
) -> tuple[str, Path | None]:
    if data_file is not None or data_dir is not None:
        return "files", Path(data_dir) if data_dir is not None else None
    found = default_data_dir()
    if found is not None and _has_files(dataset, variant, found):
        return "files", found
    return ("hub" if dataset == "cladder" else "generate"), None


def _has_files(dataset: str, variant: str | None, data_dir: Path) -> bool:
    if dataset == "prontoqa":
        return (prontoqa.prontoqa_dir(data_dir) / prontoqa.CAPT_FILE).is_file()
    try:
        cladder.question_file(cladder.cladder_dir(data_dir), cladder.canonical_variant(variant))
    except FileNotFoundError:
        return False
    return True


def test_sets(
    dataset: str,
    data_dir: str | Path | None = None,
    data_file: str | Path | None = None,
    *,
    n_train: int = 100,
    split_seed: int = 19,
    test_fraction: float = 0.1,
    ood_seed: int = 0,
    **load_options: Any,
) -> dict[str, list[Example]]:
    """The ID test split and the OOD test sets: {"id", "anti", "non"}.

    CLadder's OOD sets are the anticommonsense and nonsense files (whole);
    with only `data_file` given they are looked up next to it and left out
    when absent. PrOntoQA's are refills of the ID test split (`ood_seed`).
    `load_options` go to `load_examples` (source, generator settings).
    """
    examples = load_examples(dataset, None, data_dir, data_file, **load_options)
    _, test = split(examples, n_train, split_seed, test_fraction)
    sets = {"id": test}
    if dataset == "prontoqa":
        pool = term_pool(examples)
        sets["anti"] = anti_commonsense(test, pool, ood_seed)
        sets["non"] = non_commonsense(test, ood_seed, [t.text for terms in pool.values() for t in terms])
        return sets
    for name, variant in (("anti", "anticommonsense"), ("non", "nonsense")):
        if data_file is not None:
            folder = Path(data_file).parent
            try:
                sets[name] = cladder.load_cladder_file(cladder.question_file(folder, variant), variant)
            except FileNotFoundError:
                continue
        else:
            sets[name] = load_examples(dataset, variant, data_dir, **load_options)
    return sets


test_sets.__test__ = False  # a library function, not a pytest test, wherever it is imported
