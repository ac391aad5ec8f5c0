"""The demo pipeline end to end (shortened, on a tiny model), and the self-estimating two-stage run."""

from __future__ import annotations

import json

from capt_jax.config import load_config
from capt_jax.demo import DEMO_CONFIG, main

TINY = [
    "--config.data.prontoqa_num_examples=60",
    "--config.data.n_train=8",
    "--config.data.copies=2",
    "--config.train.max_steps=2",
    "--config.train.batch_size=2",
    "--config.checkpoint.every_steps=1",
    "--config.eval.max_examples=3",
    "--config.eval.max_new_tokens=6",
    "--config.eval.batch_size=4",
]


def test_shortened_demo_runs_end_to_end(tiny_chat_dir, tmp_path, capsys):
    main(["--workdir", str(tmp_path / "demo"), f"--config.model.path={tiny_chat_dir}", *TINY])
    out = capsys.readouterr().out
    table = out[out.index("| method |") :].splitlines()
    assert table[0] == "| method | id | anti | non |"
    assert [row.split("|")[1].strip() for row in table[2:5]] == ["base", "CAPT (oracle: upper bound)", "SFT"]
    assert all("(n=3)" in c and "[" in c for row in table[2:5] for c in row.split("|")[2:5])
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert [r["method"] for r in results] == ["base", "CAPT", "SFT"]
    assert [r["label"] for r in results] == ["base", "CAPT (oracle: upper bound)", "SFT"]
    assert all(r["splits"][s]["n"] == 3 for r in results for s in ("id", "anti", "non"))
    assert results[1]["splits"]["non"]["estimator_valid_rate"] == 1.0  # the oracle abstracts every OOD question
    assert (tmp_path / "demo" / "accuracy.png").stat().st_size > 0
    # A second run resumes: nothing is retrained or re-evaluated.
    main(["--workdir", str(tmp_path / "demo"), f"--config.model.path={tiny_chat_dir}", *TINY])
    assert capsys.readouterr().out.count("reusing") == 3
    # A changed evaluation setting is never answered from the files of the old one: all three are evaluated anew.
    main(
        [
            "--workdir",
            str(tmp_path / "demo"),
            f"--config.model.path={tiny_chat_dir}",
            *TINY,
            "--config.eval.max_examples=2",
        ]
    )
    assert "reusing" not in capsys.readouterr().out
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert all(r["splits"][s]["n"] == 2 for r in results for s in ("id", "anti", "non"))


def test_two_stage_training_then_self_estimation(tiny_chat_dir, tmp_path):
    from capt_jax.evaluate import evaluate
    from capt_jax.train import train

    config = load_config(
        str(DEMO_CONFIG),
        [
            f"--config.model.path={tiny_chat_dir}",
            f"--config.workdir={tmp_path / 'w'}",
            "--config.data.estimation_weight=0.5",
            "--config.eval.estimator=self",
            "--config.eval.estimator_retries=1",
            "--config.eval.estimator_max_new_tokens=8",
            *TINY,
        ],
    )
    last = train(config)
    assert last.step == 2 and last.metrics["loss"] > 0
    results, predictions = evaluate(config, config.workdir)
    assert len(predictions) == 9 and {p["split"] for p in predictions} == {"id", "anti", "non"}
    for split in results["splits"].values():
        # A two-step tiny model cannot abstract yet: every estimate is invalid, retried, then answered raw.
        assert split["estimator_valid_rate"] == 0.0 and split["estimator_fallbacks"] == split["n"] == 3
    assert results["estimator"] == "self" and results["step"] == 2
