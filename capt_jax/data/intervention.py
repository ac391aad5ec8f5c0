"""Event intervention: fill the abstraction's slots and build model inputs.

Modes:
* `null`: the raw prompt (the SFT baseline);
* `order`: letters A, B, C, ... in slot order;
* `random`: distinct random letters, drawn afresh per copy (CAPT);
* `original`: the template refilled with the original names;
* `symbol`: the literal `{symbol_i}` slots.

Letters of the dataset's notation (CLadder's "P(" and "E[", in every
example, with or without reasoning) and letters already standing alone in
the template are never symbols, so a symbol cannot be confused with notation.
When an example has more slots than free letters, two-letter symbols
(AA, AB, ..., but no common English word or abbreviation) fill the slots
beyond them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import re
import string
from collections.abc import Sequence

from .abstraction import abstract
from .answers import answer_instruction, format_target
from .example import Abstraction, Example
from .render import Term, letter_term, render

MODES = ("null", "order", "random", "original", "symbol")
DEFAULT_TOTAL = 10_000
NOTATION_LETTERS = {"cladder": frozenset("PE"), "prontoqa": frozenset()}
_STANDALONE_CAPITALS = re.compile(r"(?<![A-Za-z])[A-Z]{1,2}(?![A-Za-z])")
# Two-letter English words and common abbreviations: as symbols they would read as text.
_WORD_PAIRS = frozenset(
    """AD AH AI AM AN AS AT AX BE BY DO EH GO HA HE HI HM ID IF IN IS IT ME MY NO OF OH OK ON OR OW OX
    PM SO TO TV UH UK UN UP US WE YE YO""".split()
)


@dataclasses.dataclass(frozen=True)
class Intervened:
    """What the model sees for one example, and what each symbol stood for."""

    example_id: str
    prompt: str
    target: str
    answer: str
    symbols: dict[str, str]


def symbol_pool(abstraction: Abstraction) -> tuple[list[str], list[str]]:
    """(single letters free to act as symbols, letter pairs for the slots beyond them: none when they suffice).
    Pairs that are English words ("IS", "OR") are never symbols: "Every WY is an OR." would read as text."""
    taken = set(_STANDALONE_CAPITALS.findall(abstraction.prompt + "\n" + abstraction.reasoning))
    taken |= NOTATION_LETTERS[abstraction.example.dataset]
    singles = [c for c in string.ascii_uppercase if c not in taken]
    if len(abstraction.terms) <= len(singles):
        return singles, []
    pairs = ["".join(p) for p in itertools.product(string.ascii_uppercase, repeat=2)]
    return singles, [p for p in pairs if p not in taken and p not in _WORD_PAIRS]


def draw_letters(abstraction: Abstraction, mode: str, rng: random.Random | None = None) -> list[str]:
    """One symbol per slot, in slot order, for the `order` or `random` mode. Every single letter is used before
    any pair, so an example with one slot too many for the alphabet gets one pair, not a pool of mostly pairs."""
    singles, pairs = symbol_pool(abstraction)
    count = len(abstraction.terms)
    if mode == "order":
        return (singles + pairs)[:count]
    if mode == "random":
        if rng is None:
            raise ValueError("random mode needs an rng")
        if count <= len(singles):
            return rng.sample(singles, count)
        letters = singles + rng.sample(pairs, count - len(singles))
        rng.shuffle(letters)
        return letters
    raise ValueError(f"mode {mode!r} draws no letters")


def letterings(abstraction: Abstraction) -> int:
    """How many distinct results `draw_letters` can give in random mode."""
    singles, pairs = symbol_pool(abstraction)
    count = len(abstraction.terms)
    if count <= len(singles):
        return math.perm(len(singles), count)
    return math.comb(len(pairs), count - len(singles)) * math.factorial(count)


def intervene(
    abstraction: Abstraction,
    mode: str,
    rng: random.Random | None = None,
    with_reasoning: bool = True,
    letters: Sequence[str] | None = None,
) -> Intervened:
    """Render an abstraction for the model; `letters` overrides the drawn ones."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    example = abstraction.example
    slots = list(abstraction.terms)
    if mode == "null":
        prompt, reasoning, symbols = example.prompt, example.reasoning, {}
    else:
        if mode == "symbol":
            fillers = {slot: Term("{" + slot + "}") for slot in slots}
        elif mode == "original":
            fillers = dict(abstraction.terms)
        else:
            chosen = list(letters) if letters is not None else draw_letters(abstraction, mode, rng)
            fillers = {slot: letter_term(letter) for slot, letter in zip(slots, chosen)}
        prompt, reasoning = render(abstraction.prompt, fillers), render(abstraction.reasoning, fillers)
        symbols = {fillers[slot].text: abstraction.terms[slot].text for slot in slots}
    # A question without a reasoning chain (CLadder's backadj) is trained on the answer alone, and asked for it alone.
    with_reasoning = with_reasoning and bool(example.reasoning)
    instruction = answer_instruction(example.dataset, with_reasoning)
    return Intervened(
        example_id=example.id,
        prompt=f"{prompt}\n\n{instruction}",
        target=format_target(reasoning, example.answer, with_reasoning),
        answer=example.answer,
        symbols=symbols,
    )


def render_examples(
    examples: Sequence[Example], mode: str, seed: int = 0, with_reasoning: bool = True
) -> list[Intervened]:
    """One rendering per example (e.g. a test set): the first copy `training_pairs` makes."""
    return [intervene(abstract(e), mode, example_rng(seed, e), with_reasoning) for e in examples]


def training_pairs(
    examples: Sequence[Example],
    mode: str,
    copies: int | None = None,
    seed: int = 0,
    with_reasoning: bool = True,
    total: int = DEFAULT_TOTAL,
) -> list[dict[str, str]]:
    """The training set replicated `copies` times (default total // n), copy after copy.

    In `random` mode every copy of an example gets a fresh lettering, and
    copies of one example never repeat a lettering while unused ones remain.
    """
    if not examples:
        return []
    copies = copies if copies is not None else max(1, total // len(examples))
    per_example = [_renderings(e, mode, copies, seed, with_reasoning) for e in examples]
    return [
        {"prompt": renderings[copy].prompt, "completion": renderings[copy].target}
        for copy in range(copies)
        for renderings in per_example
    ]


def _renderings(example: Example, mode: str, copies: int, seed: int, with_reasoning: bool) -> list[Intervened]:
    abstraction = abstract(example)
    if mode != "random":
        return [intervene(abstraction, mode, with_reasoning=with_reasoning)] * copies
    rng = example_rng(seed, example)
    possible = letterings(abstraction)
    used: set[tuple[str, ...]] = set()
    renderings = []
    for _ in range(copies):
        letters = tuple(draw_letters(abstraction, mode, rng))
        while letters in used and len(used) < possible:
            letters = tuple(draw_letters(abstraction, mode, rng))
        used.add(letters)
        renderings.append(intervene(abstraction, mode, with_reasoning=with_reasoning, letters=letters))
    return renderings


def example_rng(seed: int, example: Example) -> random.Random:
    """A stream per example, independent of where the example sits in its list."""
    return random.Random(f"{seed}/{example.dataset}/{example.variant}/{example.id}")
