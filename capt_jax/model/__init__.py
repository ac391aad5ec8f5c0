"""The decoder: config, rotary embeddings and the pure forward pass."""

from capt_jax.model.config import ModelConfig, ModelConfigError
from capt_jax.model.decoder import (
    KVCache,
    Lora,
    Params,
    forward,
    hidden_states,
    init_params,
    logits_from_hidden,
    param_shapes,
)

__all__ = [
    "ModelConfig",
    "ModelConfigError",
    "KVCache",
    "Lora",
    "Params",
    "forward",
    "hidden_states",
    "init_params",
    "logits_from_hidden",
    "param_shapes",
]
