"""Exact CLadder event abstraction from the story phrase tables.

Every wording of a variable's name becomes `{symbol_i}`, every wording of its
value 1 / 0 becomes `{symbol_i}=1` / `{symbol_i}=0`, and in the reasoning the
formal letters (X, Y, V2, ...) become the same slots, so a symbol letter
drawn later names the variable in prompt and reasoning alike.

Some stories use one phrase both as a variable's name and as its value-1
noun ("smoking"). The text alone cannot tell them apart, so the choice
follows the sentence kind: the background and the questions about effects
"through" mediators or adjustment methods speak about variables, all other
sentences about values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from .cladder import causal_cot, segments_text
from .example import Abstraction, Example
from .render import SLOT, Term, slot_name, slot_text, slots_in, whole_words

# Query types whose question (and, for backadj, given_info) names variables, not values.
NAME_FIRST_QUERY_TYPES = frozenset({"nde", "nie", "backadj"})
_FILLED = re.compile(r"(\{symbol_\d+\}(?:=[01])?)")


def abstract_cladder(example: Example) -> Abstraction:
    """The oracle abstraction of one CLadder question."""
    variables = example.meta["variables"]
    replaced: dict[str, set[str]] = {}  # slot token written -> the raw phrases it stands for
    names, values = (_Replacer(table, replaced) for table in _wordings(variables))
    query_type = example.meta["query_type"]
    segments = example.meta["segments"]
    name_first = {
        "background": True,
        "given_info": query_type == "backadj",
        "question": query_type in NAME_FIRST_QUERY_TYPES,
    }
    template_segments = {key: _substitute(text, names, values, name_first[key]) for key, text in segments.items()}
    prompt = segments_text(template_segments)
    prompt_wordings = {token: tuple(sorted(texts)) for token, texts in replaced.items()}
    reasoning = ""
    steps = example.meta["steps"]
    if steps:
        letters = whole_words(v["letter"] for v in variables)
        abstract_steps = {
            key: _substitute(letters.sub(lambda m: _letter_slot(m, variables), text), names, values, name_first=False)
            for key, text in steps.items()
        }
        reasoning = causal_cot(abstract_steps, query_type, example.answer, with_variables=False)
    order = slots_in(prompt + "\n" + reasoning)
    renumber = {old: slot_name(index) for index, old in enumerate(order, start=1)}

    def final(text: str) -> str:
        return SLOT.sub(lambda m: slot_text(renumber[m.group(1)]), text)

    by_temp = {slot_name(i): v["name"] for i, v in enumerate(variables, start=1)}
    return Abstraction(
        example=example,
        prompt=final(prompt),
        reasoning=final(reasoning),
        terms={renumber[old]: Term(by_temp[old]) for old in order},
        kinds={renumber[old]: "variable" for old in order},
        wordings={final(token).replace("{", "").replace("}", ""): texts for token, texts in prompt_wordings.items()},
    )


def original_names(example: Example) -> list[str]:
    """Every name and value noun of the question's variables, and every story wording of them: a template that
    keeps "husbands that set the alarm" leaks as much as one that keeps "husband"."""
    mapped = [text for text in example.meta["variable_mapping"].values() if isinstance(text, str)]
    worded = [text for v in example.meta["variables"] for texts in v["wordings"].values() for text in texts]
    return sorted(set(mapped + worded))


def _wordings(variables: Sequence[Mapping]) -> tuple[dict[str, str], dict[str, str]]:
    """Lower-cased wording -> replacement, for names and for values.

    Where two variables share a wording, the first keeps it.
    """
    names: dict[str, str] = {}
    values: dict[str, str] = {}
    for index, variable in enumerate(variables, start=1):
        slot = slot_text(slot_name(index))
        for text in variable["wordings"]["name"]:
            names.setdefault(text.lower(), slot)
        for value in ("1", "0"):
            for text in variable["wordings"][value]:
                values.setdefault(text.lower(), f"{slot}={value}")
    return names, values


class _Replacer:
    """Replaces wordings (case-insensitive, whole words, longest first) outside existing slots, and records in
    `replaced` which raw phrases each written slot token took the place of."""

    def __init__(self, table: Mapping[str, str], replaced: dict[str, set[str]]):
        self.table, self.replaced = table, replaced
        self.pattern = whole_words(table, re.IGNORECASE) if table else None

    def __call__(self, text: str) -> str:
        if self.pattern is None:
            return text
        pieces = _FILLED.split(text)
        return "".join(
            piece if index % 2 else self.pattern.sub(self._replace, piece) for index, piece in enumerate(pieces)
        )

    def _replace(self, match: re.Match[str]) -> str:
        token = self.table[match.group(0).lower()]
        self.replaced.setdefault(token, set()).add(match.group(0))
        return token


def _substitute(text: str, names: _Replacer, values: _Replacer, name_first: bool) -> str:
    """Replace names and value wordings in two passes whose order sets the priority."""
    for replace in (names, values) if name_first else (values, names):
        text = replace(text)
    return text


def _letter_slot(match: re.Match[str], variables: Sequence[Mapping]) -> str:
    index = next(i for i, v in enumerate(variables, start=1) if v["letter"] == match.group(0))
    return slot_text(slot_name(index))
