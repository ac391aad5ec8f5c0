"""Where examples come from, and the paper's test sets."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capt_jax.errors import ConfigError, MissingFileError

from . import cladder, prontoqa
from .cladder_release import downloaded_release
from .example import DATASETS, Example
from .prontoqa_generator import generate_prontoqa, hop_range, max_hops
from .prontoqa_ood import anti_commonsense, non_commonsense, term_pool
from .splits import split, without_overlap

SOURCES = ("auto", "files", "download", "generate")


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
    num_examples: int = 4000,
    hops: int | Sequence[int] = (3, 5),
    ontology: str = "true",
    distractors: bool = True,
    seed: int = 0,
) -> list[Example]:
    """Examples of one dataset variant, in file order.

    source: `files` (data_file, or the variant's file in data_dir), `download`
    (the CLadder v1 release with its stories, from the authors' repository,
    once), `generate` (the own PrOntoQA generator, with
    num_examples/hops/ontology/distractors/seed), or `auto`: files when given or
    found in `default_data_dir()`, else download (CLadder) or generate
    (PrOntoQA). PrOntoQA's anti/non sets derive from a split, see `test_sets`.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    if dataset == "prontoqa" and (variant or "id") != "id":
        raise ValueError(f"PrOntoQA variant {variant!r} is derived from the test split; use test_sets()")
    if source == "auto":
        source, data_dir = _resolve_auto(dataset, variant, data_dir, data_file)
    if source == "files" and data_dir is None and data_file is None:
        data_dir = default_data_dir()
        if data_dir is None:
            raise MissingFileError(
                "config key 'data.data_dir': data.source='files' needs data.data_dir or data.data_file, and "
                "neither $CAPT_DATA_DIR nor ../shared/data beside the project is there"
            )
    if source == "generate":
        if dataset != "prontoqa":
            raise ValueError("only PrOntoQA has a generator")
        if hop_range(hops)[1] > max_hops(ontology):
            raise ConfigError(
                f"config key 'data.prontoqa_hops': the generator's {ontology} ontology holds proofs of at most "
                f"{max_hops(ontology)} hops, not {hop_range(hops)[1]}"
            )
        records = generate_prontoqa(num_examples, hops, ontology, distractors, seed)
        return prontoqa.examples_from_capt_records(records, f"<generated {ontology} ontology, seed {seed}>")
    if source == "download":
        if dataset != "cladder":
            raise ValueError("only CLadder is downloaded (PrOntoQA has source='generate')")
        return cladder.load_cladder(variant, downloaded_release())
    if dataset == "cladder":
        return cladder.load_cladder(variant, data_dir, data_file)
    if data_file is None:
        if data_dir is None:
            raise ValueError("PrOntoQA needs data_dir or data_file (or source='generate')")
        data_file = prontoqa.prontoqa_dir(data_dir) / prontoqa.CAPT_FILE
        others = sorted(path.name for path in data_file.parent.glob("*.json"))
        if not data_file.is_file() and others:  # a folder of other PrOntoQA files: one is chosen by name
            raise MissingFileError(
                f"{data_file}: data file not found; to use one of {', '.join(others)} in {data_file.parent}, set "
                "config key 'data.data_file' to it"
            )
    return prontoqa.load_prontoqa_file(data_file)


def _resolve_auto(
    dataset: str, variant: str | None, data_dir: str | Path | None, data_file: str | Path | None
) -> tuple[str, Path | None]:
    if data_file is not None or data_dir is not None:
        return "files", Path(data_dir) if data_dir is not None else None
    found = default_data_dir()
    if found is not None and _has_files(dataset, variant, found):
        return "files", found
    return ("download" if dataset == "cladder" else "generate"), None


def _has_files(dataset: str, variant: str | None, data_dir: Path) -> bool:
    if dataset == "prontoqa":
        return (prontoqa.prontoqa_dir(data_dir) / prontoqa.CAPT_FILE).is_file()
    try:
        cladder.question_file(cladder.cladder_dir(data_dir), cladder.canonical_variant(variant))
    except FileNotFoundError:
        return False
    return True


SPLITS = ("id", "anti", "non")
_CLADDER_OOD = {"anti": "anticommonsense", "non": "nonsense"}


class OodUnavailable(Exception):
    """An OOD split that this data cannot make; the message says why."""


@dataclasses.dataclass(frozen=True)
class TestSplit:
    """One test set as evaluated: its examples, the ids the contamination guard removed, and, when the split
    could not be made from the data at all, why (then `examples` is empty)."""

    examples: list[Example]
    excluded_overlap: tuple[str, ...] = ()
    skipped: str | None = None
    # Removed questions per query type (CLadder): the guard can take a whole type whose templates are few
    # (backdoor-adjustment questions carry no numbers), and then the accuracy no longer covers that type.
    excluded_by_query_type: dict[str, int] = dataclasses.field(default_factory=dict)

    __test__ = False  # a data type, not a pytest class

    def query_types_gone(self) -> list[str]:
        """The query types the guard removed every question of."""
        kept = {e.meta.get("query_type") for e in self.examples}
        return sorted(t for t in self.excluded_by_query_type if t not in kept)

    def guard_note(self, name: str) -> str | None:
        """One `note:` line saying what the contamination guard took from this split (`name`), by query type where
        known, and which query types its accuracy then leaves out; None when it took nothing."""
        if not self.excluded_overlap:
            return None
        removed = len(self.excluded_overlap)
        by_type = ", ".join(f"{kind} {n}" for kind, n in self.excluded_by_query_type.items())
        gone = self.query_types_gone()
        left_out = f"; none of query type {', '.join(gone)} is left, so '{name}' accuracy does not cover it"
        return (
            f"note: the contamination guard removed {removed} of {removed + len(self.examples)} '{name}' questions "
            f"that share a question or template with training{f' ({by_type})' if by_type else ''}"
            + (left_out if gone else "")
        )

    def without(self, train: Sequence[Example]) -> TestSplit:
        """This split less its questions that share a question or normalised template with `train`
        (`without_overlap`), counted with those removed before. A split the guard empties is not a score of 0: it
        is skipped, like one that cannot be made."""
        if self.skipped:
            return self
        kept, removed = without_overlap(self.examples, train)
        gone = set(removed)
        by_type = Counter(self.excluded_by_query_type)
        by_type.update(str(e.meta["query_type"]) for e in self.examples if e.id in gone and "query_type" in e.meta)
        excluded = self.excluded_overlap + tuple(removed)
        empty = f"all {len(excluded)} test questions share a question or template with training"
        return TestSplit(kept, excluded, empty if excluded and not kept else None, dict(sorted(by_type.items())))


def test_sets(
    dataset: str,
    data_dir: str | Path | None = None,
    data_file: str | Path | None = None,
    *,
    splits: Sequence[str] = SPLITS,
    variant: str | None = None,
    n_train: int = 100,
    split_seed: int = 19,
    test_fraction: float = 0.1,
    ood_seed: int = 0,
    keep_overlap: bool = False,
    **load_options: Any,
) -> dict[str, TestSplit]:
    """The requested test splits ("id", "anti", "non"), each cleaned of training questions.

    Every file is split as `split` does: the ID test set is the last 10% of the shuffled ID file. CLadder's
    OOD sets are the last 10% of the shuffled anticommonsense / nonsense files (with only `data_file` given,
    looked up next to it); PrOntoQA's are refills of the ID test set (`ood_seed`). Then every split loses the
    examples whose question or normalised template is a training example's (`without_overlap`), unless
    `keep_overlap` (the paper's protocol, which did not check). The training examples are those of `variant`
    (CLadder can train on its anticommonsense or nonsense file), while "id" stays the commonsense file's test
    part. A split the data cannot make, such as an anti refill from too few distinct terms, comes back
    `skipped` with the reason; the others still run.
    `load_options` go to `load_examples` (source, generator settings).
    """
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown test splits {unknown}; expected a subset of {list(SPLITS)}")
    examples = load_examples(dataset, variant, data_dir, data_file, **load_options)  # what training reads
    train, id_test = split(examples, n_train, split_seed, test_fraction)
    trained_variant = examples[0].variant if dataset == "cladder" and examples else "commonsense"
    raw: dict[str, list[Example] | str] = {}
    for name in splits:
        try:
            if name == "id" and trained_variant != "commonsense":
                raw[name] = _cladder_id(
                    trained_variant, data_dir, data_file, n_train, split_seed, test_fraction, load_options
                )
            elif name == "id" or (dataset == "cladder" and _CLADDER_OOD.get(name) == trained_variant):
                raw[name] = id_test  # the trained file's own test part, whatever the file is called
            elif dataset == "prontoqa":
                raw[name] = _prontoqa_refill(name, id_test, examples, ood_seed)
            else:
                raw[name] = _cladder_ood(name, data_dir, data_file, split_seed, test_fraction, load_options)
        except OodUnavailable as reason:
            raw[name] = str(reason)
    sets = {}
    for name, found in raw.items():
        if isinstance(found, str):
            sets[name] = TestSplit([], skipped=found)
        else:
            sets[name] = TestSplit(found) if keep_overlap else TestSplit(found).without(train)
    return sets


def _prontoqa_refill(name: str, id_test: list[Example], examples: list[Example], seed: int) -> list[Example]:
    pool = term_pool(examples)
    if name == "non":
        return non_commonsense(id_test, seed, [t.text for terms in pool.values() for t in terms])
    try:
        return anti_commonsense(id_test, pool, seed)
    except ValueError as err:
        raise OodUnavailable(f"anti: {err}") from err


def _cladder_id(
    trained_variant: str,
    data_dir: str | Path | None,
    data_file: str | Path | None,
    n_train: int,
    split_seed: int,
    test_fraction: float,
    load_options: dict[str, Any],
) -> list[Example]:
    """The commonsense file's test part, for a run that trains on another CLadder variant. A data_file under a
    name of its own resolves to itself for every variant, so "id" is the release-named commonsense file beside it,
    found as the OOD splits find theirs, and never the trained file's own questions."""
    if data_file is not None and cladder.variant_file(Path(data_file), "commonsense") == cladder.variant_file(
        Path(data_file), trained_variant
    ):
        try:
            data_file = cladder.question_file(Path(data_file).parent, "commonsense")
        except FileNotFoundError as err:
            raise OodUnavailable(
                f"id: data.data_file {data_file} holds the {trained_variant} questions trained on, under a name that "
                f"is not a CLadder release's, and no commonsense file is beside it "
                f"({', '.join(cladder.QUESTION_FILES['commonsense'])}); give data.data_dir instead"
            ) from err
    commonsense = load_examples("cladder", "commonsense", data_dir, data_file, **load_options)
    return split(commonsense, n_train, split_seed, test_fraction)[1]


def _cladder_ood(
    name: str,
    data_dir: str | Path | None,
    data_file: str | Path | None,
    split_seed: int,
    test_fraction: float,
    load_options: dict[str, Any],
) -> list[Example]:
    variant = _CLADDER_OOD[name]
    if data_file is not None:
        try:
            path = cladder.question_file(Path(data_file).parent, variant)
        except FileNotFoundError as err:
            raise OodUnavailable(f"{name}: no {variant} file next to {data_file}") from err
        ood = cladder.load_cladder_file(path, variant)
    else:
        try:
            ood = load_examples("cladder", variant, data_dir, **load_options)
        except FileNotFoundError as err:
            raise OodUnavailable(f"{name}: {err}") from err
    return split(ood, 0, split_seed, test_fraction)[1]


test_sets.__test__ = False  # a library function, not a pytest test, wherever it is imported
