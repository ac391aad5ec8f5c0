"""PrOntoQA: both file formats, the own generator, the oracle abstraction and the OOD refills.

Generated data always runs; every record of the shared files runs when
`../shared/data` (or $CAPT_DATA_DIR) is there.
"""

import json
import os
import random
import re
from pathlib import Path

import pytest

from capt_jax.data import (
    DataError,
    abstract,
    generate_prontoqa,
    intervene,
    is_valid,
    load_examples,
    names_present,
    original_names,
    render,
    split,
    test_sets,
)
from capt_jax.data.answers import answer_instruction
from capt_jax.data.prontoqa import examples_from_capt_records, load_prontoqa_file, make_example, parse_sentence
from capt_jax.data.prontoqa_generator import FICTIONAL_CONCEPTS, TRUE_TAXONOMY, hop_range, max_hops
from capt_jax.data.prontoqa_ood import _english_words, anti_commonsense, non_commonsense, term_pool
from capt_jax.data.prontoqa_oracle import refill
from capt_jax.data.render import letter_term, pluralize

SHARED = Path(os.environ.get("CAPT_DATA_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
SHARED_FILES = {"prontoqa.json": 4000, "3hop_random.json": 500, "3hop_random_trueontology_nodistractor.json": 500}
SETTINGS = [
    (ontology, hops, seed)
    for ontology in ("true", "false", "fictional")
    for hops in (1, 3, (3, 5), 6)
    for seed in (0, 7)
]


def generated(ontology="true", hops=(3, 5), seed=0, n=60, distractors=True):
    records = generate_prontoqa(n, hops, ontology, distractors, seed)
    return examples_from_capt_records(records, f"generated-{ontology}-{hops}-{seed}")


def check_abstraction(example):
    """Valid, and the template refilled with the original words gives back the example exactly."""
    abstraction = abstract(example)
    assert is_valid(abstraction), example.id
    assert render(abstraction.prompt, abstraction.terms) == example.prompt
    assert render(abstraction.reasoning, abstraction.terms) == example.reasoning
    return abstraction


def check_random_intervention(example, rng):
    """No original word survives; letters are distinct and name the same slot everywhere."""
    abstraction = abstract(example)
    shown = intervene(abstraction, "random", rng)
    assert not names_present(shown.prompt + shown.target, original_names(example), "prontoqa"), example.id
    letters = list(shown.symbols)
    assert len(set(letters)) == len(letters) == len(abstraction.terms)
    # Rebuilding the example from its letters and abstracting it again gives the same template,
    # which fails if one slot got different letters in different places.
    relettered = refill(abstraction, {s: letter_term(x) for s, x in zip(abstraction.terms, letters)}, "letters")
    assert relettered.prompt + "\n\n" + answer_instruction("prontoqa") == shown.prompt
    again = abstract(relettered)
    assert (again.prompt, again.reasoning) == (abstraction.prompt, abstraction.reasoning)


@pytest.mark.parametrize(
    "sentence, parsed",
    [
        ("Every painted lady is a butterfly.", ("Every", "painted lady", "concept", False, "butterfly", "concept")),
        ("Each arthropod is not bony.", ("Each", "arthropod", "concept", True, "bony", "bare")),
        ("Butterflies are lepidopterans.", ("", "Butterflies", "concepts", False, "lepidopterans", "bare")),
        ("127 is not a Mersenne prime.", ("", "127", "entity", True, "Mersenne prime", "concept")),
    ],
)
def test_parse_sentence(sentence, parsed):
    s = parse_sentence(sentence)
    assert (s.quantifier, s.subject, s.subject_kind, s.negated, s.predicate, s.predicate_kind) == parsed


@pytest.mark.parametrize(
    "sentence",
    [
        "Sally is a dumpus and a sterpus",
        # PrOntoQA-OOD's forms, which the lazy patterns would parse into terms holding grammar words
        "Everything that is a sterpus is an impus.",
        "Every wumpus is a yumpus or a zumpus.",
        "Gorpuses are moderate and a zumpus.",
        "If Sally is a wumpus then Sally is hot.",
    ],
)
def test_parse_sentence_rejects_other_grammar(sentence):
    with pytest.raises(ValueError, match="not a PrOntoQA statement"):
        parse_sentence(sentence)


def test_the_leak_check_sees_irregular_plurals():
    text = "Wolves are mammals. Each company is big. People are kind. Every butterfly is an insect."
    names = ["wolf", "company", "person", "butterfly", "insect", "cat"]
    assert names_present(text, names, "prontoqa") == ["butterfly", "company", "insect", "person", "wolf"]


def test_abstraction_keeps_grammar_words_and_merges_singular_and_plural():
    [example] = examples_from_capt_records(
        [
            {
                "Facts": "Every real number is real. Real numbers are not imaginary. Each integer is a real number.",
                "Query": "True or false: 7 is not real.",
                "claims": ["7 is an integer.", "7 is a real number.", "7 is real."],
                "next_steps": ["Each integer is a real number.", "Every real number is real.", "Finish."],
            }
        ],
        "inline",
    )
    abstraction = check_abstraction(example)
    assert abstraction.prompt.startswith(
        "Given facts: Every {symbol_1} is {symbol_2}. {symbol_1}s are not {symbol_3}. Each {symbol_4} is a "
        "{symbol_1}. Given {symbol_5} is a {symbol_4}, answer the question: True or false: {symbol_5} is not "
        "{symbol_2}."
    )
    assert abstraction.symbols == {
        "symbol_1": "real number",
        "symbol_2": "real",
        "symbol_3": "imaginary",
        "symbol_4": "integer",
        "symbol_5": "7",
    }
    assert abstraction.kinds == {
        "symbol_1": "concept",
        "symbol_2": "property",
        "symbol_3": "property",
        "symbol_4": "concept",
        "symbol_5": "entity",
    }
    assert example.answer == "False"
    assert example.reasoning == (
        "7 is an integer. Each integer is a real number. 7 is a real number. Every real number is real. 7 is real."
    )


@pytest.mark.parametrize("ontology, hops, seed", SETTINGS)
def test_generator_output_abstracts_exactly(ontology, hops, seed):
    rng = random.Random(seed)
    examples = generated(ontology, hops, seed)
    for example in examples:
        check_abstraction(example)
        check_random_intervention(example, rng)
        low, high = (hops, hops) if isinstance(hops, int) else hops
        assert low <= example.meta["hops"] <= high
    assert {e.answer for e in examples} == {"True", "False"}


def test_generator_is_deterministic_per_seed():
    assert generate_prontoqa(20, 4, "fictional", seed=3) == generate_prontoqa(20, 4, "fictional", seed=3)
    assert generate_prontoqa(20, 4, "fictional", seed=3) != generate_prontoqa(20, 4, "fictional", seed=4)


def test_the_deepest_proof_each_ontology_holds_is_generated_and_one_hop_more_is_refused():
    for ontology in ("true", "fictional", "false"):
        deepest = max_hops(ontology)
        assert all(len(r["claims"]) == deepest + 1 for r in generate_prontoqa(5, deepest, ontology, seed=1))
        with pytest.raises(ValueError, match=f"at most {deepest} hops"):
            generate_prontoqa(5, (1, deepest + 1), ontology)
    assert hop_range((3,)) == hop_range(3) == (3, 3)


def test_true_ontology_states_only_true_facts():
    for example in generated("true", (1, 6), seed=5, n=200):
        for sentence in example.meta["facts"]:
            s = parse_sentence(sentence)
            subject = _singular(s.subject) if s.subject_kind == "concepts" else s.subject
            parent, properties = TRUE_TAXONOMY[subject]
            if s.predicate_kind == "concept" or s.predicate.lower() not in _ADJECTIVES:
                predicate = s.predicate if s.predicate_kind == "concept" else _singular(s.predicate)
                assert predicate == parent and not s.negated, sentence
            else:
                assert properties[s.predicate] == (not s.negated), sentence


def test_fictional_and_false_ontologies_and_distractor_switch():
    fictional = generated("fictional", 3, seed=1)
    concepts = {
        t.text for e in fictional for slot, t in abstract(e).terms.items() if abstract(e).kinds[slot] == "concept"
    }
    assert concepts <= set(FICTIONAL_CONCEPTS) | {c + "s" for c in FICTIONAL_CONCEPTS}
    false_facts = [parse_sentence(f) for e in generated("false", 4, seed=1) for f in e.meta["facts"]]
    assert any(s.predicate_kind == "concept" and TRUE_TAXONOMY[s.subject][0] != s.predicate for s in false_facts)
    for example in generated("true", 4, seed=2, distractors=False):
        assert sorted(example.meta["facts"]) == sorted(example.meta["steps"])


def test_generator_needs_no_data_files(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPT_DATA_DIR", str(tmp_path / "absent"))
    examples = load_examples("prontoqa", num_examples=30, seed=1)
    assert len(examples) == 30 and all(is_valid(abstract(e)) for e in examples)


@pytest.mark.parametrize("ontology", ["true", "fictional"])
def test_ood_refills_keep_answers_and_structure(ontology):
    examples = generated(ontology, (3, 5), seed=3, n=80)
    pool = term_pool(examples)
    real = {form.lower() for terms in pool.values() for t in terms for form in (t.text, t.plural_form())}
    anti = anti_commonsense(examples[-20:], pool, seed=0)
    non = non_commonsense(examples[-20:], seed=0, real_words=real)
    for source, a, n in zip(examples[-20:], anti, non):
        template = abstract(source)
        for refilled, variant in ((a, "anti"), (n, "non")):
            assert (refilled.id, refilled.answer, refilled.variant) == (source.id, source.answer, variant)
            again = check_abstraction(refilled)
            assert (again.prompt, again.reasoning) == (template.prompt, template.reasoning)
            # Every slot changed: no filler is one of the example's own terms.
            new_words = {t.text.lower() for t in again.terms.values()}
            assert not new_words & {t.text.lower() for t in template.terms.values()}
        for refilled in (a, n):
            assert not names_present(refilled.prompt + refilled.reasoning, original_names(source), "prontoqa")
        assert {t.text.lower() for t in abstract(a).terms.values()} <= real
        for term in abstract(n).terms.values():  # a pseudo-word, or its plural where only that shows
            assert re.fullmatch(r"[A-Za-z]{3,5}", term.text) or re.fullmatch(r"[a-z]{2,5}(s|es|ies)", term.text)
            assert term.text.lower() not in real
    assert anti == anti_commonsense(examples[-20:], pool, seed=0)
    assert non == non_commonsense(examples[-20:], seed=0, real_words=real)


def test_nonsense_fillers_are_no_english_words():
    """Consonant-vowel strings are often words ("cup", "set", "take"): about one draw in five was one."""
    examples = generated("true", (1, 3), seed=5, n=150)
    fillers = {t.text.lower() for e in non_commonsense(examples, seed=0) for t in abstract(e).terms.values()}
    assert len(fillers) > 300
    assert not fillers & _english_words()
    assert {"cup", "set", "take"} <= _english_words()


def test_an_anti_filler_never_holds_an_original_term_as_words():
    """ "composite number" shares "composite" with an example about composite integers: it is not drawn for it."""

    def example(i: str, concept: str, prop: str, name: str):
        rule = f"Each {concept} is not {prop}."
        claims = [f"{name} is a {concept}.", f"{name} is not {prop}."]
        return make_example(i, "id", [rule], claims[0], f"{name} is {prop}.", claims, [rule], "False")

    examples = [example("0", "integer", "composite", "Sam"), example("1", "composite number", "even", "Rex")]
    examples.append(example("2", "prime", "odd", "Tom"))
    pool = term_pool(examples)
    assert {t.text for t in pool["concept"]} == {"integer", "composite number", "prime"}
    refills = [anti_commonsense(examples[:1], pool, seed)[0] for seed in range(20)]
    assert all("composite" not in r.prompt and "prime" in r.prompt for r in refills)


def test_an_anti_refill_from_too_small_a_pool_says_it_reshuffles_own_terms():
    """A fictional ontology with distractors can use every concept of its file in one example."""
    rule = "Every wumpus is a yumpus."
    claims = ["Sam is a wumpus.", "Sam is a yumpus."]
    example = make_example("0", "id", [rule], claims[0], claims[1], claims, [rule], "True")
    with pytest.warns(UserWarning, match="anti: 1 of 1 refills put an original term of their example into another"):
        [refilled] = anti_commonsense([example], term_pool([example]), seed=0)
    assert "Every yumpus is a wumpus." in refilled.prompt and refilled.answer == "True"


def test_plurals_pluralize_does_not_make_stay_one_concept():
    """The official generator writes "fishes" and "bacteria"; each is the concept its singular names."""
    facts = ["Fishes are animals.", "Every bacteria is small.", "Bacteria are not fishes."]
    claims = ["Nemo is a fish.", "Nemo is an animal."]
    example = make_example("0", "id", facts, claims[0], claims[1], claims, facts[:1], "True")
    abstraction = abstract(example)
    assert abstraction.prompt.startswith("Given facts: {symbol_1}s are {symbol_2}s. Every {symbol_3} is {symbol_4}.")
    assert "{symbol_3}s are not {symbol_1}s. Given {symbol_5} is a {symbol_1}," in abstraction.prompt
    assert len(abstraction.terms) == 5
    check_abstraction(example)  # and it renders back to the text exactly
    # Both plurals of one concept in one example: the second keeps a slot of its own, so the text comes back.
    both = ["Fish are animals.", "Fishes are not plants.", "Every fish is small."]
    check_abstraction(make_example("1", "id", both, claims[0], claims[1], claims, both[:1], "True"))


def test_the_anti_pool_never_takes_a_plural_concept_for_a_property():
    """In "Cats are mammals." alone, "mammals" reads as a property; the dataset names it a concept elsewhere."""
    rules = ["Cats are mammals.", "Every mammal is furry."]
    alone = make_example(
        "0",
        "id",
        rules[:1],
        "Max is a cat.",
        "Max is mammals.",
        ["Max is a cat.", "Max is mammals."],
        rules[:1],
        "True",
    )
    named = make_example(
        "1",
        "id",
        rules[1:],
        "Sam is a mammal.",
        "Sam is furry.",
        ["Sam is a mammal.", "Sam is furry."],
        rules[1:],
        "True",
    )
    assert "mammals" in {t.text for t in term_pool([alone]).get("property", [])}
    pool = term_pool([alone, named])
    assert [t.text for t in pool["property"]] == ["furry"] and "mammal" in {t.text for t in pool["concept"]}


# --- bad data ----------------------------------------------------------------------------------

GOOD_RECORD = {
    "Facts": "Every cat is a feline.",
    "Query": "True or false: Max is a feline.",
    "claims": ["Max is a cat.", "Max is a feline."],
    "next_steps": ["Every cat is a feline.", "Finish."],
}


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda r: r.pop("Facts"), "Facts"),
        (lambda r: r.update(Query="Is Max a feline?"), "Query"),
        (lambda r: r.update(next_steps=["Every cat is a feline."]), "next_steps"),
        (lambda r: r.update(claims=["Max is a cat."]), "claims"),
        (lambda r: r.update(Query="True or false: Max is a dog."), "Query"),
        (lambda r: r.update(Facts="Every cat is a feline. Max likes fish."), "Facts"),
        (lambda r: r.update(claims=["Max is a cat.", "Max likes fish."]), "claims"),  # grammar, not the answer
        (lambda r: r.update(next_steps=["Max is a cat.", "Finish."]), "next_steps"),  # a step that is no rule
        (lambda r: r.update(claims=["Every cat is a feline.", "Max is a feline."]), "claims"),  # no entity
    ],
)
def test_bad_capt_records_name_file_record_and_field(tmp_path, change, field):
    record = json.loads(json.dumps(GOOD_RECORD))
    change(record)
    path = tmp_path / "prontoqa.json"
    path.write_text(json.dumps({"next_steps": [GOOD_RECORD, record]}))
    with pytest.raises(DataError) as raised:
        load_prontoqa_file(path)
    assert "prontoqa.json" in str(raised.value) and "record 1" in str(raised.value)
    assert f"field {field!r}" in str(raised.value)


def test_official_format_contradicting_answer_is_reported(tmp_path):
    test_example = {
        "question": "Every cat is a feline. Max is a cat.",
        "query": "True or false: Max is a feline.",
        "chain_of_thought": ["Max is a cat.", "Every cat is a feline.", "Max is a feline."],
        "answer": "True",
    }
    path = tmp_path / "official.json"
    path.write_text(json.dumps({"example1": {"test_example": test_example}}))
    [example] = load_prontoqa_file(path)
    assert (example.id, example.meta["facts"], example.answer) == ("example1", ("Every cat is a feline.",), "True")
    path.write_text(json.dumps({"example1": {"test_example": dict(test_example, answer="False")}}))
    with pytest.raises(DataError, match=r"official.json: record 'example1.test_example', field 'answer'"):
        load_prontoqa_file(path)


OFFICIAL_TEST = {
    "question": "Every cat is a feline. Max is a cat.",
    "query": "True or false: Max is a feline.",
    "chain_of_thought": ["Max is a cat.", "Every cat is a feline.", "Max is a feline."],
    "answer": "True",
}


@pytest.mark.parametrize(
    "content",
    [
        {"example1": {"test_example": dict(OFFICIAL_TEST, query="True or False:  Max is a feline. ")}},
        {"example1": {"test_example": dict(OFFICIAL_TEST, query="true or false? Max is a feline.")}},
        {"example1": {"test_example": dict(OFFICIAL_TEST, answer="true")}},
        {"example1": {"test_example": dict(OFFICIAL_TEST, answer=True)}},
        {"example1": {"test_example": {k.replace("_", "-").capitalize(): v for k, v in OFFICIAL_TEST.items()}}},
        {"settings": {"hops": 1}, "example_count": 1, "example1": {"Test_Example": OFFICIAL_TEST}},
        [{"test_example": OFFICIAL_TEST}, {"test_example": OFFICIAL_TEST}],
    ],
    ids=["query spacing", "query case and ?", "answer case", "answer boolean", "field spelling", "extra keys", "list"],
)
def test_official_format_spellings_load_alike(tmp_path, content):
    """Other releases of the official generator's output differ in spelling and layout, not in content."""
    path = tmp_path / "official.json"
    path.write_text(json.dumps(content))
    examples = load_prontoqa_file(path)
    assert examples and all(e.meta["query"] == "Max is a feline." and e.answer == "True" for e in examples)
    assert [e.id for e in examples] == (["example1"] if isinstance(content, dict) else ["example0", "example1"])


def test_capt_format_fields_load_in_any_spelling(tmp_path):
    """As the generator's fields are: the CAPT authors' file spells them Facts, Query, claims, next_steps."""
    respelled = {"facts": GOOD_RECORD["Facts"], "QUERY": GOOD_RECORD["Query"], "Claims": GOOD_RECORD["claims"]}
    respelled["next-steps"] = GOOD_RECORD["next_steps"]
    path = tmp_path / "prontoqa.json"
    path.write_text(json.dumps({"Next_Steps": [respelled, GOOD_RECORD]}))
    loose, exact = load_prontoqa_file(path)
    assert (loose.prompt, loose.reasoning, loose.answer) == (exact.prompt, exact.reasoning, exact.answer)
    path.write_text(json.dumps({"next_steps": []}))
    with pytest.raises(DataError, match=r"prontoqa.json, field 'next_steps': expected a non-empty list of records"):
        load_prontoqa_file(path)


@pytest.mark.parametrize(
    "content, where",
    [
        ({"next_steps": [GOOD_RECORD, dict(GOOD_RECORD, facts="Every dog is a canine.")]}, "record 1, field 'facts'"),
        ({"example1": {"test_example": OFFICIAL_TEST, "Test-Example": OFFICIAL_TEST}}, "record 'example1'"),
        ([{"test_example": OFFICIAL_TEST}, {"test_example": OFFICIAL_TEST, "Test_example": {}}], "record 'example1'"),
        ({"example1": {"test_example": dict(OFFICIAL_TEST, Answer="False")}}, "example1.test_example', field 'answer'"),
    ],
    ids=["capt", "official entry", "official entry in a list", "official test example"],
)
def test_a_field_spelled_twice_is_refused(tmp_path, content, where):
    """Fields are read in any spelling, so "Facts" beside "facts" would silently keep one of them."""
    path = tmp_path / "prontoqa.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match="given twice") as raised:
        load_prontoqa_file(path)
    assert where in str(raised.value)


@pytest.mark.parametrize(
    "change, message",
    [
        (  # AndIntro: a fact used as a step, and a claim joining two terms; its refills could not be proved
            dict(
                question="Happy lorpuses are impuses. Alex is a lorpus. Alex is happy.",
                query="True or false: Alex is an impus.",
                chain_of_thought=[
                    "Alex is a lorpus.", "Alex is happy.", "Alex is a happy lorpus.", "Happy lorpuses are impuses.",
                    "Alex is an impus.",
                ],
            ),
            "field 'chain_of_thought': 'Alex is happy.' is a step but not a rule",
        ),
        (
            dict(
                chain_of_thought=["Max is a cat.", "Every cat is a feline.", "Rex is a feline."],
                query="True or false: Rex is a feline.",
            ),
            "'Rex is a feline.' is not a claim about 'Max'",
        ),
        (dict(query="Prove: Max is a feline."), "expected it to start with 'True or false: ' (a proofs-only file"),
    ],
    ids=["step not a rule", "claim about another entity", "proofs-only query"],
)  # fmt: skip
def test_proofs_the_abstraction_cannot_mirror_are_refused(tmp_path, change, message):
    """The generator's other deduction rules and proofs-only files parse sentence by sentence, but are not
    the modus-ponens chains whose refills stay provable, so they are refused, naming the statement."""
    path = tmp_path / "official.json"
    path.write_text(json.dumps({"example1": {"test_example": dict(OFFICIAL_TEST, **change)}}))
    with pytest.raises(DataError, match="record 'example1.test_example'") as raised:
        load_prontoqa_file(path)
    assert message in str(raised.value)


def test_a_proof_ending_in_blank_lines_loads(tmp_path):
    """Whitespace around a statement is not part of it (the generator puts blank lines around some proof lines)."""
    record = dict(OFFICIAL_TEST, chain_of_thought=[*OFFICIAL_TEST["chain_of_thought"][:-1], "Max is a feline.\n\n"])
    path = tmp_path / "official.json"
    path.write_text(json.dumps({"example1": {"test_example": record}}))
    [example] = load_prontoqa_file(path)
    assert example.answer == "True" and example.meta["claims"][-1] == "Max is a feline."


def test_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{")
    with pytest.raises(DataError, match="broken.json.*malformed JSON"):
        load_prontoqa_file(path)


# --- every record of the shared files ----------------------------------------------------------


@pytest.fixture(scope="module")
def shared_prontoqa():
    folder = SHARED / "prontoqa"
    if not folder.is_dir():
        pytest.skip(f"shared PrOntoQA data not found at {folder} (set CAPT_DATA_DIR)")
    return {name: load_prontoqa_file(folder / name) for name in SHARED_FILES}


@pytest.mark.parametrize("name", SHARED_FILES)
def test_shared_files_abstract_exactly(shared_prontoqa, name):
    examples = shared_prontoqa[name]
    assert len(examples) == SHARED_FILES[name]
    rng = random.Random(1)
    for example in examples:
        check_abstraction(example)
        check_random_intervention(example, rng)


def test_shared_ood_test_sets(shared_prontoqa):
    sets = test_sets("prontoqa", data_dir=SHARED)
    assert [len(sets[k].examples) for k in ("id", "anti", "non")] == [400, 400, 400]
    assert [e.id for e in sets["id"].examples] == [e.id for e in split(shared_prontoqa["prontoqa.json"], 100)[1]]
    for variant in ("anti", "non"):
        for source, refilled in zip(sets["id"].examples, sets[variant].examples):
            assert refilled.answer == source.answer
            assert abstract(refilled).prompt == abstract(source).prompt
    assert test_sets("prontoqa", data_dir=SHARED)["anti"] == sets["anti"]


_ADJECTIVES = {p for _, props in TRUE_TAXONOMY.values() for p in props}


def _singular(plural: str) -> str:
    return next(c for c in TRUE_TAXONOMY if pluralize(c).lower() == plural.lower())
