"""PrOntoQA's out-of-distribution test sets, made from the in-distribution ones.

Each example is abstracted and its slots are refilled: `anti` with real
terms of the same kind (entity, concept, property) drawn from the pool of all
terms in the dataset, `non` with random 3-5 letter pseudo-words that are not
English words (checked against the `english-words` package's web2 and GCIDE
lists, 263k words: without it, about one draw in five was a word such as "cup",
"set" or "take"). The proof's
structure is untouched, so the answer stays. Where the pool allows, no filler
holds another filler or an original term of the example as whole words, nor is
held by one ("composite number" does not refill an example about "composite");
a slot never gets its own original term back.
"""

from __future__ import annotations

import functools
import random
import warnings
from collections.abc import Callable, Iterable, Sequence

from .abstraction import abstract
from .example import Abstraction, Example
from .prontoqa_oracle import refill
from .render import Term, pluralize

KIND_ORDER = ("concept", "entity", "property")
_GRAMMAR_WORDS = frozenset(
    {
        "a",
        "an",
        "is",
        "are",
        "not",
        "every",
        "each",
        "true",
        "false",
        "or",
        "given",
        "facts",
        "answer",
        "the",
        "question",
        "finish",
    }
)
SPARE_NAMES = ("Alex", "Fae", "Max", "Polly", "Rex", "Sally", "Sam", "Stella", "Wren", "Jack", "Nina", "Tom")
_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


def term_pool(examples: Iterable[Example]) -> dict[str, list[Term]]:
    """Every distinct real term per kind, in first-seen order (concepts need a singular).

    After "are", one example cannot tell a plural concept it names nowhere else from a property ("Cats are
    mammals"); such a word is a concept of the dataset, never a property to refill with ("Sally is mammals")."""
    pool: dict[str, dict[str, Term]] = {kind: {} for kind in KIND_ORDER}
    plurals: set[str] = set()
    for example in examples:
        abstraction = abstract(example)
        for slot, term in abstraction.terms.items():
            kind = abstraction.kinds[slot]
            if kind == "concept":
                plurals.add(term.plural_form().lower())
                if term.text == term.plural and pluralize(term.text) != term.text:
                    continue  # only its plural is known
            pool[kind].setdefault(term.text.lower(), term)
    pool["property"] = {key: term for key, term in pool["property"].items() if key not in plurals}
    return {kind: list(terms.values()) for kind, terms in pool.items()}


def anti_commonsense(examples: Sequence[Example], pool: dict[str, list[Term]], seed: int) -> list[Example]:
    """Refill every slot with a random real term of its kind. A dataset with too few names of its own (one
    character throughout) borrows people's names from `SPARE_NAMES`."""
    spare = [Term(name) for name in SPARE_NAMES if name.lower() not in {t.text.lower() for t in pool["entity"]}]

    def pick(kind: str, rng: random.Random, taken: set[str]) -> Term:
        try:
            return _pick_real(kind, pool[kind], rng, taken)
        except ValueError:
            if kind != "entity":
                raise
            return _pick_real(kind, spare, rng, taken)

    refills = [_refill(example, seed, "anti", pick) for example in examples]
    reshuffled = sum(own_terms_reused for _, own_terms_reused in refills)
    if reshuffled:
        warnings.warn(
            f"anti: {reshuffled} of {len(refills)} refills put an original term of their example into another of "
            "its slots, because the data holds too few terms of a kind (a small ontology, such as a fictional one "
            "with distractors): those questions reshuffle their own names rather than bring other ones",
            stacklevel=2,
        )
    return [example for example, _ in refills]


def non_commonsense(examples: Sequence[Example], seed: int, real_words: Iterable[str] = ()) -> list[Example]:
    """Refill every slot with a random pseudo-word (capitalised for entities), never a real term."""
    avoid = _GRAMMAR_WORDS | {word for term in real_words for word in term.lower().split()}
    return [
        _refill(example, seed, "non", lambda kind, rng, taken: _pick_pseudo(kind, rng, taken | avoid))[0]
        for example in examples
    ]


def _refill(
    example: Example, seed: int, variant: str, pick: Callable[[str, random.Random, set[str]], Term]
) -> tuple[Example, bool]:
    """The refilled example, and whether a slot took another slot's original term (the pool was too small)."""
    abstraction = abstract(example)
    rng = random.Random(f"{seed}/{variant}/{example.id}")
    own = {form for term in abstraction.terms.values() for form in _forms(term)}
    chosen: set[str] = set()
    fillers: dict[str, Term] = {}
    own_terms_reused = False
    for kind in KIND_ORDER:
        for slot in _slots_of(abstraction, kind):
            try:
                term = pick(kind, rng, own | chosen)
            except ValueError:
                # A small ontology (a fictional one, deep proofs) may hold too few terms of a kind to avoid all
                # of the example's own: then a slot may take another slot's original term, never its own.
                try:
                    term = pick(kind, rng, _forms(abstraction.terms[slot]) | chosen)
                except ValueError as err:
                    raise ValueError(f"example {example.id!r}: {err}") from err
            forms = _forms(term)
            own_terms_reused |= bool(forms & own)  # only the fallback above can take an original term
            chosen |= forms
            fillers[slot] = term
    return refill(abstraction, fillers, variant), own_terms_reused


def _forms(term: Term) -> set[str]:
    """The term's singular and plural, lowercased: what the taken sets hold."""
    return {term.text.lower(), term.plural_form().lower()}


def _slots_of(abstraction: Abstraction, kind: str) -> list[str]:
    return [slot for slot in abstraction.terms if abstraction.kinds[slot] == kind]


def _pick_real(kind: str, candidates: Sequence[Term], rng: random.Random, taken: set[str]) -> Term:
    free = [t for t in candidates if not _forms(t) & taken]
    while free:  # uniform among the terms that neither hold a taken one nor are held by one, as words ("composite"
        term = rng.choice(free)  # in "composite number"): by rejection, so a draw that passes is the one it always was
        if not any(_holds(form, other) or _holds(other, form) for form in _forms(term) for other in taken):
            return term
        free.remove(term)
    raise ValueError(f"the pool holds too few distinct {kind} terms to refill every slot with another one")


def _holds(phrase: str, words: str) -> bool:
    """Whether `words` occur in `phrase` as whole words."""
    return f" {words} " in f" {phrase} "


def _pick_pseudo(kind: str, rng: random.Random, taken: set[str]) -> Term:
    english = _english_words()
    while True:
        word = pseudo_word(rng)
        forms = {word, pluralize(word)}
        if not forms & taken and not forms & english:
            return Term(word.capitalize()) if kind == "entity" else Term(word)


@functools.cache
def _english_words() -> frozenset[str]:
    """Lowercase English words, so that a `non` filler carries no meaning; read once: 0.2 s, 32 MB held.

    Imported here, not at the top: training and the benchmarks never draw a filler, and the accelerator image that
    runs benchmarks/device_check.sh lacks the package (tests/test_device_check.py runs without it)."""
    from english_words import get_english_words_set

    return frozenset(get_english_words_set(["web2", "gcide"], lower=True, alpha=True))


def pseudo_word(rng: random.Random) -> str:
    """A pronounceable 3-5 letter non-word: consonants and vowels alternating."""
    length = rng.randint(3, 5)
    starts_with_vowel = rng.random() < 0.3
    letters = []
    for position in range(length):
        vowel = (position % 2 == 0) == starts_with_vowel
        letters.append(rng.choice(_VOWELS if vowel else _CONSONANTS))
    return "".join(letters)
