"""A PrOntoQA-style generator, written from the published task description.

Each example is a modus-ponens proof: an entity belongs to a concept, every
concept on a chain is a kind of the next one, and the last concept has (or
lacks) a property; the question asks whether the entity has the property.
Ontologies:

* `true`: a real taxonomy (animals, numbers) whose facts hold in the world;
* `false`: the same real concept words chained at random, so facts are false;
* `fictional`: invented concept words.

With `distractors`, the facts also hold rules that do not apply to the
entity: the final property stated with the opposite sign for an unrelated
concept, other kinds of each chain concept, and other properties of chain
concepts. Output records have the CAPT `prontoqa.json` fields (Facts, Query,
claims, next_steps), so the same loader reads them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from .render import indefinite_article, pluralize

ONTOLOGIES = ("true", "false", "fictional")

# concept -> (parent, {property: holds}); every fact drawn from it is true.
TRUE_TAXONOMY: dict[str, tuple[str | None, dict[str, bool]]] = {
    "animal": (None, {"multicellular": True}),
    "vertebrate": ("animal", {"bony": True}),
    "invertebrate": ("animal", {"bony": False}),
    "mammal": ("vertebrate", {"furry": True, "warm-blooded": True}),
    "reptile": ("vertebrate", {"cold-blooded": True, "scaly": True}),
    "bird": ("vertebrate", {"feathered": True}),
    "fish": ("vertebrate", {"aquatic": True, "furry": False}),
    "carnivore": ("mammal", {"carnivorous": True}),
    "herbivore": ("mammal", {"herbivorous": True, "carnivorous": False}),
    "feline": ("carnivore", {"whiskered": True}),
    "canine": ("carnivore", {"long-snouted": True}),
    "cat": ("feline", {"small": True}),
    "lion": ("feline", {"large": True, "small": False}),
    "dog": ("canine", {"domesticated": True}),
    "wolf": ("canine", {"wild": True, "domesticated": False}),
    "cow": ("herbivore", {"domesticated": True}),
    "deer": ("herbivore", {"wild": True}),
    "snake": ("reptile", {"legless": True}),
    "lizard": ("reptile", {"four-legged": True, "legless": False}),
    "eagle": ("bird", {"predatory": True}),
    "penguin": ("bird", {"flightless": True}),
    "shark": ("fish", {"predatory": True}),
    "arthropod": ("invertebrate", {"segmented": True}),
    "mollusk": ("invertebrate", {"soft-bodied": True, "segmented": False}),
    "insect": ("arthropod", {"six-legged": True}),
    "spider": ("arthropod", {"eight-legged": True, "six-legged": False}),
    "crustacean": ("arthropod", {"hard-shelled": True}),
    "butterfly": ("insect", {"winged": True}),
    "ant": ("insect", {"social": True}),
    "crab": ("crustacean", {"ten-legged": True, "six-legged": False}),
    "snail": ("mollusk", {"slow": True}),
    "octopus": ("mollusk", {"eight-armed": True}),
    "number": (None, {"abstract": True}),
    "real number": ("number", {"real": True}),
    "imaginary number": ("number", {"real": False}),
    "rational number": ("real number", {"rational": True}),
    "irrational number": ("real number", {"rational": False}),
    "integer": ("rational number", {"whole": True}),
    "natural number": ("integer", {"positive": True}),
    "even number": ("integer", {"even": True, "odd": False}),
    "prime number": ("natural number", {"composite": False}),
    "Mersenne prime": ("prime number", {"odd": True, "even": False}),
}
# Entities of the true ontology: numbers must belong to their first concept.
NUMBER_ENTITIES = {
    "Mersenne prime": ("3", "7", "31", "127", "8191"),
    "prime number": ("2", "5", "11", "13", "17"),
    "even number": ("4", "6", "10", "28"),
    "natural number": ("1", "9", "15", "21"),
}
NAMES = (
    "Alex",
    "Bella",
    "Cody",
    "Daisy",
    "Felix",
    "Greta",
    "Hugo",
    "Iris",
    "Jonas",
    "Luna",
    "Milo",
    "Nora",
    "Oscar",
    "Rosa",
    "Theo",
    "Vera",
)
FICTIONAL_CONCEPTS = (
    "blicket",
    "daxel",
    "florp",
    "gazzer",
    "jorbin",
    "kimble",
    "lurvin",
    "morple",
    "narbit",
    "plonder",
    "quibble",
    "rindle",
    "snorp",
    "tazzle",
    "vorbin",
    "wumble",
    "zindle",
    "brask",
    "criffle",
    "dorvin",
    "flimber",
    "grottle",
    "hobber",
    "yarvel",
)
ADJECTIVES = (
    "red",
    "blue",
    "green",
    "bitter",
    "sweet",
    "sour",
    "hot",
    "cold",
    "large",
    "small",
    "happy",
    "shy",
    "bright",
    "dull",
    "fast",
    "slow",
    "loud",
    "quiet",
    "wooden",
    "metallic",
    "transparent",
    "opaque",
    "spicy",
    "kind",
    "mean",
    "liquid",
    "feisty",
    "fragile",
    "sturdy",
    "fuzzy",
    "shiny",
    "muddy",
)


def generate_prontoqa(
    num_examples: int,
    hops: int | Sequence[int] = (3, 5),
    ontology: str = "true",
    distractors: bool = True,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """CAPT-format records; `hops` is a count or an inclusive (low, high) range."""
    if ontology not in ONTOLOGIES:
        raise ValueError(f"unknown ontology {ontology!r}; expected one of {ONTOLOGIES}")
    low, high = hop_range(hops)
    if high > max_hops(ontology):
        raise ValueError(f"the {ontology} ontology holds proofs of at most {max_hops(ontology)} hops, not {high}")
    rng = random.Random(seed)
    return [_example(rng.randint(low, high), ontology, distractors, rng) for _ in range(num_examples)]


def hop_range(hops: int | Sequence[int]) -> tuple[int, int]:
    """(low, high) from a count, a 1-tuple (how a command line's `...prontoqa_hops=3` arrives) or a range."""
    span = (hops,) if isinstance(hops, int) else tuple(hops)
    if len(span) not in (1, 2) or not all(isinstance(h, int) for h in span) or not 1 <= span[0] <= span[-1]:
        raise ValueError(f"hops must be a count or a (low, high) range, >= 1; got {hops!r}")
    return span[0], span[-1]


def max_hops(ontology: str) -> int:
    """The longest proof the ontology can hold: checked before generating, not when a deep draw first comes."""
    if ontology == "true":
        return max(len(_ancestry(c)) for c in TRUE_TAXONOMY if _may_start(c))
    words = len(TRUE_TAXONOMY if ontology == "false" else FICTIONAL_CONCEPTS)
    return min(words - 2, len(ADJECTIVES) - 1)  # a world draws hops + 2 concepts and hops + 1 adjectives


def _may_start(concept: str) -> bool:
    """Whether a true-ontology chain may start at `concept`: it has entities (numbers, or animals' names)."""
    return concept in NUMBER_ENTITIES or _ancestry(concept)[-1] == "animal"


def _example(hops: int, ontology: str, distractors: bool, rng: random.Random) -> dict[str, Any]:
    world = _true_world(hops, rng) if ontology == "true" else _random_world(hops, ontology, rng)
    chain, entity, prop, holds = world["chain"], world["entity"], world["property"], world["holds"]
    rules = [_concept_rule(child, parent, rng) for child, parent in zip(chain, chain[1:])]
    rules.append(_property_rule(chain[-1], prop, holds, rng))
    claims = [_fact(entity, concept=c) for c in chain] + [_fact(entity, prop=prop, holds=holds)]
    facts = list(rules)
    if distractors:
        facts += [s for s in world["distractors"] if s not in facts]
    rng.shuffle(facts)
    query = _fact(entity, prop=prop, holds=rng.random() < 0.5)
    return {
        "Facts": " ".join(facts),
        "Query": "True or false: " + query,
        "claims": claims,
        "next_steps": rules + ["Finish."],
    }


def _true_world(hops: int, rng: random.Random) -> dict[str, Any]:
    """A chain up the real taxonomy, an entity that truly belongs, and true distractors."""
    starts = [c for c in TRUE_TAXONOMY if len(_ancestry(c)) >= hops and _may_start(c)]
    chain = _ancestry(rng.choice(starts))[:hops]
    entity = rng.choice(NUMBER_ENTITIES.get(chain[0], NAMES))
    prop, holds = rng.choice(sorted(TRUE_TAXONOMY[chain[-1]][1].items()))
    on_path = set(_ancestry(chain[0]))
    below_top = {c for c in TRUE_TAXONOMY if chain[-1] in _ancestry(c)}
    opposites = [
        c
        for c, (_, props) in TRUE_TAXONOMY.items()
        if props.get(prop) == (not holds) and c not in on_path and c not in below_top
    ]
    distractors = [_property_rule(rng.choice(opposites), prop, not holds, rng)] if opposites else []
    for child, parent in zip(chain, chain[1:]):
        siblings = [c for c, (p, _) in TRUE_TAXONOMY.items() if p == parent and c != child]
        if siblings:
            distractors.append(_concept_rule(rng.choice(siblings), parent, rng))
    for concept in chain[:-1]:
        others = [(q, h) for q, h in TRUE_TAXONOMY[concept][1].items() if q != prop]
        if others:
            distractors.append(_property_rule(concept, *rng.choice(others), rng))
    return {"chain": chain, "entity": entity, "property": prop, "holds": holds, "distractors": distractors}


def _random_world(hops: int, ontology: str, rng: random.Random) -> dict[str, Any]:
    """Real (false ontology) or invented (fictional) concept words chained at random."""
    words = list(TRUE_TAXONOMY) if ontology == "false" else list(FICTIONAL_CONCEPTS)
    concepts = rng.sample(words, hops + 2)
    chain, unrelated = concepts[:hops], concepts[hops:]
    adjectives = rng.sample(ADJECTIVES, hops + 1)
    prop, holds = adjectives[0], rng.random() < 0.5
    distractors = [_property_rule(unrelated[0], prop, not holds, rng)]
    distractors += [_concept_rule(unrelated[1], parent, rng) for parent in chain[1:2]]
    distractors += [_property_rule(c, q, rng.random() < 0.5, rng) for c, q in zip(chain[:-1], adjectives[1:])]
    return {"chain": chain, "entity": rng.choice(NAMES), "property": prop, "holds": holds, "distractors": distractors}


def _ancestry(concept: str) -> list[str]:
    """The concept and its ancestors, most specific first."""
    path = [concept]
    while (parent := TRUE_TAXONOMY[path[-1]][0]) is not None:
        path.append(parent)
    return path


def _capitalized(text: str) -> str:
    return text[0].upper() + text[1:]


def _concept_rule(child: str, parent: str, rng: random.Random) -> str:
    style = rng.choice(("Every", "Each", "plural"))
    if style == "plural":
        return f"{_capitalized(pluralize(child))} are {pluralize(parent)}."
    return f"{style} {child} is {indefinite_article(parent)} {parent}."


def _property_rule(concept: str, prop: str, holds: bool, rng: random.Random) -> str:
    negation = "" if holds else "not "
    style = rng.choice(("Every", "Each", "plural"))
    if style == "plural":
        return f"{_capitalized(pluralize(concept))} are {negation}{prop}."
    return f"{style} {concept} is {negation}{prop}."


def _fact(entity: str, concept: str | None = None, prop: str | None = None, holds: bool = True) -> str:
    if concept is not None:
        return f"{entity} is {indefinite_article(concept)} {concept}."
    return f"{entity} is {'' if holds else 'not '}{prop}."
