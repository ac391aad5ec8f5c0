"""Event estimation (oracle form) and the paper's validity check."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable

from . import cladder_oracle, prontoqa_oracle
from .cladder import QUERY_TYPE_NAMES
from .example import Abstraction, Example
from .render import SLOT, pluralize, slots_in

_ABSTRACT = {"cladder": cladder_oracle.abstract_cladder, "prontoqa": prontoqa_oracle.abstract_prontoqa}
_NAMES = {"cladder": cladder_oracle.original_names, "prontoqa": prontoqa_oracle.original_names}
# Fixed wording of the target format, not taken from the question: "average
# treatment effect" names a query type, not a variable called "treatment".
_SCAFFOLD = {"cladder": tuple(QUERY_TYPE_NAMES.values()), "prontoqa": ()}


def abstract(example: Example) -> Abstraction:
    """The exact `{symbol_i}` template of an example, from the data's own structure."""
    return _ABSTRACT[example.dataset](example)


def names_present(text: str, names: Iterable[str], dataset: str) -> list[str]:
    """Those `names` that occur in `text` as whole words, in any case, plural too (irregular ones as `pluralize`
    writes them: "companies", "people", "wolves").

    Slots and the fixed wording of the target format are ignored.
    """
    text = SLOT.sub(" ", text).lower()
    for phrase in _SCAFFOLD[dataset]:
        text = text.replace(phrase, " ")
    by_lower = {name.lower(): name for name in sorted(names) if name.strip()}
    return [name for lower, name in sorted(by_lower.items()) if _word_pattern(lower).search(text)]


@functools.lru_cache(maxsize=8192)
def _word_pattern(name: str) -> re.Pattern[str]:
    """A lowercased name as a whole word, plural too. Cached per name: a dataset repeats its names across
    thousands of questions, where a pattern compiled per question was half the time of checking PrOntoQA's."""
    forms = sorted({name, pluralize(name).lower()}, key=len, reverse=True)
    return re.compile(rf"(?<![a-z0-9])(?:{'|'.join(map(re.escape, forms))})(?:s|es)?(?![a-z0-9])")


def original_names(example: Example) -> list[str]:
    """Every original name and wording of the example's events and entities."""
    return _NAMES[example.dataset](example)


def leftover_names(abstraction: Abstraction, example: Example | None = None) -> list[str]:
    """Original names still present in the template."""
    example = example or abstraction.example
    return names_present(abstraction.prompt + "\n" + abstraction.reasoning, original_names(example), example.dataset)


def is_valid(abstraction: Abstraction, example: Example | None = None) -> bool:
    """The paper's check, no original name may remain, plus: every slot has a filler."""
    template_slots = set(slots_in(abstraction.prompt + abstraction.reasoning))
    return not leftover_names(abstraction, example) and template_slots <= set(abstraction.terms)


@dataclasses.dataclass(frozen=True)
class ValidityReport:
    """Invalid abstractions of one file (or any group of examples)."""

    source: str
    total: int
    invalid_ids: tuple[str, ...]
    names_only: int = 0  # CLadder questions without their story's phrases: checked against the models' names alone

    @property
    def invalid_rate(self) -> float:
        return len(self.invalid_ids) / self.total if self.total else 0.0

    def line(self) -> str:
        unseen = (
            f"; {self.names_only} of them checked against the causal models' variable names only "
            "(no story phrases for them), so the story phrases left in their templates are not counted"
            if self.names_only
            else ""
        )
        return (
            f"{self.source}: {self.total - len(self.invalid_ids)}/{self.total} valid, "
            f"invalid rate {100 * self.invalid_rate:.2f}%{unseen}"
        )


def validity_report(examples: Iterable[Example], source: str) -> ValidityReport:
    """Count the examples whose oracle abstraction fails the validity check."""
    examples = list(examples)
    invalid = tuple(e.id for e in examples if not is_valid(abstract(e), e))
    names_only = sum(not e.meta.get("story_known", True) for e in examples)
    return ValidityReport(source, len(examples), invalid, names_only)
