"""The record types every loader produces and every later stage consumes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from capt_jax.errors import CaptError

from .render import Term

DATASETS = ("cladder", "prontoqa")
LABELS = {"cladder": ("Yes", "No"), "prontoqa": ("True", "False")}


class DataError(CaptError, ValueError):
    """Bad input data, located precisely enough to fix it by hand."""

    def __init__(self, file: str, record: str | int | None, field: str | None, problem: str):
        self.file, self.record, self.field, self.problem = str(file), record, field, problem
        where = f"{self.file}: record {record!r}" if record is not None else self.file
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}")


class ListIndex(int):
    """A record named by its place in its file's list, where it has no id of its own: an error then says "record at
    list index 5", never "record 5", which names a record by its id."""

    def __repr__(self) -> str:
        return f"at list index {int(self)}"

    __str__ = int.__repr__  # elsewhere, as the number it is


@dataclasses.dataclass(frozen=True)
class Example:
    """One benchmark question, in the same shape for both datasets.

    `prompt` is the question text without the answer-format instruction: the
    instruction depends on whether the target carries reasoning, so it is
    appended when the example is rendered for the model (`intervene`).
    `meta` holds what the oracle abstraction needs (phrase tables, parsed
    sentences) plus descriptive fields such as the CLadder rung and query type.
    """

    id: str
    dataset: str
    variant: str
    prompt: str
    reasoning: str
    answer: str
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; expected one of {DATASETS}")
        if self.answer not in LABELS[self.dataset]:
            raise ValueError(f"answer {self.answer!r} is not one of {LABELS[self.dataset]}")


@dataclasses.dataclass(frozen=True)
class Abstraction:
    """An example with every event or entity replaced by a `{symbol_i}` slot.

    `terms` maps each slot, in order of first appearance, to the original
    wording that fills it back (`original` mode); `kinds` says what a slot
    stands for (CLadder: variable; PrOntoQA: entity, concept or property);
    `parts` keeps dataset-specific template pieces (the PrOntoQA sentences)
    that rebuild a new example from new fillers. `wordings` lists, per slot
    token (`symbol_i`, or `symbol_i=1` / `symbol_i=0` for a value), the
    exact phrases of the raw prompt it replaced beyond its term's own forms
    (CLadder words one value many ways), so that filling the template back
    can be checked against the prompt without gold metadata.
    """

    example: Example
    prompt: str
    reasoning: str
    terms: Mapping[str, Term]
    kinds: Mapping[str, str]
    parts: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    wordings: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    @property
    def answer(self) -> str:
        return self.example.answer

    @property
    def symbols(self) -> dict[str, str]:
        """Slot -> original name."""
        return {slot: term.text for slot, term in self.terms.items()}


def require(record: Any, field: str, file: str, record_id: str | int | None, within: str = "") -> Any:
    """`record[field]`, or a DataError naming the file, the record and `within.field`."""
    where = f"{within}.{field}" if within else field
    if not isinstance(record, Mapping):
        raise DataError(file, record_id, within or None, f"expected a JSON object, got {type(record).__name__}")
    if field not in record or record[field] is None:
        raise DataError(file, record_id, where, "missing field")
    return record[field]


def require_str(record: Any, field: str, file: str, record_id: str | int | None, within: str = "") -> str:
    """Like `require`, and the value must be a string."""
    value = require(record, field, file, record_id, within)
    if not isinstance(value, str):
        raise DataError(
            file, record_id, f"{within}.{field}" if within else field, f"expected a string, got {type(value).__name__}"
        )
    return value
