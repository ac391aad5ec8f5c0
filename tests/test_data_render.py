"""Slot rendering: articles, plurals and capitals follow the filler."""

import pytest

from capt_jax.data.render import Term, indefinite_article, letter_term, pluralize, render, slots_in


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
