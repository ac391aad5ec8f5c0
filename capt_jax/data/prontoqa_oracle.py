"""Exact PrOntoQA event abstraction from its sentence grammar (see `prontoqa.parse_sentence`).

Entities, concepts and properties become slots; "every", "each", "is",
"are" and "not" stay. A concept is one slot whether written singular or
plural. After "are", a bare word is a plural concept if the example uses that
concept elsewhere, and a property otherwise (the two read the same then).
Templates write articles as "a" and plurals as "{symbol_i}s"; rendering them
with the original wordings gives back the original text exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .example import Abstraction, Example
from .prontoqa import Sentence, make_example, parse_sentence, prontoqa_prompt, prontoqa_reasoning
from .render import Term, pluralize, render, slot_name, slot_text

PART_NAMES = ("facts", "given", "query", "claims", "steps")


def example_parts(example: Example) -> dict[str, tuple[str, ...]]:
    """The example's sentences, in the order the model reads them."""
    meta = example.meta
    return {
        "facts": tuple(meta["facts"]),
        "given": (meta["given"],),
        "query": (meta["query"],),
        "claims": tuple(meta["claims"]),
        "steps": tuple(meta["steps"]),
    }


class _Lexicon:
    """Which surface words name the same entity, concept or property in one example."""

    def __init__(self, sentences: list[Sentence]):
        self.singular: dict[str, str] = {}
        self.article: dict[str, str] = {}
        self.plural_subjects: dict[str, str] = {}
        self.plural_predicates: dict[str, str] = {}
        for s in sentences:
            if s.subject_kind == "concept":
                self.singular.setdefault(s.subject.lower(), s.subject)
            if s.subject_kind == "concepts":
                self.plural_subjects.setdefault(s.subject.lower(), s.subject)
            if s.predicate_kind == "concept":
                self.singular.setdefault(s.predicate.lower(), s.predicate)
                self.article.setdefault(s.predicate.lower(), s.article)
            if s.subject_kind == "concepts" and s.predicate_kind == "bare":
                self.plural_predicates.setdefault(s.predicate.lower(), s.predicate)
        self.plural_to_singular = {pluralize(v).lower(): k for k, v in self.singular.items()}
        # Plurals `pluralize` does not make ("fishes", "bacteria"), kept as written so templates render back exactly.
        self.written_plural: dict[str, str] = {}
        # A concept written with both plurals in one example ("fish" and "fishes") keeps the second as a slot of
        # its own, as any unknown plural: one Term cannot render both.
        written = {**self.plural_predicates, **self.plural_subjects}
        for lower, surface in written.items():
            if lower not in self.plural_to_singular:
                key = self._singular_key(lower, invariant=lower in self.plural_subjects)
                if key is not None and pluralize(self.singular[key]).lower() not in written:
                    self.plural_to_singular[lower] = key
                    self.written_plural.setdefault(key, surface[0].lower() + surface[1:])

    def _singular_key(self, plural: str, invariant: bool) -> str | None:
        """The known singular a plural strips to ("fishes" -> "fish", "ponies" -> "pony"), or, for a plural
        subject (always a concept), the same word ("bacteria"). After "are" a word alike in both numbers could
        be a property, so it is not taken for the concept there."""
        candidates = [plural[:-3] + "y"] if plural.endswith("ies") else []
        candidates += [plural[:-2]] if plural.endswith("es") else []
        candidates += [plural[:-1]] if plural.endswith("s") else []
        candidates += [plural] if invariant else []
        return next((c for c in candidates if c in self.singular), None)

    def concept_key(self, plural: str) -> str:
        """The key of the concept a plural names: its singular where known."""
        lower = plural.lower()
        return self.plural_to_singular.get(lower, "plural:" + lower)

    def is_concept_plural(self, word: str) -> bool:
        lower = word.lower()
        return lower in self.plural_to_singular or lower in self.plural_subjects

    def subject_key(self, s: Sentence) -> tuple[str, str]:
        if s.subject_kind == "entity":
            return ("entity", s.subject)
        if s.subject_kind == "concept":
            return ("concept", s.subject.lower())
        return ("concept", self.concept_key(s.subject))

    def predicate_key(self, s: Sentence) -> tuple[str, str]:
        if s.predicate_kind == "concept":
            return ("concept", s.predicate.lower())
        if s.subject_kind == "concepts" and self.is_concept_plural(s.predicate):
            return ("concept", self.concept_key(s.predicate))
        return ("property", s.predicate.lower())

    def term(self, key: tuple[str, str], surface: str) -> Term:
        kind, name = key
        if kind != "concept":
            return Term(surface)
        if not name.startswith("plural:"):
            singular = self.singular[name]
            return Term(singular, self.written_plural.get(name) or pluralize(singular), self.article.get(name, ""))
        plural = self.plural_predicates.get(name[len("plural:") :]) or surface[0].lower() + surface[1:]
        return Term(plural, plural)


def abstract_prontoqa(example: Example) -> Abstraction:
    """The oracle abstraction of one PrOntoQA example."""
    parts = example_parts(example)
    parsed = {name: [parse_sentence(text) for text in texts] for name, texts in parts.items()}
    lexicon = _Lexicon([s for sentences in parsed.values() for s in sentences])
    slots: dict[tuple[str, str], str] = {}
    terms: dict[str, Term] = {}

    def slot_of(key: tuple[str, str], surface: str) -> str:
        if key not in slots:
            slots[key] = slot_name(len(slots) + 1)
            terms[slots[key]] = lexicon.term(key, surface)
        return slot_text(slots[key])

    for s in _reading_order(parsed):
        slot_of(lexicon.subject_key(s), s.subject)
        slot_of(lexicon.predicate_key(s), s.predicate)
    template = {name: tuple(_template_sentence(s, lexicon, slot_of) for s in parsed[name]) for name in PART_NAMES}
    return Abstraction(
        example=example,
        prompt=prontoqa_prompt(template["facts"], template["given"][0], template["query"][0]),
        reasoning=prontoqa_reasoning(template["claims"], template["steps"]),
        terms=terms,
        kinds={slot: kind for (kind, _), slot in slots.items()},
        parts=template,
    )


def _reading_order(parsed: Mapping[str, list[Sentence]]) -> list[Sentence]:
    """Prompt sentences, then the proof with claims and rules interleaved: slots are numbered so."""
    claims, steps = parsed["claims"], parsed["steps"]
    proof = [claims[0]] + [s for pair in zip(steps, claims[1:]) for s in pair]
    return parsed["facts"] + parsed["given"] + parsed["query"] + proof


def _template_sentence(s: Sentence, lexicon: _Lexicon, slot_of: Callable[[tuple[str, str], str], str]) -> str:
    subject = slot_of(lexicon.subject_key(s), s.subject)
    predicate_key = lexicon.predicate_key(s)
    predicate = slot_of(predicate_key, s.predicate)
    if s.subject_kind == "concepts":
        head = f"{subject}s are"
        tail = f"{predicate}s" if predicate_key[0] == "concept" else predicate
    else:
        head = f"{s.quantifier} {subject} is" if s.quantifier else f"{subject} is"
        tail = f"a {predicate}" if s.predicate_kind == "concept" else predicate
    return f"{head}{' not' if s.negated else ''} {tail}."


def original_names(example: Example) -> list[str]:
    """Every surface wording of the example's entities, concepts and properties."""
    names = []
    for texts in example_parts(example).values():
        for s in map(parse_sentence, texts):
            names += [s.subject, s.predicate]
    return names


def refill(abstraction: Abstraction, fillers: Mapping[str, Term], variant: str) -> Example:
    """A new example: the abstraction's template parts rendered with new fillers."""
    parts = {name: [render(text, fillers) for text in abstraction.parts[name]] for name in PART_NAMES}
    source = abstraction.example
    return make_example(
        source.id,
        variant,
        parts["facts"],
        parts["given"][0],
        parts["query"][0],
        parts["claims"],
        parts["steps"],
        source.answer,
        {"source_file": source.meta.get("source_file"), "format": "refill", "refilled_from": source.variant},
    )
