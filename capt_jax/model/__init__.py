"""The decoder: config, Flax modules (layers, attention, decoder), kernels and the pure functions over them."""

from capt_jax.model.config import ModelConfig, ModelConfigError
from capt_jax.model.decoder import (
    Decoder,
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
    "Decoder",
    "KVCache",
    "Lora",
    "Params",
    "forward",
    "hidden_states",
    "init_params",
    "logits_from_hidden",
    "param_shapes",
]
