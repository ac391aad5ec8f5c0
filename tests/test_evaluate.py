"""Two-stage evaluation: exact bookkeeping on scripted outputs, estimator validation and retries."""

from __future__ import annotations

import json

import pytest

from capt_jax.config import ConfigDict, ConfigError, get_config
from capt_jax.data import Example, TestSplit, abstract, load_examples, training_examples, training_questions
from capt_jax.estimate import (
    closed_at_last_entry,
    estimation_target,
    model_estimates,
    oracle_estimates,
    parse_estimation,
)
from capt_jax.evaluate import (
    check_estimator,
    evaluate_sets,
    evaluation_sets,
    finished_results,
    markdown_table,
    method_name,
    plot,
    score_split,
    settings_key,
    trained_questions,
    trained_settings,
)


def cladder_like(i: int, answer: str, rung: int, query_type: str) -> Example:
    return Example(
        str(i), "cladder", "commonsense", f"question {i}", "", answer, {"rung": rung, "query_type": query_type}
    )


@pytest.fixture(scope="module")
def prontoqa_examples() -> list[Example]:
    return load_examples("prontoqa", source="generate", num_examples=12, hops=(1, 2), seed=4)


def test_scripted_replies_give_exact_accuracies():
    examples = [
        cladder_like(0, "Yes", 1, "marginal"),
        cladder_like(1, "No", 1, "marginal"),
        cladder_like(2, "Yes", 2, "ate"),
        cladder_like(3, "No", 2, "ate"),
        cladder_like(4, "Yes", 3, "ett"),
    ]
    replies = [
        "<think>...</think><answer>Yes</answer>",  # right
        "<answer>Yes</answer>",  # wrong
        "Yes, because ...",  # right: first label word without tags
        "<answer>maybe</answer> no",  # unparseable: the tag decides, and it holds no label
        "I cannot tell.",  # unparseable
    ]
    result, records = score_split(examples, replies)
    assert (result["accuracy"], result["n"], result["correct"]) == (0.4, 5, 2)
    assert [r["correct"] for r in records] == [True, False, True, False, False]
    assert [r["parsed"] for r in records] == ["Yes", "Yes", "Yes", None, None]
    assert result["parse_failures"] == 2 and result["unparseable_ids"] == ["3", "4"]
    assert result["by_rung"] == {
        "1": {"accuracy": 0.5, "n": 2},
        "2": {"accuracy": 0.5, "n": 2},
        "3": {"accuracy": 0.0, "n": 1},
    }
    assert result["by_query_type"]["ate"] == {"accuracy": 0.5, "n": 2}


def test_evaluate_sets_runs_both_stages_on_every_split(prontoqa_examples, tmp_path):
    seen_prompts: list[str] = []

    def reasoner(prompts):
        seen_prompts.extend(prompts)
        return ["<answer>True</answer>"] * len(prompts)

    sets = {"id": TestSplit(prontoqa_examples[:6], ("x",)), "non": TestSplit(prontoqa_examples[6:])}
    results, predictions = evaluate_sets(sets, oracle_estimates, reasoner, "random", seed=0)
    assert [p["split"] for p in predictions] == ["id"] * 6 + ["non"] * 6
    assert [p["prompt"] for p in predictions] == seen_prompts
    assert results["id"]["excluded_overlap"] == 1 and results["non"]["excluded_overlap"] == 0
    for name, examples in (("id", prontoqa_examples[:6]), ("non", prontoqa_examples[6:])):
        expected = sum(e.answer == "True" for e in examples) / len(examples)
        assert results[name]["accuracy"] == pytest.approx(expected)
        assert results[name]["estimator_valid_rate"] == 1.0 and results[name]["estimator_fallbacks"] == 0
    # Intervened prompts: no original entity, concept or property survives.
    for prompt, example in zip(seen_prompts, prontoqa_examples):
        for name in abstract(example).symbols.values():
            assert f" {name} " not in f" {prompt} "
    row = {"method": "CAPT", "label": "CAPT (oracle)", "dataset": "prontoqa", "splits": results}
    table = markdown_table([row])
    assert table.splitlines()[0] == "| method | id | non |" and "| CAPT (oracle) |" in table
    assert plot([row], tmp_path / "a.png").stat().st_size > 0


@pytest.mark.parametrize("form", ["map", "template"])
def test_estimates_are_validated_and_invalid_ones_retried(prontoqa_examples, form):
    examples = prontoqa_examples[:3]
    good = [estimation_target(abstract(e), form) for e in examples]
    leaky = json.loads(good[1])
    if form == "template":
        leaky["template"] = examples[1].prompt  # "abstracted" without replacing anything: names remain
    else:
        leaky["symbol_1"] = ""  # a slot without a name
    scripts = {
        0: ["no json here", json.dumps(leaky), good[2]],  # first attempt: one good of three
        1: [good[0], json.dumps(leaky)],  # retry of the two invalid ones
        2: ['{"template": "{symbol_1} is {symbol_2}.", "symbols": {"symbol_1": "x"}}'],  # wrong in either form
    }
    calls = []

    def complete(conversations, attempt):
        calls.append(len(conversations))
        return scripts[attempt]

    estimates = model_estimates(examples, complete, form, shots=prontoqa_examples[3:4], retries=2)
    assert calls == [3, 2, 1]
    assert estimates.attempts == [2, 3, 1]
    assert estimates.abstractions[0] is not None and estimates.abstractions[2] is not None
    assert estimates.abstractions[1] is None and estimates.valid_rate == pytest.approx(2 / 3)
    assert estimates.problems[1] and not estimates.problems[0]
    # The failed example is answered from its raw prompt, and the fallback is reported.
    results, _ = evaluate_sets(
        {"id": TestSplit(examples)},
        lambda exs: estimates,
        lambda prompts: ["<answer>True</answer>"] * len(prompts),
        "random",
    )
    assert results["id"]["estimator_fallbacks"] == 1
    assert results["id"]["estimator_valid_rate"] == pytest.approx(2 / 3)
    assert results["id"]["estimator_gold_leftovers"] == 0 and results["id"]["estimator_accepted_with_drops"] == 0

    # Accuracy is also kept per path: the two estimated questions, and the one answered from its raw prompt.
    def answers_raw_prompts_only(prompts):
        return [f"<answer>{e.answer}</answer>" if p.startswith(e.prompt) else "" for e, p in zip(examples, prompts)]

    results, predictions = evaluate_sets(
        {"id": TestSplit(examples)}, lambda exs: estimates, answers_raw_prompts_only, "random"
    )
    assert [p["estimated"] for p in predictions] == [True, False, True]
    assert results["id"]["n_estimated"] == 2 and results["id"]["accuracy_estimated"] == 0
    assert results["id"]["n_fallback"] == 1 and results["id"]["accuracy_fallback"] == 1


@pytest.mark.parametrize("form", ["map", "template"])
def test_parse_estimation_accepts_the_oracle_and_rejects_malformed_replies(prontoqa_examples, form):
    example = prontoqa_examples[0]
    abstraction, problems, *_ = parse_estimation(
        "Sure! " + estimation_target(abstract(example), form) + " Done.", example, form
    )
    assert abstraction is not None and problems == []
    assert abstraction.prompt == abstract(example).prompt
    for reply in ('{"template": "no slots", "symbols": {}}', "{not json", "[1, 2]", '{"x": "y"}'):
        assert parse_estimation(reply, example, form).abstraction is None


@pytest.mark.parametrize("form", ["map", "template"])
def test_a_repeated_name_is_dropped_unless_the_strict_check_is_asked_for(prontoqa_examples, form):
    example = prontoqa_examples[0]
    reply = json.loads(estimation_target(abstract(example), form))
    symbols = reply if form == "map" else reply["symbols"]
    symbols["symbol_99"] = symbols["symbol_1"]
    strict = parse_estimation(json.dumps(reply), example, form, drop_unplaced=False)
    assert strict.abstraction is None and strict.problems == [
        "slots whose phrase the text does not hold: ['symbol_99']"
    ]
    parsed = parse_estimation(json.dumps(reply), example, form)
    assert parsed.abstraction.prompt == abstract(example).prompt and parsed.dropped == ["symbol_99"]

    def first_stage(reply: dict) -> dict:
        results, _ = evaluate_sets(
            {"id": TestSplit([example])},
            lambda exs: model_estimates(exs, lambda conversations, attempt: [json.dumps(reply)], form, retries=0),
            lambda prompts: ["<answer>True</answer>"],
            "random",
        )
        return results["id"]

    accepted = first_stage(reply)
    assert accepted["estimator_valid_rate"] == 1 and accepted["estimator_accepted_with_drops"] == 1
    # Dropped, yet rejected for another reason (a slot without a name): no accepted estimate had slots dropped.
    unnamed = first_stage(
        {**reply, "symbol_98": ""} if form == "map" else {**reply, "symbols": {**symbols, "symbol_98": ""}}
    )
    assert unnamed["estimator_valid_rate"] == 0 and unnamed["estimator_accepted_with_drops"] == 0
    if form == "template":  # a declared slot whose name the template still writes out is not dropped
        del symbols["symbol_99"]
        reply["template"] = reply["template"].replace("{symbol_1}", abstract(example).terms["symbol_1"].text)
        parsed = parse_estimation(json.dumps(reply), example, form)
        assert parsed.abstraction is None and parsed.dropped == []
        assert parsed.problems[0] == "slots whose phrase the text does not hold: ['symbol_1']"


@pytest.mark.parametrize(
    "text, closed",
    [
        ('{"a": "x", "b": "y', '{"a": "x"}'),  # cut inside a value
        ('{"a": "x, y", "b": ["p", "q', '{"a": "x, y"}'),  # never inside a list: the entry goes whole
        ('{"a": "x", "b": [{"c": 1, "d": 2}, {"c": 3, "d', '{"a": "x"}'),  # nor in an object inside a list
        ('{"a": "x", "b": 12', '{"a": "x"}'),  # the last entry may be cut off itself
        ('{"t": "s", "m": {"a": "1", "b": "2", "c', '{"t": "s", "m": {"a": "1", "b": "2"}}'),
        ('{"a": "x\\", ", "b"', '{"a": "x\\", "}'),  # an escaped quote does not end the string
        ('{"a": "x"}', None),  # not cut off
        ('{"a": "x"} and, after it', None),
        ('{"a": "x', None),  # no complete entry
    ],
)
def test_closed_at_last_entry(text, closed):
    assert closed_at_last_entry(text) == closed


@pytest.mark.parametrize("form", ["map", "template"])
def test_a_cut_off_reply_keeps_its_complete_entries_only_when_salvaged(prontoqa_examples, form):
    example = prontoqa_examples[0]
    target = estimation_target(abstract(example), form)
    closing = "}" if form == "map" else "}}"
    name = abstract(example).terms["symbol_1"].text
    cut = target[: -len(closing)] + f', "symbol_99": "{name}", "symbol_100": "{name[:2]}'  # a loop, cut off
    rejected = parse_estimation(cut, example, form)
    assert rejected.abstraction is None and rejected.problems == [f"not a JSON reply of the {form} form"]
    salvaged = parse_estimation(cut, example, form, salvage_cut_off=True)
    assert salvaged.abstraction.prompt == abstract(example).prompt
    assert salvaged.dropped == ["symbol_99"] and salvaged.salvaged
    whole = parse_estimation(target, example, form, salvage_cut_off=True)
    assert whole.abstraction is not None and not whole.salvaged

    def first_stage(salvage: bool) -> dict:
        results, _ = evaluate_sets(
            {"id": TestSplit([example])},
            lambda exs: model_estimates(exs, lambda c, attempt: [cut], form, retries=0, salvage_cut_off=salvage),
            lambda prompts: ["<answer>True</answer>"],
            "random",
        )
        return results["id"]

    salvaging, strict = first_stage(True), first_stage(False)
    assert salvaging["estimator_accepted_cut_off"] == 1 and salvaging["estimator_valid_rate"] == 1
    assert strict["estimator_accepted_cut_off"] == 0 and strict["estimator_valid_rate"] == 0


def test_split_that_cannot_be_made_is_reported_not_scored(prontoqa_examples):
    sets = {"id": TestSplit(prontoqa_examples[:2]), "anti": TestSplit([], skipped="anti: too few terms")}
    results, predictions = evaluate_sets(
        sets, oracle_estimates, lambda ps: ["<answer>True</answer>"] * len(ps), "random"
    )
    assert (
        results["anti"] == {"skipped": "anti: too few terms", "n": 0, "excluded_overlap": 0} and len(predictions) == 2
    )
    table = markdown_table([{"label": "CAPT (oracle)", "splits": results}])
    assert table.splitlines()[2].endswith("| skipped |")


def test_an_adapter_is_labelled_by_how_its_workdir_trained_it(tmp_path):
    """The evaluating config's data.mode is only the test-time intervention: an SFT workdir evaluated with the
    CAPT config is not "CAPT", and `self` estimation checks the weight the workdir trained with."""
    config = get_config()
    config.data.kind, config.data.mode = "capt", "random"
    assert trained_settings(str(tmp_path)) is None and method_name(config, False, None) == "CAPT"
    trained = get_config()
    trained.data.kind, trained.data.mode, trained.data.estimation_weight = "capt", "null", 0.0
    (tmp_path / "config.json").write_text(trained.to_json_best_effort())
    assert method_name(config, False, trained_settings(str(tmp_path))) == "SFT, tested as CAPT"
    config.eval.estimator, config.data.estimation_weight = "self", 1.0
    with pytest.raises(ConfigError, match="workdir's config.json says 0.0"):
        check_estimator(config, False, trained_settings(str(tmp_path)))
    trained.data.mode, trained.data.dataset = "random", "prontoqa"
    (tmp_path / "config.json").write_text(trained.to_json_best_effort())
    assert method_name(config, False, trained_settings(str(tmp_path))) == "CAPT, trained on prontoqa"
    trained.data.kind, trained.data.path = "jsonl", "/data/pairs.jsonl"
    (tmp_path / "config.json").write_text(trained.to_json_best_effort())
    assert method_name(config, False, trained_settings(str(tmp_path))) == "trained on pairs.jsonl, tested as CAPT"
    trained.data.kind, trained.data.dataset = "capt", "cladder"
    (tmp_path / "config.json").write_text(trained.to_json_best_effort())
    assert method_name(config, False, trained_settings(str(tmp_path))) == "CAPT"
    assert method_name(config, True, trained_settings(str(tmp_path))) == "base"


def test_evaluating_a_workdir_guards_against_the_questions_it_trained_on(tmp_path, monkeypatch, capsys):
    """evaluate --workdir W cleans its test sets of the training split its config selects and, when that is not
    W's (other data, seed or size), of W's own training questions too: rebuilt from W's config.json and checked
    against the digest in W's checkpoint. An older checkpoint without the digest must be evaluated with its own
    split."""
    import capt_jax.evaluate as evaluate

    def trained_with(**data) -> ConfigDict:
        config = get_config()
        config.data.kind, config.data.dataset, config.data.source = "capt", "prontoqa", "generate"
        config.data.prontoqa_num_examples, config.data.n_train = 60, 10
        for key, value in data.items():
            config.data[key] = value
        return config

    trained = trained_with()
    (tmp_path / "config.json").write_text(trained.to_json_best_effort())
    meta = {"training_questions": training_questions(trained.data)}
    monkeypatch.setattr(evaluate.ckpt, "read_meta", lambda workdir: (3, meta))
    assert trained_questions(trained_with(), str(tmp_path)) == []  # its own split: the usual guard is enough
    other = trained_with(split_seed=20)
    own = trained_questions(other, str(tmp_path))
    assert [e.prompt for e in own] == [e.prompt for e in training_examples(trained.data)]
    assert "trained on other questions (10 questions, " in capsys.readouterr().err
    seen = {e.prompt for e in own}
    unguarded = evaluation_sets(other)["id"]
    guarded = evaluation_sets(other, own)["id"]
    overlap = [e.id for e in unguarded.examples if e.prompt in seen]
    assert overlap and not {e.prompt for e in guarded.examples} & seen  # seed 20 tests some of seed 19's training
    assert set(guarded.excluded_overlap) >= set(overlap) | set(unguarded.excluded_overlap)
    with pytest.raises(ConfigError, match="data settings give other questions here"):  # same keys, other questions
        meta["training_questions"] = "10 questions, 0123456789abcdef"
        trained_questions(trained_with(), str(tmp_path))
    meta.pop("training_questions")  # a checkpoint from before the digest: the keys decide, locations aside
    assert trained_questions(trained_with(data_dir="/moved"), str(tmp_path)) == []
    with pytest.raises(ConfigError, match="data.n_train: 10 there, 12 here.*predates"):
        trained_questions(trained_with(n_train=12), str(tmp_path))
    cladder = trained_with(n_train=12)
    cladder.data.dataset = "cladder"  # another dataset: no training split of it to compare
    assert trained_questions(cladder, str(tmp_path)) == []


def test_reused_results_are_labelled_by_the_current_code(tmp_path):
    config = get_config()
    old = {"step": 5, "method": "CAPT", "estimator": "oracle", "label": "CAPT (oracle)"}
    (tmp_path / "results.json").write_text(json.dumps({**old, "settings_key": settings_key(config, False)}))
    assert finished_results(tmp_path, config, False, 5)["label"] == "CAPT (oracle: upper bound)"
    assert finished_results(tmp_path, config, False, 6) is None  # another checkpoint step
    config.eval.max_examples = 7
    assert finished_results(tmp_path, config, False, 5) is None  # other settings
