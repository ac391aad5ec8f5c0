"""Template slots and how they are filled.

A template is plain text in which every event or entity is a slot `{symbol_i}`.
Two pieces of English grammar sit next to a slot and depend on its filler,
so templates write them in one fixed form and `render` adjusts them:

* an indefinite article, always written `a {symbol_i}` (becomes "an" where the
  filler needs it);
* a plural, written `{symbol_i}s` (becomes the filler's plural form).

A slot that begins a sentence gets its filler capitalised.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

SLOT = re.compile(r"\{(symbol_\d+)\}")
_SLOT_IN_CONTEXT = re.compile(r"(?P<article>\b[Aa]n? )?\{(?P<slot>symbol_\d+)\}(?P<plural>s\b)?")
_SENTENCE_START = re.compile(r"(?:^|[.!?:]\s+|\n\s*)$")
_VOWEL_SOUND_LETTERS = frozenset("AEFHILMNORSX")
_INVARIANT_PLURALS = frozenset({"sheep", "fish", "deer", "moose", "bison", "salmon", "trout"})
_IRREGULAR_PLURALS = {
    "wolf": "wolves",
    "mouse": "mice",
    "goose": "geese",
    "ox": "oxen",
    "child": "children",
    "person": "people",
    "leaf": "leaves",
    "calf": "calves",
}


def whole_words(phrases: Iterable[str], flags: int = 0) -> re.Pattern[str]:
    """Any of `phrases` with no letter or digit on either side; the longest first, so a phrase never loses to its
    own prefix ("sprinkler" before "sprinkler is on" would leave " is on" behind)."""
    alternatives = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])", flags)


def slot_name(index: int) -> str:
    """The name of the index-th slot (1-based), as used in templates."""
    return f"symbol_{index}"


def slot_text(name: str) -> str:
    """How slot `name` is written in a template."""
    return "{" + name + "}"


def pluralize(noun: str) -> str:
    """English plural of a (possibly multi-word) noun; only the last word changes."""
    head, _, last = noun.rpartition(" ")
    prefix = head + " " if head else ""
    lower = last.lower()
    if len(last) == 1:
        plural = last + "s"  # a symbol letter: "Xs", not "Xes"
    elif lower in _INVARIANT_PLURALS:
        plural = last
    elif lower in _IRREGULAR_PLURALS:
        plural = last[0] + _IRREGULAR_PLURALS[lower][1:]
    elif len(last) > 1 and lower.endswith("y") and lower[-2] not in "aeiou":
        plural = last[:-1] + "ies"
    elif lower.endswith(("s", "x", "z", "ch", "sh")):
        plural = last + "es"
    else:
        plural = last + "s"
    return prefix + plural


def indefinite_article(word: str) -> str:
    """'a' or 'an' before `word`; symbols (one or two capitals) are read as letter names: "an R", "an NR"."""
    if len(word) <= 2 and word.isalpha() and word.isupper():
        return "an" if word[0] in _VOWEL_SOUND_LETTERS else "a"
    return "an" if word[:1].lower() in "aeiou" else "a"


@dataclasses.dataclass(frozen=True)
class Term:
    """What fills a slot: its base form, plural, and article."""

    text: str
    plural: str = ""
    article: str = ""

    def plural_form(self) -> str:
        return self.plural or pluralize(self.text)

    def article_form(self) -> str:
        return self.article or indefinite_article(self.text)


def letter_term(letter: str) -> Term:
    """A symbol letter as a filler: 'As' for its plural, articles by letter name."""
    return Term(letter, letter + "s")


def slots_in(text: str) -> list[str]:
    """Slot names in order of first appearance."""
    seen: dict[str, None] = {}
    for match in SLOT.finditer(text):
        seen.setdefault(match.group(1), None)
    return list(seen)


def render(template: str, fillers: Mapping[str, Term]) -> str:
    """Fill every slot of `template`; raises KeyError for a slot without a filler."""

    def fill(match: re.Match[str]) -> str:
        term = fillers[match.group("slot")]
        word = term.plural_form() if match.group("plural") else term.text
        if match.group("article"):
            written = match.group("article")
            article = term.article_form()
            if written[0].isupper():
                article = article[0].upper() + article[1:]
            word = f"{article} {word}"
        if _SENTENCE_START.search(template, 0, match.start()):
            word = word[0].upper() + word[1:]
        return word

    return _SLOT_IN_CONTEXT.sub(fill, template)
