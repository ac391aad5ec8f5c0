"""Abstractions that a model estimated: read from its reply, and checked without gold metadata.

An estimate names each slot token: `symbol_i` gets the phrase of an event or entity (a noun in its singular),
and, for an event that happens or not, `symbol_i=1` / `symbol_i=0` get the exact phrases the text uses. It
comes in one of two forms:

* `map`: the slot -> phrase map alone; the template is computed by putting the slots in place of the phrases
  in the raw prompt (`template_from_symbols`). A few dozen decoded tokens.
* `template`: the map plus the whole rewritten prompt. It lets the model place slots itself, but decodes the
  prompt once more.

Either way the estimate is usable only if it passes `estimate_problems`, which sees nothing but the estimate
and the raw prompt: the oracle's answer never selects, re-samples or rejects an estimate.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .abstraction import names_present
from .example import Abstraction, Example
from .render import Term, pluralize, slots_in, whole_words

FORMS = ("map", "template")
SLOT_TOKEN = re.compile(r"(symbol_\d+)(?:=([01]))?")
_OCCURRENCE = re.compile(r"(?P<article>\b[Aa]n? )?\{(?P<slot>symbol_\d+)\}(?:=(?P<value>[01])|(?P<plural>s\b))?")
_SPACE = re.compile(r"\s+")
_ARTICLE_BEFORE_SLOT = re.compile(
    r"\b([Aa])n (?=\{symbol_\d+\})"
)  # templates write "a {slot}"; rendering picks a or an
# Words of a dataset's fixed grammar: a phrase holding one names structure, not an event or entity.
_STRUCTURE_WORDS = {"cladder": (), "prontoqa": ("every", "each", "not", "is", "are")}


def symbol_map(abstraction: Abstraction) -> dict[str, Any]:
    """slot token -> phrase(s), in slot order: what an estimator replies (the `map` form). A name is one string,
    or a list when the text also calls it otherwise; a value is the list of its phrases."""
    symbols: dict[str, Any] = {}
    for slot, term in abstraction.terms.items():
        others = sorted({w for w in abstraction.wordings.get(slot, ()) if w.lower() != term.text.lower()})
        symbols[slot] = [term.text, *others] if others else term.text
        for value in ("1", "0"):
            wordings = abstraction.wordings.get(f"{slot}={value}")
            if wordings:
                symbols[f"{slot}={value}"] = list(wordings)
    return symbols


def read_symbols(data: Any) -> tuple[dict[str, str], dict[str, tuple[str, ...]]] | None:
    """(slot -> name, token -> further phrases) from a reply's JSON object, or None when it has another shape.

    The further phrases are a name's other wordings (under `symbol_i`) and a value's phrases (`symbol_i=1`).
    """
    if not isinstance(data, Mapping) or not data:
        return None
    names: dict[str, str] = {}
    wordings: dict[str, tuple[str, ...]] = {}
    for key, phrase in data.items():
        match = SLOT_TOKEN.fullmatch(str(key))
        phrases = [phrase] if isinstance(phrase, str) else phrase
        if match is None or not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
            return None
        phrases = [p.strip() for p in phrases if p.strip()]
        if match.group(2) is None:
            names[key] = phrases[0] if phrases else ""
            phrases = phrases[1:]
        if phrases:
            wordings[key] = tuple(phrases)
    return names, wordings


def template_from_symbols(prompt: str, names: Mapping[str, str], wordings: Mapping[str, Sequence[str]]) -> str:
    """The prompt with every phrase replaced by its slot token: longest phrases first, whole words, any case; a
    name's plural becomes `{slot}s`, as templates write it."""
    table: dict[str, str] = {}
    for slot, name in names.items():  # a phrase that is both a name and a value is taken as the name
        for phrase in (name, *wordings.get(slot, ())):
            if phrase:
                table.setdefault(phrase.lower(), "{" + slot + "}")
                table.setdefault(pluralize(phrase).lower(), "{" + slot + "}s")
    for token, phrases in wordings.items():
        slot, _, value = token.partition("=")
        for phrase in phrases if value else ():
            table.setdefault(phrase.lower(), "{" + slot + "}=" + value)
    if not table:
        return prompt
    pattern = whole_words(table, re.IGNORECASE)
    return _ARTICLE_BEFORE_SLOT.sub(r"\1 ", pattern.sub(lambda m: table[m.group(0).lower()], prompt))


def estimated_abstraction(
    example: Example, names: Mapping[str, str], wordings: Mapping[str, Sequence[str]], template: str | None = None
) -> Abstraction:
    """An Abstraction from an estimate; without a template (the `map` form) it is computed by substitution."""
    template = template_from_symbols(example.prompt, names, wordings) if template is None else template
    slots = list(dict.fromkeys([*slots_in(template), *names]))  # a declared slot the text lacks stays visible
    return Abstraction(
        example=example,
        prompt=template,
        reasoning="",
        terms={slot: Term(names.get(slot, "")) for slot in slots},
        kinds=dict.fromkeys(slots, "event"),
        wordings={token: tuple(phrases) for token, phrases in wordings.items()},
    )


def without_unplaced(abstraction: Abstraction) -> tuple[Abstraction, list[str]]:
    """(the estimate without the named slots that its template neither places nor leaves in its words, those slots).

    A name repeated under a second slot (the map's substitution gives every occurrence to the first) or a name the
    text lacks places nothing, so dropping it leaves the template, and so what the reasoner sees, as it was. Small
    models repeat names often: in a study on development data (docs/EXPERIMENTS.md) most of SmolLM2-135M's own
    estimates failed the check only for this. A slot without a name, or whose name a rewritten template (the
    `template` form) still writes out, stays, for the check to refuse.
    """
    text = abstraction.prompt + "\n" + abstraction.reasoning
    placed, dataset = set(slots_in(text)), abstraction.example.dataset
    dropped = [
        slot
        for slot, term in abstraction.terms.items()
        if slot not in placed and term.text.strip() and not names_present(text, [term.text], dataset)
    ]
    if not dropped:
        return abstraction, []
    return (
        dataclasses.replace(
            abstraction,
            terms={slot: term for slot, term in abstraction.terms.items() if slot not in dropped},
            kinds={slot: kind for slot, kind in abstraction.kinds.items() if slot not in dropped},
            wordings={token: w for token, w in abstraction.wordings.items() if token.partition("=")[0] not in dropped},
        ),
        dropped,
    )


def estimate_problems(abstraction: Abstraction, prompt: str) -> list[str]:
    """Why an estimate cannot stand for `prompt`, judged from the two alone; empty when it is usable.

    Every declared slot must have a name and appear in the template, no name may be a phrase of the dataset's
    fixed grammar, no name may remain in the template outside its slots, and filling the slots back (a name in
    any of its forms, a value by one of its phrases) must give the prompt again, whitespace aside. What no
    check without gold can see is an entity the estimate never declared: it stays in the text as plain words.
    """
    template = abstraction.prompt
    slots = slots_in(template)
    if not slots:
        return ["the template has no slot"]
    problems = []
    declared = list(dict.fromkeys([*slots, *abstraction.terms]))
    unnamed = [slot for slot in declared if not (slot in abstraction.terms and abstraction.terms[slot].text.strip())]
    if unnamed:
        problems.append(f"slots without a name: {unnamed}")
    placed = set(slots_in(template + abstraction.reasoning))
    missing = [slot for slot in abstraction.terms if slot not in placed and slot not in unnamed]
    if missing:
        problems.append(f"slots whose phrase the text does not hold: {missing}")
    names = [abstraction.terms[slot].text for slot in slots if slot not in unnamed]
    grammar = _STRUCTURE_WORDS[abstraction.example.dataset]
    structural = [t.text for t in abstraction.terms.values() if set(t.text.lower().split()) & set(grammar)]
    if structural:
        problems.append(f"names holding the dataset's grammar words {list(grammar)}: {structural}")
    left = names_present(template, names, abstraction.example.dataset)
    if left:
        problems.append(f"names left in the template outside their slots: {left}")
    if not unnamed and not _fills_back(abstraction, prompt):
        problems.append("filling the slots back does not give the prompt")
    return problems


def _fills_back(abstraction: Abstraction, prompt: str) -> bool:
    """Whether some filling of the template's slots gives `prompt`, whitespace aside: the template's literal pieces
    and slot fillers matched left to right, keeping every text position a filling can reach so far. A regex built
    per prompt did the same, five times slower with its compile."""
    template = _SPACE.sub(" ", abstraction.prompt).strip()
    text = _SPACE.sub(" ", prompt).strip()

    def past(literal: str, reached: set[int]) -> set[int]:
        return {at + len(literal) for at in reached if text.startswith(literal, at)}

    reached, end = {0}, 0
    for match in _OCCURRENCE.finditer(template):
        fillers = _fillers(abstraction, match)
        reached = {
            at + len(prefix) + len(phrase)
            for at in past(template[end : match.start()], reached)
            for prefix, phrase in fillers
            if text.startswith(prefix, at) and text[at + len(prefix) : at + len(prefix) + len(phrase)].lower() == phrase
        }
        if not reached:
            return False
        end = match.end()
    return len(text) in past(template[end:], reached)


def _fillers(abstraction: Abstraction, match: re.Match[str]) -> list[tuple[str, str]]:
    """What one slot occurrence may stand for in the raw text: (article, matched as written; phrase, lowercased,
    matched in any case) pairs; none when nothing can."""
    slot, value, article = match.group("slot"), match.group("value"), match.group("article")
    if value is not None:
        phrases = set(abstraction.wordings.get(f"{slot}={value}", ()))
        prefixes = [article or ""]
    else:
        term = abstraction.terms[slot]
        words = {term.text, *abstraction.wordings.get(slot, ())}
        if match.group("plural"):
            words = {term.plural_form(), *(pluralize(w) for w in words), *(w + "s" for w in words)}
        phrases = words
        prefixes = ["an ", "An ", "a ", "A "] if article else [""]
    return [(prefix, phrase) for phrase in {p.lower() for p in phrases if p} for prefix in prefixes]
