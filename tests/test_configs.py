"""Every config file the project ships loads and passes `validate`, so a renamed or retyped key breaks a test, not a
user's first run."""

from pathlib import Path

import pytest

from capt_jax.config import load_config, validate

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


def test_the_configs_folder_is_found():
    assert len(CONFIGS) >= 8


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_validates(path, tmp_path, monkeypatch):
    monkeypatch.chdir(path.parents[1])  # relative data paths in a config are relative to the repository
    config = load_config(path)
    if config.data.kind == "jsonl":  # these configs take their data file on the command line, as their usage says
        (tmp_path / "train.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
        config.data.path = str(tmp_path / "train.jsonl")
    validate(config)
