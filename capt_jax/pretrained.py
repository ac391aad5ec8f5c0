"""`load_pretrained`: a local folder, a GGUF file or a hub id -> config, params, tokenizer and a jitted forward."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from capt_jax.errors import MissingFileError
from capt_jax.lora import merge_lora, put_extras, split_trainable
from capt_jax.model import Lora, ModelConfig, Params, forward
from capt_jax.weights import load_params

HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]


@functools.partial(jax.jit, static_argnames=("config", "lora_scale"))
def _logits(
    params: Params,
    adapters: Params | None,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    config: ModelConfig,
    lora_scale: float,
) -> jax.Array:
    lora = None if adapters is None else Lora(adapters, lora_scale)
    return forward(params, input_ids, config, token_mask=attention_mask, lora=lora)[0]


@dataclasses.dataclass
class Pretrained:
    """A loaded model: what training, generation and evaluation take as their starting point.

    `adapters` (the "lora" collection, applied at `lora_scale`) are set on a quantized base with trained
    adapters, which are kept beside it rather than merged (see `with_adapters`).
    """

    config: ModelConfig
    params: Params
    tokenizer: Any
    path: Path
    adapters: Params | None = None
    lora_scale: float = 1.0

    def logits(self, input_ids: Any, attention_mask: Any | None = None) -> jax.Array:
        """Logits [batch, seq, vocab]; attention_mask marks real tokens (left padding allowed)."""
        input_ids = jnp.asarray(input_ids, jnp.int32)
        mask = jnp.ones(input_ids.shape, bool) if attention_mask is None else jnp.asarray(attention_mask, bool)
        return _logits(self.params, self.adapters, input_ids, mask, self.config, self.lora_scale)

    def with_adapters(self, trainable: Params, scale: float) -> Pretrained:
        """This model with a trained tree (adapters and any extra trained leaves) applied.

        A full-precision base takes W + scale * B @ A merged in, so decoding runs no adapter matmuls. A quantized
        base keeps the adapters beside it, as they were trained: merging would need the layers dequantized (the
        whole model in full precision) or re-quantized (another model than the one trained). Extra trained leaves
        (norms, biases) are never quantized, so they replace their base leaves either way.
        """
        if self.config.quantization is None:
            return dataclasses.replace(self, params=merge_lora(self.params, trainable, scale))
        adapters, extras = split_trainable(trainable)
        return dataclasses.replace(self, params=put_extras(self.params, extras), adapters=adapters, lora_scale=scale)


def resolve_model_dir(path_or_id: str | Path) -> Path:
    """A folder as is; a .gguf file or 'smollm2' converted once into the cache; anything else from the hub."""
    # Imported here, not at the top: `import capt_jax` would otherwise load capt_jax.convert before
    # `python -m capt_jax.convert` runs it, and runpy warns about that.
    from capt_jax.convert import SMOLLM2_ALIAS, converted_gguf, packaged_smollm2_gguf

    if not str(path_or_id).strip():  # Path("") is the current folder
        raise MissingFileError(
            "the model path (model.path, or --base-model) is empty: give a model folder, a .gguf "
            "file, a hub id or smollm2"
        )
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.suffix == ".gguf" and path.is_file():
        return converted_gguf(path)
    if str(path_or_id) == SMOLLM2_ALIAS:
        return converted_gguf(packaged_smollm2_gguf())
    if path.exists() or str(path_or_id).startswith((".", "/", "~")):
        raise MissingFileError(f"{path}: expected a model folder with config.json and *.safetensors, or a .gguf file")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_id), allow_patterns=HUB_PATTERNS))
    except Exception as e:  # offline, unknown repo, gated model: say which and why
        raise MissingFileError(
            f"{path_or_id!r} is not a local folder, and downloading it from the Hugging Face hub "
            f"failed: {type(e).__name__}: {e}"
        ) from e


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def load_tokenizer(folder: Path) -> Any | None:
    """The folder's tokenizer, or None for weight-only folders (e.g. random test models)."""
    if not has_tokenizer(folder):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:  # e.g. only tokenizer_config.json, or a slow tokenizer without its package
        reason = " ".join(str(e).split()) or type(e).__name__
        raise MissingFileError(f"{folder}: its tokenizer cannot be loaded: {reason}") from None


def load_pretrained(
    path_or_id: str | Path,
    dtype: str = "float32",
    compute_dtype: str | None = None,
    attention_impl: str | None = None,
    quantize: str = "none",
    double_quant: bool = False,
    progress: bool = True,
    **load_kwargs: Any,
) -> Pretrained:
    """Load a Llama/Qwen2 checkpoint: params stored in `dtype`, activations in `compute_dtype` (default: dtype).

    `quantize` ("int8", "nf4") stores the seven projections of every layer quantized as they are read, with
    `double_quant` their scales too; embeddings, the LM head, norms and biases stay in `dtype`.
    """
    folder = resolve_model_dir(path_or_id)
    config = ModelConfig.from_pretrained_dir(
        folder,
        dtype=compute_dtype or dtype,
        attention_impl=attention_impl,
        quantize=quantize,
        double_quant=double_quant,
    )
    params = load_params(folder, config, dtype=dtype, progress=progress, **load_kwargs)
    return Pretrained(config=config, params=params, tokenizer=load_tokenizer(folder), path=folder)
