"""The `python -m capt_jax.data` CLI and the config-driven pipeline, with no data files."""

import json

import pytest

from capt_jax.data import __main__ as cli
from capt_jax.data import default_data_config, paper_data_config, test_examples, training_data
from capt_jax.data.prontoqa_generator import generate_prontoqa


@pytest.fixture
def no_shared_data(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPT_DATA_DIR", str(tmp_path / "absent"))


PRONTOQA = ["--config.data.dataset=prontoqa"]


def test_show_json_lines(no_shared_data, capsys):
    cli.main(
        ["show", *PRONTOQA, "--config.data.mode=random", "--n", "3", "--config.data.intervention_seed=2", "--json"]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert set(line) == {"id", "split", "variant", "prompt", "target", "answer", "symbols"}
        assert line["split"] == "train" and line["variant"] == "id" and line["answer"] in ("True", "False")
        assert line["target"].endswith(f"<answer>{line['answer']}</answer>")
        assert all(len(letter) == 1 and letter.isupper() for letter in line["symbols"])


def test_show_ood_variant_as_text(no_shared_data, capsys):
    cli.main(
        [
            "show",
            *PRONTOQA,
            "--split",
            "non",
            "--config.data.mode=original",
            "--n",
            "1",
            "--config.data.prontoqa_ontology=fictional",
            "--config.data.prontoqa_hops=2,4",
        ]
    )
    out = capsys.readouterr().out
    assert "(non, non) ===" in out and "--- prompt ---\nGiven facts:" in out and "--- target ---\n<think>" in out


def test_show_reports_missing_files(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["show", *PRONTOQA, f"--config.data.data_dir={tmp_path}", "--config.data.mode=null", "--n", "1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "prontoqa.json: data file not found" in err
    (tmp_path / "3hop_random.json").write_text("{}")  # a folder of other PrOntoQA files: say how to pick one
    with pytest.raises(SystemExit):
        cli.main(["show", *PRONTOQA, f"--config.data.data_dir={tmp_path}", "--n", "1"])
    err = capsys.readouterr().err
    assert "data file not found; to use one of 3hop_random.json" in err and "'data.data_file'" in err


def test_show_says_how_many_test_questions_the_guard_removed(tmp_path, capsys):
    """`show` exists to audit a split, so it says what the contamination guard took, as evaluation does."""
    records = generate_prontoqa(20, (3, 5), "true", True, 0)
    path = tmp_path / "thrice.json"
    path.write_text(json.dumps({"next_steps": records * 3}))  # each question 3 times: some land in both splits
    args = ["show", *PRONTOQA, f"--config.data.data_file={path}", "--config.data.n_train=20", "--n", "0", "--json"]
    cli.main([*args, "--split", "id"])
    captured = capsys.readouterr()
    shown = len(captured.out.splitlines())
    assert 0 < shown < 6
    assert f"removed {6 - shown} of 6 'id' questions that share a question or template with training" in captured.err
    cli.main([*args, "--split", "id", "--config.data.keep_overlap=True"])
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 6 and "contamination guard" not in captured.err


def test_report_generator_settings(no_shared_data, monkeypatch, capsys):
    monkeypatch.setattr(cli, "REPORT_GENERATOR_SETTINGS", [("true", 3, 0), ("fictional", (2, 4), 1)])
    cli.main(["report"])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "generator ontology=true hops=3 seed=0: 500/500 valid, invalid rate 0.00%",
        "generator ontology=fictional hops=(2, 4) seed=1: 500/500 valid, invalid rate 0.00%",
    ]


def test_paper_configs():
    assert default_data_config().mode == "random"
    assert paper_data_config("prontoqa", "capt").mode == "random"
    sft = paper_data_config("cladder", "sft")
    assert (sft.dataset, sft.mode, sft.n_train, sft.split_seed) == ("cladder", "null", 100, 19)
    with pytest.raises(ValueError):
        paper_data_config("cladder", "dpo")


def test_pipeline_from_config(no_shared_data):
    config = paper_data_config("prontoqa", "capt")
    config.source, config.prontoqa_num_examples, config.n_train, config.copies = "generate", 200, 10, 3
    pairs = training_data(config)
    assert len(pairs) == 30 and all(p["completion"].startswith("<think>") for p in pairs)
    tests = test_examples(config)
    assert {name: len(found.examples) for name, found in tests.items()} == {"id": 20, "anti": 20, "non": 20}
    assert all(found.excluded_overlap == () and found.skipped is None for found in tests.values())


def test_export_writes_training_jsonl(no_shared_data, tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    cli.main(
        [
            "export",
            *PRONTOQA,
            "--config.data.mode=random",
            "--config.data.n_train=20",
            "--config.data.copies=4",
            "--out",
            str(out),
        ]
    )
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(pairs) == 80 and all(set(p) == {"prompt", "completion"} for p in pairs)
    assert "wrote 80 pairs (20 examples)" in capsys.readouterr().out


def test_show_prints_every_test_question_with_its_split(no_shared_data, capsys):
    args = ["show", *PRONTOQA, "--config.data.mode=null", "--n", "0", "--json", "--split"]
    cli.main([*args, "id"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 400 and {line["split"] for line in lines} == {"id"}
    cli.main([*args, "train"])
    trained = {json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()}
    assert len(trained) == 100 and not trained & {line["id"] for line in lines}
