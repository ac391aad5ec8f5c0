"""Architecture hyper-parameters of the Llama/Qwen2 decoder family, read from a Hugging Face config.json.

One frozen, hashable dataclass, so a config can be a static argument of `jax.jit`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from capt_jax.errors import CaptError
from capt_jax.model.quant import QUANTIZE_KINDS, Quantization

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


class ModelConfigError(CaptError, ValueError):
    """A config.json that this port cannot run (unsupported architecture, missing or bad field)."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    # Hashable form of the rope scaling dict: (("factor", 8.0), ...); empty for plain RoPE.
    rope_scaling: tuple[tuple[str, Any], ...] = ()
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    mlp_bias: bool = False
    max_position_embeddings: int = 4096
    eos_token_ids: tuple[int, ...] = ()
    # Runtime choices, not part of the checkpoint.
    dtype: str = "float32"  # compute dtype of activations
    attention_impl: str | None = None  # None: cuDNN on GPU in bf16/fp16, else XLA; "xla"/"cudnn" force one
    remat_policy: str = "none"  # see capt_jax.model.decoder.REMAT_POLICIES
    # The XLA path's attention in training and scoring takes the queries in blocks of at least this many (at most 8
    # blocks), each against only the keys up to its last query (attention.query_blocks); None: one block.
    causal_block: int | None = 64
    # False: the layers run as separate blocks over per-layer weights ("layers_0", ...: decoder.unstack_layers), as
    # decoding does, so no step copies a layer's weights out of the stacked arrays; True: one scanned block.
    scan_layers: bool = True
    # Storage of the seven projections of every layer (capt_jax.model.quant); it changes the params tree.
    quantize: str = "none"  # none | int8 | nf4
    double_quant: bool = False  # quantize the blockwise scales too

    def __post_init__(self) -> None:
        if self.quantize not in QUANTIZE_KINDS:
            raise ModelConfigError(f"quantize {self.quantize!r} is not one of {list(QUANTIZE_KINDS)}")
        if self.causal_block is not None and self.causal_block < 1:
            raise ModelConfigError(f"causal_block must be a number of queries or None, got {self.causal_block}")
        if self.double_quant and self.quantize == "none":
            raise ModelConfigError("double_quant quantizes the scales of int8 or nf4 weights; quantize is 'none'")

    @property
    def rope_type(self) -> str:
        return dict(self.rope_scaling).get("rope_type", "default")

    @property
    def quantization(self) -> Quantization | None:
        return None if self.quantize == "none" else Quantization(self.quantize, self.double_quant)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json", **runtime: Any) -> ModelConfig:
        """Map a transformers config (v4 or v5 layout) onto ModelConfig, naming `source` in every error."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelConfigError(
                f"{source}: model_type {model_type!r} is not supported; expected one of {SUPPORTED_MODEL_TYPES}"
            )

        def field(name: str, kind: type = int) -> Any:
            if hf.get(name) is None:
                raise ModelConfigError(f"{source}: missing required field {name!r} for model_type {model_type!r}")
            try:
                return kind(hf[name])
            except (TypeError, ValueError) as e:
                raise ModelConfigError(f"{source}: field {name!r} = {hf[name]!r} is not a valid {kind.__name__}") from e

        num_heads = field("num_attention_heads")
        hidden = field("hidden_size")
        num_kv = int(hf.get("num_key_value_heads") or num_heads)
        if num_heads % num_kv:
            raise ModelConfigError(
                f"{source}: num_attention_heads={num_heads} is not a multiple of num_key_value_heads={num_kv}"
            )
        if hf.get("use_sliding_window") or "sliding_attention" in (hf.get("layer_types") or ()):
            raise ModelConfigError(
                f"{source}: sliding-window attention is not supported (use_sliding_window / layer_types)"
            )
        if hf.get("hidden_act", "silu") != "silu":
            raise ModelConfigError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported; expected 'silu'")

        rope = _rope_parameters(hf, source)
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
        return cls(
            model_type=model_type,
            vocab_size=field("vocab_size"),
            hidden_size=hidden,
            intermediate_size=field("intermediate_size"),
            num_layers=field("num_hidden_layers"),
            num_heads=num_heads,
            num_kv_heads=num_kv,
            head_dim=int(hf.get("head_dim") or hidden // num_heads),
            rms_norm_eps=field("rms_norm_eps", float),
            rope_theta=float(rope.pop("rope_theta")),
            rope_scaling=tuple(sorted(rope.items())) if rope.get("rope_type", "default") != "default" else (),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            # Qwen2 always carries q/k/v biases; Llama declares them with attention_bias.
            qkv_bias=model_type == "qwen2" or bool(hf.get("attention_bias", False)),
            mlp_bias=bool(hf.get("mlp_bias", False)),
            max_position_embeddings=int(hf.get("max_position_embeddings") or 4096),
            eos_token_ids=eos_ids,
            **runtime,
        )

    @classmethod
    def from_pretrained_dir(cls, path: str | Path, **runtime: Any) -> ModelConfig:
        file = Path(path) / "config.json"
        if not file.is_file():
            raise ModelConfigError(f"{file}: not found; a model folder needs a Hugging Face config.json")
        try:
            hf = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise ModelConfigError(f"{file}: not valid JSON ({e})") from e
        return cls.from_hf_dict(hf, source=str(file), **runtime)


def _rope_parameters(hf: dict[str, Any], source: str) -> dict[str, Any]:
    """Unify transformers v5 `rope_parameters` and v4 `rope_theta` + `rope_scaling` into one dict."""
    params = dict(hf.get("rope_parameters") or {})
    if not params:
        params = dict(hf.get("rope_scaling") or {})
        params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    if "type" in params and "rope_type" not in params:  # pre-4.45 spelling
        params["rope_type"] = params.pop("type")
    params.pop("type", None)
    params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = params.setdefault("rope_type", "default")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ModelConfigError(
            f"{source}: rope type {rope_type!r} is not supported; expected one of {SUPPORTED_ROPE_TYPES}"
        )
    required = {
        "linear": ("factor",),
        "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    }
    for key in required.get(rope_type, ()):
        if key not in params:
            raise ModelConfigError(f"{source}: rope type {rope_type!r} needs field {key!r}")
    return params
