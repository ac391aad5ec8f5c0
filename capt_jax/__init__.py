"""capt_jax: Causality-Aware Post-Training (Gui & Ji 2025) in JAX."""

from capt_jax.model import ModelConfig, ModelConfigError
from capt_jax.pretrained import Pretrained, load_pretrained
from capt_jax.weights import WeightsError

__all__ = ["ModelConfig", "ModelConfigError", "Pretrained", "WeightsError", "load_pretrained"]
