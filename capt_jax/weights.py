"""Hugging Face safetensors <-> the decoder's params pytree, one tensor at a time and without torch.

Files are memory-mapped; each stacked leaf is filled layer by layer in the target dtype and moved to its
device before the next one is read, so a bf16 3B model never exists as a float32 copy on the host. With
`config.quantize`, each projection tensor is quantized as it is read (capt_jax.model.quant), so the model
exists only quantized: at most one tensor is ever held in full precision.
Writing (for export) streams tensors into the file one by one, from views of the stacked leaves.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np
from tqdm.auto import tqdm

from capt_jax.errors import CaptError
from capt_jax.model import ModelConfig, Params, param_shapes
from capt_jax.model.decoder import PROJECTIONS
from capt_jax.model.quant import Quantization, quantize

SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}

_DTYPE_NAMES = {np.dtype(dtype): name for name, dtype in SAFETENSORS_DTYPES.items()}

# Our leaf path inside a layer -> the Hugging Face module path inside `model.layers.{i}`.
_LAYER_MODULES = {
    "input_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj",
    "gate_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}
_TOP_LEVEL = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight", "lm_head": "lm_head.weight"}


class WeightsError(CaptError, ValueError):
    """A checkpoint that does not match its config: a tensor missing, misshapen or unreadable."""


def hf_tensor_name(path: tuple[str, ...], layer: int | None = None) -> str:
    """('layers', 'q_proj', 'weight'), 3 -> 'model.layers.3.self_attn.q_proj.weight'."""
    if path[0] != "layers":
        return _TOP_LEVEL[path[0]]
    module = _LAYER_MODULES[path[1]]
    suffix = path[2] if len(path) > 2 else "weight"
    return f"model.layers.{layer}.{module}.{suffix}"


class SafetensorsFolder:
    """Lazy, memory-mapped view of the tensors in a folder (one file, or shards listed in an index)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._files: dict[str, Path] = {}
        self._headers: dict[Path, tuple[int, dict[str, Any]]] = {}
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise WeightsError(f"{index}: not a safetensors index (need a 'weight_map' object): {e}") from e
            self._files = {name: self.folder / file for name, file in weight_map.items()}
        else:
            files = sorted(self.folder.glob("*.safetensors"))
            if not files:
                raise WeightsError(
                    f"{self.folder}: no *.safetensors files (PyTorch .bin checkpoints are not supported; "
                    "re-save them with save_pretrained(safe_serialization=True))"
                )
            for file in files:
                self._files.update({name: file for name in self._header(file)[1]})

    def _header(self, file: Path) -> tuple[int, dict[str, Any]]:
        if file not in self._headers:
            try:
                with open(file, "rb") as f:
                    (length,) = struct.unpack("<Q", f.read(8))
                    header = json.loads(f.read(length))
            except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
                raise WeightsError(f"{file}: not a readable safetensors file ({e})") from e
            header.pop("__metadata__", None)
            self._headers[file] = (8 + length, header)
        return self._headers[file]

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def file_of(self, name: str) -> Path:
        return self._files[name]

    def read(self, name: str) -> np.ndarray:
        """The tensor as a read-only memmap view in its stored dtype."""
        if name not in self._files:
            raise WeightsError(f"{self.folder}: tensor {name!r} is missing from the checkpoint")
        file = self._files[name]
        data_start, header = self._header(file)
        if name not in header:
            raise WeightsError(f"{file}: tensor {name!r} is listed in the index but not in this file")
        info = header[name]
        dtype = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise WeightsError(f"{file}: tensor {name!r} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        size = file.stat().st_size
        if data_start + end > size:  # a truncated download or copy
            raise WeightsError(f"{file}: truncated: tensor {name!r} ends at byte {data_start + end} of {size}")
        raw = np.memmap(file, dtype=np.uint8, mode="r", offset=data_start + begin, shape=(end - begin,))
        try:
            return raw.view(dtype).reshape(info["shape"])
        except ValueError as e:
            raise WeightsError(f"{file}: tensor {name!r}: {info['shape']} does not fit its {end - begin} bytes") from e


def _leaf_paths(tree: Params) -> Iterator[tuple[tuple[str, ...], tuple[int, ...]]]:
    for path, shape in jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda s: isinstance(s, tuple))[0]:
        yield tuple(k.key for k in path), shape


def _set_leaf(tree: Params, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def load_params(
    folder: str | Path,
    config: ModelConfig,
    dtype: str = "float32",
    place: Callable[[tuple[str, ...], np.ndarray], jax.Array] | None = None,
    progress: bool = True,
) -> Params:
    """Read every tensor the config calls for into a params pytree of `dtype`, the projections quantized when
    `config.quantize` says so (from the stored values, whatever `dtype`, so every load quantizes alike).

    `place(path, host_array)` puts a finished leaf on its device(s) (e.g. with a sharding); by default it is
    `jax.device_put` onto the default device.
    """
    tensors = SafetensorsFolder(folder)
    place = place or (lambda _path, array: jax.device_put(array))
    target = np.dtype(dtype) if dtype != "bfloat16" else np.dtype(ml_dtypes.bfloat16)
    quant = config.quantization
    params: Params = {}
    leaves = list(_leaf_paths(param_shapes(config.replace(quantize="none", double_quant=False))))
    for path, shape in tqdm(leaves, desc=f"loading {Path(folder).name}", disable=not progress, leave=False):
        if quant is not None and path[0] == "layers" and path[1] in PROJECTIONS and path[-1] == "weight":
            for leaf, host in _quantized_layers(tensors, path, shape, quant).items():
                _set_leaf(params, (*path, leaf), place((*path, leaf), host))
            continue
        host = aligned_empty(shape, target)
        if path[0] == "layers":
            for layer in range(config.num_layers):
                host[layer] = _checked(tensors, hf_tensor_name(path, layer), shape[1:])
        else:
            host[...] = _checked(tensors, hf_tensor_name(path), shape)
        _set_leaf(params, path, place(path, host))
        del host
    return params


_quantize = jax.jit(quantize, static_argnums=1)


def _quantized_layers(
    tensors: SafetensorsFolder, path: tuple[str, ...], shape: tuple[int, ...], quant: Quantization
) -> dict[str, np.ndarray]:
    """The quantized leaves of one stacked projection, [L, ...] each, quantizing one layer's tensor at a time."""
    stacked: dict[str, np.ndarray] = {}
    for layer in range(shape[0]):
        leaves = _quantize(_checked(tensors, hf_tensor_name(path, layer), shape[1:]), quant)
        for name, value in leaves.items():
            if name not in stacked:
                stacked[name] = aligned_empty((shape[0], *value.shape), value.dtype)
            stacked[name][layer] = np.asarray(value)
    return stacked


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype, alignment: int = 64) -> np.ndarray:
    """An uninitialised array whose data starts on an `alignment`-byte boundary.

    XLA:CPU adopts such a buffer in `jax.device_put` instead of copying it (numpy's own large arrays start 16
    bytes past a page, and are copied): on a CPU the loaded model then takes its own size once, not plus a
    copy of the leaf being placed (measured in benchmarks/qwen3b_cpu.py).
    """
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(size + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start : start + size].view(dtype).reshape(shape)


def _checked(tensors: SafetensorsFolder, name: str, shape: tuple[int, ...]) -> np.ndarray:
    array = tensors.read(name)
    if tuple(array.shape) != tuple(shape):
        raise WeightsError(
            f"{tensors.file_of(name)}: tensor {name!r} has shape {tuple(array.shape)}, "
            f"expected {tuple(shape)} from config.json"
        )
    return array


def hf_state_dict(params: Params, config: ModelConfig) -> dict[str, np.ndarray]:
    """Hugging Face tensor name -> host array, the inverse of `load_params` (tied models carry no lm_head).

    Each stacked leaf is copied to the host once and split into per-layer views, so no second copy is made.
    """
    tensors: dict[str, np.ndarray] = {}
    for path, _ in _leaf_paths(param_shapes(config)):
        leaf = params
        for key in path:
            leaf = leaf[key]
        host = np.asarray(leaf)
        if path[0] == "layers":
            tensors.update({hf_tensor_name(path, layer): host[layer] for layer in range(config.num_layers)})
        else:
            tensors[hf_tensor_name(path)] = host
    return tensors


def save_sharded_safetensors(folder: str | Path, tensors: dict[str, np.ndarray], shard_bytes: int) -> list[Path]:
    """Write `tensors` as Hugging Face shards (model-0000i-of-0000n.safetensors, in order, each at most
    `shard_bytes` unless one tensor is larger) and the model.safetensors.index.json that maps names to files."""
    shards: list[dict[str, np.ndarray]] = [{}]
    for name, array in tensors.items():
        if shards[-1] and sum(a.nbytes for a in shards[-1].values()) + array.nbytes > shard_bytes:
            shards.append({})
        shards[-1][name] = array
    folder, files, weight_map = Path(folder), [], {}
    for i, shard in enumerate(shards, 1):
        files.append(folder / f"model-{i:05d}-of-{len(shards):05d}.safetensors")
        save_safetensors(files[-1], shard)
        weight_map.update(dict.fromkeys(shard, files[-1].name))
    total = sum(a.nbytes for a in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return files


def save_safetensors(
    file: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None, progress: bool = False
) -> None:
    """Write `tensors` as one safetensors file, streamed tensor by tensor (no whole-file buffer).

    Layout: 8-byte little-endian header length, a JSON header (dtype, shape, data_offsets per tensor, padded
    with spaces to 8 bytes so every tensor starts aligned), then the raw bytes of each tensor in order. The
    `{"format": "pt"}` metadata is what transformers checks before loading a file.
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    for name, array in tensors.items():
        if array.dtype not in _DTYPE_NAMES:
            raise WeightsError(f"{file}: tensor {name!r} has dtype {array.dtype}, which safetensors cannot store")
        header[name] = {
            "dtype": _DTYPE_NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with (
        open(file, "wb") as f,
        tqdm(
            total=offset,
            unit="B",
            unit_scale=True,
            desc=f"writing {Path(file).name}",
            disable=not progress,
            leave=False,
            delay=1.0,
        ) as bar,
    ):
        f.write(struct.pack("<Q", len(raw)) + raw)
        for array in tensors.values():
            f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
            bar.update(array.nbytes)
