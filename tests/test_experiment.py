"""The experiment runner end to end on a tiny model: 2 methods x 2 seeds, its files, and resuming."""

from __future__ import annotations

import json

import numpy as np
import pytest

from capt_jax.data import Example, TestSplit
from capt_jax.experiment import answers_sets, estimator_rows, main, markdown, ood_gaps, question_draw, summarise

TINY = [
    "--config.data.source=generate",
    "--config.data.prontoqa_num_examples=60",
    "--config.data.n_train=8",
    "--config.data.copies=2",
    "--config.data.estimation_weight=0",
    "--config.train.max_steps=2",
    "--config.train.batch_size=2",
    "--config.train.seq_len=256",
    "--config.checkpoint.every_steps=2",
    "--config.eval.max_examples=3",
    "--config.eval.max_new_tokens=4",
    "--config.eval.batch_size=4",
]


def test_two_methods_two_seeds_end_to_end(tiny_chat_dir, tmp_path, capsys):
    work = tmp_path / "exp"
    args = [
        "--config=configs/experiment_prontoqa_smollm2.py",
        "--methods=sft,capt",
        "--seeds=0,1",
        f"--workdir={work}",
        f"--config.model.path={tiny_chat_dir}",
        *TINY,
    ]
    main(args)
    out = capsys.readouterr().out
    assert "| method |" in out
    predictions = [json.loads(line) for line in (work / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 2 * 2 * 3 * 3  # methods x seeds x splits x questions
    fields = {"method", "estimator", "seed", "split", "id", "prompt", "reply", "parsed", "correct"}
    assert all(fields <= set(p) for p in predictions)
    assert {(p["method"], p["estimator"]) for p in predictions} == {("sft", None), ("capt", "oracle")}
    rows = json.loads((work / "summary.json").read_text())
    assert len(rows) == 2 * 3
    for row in rows:
        assert set(row) == {"method", "estimator", "split", "n", "seeds", "accuracy_mean", "ci_low", "ci_high"}
        assert row["n"] == 3 and row["seeds"] == [0, 1]
        assert 0 <= row["ci_low"] <= row["accuracy_mean"] <= row["ci_high"] <= 1
    paired = json.loads((work / "paired.json").read_text())
    assert [p["split"] for p in paired] == ["id", "anti", "non"]
    assert all(p["a"] == "capt (oracle: upper bound)" and p["b"] == "sft" and 0 <= p["p_value"] <= 1 for p in paired)
    # OOD gaps: each model's ID minus OOD accuracy, and CAPT's gap minus SFT's, from the same outcomes as the rows.
    gaps = {(g["label"], g["split"]): g for g in json.loads((work / "gaps.json").read_text())}
    oracle = "capt (oracle: upper bound)"
    labels = ("sft", oracle, f"{oracle} minus sft")
    assert set(gaps) == {(label, split) for label in labels for split in ("anti", "non")}
    accuracy = {(r["method"], r["split"]): 100 * r["accuracy_mean"] for r in rows}
    for split in ("anti", "non"):
        for method, label in (("sft", "sft"), ("capt", oracle)):
            gap = accuracy[(method, "id")] - accuracy[(method, split)]
            assert gaps[(label, split)]["points_mean"] == pytest.approx(gap)
        difference = gaps[(f"{oracle} minus sft", split)]
        assert difference["points_mean"] == pytest.approx(
            gaps[(oracle, split)]["points_mean"] - gaps[("sft", split)]["points_mean"]
        )
        assert difference["seeds"] == [0, 1]
        # PrOntoQA's OOD questions refill the ID ones: the bootstrap draws each with its twin.
        assert {gaps[(label, split)]["questions"] for label in labels} == {"paired"}
        assert difference["ci_low"] <= difference["points_mean"] <= difference["ci_high"]
    last_line = (work / "summary.md").read_text().rstrip().splitlines()[-1]
    assert last_line.startswith("Test questions removed by the contamination guard, per split: {'id': ")
    for name in ("summary.md", "accuracy.png", "loss.png"):
        assert (work / name).stat().st_size > 0
    # Seeds differ in what they train on: the two CAPT seeds letter the same test question differently.
    capt = {(p["seed"], p["split"], p["id"]): p["prompt"] for p in predictions if p["method"] == "capt"}
    assert any(capt[(0, s, i)] != capt[(1, s, i)] for (_, s, i) in capt)
    # A rerun trains nothing and re-evaluates nothing.
    stamps = {p: p.stat().st_mtime_ns for p in work.glob("*/seed_*/eval_*/results.json")}
    main(args)
    assert {p: p.stat().st_mtime_ns for p in work.glob("*/seed_*/eval_*/results.json")} == stamps
    assert "nothing to do" in capsys.readouterr().out
    timing = json.loads((work / "timing.json").read_text())
    expected = {f"{m}/seed_{s}/{t}_s" for s in (0, 1) for m, t in [("sft", "train"), ("sft", "eval_raw")]}
    expected |= {f"capt/seed_{s}/{t}_s" for s in (0, 1) for t in ("train", "eval_oracle")}
    assert set(timing) == expected and all(seconds > 0 for seconds in timing.values())

    # --report summarises what has finished, trains nothing: capt seed 1 unevaluated, seed 2 never trained.
    for path in (work / "capt" / "seed_1" / "eval_oracle").iterdir():
        path.unlink()
    main([*args[:2], "--seeds=0,1,2", *args[3:], "--report"])
    assert not (work / "capt" / "seed_2").exists() and not (work / "sft" / "seed_2").exists()
    rows = json.loads((work / "summary.json").read_text())
    assert {(r["method"], tuple(r["seeds"])) for r in rows} == {("sft", (0, 1)), ("capt", (0,))}
    assert all(p["seeds"] == [0] for p in json.loads((work / "paired.json").read_text()))
    assert json.loads((work / "timing.json").read_text()) == timing
    assert json.loads((work / "estimators.json").read_text()) == []  # the oracle only

    # An evaluation that answered other questions than today's test sets (the data code changed under the same
    # settings) is never summarised against them.
    answered = work / "capt" / "seed_0" / "eval_oracle" / "predictions.jsonl"
    lines = answered.read_text().splitlines()
    answered.write_text("\n".join([json.dumps(dict(json.loads(lines[0]), id="another question")), *lines[1:]]) + "\n")
    main([*args, "--report"])
    assert "predictions do not answer the current test sets; left out of the report" in capsys.readouterr().err
    assert {r["method"] for r in json.loads((work / "summary.json").read_text())} == {"sft"}


def test_a_grid_extended_seed_by_seed_answers_each_base_prompt_once(tiny_chat_dir, tmp_path, monkeypatch):
    import capt_jax.evaluate

    calls = []

    def counting_generate(model, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return real_generate(model, prompts, *args, **kwargs)

    real_generate = capt_jax.evaluate.generate
    monkeypatch.setattr(capt_jax.evaluate, "generate", counting_generate)
    work = tmp_path / "exp"
    args = ["--config=configs/experiment_prontoqa_smollm2.py", "--methods=base", f"--workdir={work}"]
    args += [f"--config.model.path={tiny_chat_dir}", *TINY]
    main([*args, "--seeds=0"])
    assert sum(calls) == 9  # 3 splits x 3 questions
    main([*args, "--seeds=0,1"])  # a new invocation: no reply kept in memory from the first
    assert sum(calls) == 9
    replies = {}
    for line in (work / "predictions.jsonl").read_text().splitlines():
        p = json.loads(line)
        replies.setdefault((p["split"], p["id"]), set()).add(p["reply"])
    assert len(replies) == 9 and all(len(r) == 1 for r in replies.values())
    main([*args, "--seeds=0,1,2", "--config.eval.max_new_tokens=3"])  # other settings: nothing is reused
    assert sum(calls) == 9 + 9
    # Results from before capt_jax recorded its settings do not say how they were decoded: they fill no cache.
    for file in work.glob("base/seed_*/eval_raw/results.json"):
        results = json.loads(file.read_text())
        del results["settings_key"]
        file.write_text(json.dumps(results))
    (work / "base" / "seed_2" / "eval_raw" / "results.json").unlink()
    main([*args, "--seeds=0,1,2", "--config.eval.max_new_tokens=3"])
    assert sum(calls) == 9 + 9 + 9


def test_reused_predictions_must_answer_every_current_split_and_ignore_skipped_ones():
    sets = {"id": TestSplit([Example(i, "prontoqa", "true", "p", "", "True") for i in ("a", "b")])}

    def answered(*rows: tuple[str, str]) -> list[dict[str, str]]:
        return [{"split": split, "id": i} for split, i in rows]

    assert answers_sets(answered(("id", "a"), ("id", "b"), ("non", "a")), sets)  # "non" is skipped now: ignored
    assert answers_sets(answered(("id", "b"), ("id", "a")), sets)  # in any order
    assert not answers_sets(answered(("id", "a")), sets)
    assert not answers_sets(answered(("id", "a"), ("id", "b"), ("id", "c")), sets)


def test_a_split_of_refills_is_drawn_with_the_id_questions():
    def split(*questions: tuple[str, str]) -> TestSplit:
        return TestSplit([Example(i, "prontoqa", "true", "p", "", answer) for i, answer in questions])

    sets = {
        "id": split(("a", "True"), ("b", "False")),
        "anti": split(("a", "True"), ("b", "False")),  # the ID questions' refills: same ids and answers, in order
        "non": split(("a", "True"), ("b", "True")),  # an answer differs: other questions
        "other": split(("b", "False"), ("a", "True")),  # another order
    }
    assert {name: question_draw(name, sets) for name in sets} == {
        "id": "id",
        "anti": "id",
        "non": "non",
        "other": "other",
    }
    # Paired, a model that loses the same two of 40 questions out of distribution in every seed has a gap interval
    # of exactly 5 points; drawn independently it is wide.
    id_ = np.tile(np.arange(40) % 2, (3, 1))
    ood = id_.copy()
    ood[:, [1, 3]] = 0
    matrices = {("sft", None, "id"): dict(enumerate(id_)), ("sft", None, "anti"): dict(enumerate(ood))}
    [paired] = ood_gaps(matrices, {"id": "id", "anti": "id"})
    [independent] = ood_gaps(matrices, {"id": "id", "anti": "anti"})
    assert (paired["questions"], independent["questions"]) == ("paired", "independent")
    assert paired["points_mean"] == independent["points_mean"] == pytest.approx(5.0)
    assert 0 <= paired["ci_low"] and paired["ci_high"] <= 15
    assert independent["ci_high"] - independent["ci_low"] > 2 * (paired["ci_high"] - paired["ci_low"])


def test_every_ablation_is_compared_with_sft_like_capt():
    questions = [Example(str(i), "prontoqa", "true", "p", "", "True") for i in range(6)]
    sets = {"id": TestSplit(questions), "anti": TestSplit(questions)}
    right = {"sft": (6, 3), "capt": (5, 5), "order": (6, 4)}  # correct answers on (id, anti), every seed
    predictions = [
        {"method": m, "estimator": None if m == "sft" else "self", "seed": seed, "split": split, "id": str(i)}
        | {"correct": i < right[m][k]}
        for m in right
        for seed in (0, 1)
        for k, split in enumerate(sets)
        for i in range(6)
    ]
    _, paired, gaps = summarise(predictions, sets)
    pairs = [("capt (self)", "sft"), ("order (self)", "sft"), ("capt (self)", "order (self)")]
    assert sorted((p["a"], p["b"], p["split"]) for p in paired) == sorted((*pair, s) for pair in pairs for s in sets)
    differences = {g["label"]: g["points_mean"] for g in gaps if "-" in g["method"]}
    # (id - anti) gaps: capt 0, order 33.3, sft 50 points. CAPT is also set against the ablation, as the paper's
    # ablation claim (random letters keep the gap smaller than fixed ones) needs.
    assert differences == pytest.approx(
        {"capt (self) minus sft": -50.0, "order (self) minus sft": -50 / 3, "capt (self) minus order (self)": -100 / 3}
    )
    [versus_order] = [p for p in paired if p["b"] == "order (self)" and p["split"] == "anti"]
    assert (versus_order["a_better"], versus_order["b_better"]) == (1, 0)  # question 4: right twice against never
    # Each paired test also carries the accuracy difference with its interval: capt 5/6 against sft 6/6 on id.
    [versus_sft] = [p for p in paired if (p["a"], p["b"], p["split"]) == ("capt (self)", "sft", "id")]
    assert versus_sft["difference"]["points_mean"] == pytest.approx(-100 / 6)
    assert versus_sft["difference"]["ci_low"] <= -100 / 6 <= versus_sft["difference"]["ci_high"] <= 0


@pytest.mark.parametrize(
    "flag, message",
    [("--methods=sft,dpo", "--methods"), ("--seeds=0,x", "--seeds"), ("--estimators=gold", "--estimators")],
)
def test_bad_grid_flags_are_one_error_line(flag, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--config=configs/experiment_prontoqa_smollm2.py", flag])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_a_grid_with_no_split_left_to_score_trains_nothing(tiny_chat_dir, tmp_path, capsys):
    """Every test question is a training question's twin, so the guard empties every split: say so before any
    model trains, not after the grid with "no finished evaluation"."""
    from capt_jax.data.prontoqa_generator import generate_prontoqa

    twins = tmp_path / "twins.json"
    twins.write_text(json.dumps({"next_steps": generate_prontoqa(20, (3, 5), "true", True, 0) * 3}))
    work = tmp_path / "exp"
    with pytest.raises(SystemExit) as exit_:
        main(
            ["--config=configs/experiment_prontoqa_smollm2.py", "--methods=base,sft", "--seeds=0", f"--workdir={work}",
             f"--config.model.path={tiny_chat_dir}", f"--config.data.data_file={twins}", "--config.data.n_train=30"]
        )  # fmt: skip
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config key 'eval.splits': no requested test split can be evaluated (")
    assert "all 6 test questions share a question or template with training" in err and not work.exists()


def test_estimator_rows_average_valid_rates_over_seeds_and_leave_out_the_oracle():
    def results(valid: float, leftovers: int, **paths: float | int | None) -> dict:
        return {"splits": {"id": {"estimator_valid_rate": valid, "estimator_gold_leftovers": leftovers, **paths}}}

    paths = {"n_estimated": 4, "accuracy_estimated": 0.5, "n_fallback": 16, "accuracy_fallback": 0.75}
    paths["estimator_accepted_with_drops"] = 2
    paths["estimator_accepted_cut_off"] = 1
    evaluations = [
        ("capt", "self", 0, results(0.2, 3, **paths)),
        ("capt", "self", 1, results(0.4, 1, **dict(paths, n_estimated=8, accuracy_estimated=1.0, n_fallback=12))),
        ("capt", "oracle", 0, results(1.0, 0)),
        ("sft", None, 0, {"splits": {"id": {}}}),
    ]
    (row,) = estimator_rows(evaluations)
    assert row == {
        "method": "capt",
        "estimator": "self",
        "split": "id",
        "seeds": [0, 1],
        "valid_rate_mean": pytest.approx(0.3),
        "gold_leftovers": 4,
        "accepted_with_drops": 4,
        "accepted_cut_off": 2,
        "n_estimated": 12,
        "accuracy_estimated": pytest.approx((2 + 8) / 12),
        "n_fallback": 28,
        "accuracy_fallback": pytest.approx(0.75),
    }
    # An evaluation from before the per-path counts leaves them unknown rather than pooled over fewer seeds.
    (row,) = estimator_rows([*evaluations[:1], ("capt", "self", 1, results(0.4, 1))])
    assert row["n_estimated"] is None and row["accuracy_fallback"] is None and row["accepted_with_drops"] is None
    assert row["accepted_cut_off"] is None
    # summary.md shows the unknown counts as "-" and still ends with the caller's note.
    text = markdown([], [], [], [row], ["id"], "NOTE")
    assert "| capt | self | id | 0,1 | 30.0% | - | - | 4 | - | - |" in text and text.endswith("\nNOTE")
