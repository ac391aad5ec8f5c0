"""Slot rendering: articles, plurals and capitals follow the filler."""

import re

import pytest

from capt_jax.data.render import Term, indefinite_article, letter_term, pluralize, render, slots_in, whole_words


@pytest.mark.parametrize(
    "singular, plural",
    [
        ("cat", "cats"),
        ("butterfly", "butterflies"),
        ("painted lady", "painted ladies"),
        ("wumpus", "wumpuses"),
        ("sheep", "sheep"),
        ("fish", "fish"),
        ("wolf", "wolves"),
        ("Mersenne prime", "Mersenne primes"),
        ("day", "days"),
        ("box", "boxes"),
        ("X", "Xs"),
        ("S", "Ss"),
    ],
)
def test_pluralize(singular, plural):
    assert pluralize(singular) == plural


@pytest.mark.parametrize(
    "word, article", [("insect", "an"), ("cat", "a"), ("A", "an"), ("F", "an"), ("B", "a"), ("U", "a"), ("X", "an")]
)
def test_indefinite_article(word, article):
    assert indefinite_article(word) == article


def test_render_adjusts_article_plural_and_capitals():
    template = "Given facts: {symbol_1}s are {symbol_2}s. Every {symbol_2} is a {symbol_3}. Rex is a {symbol_1}."
    words = {"symbol_1": Term("butterfly"), "symbol_2": Term("insect"), "symbol_3": Term("animal")}
    assert render(template, words) == (
        "Given facts: Butterflies are insects. Every insect is an animal. Rex is a butterfly."
    )
    letters = {"symbol_1": letter_term("A"), "symbol_2": letter_term("B"), "symbol_3": letter_term("F")}
    assert render(template, letters) == "Given facts: As are Bs. Every B is an F. Rex is an A."


def test_render_keeps_literal_braces_and_needs_every_filler():
    template = "\\sum_{{symbol_1}=v} P({symbol_2}=1)"
    assert render(template, {"symbol_1": Term("V"), "symbol_2": Term("Y")}) == "\\sum_{V=v} P(Y=1)"
    with pytest.raises(KeyError):
        render(template, {"symbol_1": Term("V")})


def test_slots_in_reading_order():
    assert slots_in("{symbol_2} and {symbol_1}, {symbol_2}") == ["symbol_2", "symbol_1"]


def test_whole_words_prefers_the_longest_phrase_and_keeps_word_boundaries():
    pattern = whole_words(["sprinkler", "sprinkler is on", "A"], re.IGNORECASE)
    text = "The Sprinkler is on; sprinklers and A2 are not, a is."
    assert pattern.findall(text) == ["Sprinkler is on", "a"]
    assert whole_words(["A"]).findall("a A") == ["A"]  # case-sensitive unless asked
