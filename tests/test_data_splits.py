"""The paper's split (shuffled once, last 10% test, first n of the rest train) and the contamination guard."""

import collections
import random

import pytest

from capt_jax.data import (
    Example,
    load_examples,
    normalised_template,
    split,
    test_sets,
    training_examples,
    without_overlap,
)
from capt_jax.data.config import default_data_config
from capt_jax.data.prontoqa import load_prontoqa_file, make_example
from capt_jax.data.prontoqa_ood import SPARE_NAMES
from capt_jax.data.sources import default_data_dir

SHARED = default_data_dir()


@pytest.mark.parametrize("size, n_test", [(4000, 400), (844, 85), (1120, 112), (10, 1)])
def test_split_is_shuffled_deterministic_and_disjoint(size, n_test):
    items = list(range(size))
    train, test = split(items, n_train=5)
    assert len(test) == n_test and len(train) == 5
    assert split(items, n_train=5) == (train, test)
    assert not set(train) & set(test)
    shuffled = items[:]
    random.Random(19).shuffle(shuffled)
    assert test == shuffled[size - n_test :] and train == shuffled[:5]
    if size > 10:
        assert test != items[size - n_test :]  # not file order


def test_split_seed_changes_the_permutation_and_equal_lengths_share_it():
    items = list(range(100))
    assert split(items, 10, seed=19) != split(items, 10, seed=20)
    letters = [f"q{i}" for i in items]
    assert [f"q{i}" for i in split(items, 10)[1]] == split(letters, 10)[1]  # parallel files stay paired
    train, test = split(items, 90)
    assert sorted(train + test) == items


def test_split_rejects_too_many_training_examples():
    with pytest.raises(ValueError, match="n_train"):
        split(list(range(10)), n_train=10)


def _prontoqa(i: int, rule: str, entity: str = "Max") -> Example:
    claims = [f"{entity} is a cat.", f"{entity} is a feline."]
    return make_example(str(i), "id", [rule], claims[0], claims[1], claims, [rule], "True")


def test_guard_removes_same_question_and_same_template_only():
    train = [_prontoqa(0, "Every cat is a feline.")]
    same_template = _prontoqa(1, "Every cat is a feline.", entity="Sam")  # only the entity's name differs
    other = _prontoqa(2, "Each cat is a feline.")  # another sentence form: another template
    kept, removed = without_overlap([train[0], same_template, other], train)
    assert removed == ["0", "1"] and [e.id for e in kept] == ["2"]


def test_guard_keeps_a_question_whose_slots_are_linked_otherwise():
    """The same sentence forms with the slots linked otherwise are another question: a chain dog -> cat -> feline
    is not cat -> feline -> mammal written alike."""
    chain = ["Max is a cat.", "Max is a feline.", "Max is a mammal."]
    rules = ["Every cat is a feline.", "Every feline is a mammal."]
    train = [make_example("0", "id", rules, chain[0], chain[2], chain, rules, "True")]
    backwards = ["Max is a dog.", "Max is a cat.", "Max is a feline."]
    facts = ["Every cat is a feline.", "Every dog is a cat."]
    other = make_example("1", "id", facts, backwards[0], backwards[2], backwards, facts[::-1], "True")
    kept, removed = without_overlap([other], train)
    assert [e.id for e in kept] == ["1"] and removed == []


# --- every shared file ---------------------------------------------------------------------------

CLADDER = ("commonsense", "anticommonsense", "nonsense")
PRONTOQA = ("prontoqa.json", "3hop_random.json", "3hop_random_trueontology_nodistractor.json")


def _needs_shared(*parts: str):
    if SHARED is None or not SHARED.joinpath(*parts).exists():
        pytest.skip(f"shared data {'/'.join(parts)} not found beside the checkout (set CAPT_DATA_DIR)")


def _assert_no_overlap(train, sets):
    questions = {e.prompt for e in train}
    templates = {normalised_template(e) for e in train}
    for name, found in sets.items():
        assert found.skipped is None, (name, found.skipped)
        assert found.examples, name
        for example in found.examples:
            assert example.prompt not in questions, (name, example.id)
            assert normalised_template(example) not in templates, (name, example.id)


def test_cladder_shared_files_split_shuffled_and_clean():
    _needs_shared("cladder")
    config = default_data_config()
    train = training_examples(config)
    sets = test_sets("cladder", data_dir=SHARED)
    _assert_no_overlap(train, sets)
    for name, found in sets.items():
        print(name, len(found.examples), "removed", len(found.excluded_overlap))
    # Shuffled: "in-distribution" shares the training graphs, and both sides see most graph types.
    train_graphs = collections.Counter(e.meta["graph_id"] for e in train)
    test_graphs = collections.Counter(e.meta["graph_id"] for e in sets["id"].examples)
    assert len(set(train_graphs) & set(test_graphs)) >= 7, (train_graphs, test_graphs)
    # The OOD sets are a tenth of their files, not the whole files.
    sizes = {variant: len(load_examples("cladder", variant, data_dir=SHARED)) for variant in CLADDER}
    assert len(sets["anti"].examples) + len(sets["anti"].excluded_overlap) == -(-sizes["anticommonsense"] // 10)
    assert len(sets["non"].examples) + len(sets["non"].excluded_overlap) == -(-sizes["nonsense"] // 10)
    # The parallel anticommonsense file is split with the same permutation: its test set is the ID test set's twin.
    assert {e.id for e in sets["anti"].examples} <= {e.id for e in sets["id"].examples} | set(
        sets["id"].excluded_overlap
    )


@pytest.mark.parametrize("variant", ["anti", "non"])
def test_the_guard_checks_the_variant_that_was_trained_on(variant):
    """Training on CLadder's anticommonsense or nonsense file: every split is cleaned of that file's training
    questions (the commonsense ones were never trained on), and "id" stays the commonsense test part."""
    _needs_shared("cladder")
    config = default_data_config()
    config.variant = variant
    train = training_examples(config)
    sets = test_sets("cladder", data_dir=SHARED, variant=variant)
    _assert_no_overlap(train, sets)
    unguarded = test_sets("cladder", data_dir=SHARED, variant=variant, keep_overlap=True)
    assert any(without_overlap(split.examples, train)[1] for split in unguarded.values())  # there was some to remove
    assert unguarded["id"] == test_sets("cladder", data_dir=SHARED, keep_overlap=True)["id"]


def test_an_anti_file_under_its_own_name_takes_id_from_the_release_file_beside_it(tmp_path):
    """Trained on an anticommonsense file named by the user, "id" is the release's commonsense file beside it, as
    for the OOD splits, never the anti file's own questions; with none beside it, "id" is skipped with the reason.
    "anti" is the trained file's own test part, as when the data comes from a folder."""
    _needs_shared("cladder")
    folder = SHARED / "cladder"
    for path in folder.iterdir():
        (tmp_path / path.name).symlink_to(path)
    (tmp_path / "my_questions.json").symlink_to(folder / "test-generate-anti.json")
    own_name = test_sets("cladder", data_file=tmp_path / "my_questions.json", variant="anti")
    release_name = test_sets("cladder", data_file=tmp_path / "test-generate-anti.json", variant="anti")

    def questions(split):
        return [(e.id, e.variant, e.prompt) for e in split.examples]

    from_dir = test_sets("cladder", data_dir=SHARED, variant="anti")
    assert from_dir["id"].examples and {e.variant for e in from_dir["id"].examples} == {"commonsense"}
    assert all(questions(own_name[s]) == questions(from_dir[s]) for s in ("id", "anti", "non"))
    assert questions(release_name["id"]) == questions(from_dir["id"])
    # The release's commonsense file given with variant=anti: training reads the anti file beside it, "id" this one.
    commonsense_named = test_sets("cladder", data_file=tmp_path / "test-generate-easy.json", variant="anti")
    assert questions(commonsense_named["id"]) == questions(from_dir["id"])
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "my_questions.json").symlink_to(folder / "test-generate-anti.json")
    for name in ("test-model-meta.json", "stories"):
        (alone / name).symlink_to(folder / name)
    lonely = test_sets("cladder", data_file=alone / "my_questions.json", variant="anti")
    assert lonely["id"].examples == [] and "no commonsense file is beside it" in lonely["id"].skipped
    # Its own variant's split is its own test part, with or without release files beside it.
    assert questions(lonely["anti"]) == questions(from_dir["anti"]) and lonely["anti"].examples


def test_keep_overlap_reproduces_the_unguarded_protocol():
    _needs_shared("cladder")
    guarded = test_sets("cladder", data_dir=SHARED, splits=("non",))["non"]
    unguarded = test_sets("cladder", data_dir=SHARED, splits=("non",), keep_overlap=True)["non"]
    assert len(unguarded.examples) == len(guarded.examples) + len(guarded.excluded_overlap)
    assert unguarded.excluded_overlap == ()


@pytest.mark.parametrize("name", PRONTOQA)
def test_prontoqa_shared_files_split_clean(name):
    _needs_shared("prontoqa", name)
    path = SHARED / "prontoqa" / name
    train, _ = split(load_prontoqa_file(path), 100)
    sets = test_sets("prontoqa", data_file=path)
    _assert_no_overlap(train, sets)
    totals = [len(s.examples) + len(s.excluded_overlap) for s in sets.values()]
    assert totals == [-(-len(load_prontoqa_file(path)) // 10)] * 3  # anti and non refill the ID test set


def test_only_requested_splits_are_built(monkeypatch):
    import capt_jax.data.sources as sources

    def fail(*args, **kwargs):
        raise AssertionError("the anti set was built although not requested")

    monkeypatch.setattr(sources, "anti_commonsense", fail)
    sets = test_sets("prontoqa", source="generate", num_examples=60, n_train=10, splits=("id", "non"))
    assert list(sets) == ["id", "non"]


def test_a_split_the_data_cannot_make_is_skipped_with_its_reason(tmp_path):
    import json

    record = {
        "Facts": "Every cat is a feline.",
        "Query": "True or false: Max is a feline.",
        "claims": ["Max is a cat.", "Max is a feline."],
        "next_steps": ["Every cat is a feline.", "Finish."],
    }
    path = tmp_path / "one_entity.json"
    path.write_text(json.dumps({"next_steps": [record] * 20}))
    # One name throughout: the anti refill borrows people's names.
    anti = test_sets("prontoqa", data_file=path, n_train=2, keep_overlap=True, splits=("anti",))["anti"].examples
    names = {e.meta["given"].split()[0] for e in anti}
    assert len(anti) == 2 and names <= set(SPARE_NAMES) - {"Max"}, names
    # One concept throughout: nothing to refill it with.
    one_concept = dict(record, Facts="Every cat is furry.", Query="True or false: Max is furry.")
    path.write_text(
        json.dumps(
            {
                "next_steps": [
                    dict(
                        one_concept,
                        claims=["Max is a cat.", "Max is furry."],
                        next_steps=["Every cat is furry.", "Finish."],
                    )
                ]
                * 20
            }
        )
    )
    sets = test_sets("prontoqa", data_file=path, n_train=2, keep_overlap=True)
    assert sets["anti"].examples == [] and "too few distinct concept terms" in sets["anti"].skipped
    assert len(sets["id"].examples) == len(sets["non"].examples) == 2  # the other splits still run
    # Guarded, the ID test questions are the training question itself: an empty split is skipped, not scored 0.
    guarded = test_sets("prontoqa", data_file=path, n_train=2, splits=("id",))["id"]
    assert guarded.examples == [] and len(guarded.excluded_overlap) == 2
    assert guarded.skipped == "all 2 test questions share a question or template with training"
