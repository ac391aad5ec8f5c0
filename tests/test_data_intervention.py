"""Event intervention modes and the replicated training set, on generated PrOntoQA data."""

import math
import random

import pytest

from capt_jax.data import MODES, Example, abstract, generate_prontoqa, intervene, render_examples, training_pairs
from capt_jax.data.example import Abstraction
from capt_jax.data.intervention import draw_letters, letterings, symbol_pool
from capt_jax.data.prontoqa import examples_from_capt_records
from capt_jax.data.render import Term, indefinite_article


@pytest.fixture(scope="module")
def examples():
    return examples_from_capt_records(generate_prontoqa(12, (2, 4), "true", seed=11), "generated")


def test_null_symbol_and_original_modes(examples):
    example = examples[0]
    abstraction = abstract(example)
    null = intervene(abstraction, "null")
    assert null.prompt.startswith(example.prompt + "\n\n") and null.symbols == {}
    assert null.target == f"<think>{example.reasoning}</think><answer>{example.answer}</answer>"
    symbol = intervene(abstraction, "symbol")
    assert symbol.prompt.startswith(abstraction.prompt + "\n\n")
    assert symbol.symbols == {"{" + slot + "}": name for slot, name in abstraction.symbols.items()}
    assert intervene(abstraction, "original").prompt == null.prompt


def test_order_mode_letters_follow_slot_order(examples):
    abstraction = abstract(examples[0])
    shown = intervene(abstraction, "order")
    assert list(shown.symbols) == [chr(ord("A") + i) for i in range(len(abstraction.terms))]
    assert list(shown.symbols.values()) == list(abstraction.symbols.values())


def test_random_letters_are_distinct_and_seeded(examples):
    abstraction = abstract(examples[1])
    first = intervene(abstraction, "random", random.Random(5))
    assert len(set(first.symbols)) == len(abstraction.terms)
    assert intervene(abstraction, "random", random.Random(5)) == first
    assert intervene(abstraction, "random", random.Random(6)) != first


def test_training_pairs_replicate_with_fresh_letters(examples):
    pairs = training_pairs(examples, "random", copies=6, seed=3)
    assert len(pairs) == 6 * len(examples)
    assert all(set(p) == {"prompt", "completion"} for p in pairs)
    for index in range(len(examples)):
        copies = [pairs[copy * len(examples) + index] for copy in range(6)]
        assert len({p["prompt"] for p in copies}) == 6  # two copies never share a lettering
        assert all(p["completion"].endswith(f"<answer>{examples[index].answer}</answer>") for p in copies)
    assert training_pairs(examples, "random", copies=6, seed=3) == pairs
    assert training_pairs(examples, "random", copies=6, seed=4) != pairs


def test_default_copies_and_static_modes(examples):
    assert len(training_pairs(examples, "null")) == (10_000 // len(examples)) * len(examples)
    pairs = training_pairs(examples, "order", copies=3)
    assert pairs[0] == pairs[len(examples)] == pairs[2 * len(examples)]


def test_first_training_copy_is_what_render_examples_shows(examples):
    shown = render_examples(examples, "random", seed=9)
    pairs = training_pairs(examples, "random", copies=2, seed=9)
    assert [s.prompt for s in shown] == [p["prompt"] for p in pairs[: len(examples)]]


def test_answer_only_targets(examples):
    pairs = training_pairs(examples, "random", copies=1, with_reasoning=False)
    assert all(p["completion"] in ("<answer>True</answer>", "<answer>False</answer>") for p in pairs)
    assert all("Give only the final answer" in p["prompt"] for p in pairs)


def test_letter_pairs_fill_only_the_slots_beyond_the_alphabet():
    slots = {f"symbol_{i}": Term(f"name{i}") for i in range(1, 28)}
    template = " ".join("{" + s + "}" for s in slots) + " P"
    example = Example("0", "prontoqa", "id", "p", "", "True")
    abstraction = Abstraction(example, template, "", slots, {s: "concept" for s in slots})
    singles, pairs = symbol_pool(abstraction)
    assert "P" not in singles and len(singles) == 25 and "AB" in pairs
    assert not {"IS", "OR", "AN", "NO"} & set(pairs)  # English words are never symbols
    rng = random.Random(0)
    for _ in range(20):
        letters = draw_letters(abstraction, "random", rng)
        assert len(set(letters)) == 27 and set(singles) <= set(letters)  # every letter before any pair: 2 pairs
    assert letterings(abstraction) == math.comb(len(pairs), 2) * math.factorial(27)
    shown = intervene(abstraction, "order", with_reasoning=False)
    assert list(shown.symbols)[-2:] == ["AA", "AB"]
    assert indefinite_article("NR") == "an" and indefinite_article("BC") == "a"


def test_unknown_mode_is_rejected(examples):
    assert MODES == ("null", "order", "random", "original", "symbol")
    with pytest.raises(ValueError, match="unknown mode"):
        intervene(abstract(examples[0]), "shuffle")
