"""Bad model folders fail with a message that names the file and the field or tensor."""

from __future__ import annotations

import json
import shutil
import struct
import tracemalloc

import numpy as np
import pytest

import capt_jax
from capt_jax import ModelConfigError, WeightsError
from capt_jax.weights import SafetensorsFolder


@pytest.fixture
def broken_copy(tiny_qwen2_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_qwen2_dir, folder)
    return folder


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def rewrite_tensor(file, name, array):
    """Rewrite one safetensors file with `name` replaced (or dropped when array is None)."""
    folder = SafetensorsFolder(file.parent)
    tensors = {n: np.array(folder.read(n)) for n in folder._header(file)[1]}
    if array is None:
        tensors.pop(name)
    else:
        tensors[name] = array
    header, blobs, offset = {}, [], 0
    for n, t in tensors.items():
        data = t.astype(np.float32).tobytes()
        header[n] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def test_unsupported_model_type_names_file(broken_copy):
    edit_config(broken_copy, model_type="gpt2")
    with pytest.raises(ModelConfigError, match=r"config\.json: model_type 'gpt2' is not supported"):
        capt_jax.load_pretrained(broken_copy, progress=False)


def test_missing_config_field_names_file_and_field(broken_copy):
    edit_config(broken_copy, num_hidden_layers=None)
    with pytest.raises(ModelConfigError, match=r"config\.json: missing required field 'num_hidden_layers'"):
        capt_jax.load_pretrained(broken_copy, progress=False)


def test_unsupported_rope_type_is_named(broken_copy):
    edit_config(broken_copy, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0})
    with pytest.raises(ModelConfigError, match="rope type 'yarn' is not supported"):
        capt_jax.load_pretrained(broken_copy, progress=False)


def test_missing_tensor_names_tensor_and_folder(broken_copy):
    rewrite_tensor(broken_copy / "model.safetensors", "model.layers.1.self_attn.k_proj.bias", None)
    with pytest.raises(WeightsError, match=r"model.*tensor 'model\.layers\.1\.self_attn\.k_proj\.bias' is missing"):
        capt_jax.load_pretrained(broken_copy, progress=False)


def test_wrongly_shaped_tensor_names_file_and_shapes(broken_copy):
    rewrite_tensor(broken_copy / "model.safetensors", "model.norm.weight", np.ones(63, np.float32))
    with pytest.raises(
        WeightsError,
        match=r"model\.safetensors: tensor 'model\.norm\.weight' has shape \(63,\), "
        r"expected \(64,\)",
    ):
        capt_jax.load_pretrained(broken_copy, progress=False)


def test_folder_without_weights_or_config(tmp_path):
    with pytest.raises(ModelConfigError, match="config.json: not found"):
        capt_jax.load_pretrained(tmp_path, progress=False)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelConfigError, match="not valid JSON"):
        capt_jax.load_pretrained(tmp_path, progress=False)


def test_unknown_hub_id_offline_says_what_failed():
    with pytest.raises(FileNotFoundError, match="'no-such-org/no-such-model' is not a local folder"):
        capt_jax.load_pretrained("no-such-org/no-such-model", progress=False)


def test_bfloat16_load_never_holds_a_float32_copy(tmp_path):
    """Host memory while loading float32 files as bf16 holds the bf16 model once and no float32 copy of a leaf.

    On a CPU the loaded leaves are the host buffers themselves (weights.aligned_empty), so the model's own bytes
    are the floor; a float32 copy of the largest leaf (6.3 MB here) would add half of them again.
    """
    from conftest import save_random_model

    folder = save_random_model(
        "llama", tmp_path / "m", num_hidden_layers=8, hidden_size=256, intermediate_size=768, vocab_size=512
    )
    config = capt_jax.ModelConfig.from_pretrained_dir(folder)
    import jax

    from capt_jax.model import param_shapes

    n_params = sum(
        int(np.prod(s)) for s in jax.tree.leaves(param_shapes(config), is_leaf=lambda s: isinstance(s, tuple))
    )
    tracemalloc.start()
    model = capt_jax.load_pretrained(folder, dtype="bfloat16", progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert all(leaf.dtype.name == "bfloat16" for leaf in jax.tree.leaves(model.params))
    bound = 1.1 * 2 * n_params
    assert peak < bound, f"peak host allocation {peak} bytes >= 1.1 x the bf16 model's {2 * n_params} bytes"
