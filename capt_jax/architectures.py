"""Named model architectures as Hugging Face config.json dicts: random weights of the real shapes, no download.

The benchmarks, the transformers + peft peer and the tests build their models from these, so both frameworks
time the very same architecture. Framework-free: importing this pulls in neither JAX nor torch.
"""

from __future__ import annotations

import json
from typing import Any

from capt_jax.errors import ConfigError

# Architectures in Hugging Face config.json form, so peft_peer.py builds the very same model from them.
ARCHS: dict[str, dict[str, Any]] = {
    "qwen2.5-3b": {
        "model_type": "qwen2",
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "head_dim": 128,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "tie_word_embeddings": True,
        "max_position_embeddings": 32768,
        "hidden_act": "silu",
        "eos_token_id": 151645,
    },
    "llama3.2-3b": {
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "tie_word_embeddings": True,
        "max_position_embeddings": 131072,
        "hidden_act": "silu",
        "eos_token_id": 128009,
    },
    "smollm2-135m": {
        "model_type": "llama",
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
        "tie_word_embeddings": True,
        "max_position_embeddings": 8192,
        "hidden_act": "silu",
        "eos_token_id": 2,
    },
    # For smoke tests: seconds to compile on a CPU.
    "tiny": {
        "model_type": "qwen2",
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "tie_word_embeddings": True,
        "max_position_embeddings": 4096,
        "hidden_act": "silu",
        "eos_token_id": 0,
    },
}


def hf_config_dict(arch: str | None = None, model: str | None = None) -> dict[str, Any]:
    """The Hugging Face config.json of a named architecture or of a model folder."""
    if model is not None:
        from capt_jax.pretrained import resolve_model_dir

        with open(resolve_model_dir(model) / "config.json") as f:
            return json.load(f)
    if arch not in ARCHS:
        raise ConfigError(f"--arch {arch!r} is not one of {list(ARCHS)}")
    return dict(ARCHS[arch])
